"""The auth package's refusals: refresh tokens (401) and passwords out of bounds (422).

Kept apart from the modules that need the ``auth`` extra, so they import without it.
"""

from __future__ import annotations

from hardened.errors import FieldError, Unauthorized, ValidationFailed

__all__ = [
    "PASSWORD_FIELD",
    "InvalidRefreshToken",
    "PasswordTooLong",
    "PasswordTooShort",
    "TokenReused",
]

PASSWORD_FIELD = ("body", "password")  # where a password error points in the request


class InvalidRefreshToken(Unauthorized):
    """The refresh token is malformed, unknown, expired or revoked (401)."""

    code = "auth.invalid_refresh"
    title = "Invalid refresh token"


class TokenReused(Unauthorized):
    """A rotated refresh token came back: the family is revoked as stolen (401)."""

    code = "auth.token_reused"
    title = "Refresh token reuse detected; the session was revoked"


class PasswordTooLong(ValidationFailed):
    """Longer than the hasher takes (bcrypt reads 72 bytes): refused, never truncated (422)."""

    code = "auth.password_too_long"
    title = "Password too long"

    def __init__(self, max_bytes: int) -> None:
        msg = f"The password must be at most {max_bytes} bytes when encoded as UTF-8."
        super().__init__(
            msg,
            errors=[FieldError(PASSWORD_FIELD, msg, "password_too_long")],
            context={"max_bytes": max_bytes},
        )


class PasswordTooShort(ValidationFailed):
    """Shorter than the policy's minimum length (422)."""

    code = "auth.password_too_short"
    title = "Password too short"

    def __init__(self, min_length: int) -> None:
        msg = f"The password must be at least {min_length} characters long."
        super().__init__(
            msg,
            errors=[FieldError(PASSWORD_FIELD, msg, "password_too_short")],
            context={"min_length": min_length},
        )
