"""The one guard for the SQL half of `hardened.crypto` (the ``crypto`` extra brings SQLAlchemy)."""

from __future__ import annotations

from hardened._extras import missing_extra

try:
    import sqlalchemy  # noqa: F401
except ModuleNotFoundError as exc:
    raise missing_extra("hardened.crypto", "crypto") from exc

__all__: list[str] = []
