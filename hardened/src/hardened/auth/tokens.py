"""Short-lived JWT access tokens with the algorithm pinned and every claim required.

Seed JWT handling trusted too much of the token: the ``alg`` header chose the
verification algorithm (``none``, or HS256 keyed with the RS256 public key,
forges anything), claims were optional and a default secret signed them. Here
the algorithm and key come from `AccessTokenConfig` only and the header must
name that algorithm exactly before any decoding; ``exp``, ``iat``, ``sub``,
``jti``, ``sid``, the tenant claim, ``aud`` and ``iss`` are all required and
checked; tokens are typed ``at+jwt`` (RFC 9068) so an ID token or another JWT
signed by the same key cannot pass as an access token.

Every refusal is `Unauthorized` with code ``auth.token_expired`` (only for a
token that is otherwise valid) or ``auth.invalid_token``: a client learns
nothing about which check failed. The reason goes to ``context`` (logs only),
never the token.

Key rotation: the current key has a ``kid``, put in every header it signs,
and ``previous_keys`` (`VerificationKey`) verify the tokens they signed until
their ``not_after``: set it to the rotation time plus ``ttl`` (plus
``leeway``), when the last token they signed has expired anyway. The key is
chosen by the token's ``kid``, never by trying each one in turn (that would
make every key a verifier of every token and hide which one did it); an
unknown ``kid``, or a previous key past its ``not_after``, is
``auth.invalid_token`` with reason ``unknown_kid`` / ``retired_kid``. A token
without a ``kid`` verifies against the current key only: it was issued before
kids existed, by the key that was current then, so name the kid one deploy
(and one ``ttl``) before the first rotation. Previous keys only verify; for an
asymmetric algorithm only their public half is kept.

`verify` is pure and offline. Whether the token's session (``sid``, a
refresh-token family) is still live is the refresh-token store's answer
(`hardened.auth.refresh.RefreshTokens.session_active`); the caller asks it and
refuses an ended session with ``auth.token_revoked`` (`revoked_error`).
"""

from __future__ import annotations

import hmac
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

from hardened._extras import missing_extra

try:
    import jwt
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from jwt.algorithms import get_default_algorithms
    from jwt.utils import is_pem_format, is_ssh_key
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.auth.tokens", "auth") from exc

from hardened.config import secret_problem
from hardened.errors import Unauthorized
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MAX_TOKEN_BYTES",
    "AccessClaims",
    "AccessTokenConfig",
    "AccessTokens",
    "Algorithm",
    "VerificationKey",
    "revoked_error",
]

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA"]
MAX_TOKEN_BYTES = 8 * 1024
MAX_LEEWAY = 120.0
MAX_TTL = 86_400.0
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: >= hash size
_RSA_MIN_BITS = 2048
_TYP = "at+jwt"
_ACCEPTED_TYP = frozenset({"at+jwt", "application/at+jwt"})
_ALLOWED_HEADER = frozenset({"alg", "typ", "kid"})
_REGISTERED = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid"})
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_WWW_AUTHENTICATE = {"www-authenticate": 'Bearer error="invalid_token"'}

_TOKENS = counter(
    "auth_access_tokens_total",
    "Access tokens issued and verified, by outcome (issued, valid, expired, invalid)",
    ["outcome"],
)


def _as_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def _looks_like_pem(key: bytes) -> bool:
    return b"-----BEGIN" in key or is_pem_format(key) or is_ssh_key(key)


def _usable_hmac_secret(algorithm: str, key: bytes) -> bool:
    """False for anything PEM-, SSH- or DER-shaped: such a key is public, not a secret."""
    if _looks_like_pem(key):
        return False
    try:
        get_default_algorithms()[algorithm].prepare_key(key)
    except jwt.InvalidKeyError:
        return False
    return True


def _check_asymmetric(algorithm: str, key: object, *, what: str) -> None:
    """Refuse a key whose type or size does not fit ``algorithm``."""
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            raise ValueError(f"{what} must be an RSA key for RS256")
        if key.key_size < _RSA_MIN_BITS:
            raise ValueError(f"{what} must be at least {_RSA_MIN_BITS} bits for RS256")
    elif algorithm == "ES256":
        if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) or (
            not isinstance(key.curve, ec.SECP256R1)
        ):
            raise ValueError(f"{what} must be a P-256 EC key for ES256")
    elif not isinstance(
        key,
        ed25519.Ed25519PrivateKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PrivateKey
        | ed448.Ed448PublicKey,
    ):
        raise ValueError(f"{what} must be an Ed25519 or Ed448 key for EdDSA")


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_hmac_secret(algorithm: str, key: bytes, *, what: str) -> None:
    """A secret long enough for ``algorithm``, random-looking, and not a (public) PEM."""
    if len(key) < _HMAC_MIN_BYTES[algorithm]:
        raise ValueError(
            f"{what} must be at least {_HMAC_MIN_BYTES[algorithm]} bytes for {algorithm}"
        )
    # Same rules as every other secret (placeholders, too few distinct characters).
    if reason := secret_problem(key.decode("latin-1")):
        raise ValueError(f"{what} {reason}")
    # The HS/RS confusion in config form: a PEM used as an HMAC secret is public.
    if not _usable_hmac_secret(algorithm, key):
        raise ValueError(f"{what} is an asymmetric key; {algorithm} needs a random secret")


def _load_keys(config: AccessTokenConfig) -> tuple[Any, Any]:
    """Parse and check the keys: (signing key, verification key), both ready for PyJWT."""
    algorithm = config.algorithm
    signing = _as_bytes(config.signing_key)
    verification = None if config.verification_key is None else _as_bytes(config.verification_key)
    if algorithm in _HMAC_MIN_BYTES:
        _check_hmac_secret(algorithm, signing, what="signing_key")
        if verification is not None and not _usable_hmac_secret(algorithm, verification):
            msg = f"verification_key is an asymmetric key; {algorithm} needs a random secret"
            raise ValueError(msg)
        if verification is not None and not hmac.compare_digest(verification, signing):
            raise ValueError(f"verification_key must equal signing_key for {algorithm}")
        return signing, signing
    try:
        private = serialization.load_pem_private_key(signing, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        msg = f"signing_key must be an unencrypted PEM private key for {algorithm}"
        raise ValueError(msg) from None
    _check_asymmetric(algorithm, private, what="signing_key")
    public: Any = private.public_key()
    if verification is not None:
        public = _load_public(algorithm, verification, what="verification_key")
        if _spki(public) != _spki(private.public_key()):
            raise ValueError("verification_key is not the public half of signing_key")
    return private, public


def _load_public(algorithm: str, key: bytes, *, what: str) -> Any:
    try:
        public: Any = serialization.load_pem_public_key(key)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        msg = f"{what} must be a PEM public key for {algorithm}"
        raise ValueError(msg) from None
    _check_asymmetric(algorithm, public, what=what)
    return public


def _load_previous(config: AccessTokenConfig, current: Any) -> dict[str, tuple[Any, float]]:
    """Check ``previous_keys``: kid -> (verification key, not_after), public halves only."""
    algorithm = config.algorithm
    if not isinstance(config.previous_keys, tuple) or not all(
        isinstance(k, VerificationKey) for k in config.previous_keys
    ):
        raise ValueError("previous_keys must be a tuple of VerificationKey")
    if config.previous_keys and config.kid is None:
        raise ValueError("previous_keys need a kid on the current key (tokens name their key)")
    keys: dict[str, tuple[Any, float]] = {}
    for previous in config.previous_keys:
        what = f"previous key {previous.kid!r}"
        if previous.kid == config.kid or previous.kid in keys:
            raise ValueError(f"{what}: kids must be unique (current and previous)")
        raw = _as_bytes(previous.key)
        loaded: Any
        if algorithm in _HMAC_MIN_BYTES:
            _check_hmac_secret(algorithm, raw, what=what)
            if hmac.compare_digest(raw, current):
                raise ValueError(f"{what} is the current signing key")
            loaded = raw
        elif b"PRIVATE KEY" in raw:
            # The retired signing key, as it was configured: keep its public half only.
            try:
                private = serialization.load_pem_private_key(raw, password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                msg = f"{what} must be a PEM public key (or unencrypted private key)"
                raise ValueError(msg) from None
            _check_asymmetric(algorithm, private, what=what)
            loaded = private.public_key()
        else:
            loaded = _load_public(algorithm, raw, what=what)
        if algorithm not in _HMAC_MIN_BYTES and _spki(loaded) == _spki(current.public_key()):
            raise ValueError(f"{what} is the current signing key")
        keys[previous.kid] = (loaded, previous.not_after)
    return keys


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationKey:
    """A retired key: verifies the tokens naming ``kid`` until ``not_after``, never signs.

    ``key`` follows the rules of the config's algorithm (the HMAC secret, or a
    PEM public key; a PEM private key is reduced to its public half).
    ``not_after`` is a Unix time: the rotation time plus the token ``ttl`` and
    ``leeway``, after which nothing it signed can still be valid.
    """

    kid: str
    key: str | bytes = field(repr=False)
    not_after: float

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not _KID.fullmatch(self.kid):
            raise ValueError("kid must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'")
        if not isinstance(self.key, str | bytes) or not self.key:
            raise ValueError(f"previous key {self.kid!r} must be a non-empty str or bytes")
        not_after = self.not_after
        if isinstance(not_after, bool) or not isinstance(not_after, int | float):
            raise TypeError(f"previous key {self.kid!r}: not_after must be a Unix time")
        if not math.isfinite(not_after):
            raise ValueError(f"previous key {self.kid!r}: not_after must be finite")


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessTokenConfig:
    """Issuer, audience, pinned algorithm and keys; checked at construction.

    ``signing_key`` is the HMAC secret (at least the hash size: 32/48/64 bytes)
    or an unencrypted PEM private key (RS256 >= 2048 bits, ES256 on P-256,
    EdDSA). ``verification_key`` is the PEM public key (derived from the
    private key when None) or, for HMAC, the same secret. Keys never appear in
    the repr. ``ttl`` is in [1, 86400] seconds, ``leeway`` in [0, 120].
    ``kid`` names the current key in every token header; ``previous_keys``
    (which need a ``kid``) verify what older keys signed until their
    ``not_after`` (see the module docstring).
    """

    issuer: str
    audience: str
    algorithm: Algorithm = "HS256"
    signing_key: str | bytes = field(repr=False)
    verification_key: str | bytes | None = field(default=None, repr=False)
    ttl: float = 900.0
    leeway: float = 30.0
    tenant_claim: str = "tenant"
    kid: str | None = None
    previous_keys: tuple[VerificationKey, ...] = ()

    def __post_init__(self) -> None:
        if self.algorithm not in get_args(Algorithm):
            raise ValueError(f"algorithm must be one of {', '.join(get_args(Algorithm))}")
        if not self.issuer or not self.audience:
            raise ValueError("issuer and audience must be non-empty")
        if not 1 <= self.ttl <= MAX_TTL:
            raise ValueError(f"ttl must be in [1, {MAX_TTL:g}] seconds")
        if not 0 <= self.leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be in [0, {MAX_LEEWAY:g}] seconds")
        if not self.tenant_claim or self.tenant_claim in _REGISTERED:
            raise ValueError("tenant_claim must be a non-empty, non-registered claim name")
        if self.kid is not None and (not isinstance(self.kid, str) or not _KID.fullmatch(self.kid)):
            raise ValueError("kid must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'")
        signing, _ = _load_keys(self)
        _load_previous(self, signing)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """The verified content of an access token; ``sid`` is the refresh-token family."""

    sub: str
    tenant: str
    sid: str
    jti: str
    iat: int
    exp: int
    extra: Mapping[str, Any]


def _refuse(reason: str, *, expired: bool = False) -> Unauthorized:
    _TOKENS.labels(outcome="expired" if expired else "invalid").inc()
    return Unauthorized(
        "The access token has expired." if expired else "The access token is invalid.",
        code="auth.token_expired" if expired else "auth.invalid_token",
        context={"reason": reason},
        headers=_WWW_AUTHENTICATE,
    )


def revoked_error() -> Unauthorized:
    """The refusal for a token whose session has ended (``auth.token_revoked``)."""
    return Unauthorized(
        "The access token has been revoked.",
        code="auth.token_revoked",
        context={"reason": "session_ended"},
        headers=_WWW_AUTHENTICATE,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AccessTokens:
    """Issue and verify access tokens for one `AccessTokenConfig`."""

    def __init__(self, config: AccessTokenConfig) -> None:
        self.config = config
        self._signing_key, self._verification_key = _load_keys(config)
        # kid -> (key, not_after); the current key never retires.
        self._keys = _load_previous(config, self._signing_key)
        if config.kid is not None:
            self._keys[config.kid] = (self._verification_key, math.inf)
        self._headers = {"typ": _TYP} if config.kid is None else {"typ": _TYP, "kid": config.kid}
        # A private instance: options set elsewhere on the global PyJWT cannot weaken ours.
        self._jwt = jwt.PyJWT(options={"enforce_minimum_key_length": True})
        self._reserved = _REGISTERED | {config.tenant_claim}
        self._require = ["exp", "iat", "sub", "jti", "sid", config.tenant_claim, "aud", "iss"]

    def __repr__(self) -> str:
        return f"AccessTokens({self.config!r})"

    def issue(
        self,
        *,
        subject: str,
        tenant: str,
        session_id: str,
        extra: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> str:
        """Sign a token for ``subject`` in ``tenant`` and refresh family ``session_id``.

        ``extra`` holds JSON-serialisable private claims; one that collides with
        a registered or configured claim is a ValueError, never an override.
        """
        for name, value in (("subject", subject), ("tenant", tenant), ("session_id", session_id)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        extra = dict(extra or {})
        if clash := sorted(self._reserved.intersection(extra)):
            raise ValueError(f"extra claims collide with registered claims: {clash}")
        issued = time.time() if now is None else now
        cfg = self.config
        payload: dict[str, Any] = {
            **extra,
            "iss": cfg.issuer,
            "aud": cfg.audience,
            "sub": subject,
            cfg.tenant_claim: tenant,
            "sid": session_id,
            "jti": uuid.uuid4().hex,
            "iat": int(issued),
            "exp": int(issued + cfg.ttl),
        }
        token = self._jwt.encode(
            payload, self._signing_key, algorithm=cfg.algorithm, headers=self._headers
        )
        if len(token) > MAX_TOKEN_BYTES:
            raise ValueError(f"token would exceed {MAX_TOKEN_BYTES} bytes; trim extra claims")
        _TOKENS.labels(outcome="issued").inc()
        return token

    def verify(self, token: str, *, now: float | None = None) -> AccessClaims:
        """Return the claims of a valid token, else raise `Unauthorized`."""
        cfg = self.config
        if not isinstance(token, str):
            raise _refuse("not_a_string")
        if len(token) > MAX_TOKEN_BYTES:
            raise _refuse("too_large")
        if not _COMPACT_JWS.fullmatch(token):
            raise _refuse("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refuse("malformed_header") from None
        # Pinned: the header must name the configured algorithm, never choose one.
        if header.get("alg") != cfg.algorithm:
            raise _refuse("alg_mismatch")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP:
            raise _refuse("wrong_typ")
        if not _ALLOWED_HEADER.issuperset(header):
            raise _refuse("unexpected_header")
        now = time.time() if now is None else now
        key = self._key_for(header.get("kid"), now)
        try:
            payload = self._jwt.decode(
                token,
                key,
                algorithms=[cfg.algorithm],
                audience=cfg.audience,
                issuer=cfg.issuer,
                options={
                    "require": self._require,
                    "strict_aud": True,
                    # Times are checked below against ``now``, after everything else.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(f"missing_claim:{exc.claim}") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise _refuse(_reason(exc)) from None
        return self._claims(payload, now)

    def _key_for(self, kid: object, now: float) -> Any:
        """The one key the token's ``kid`` names (PyJWT has checked it is a string, if present)."""
        if kid is None:
            return self._verification_key  # issued before kids: by the key current then
        found = self._keys.get(kid) if isinstance(kid, str) else None
        if found is None:
            raise _refuse("unknown_kid")
        key, not_after = found
        if now > not_after:
            raise _refuse("retired_kid")
        return key

    def _claims(self, payload: dict[str, Any], now: float) -> AccessClaims:
        cfg = self.config
        for name in ("sub", "jti", "sid", cfg.tenant_claim):
            if not isinstance(payload[name], str) or not payload[name]:
                raise _refuse(f"bad_claim:{name}")
        for name in ("iat", "exp", "nbf"):
            if name in payload and not _is_int(payload[name]):
                raise _refuse(f"bad_claim:{name}")
        iat, exp = payload["iat"], payload["exp"]
        if exp <= iat:
            raise _refuse("exp_before_iat")
        if iat > now + cfg.leeway:
            raise _refuse("iat_in_future")
        if payload.get("nbf", iat) > now + cfg.leeway:
            raise _refuse("not_yet_valid")
        if exp <= now - cfg.leeway:
            raise _refuse("expired", expired=True)
        _TOKENS.labels(outcome="valid").inc()
        extra = {k: v for k, v in payload.items() if k not in self._reserved}
        return AccessClaims(
            sub=payload["sub"],
            tenant=payload[cfg.tenant_claim],
            sid=payload["sid"],
            jti=payload["jti"],
            iat=iat,
            exp=exp,
            extra=MappingProxyType(extra),
        )


_REASONS: dict[type[Exception], str] = {
    jwt.InvalidSignatureError: "bad_signature",
    jwt.InvalidAudienceError: "wrong_audience",
    jwt.InvalidIssuerError: "wrong_issuer",
    jwt.InvalidAlgorithmError: "alg_mismatch",
    jwt.InvalidKeyError: "bad_key",
    jwt.exceptions.InvalidSubjectError: "bad_claim:sub",
    jwt.exceptions.InvalidJTIError: "bad_claim:jti",
    jwt.DecodeError: "malformed",
}


def _reason(exc: Exception) -> str:
    """A stable, content-free reason for logs (PyJWT messages may quote input)."""
    for kind, reason in _REASONS.items():
        if isinstance(exc, kind):
            return reason
    return type(exc).__name__
