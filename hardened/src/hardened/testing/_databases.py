"""Throwaway PostgreSQL databases, so parallel and repeated test runs never share tables."""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["temporary_database"]


@contextlib.contextmanager
def temporary_database(
    database_url: str, *, prefix: str = "hardened", scheme: str | None = "postgresql+psycopg"
) -> Iterator[str]:
    """Create a uniquely named database next to ``database_url``; yield its URL; drop it.

    The URL keeps ``database_url``'s scheme when ``scheme`` is None (the default
    gives SQLAlchemy's async psycopg URL). Dropping uses ``WITH (FORCE)``, so a
    test that leaked a connection cannot leave the database behind.
    """
    import psycopg  # noqa: PLC0415 - only tests on PostgreSQL need it

    parts = urlsplit(database_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(scheme=scheme or parts.scheme, path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
