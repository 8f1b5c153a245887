"""Helpers shared by shopfront tests (imported, unlike fixtures)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import httpx

from shopfront.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["client_for", "make_settings"]


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: non-development (no debug), strong secrets, no Redis."""
    values: dict[str, Any] = {
        "environment": "test",
        "debug": False,
        "database_url": database_url,
        "redis_url": None,
        "jwt_secret": secrets.token_urlsafe(48),
        "session_secret": secrets.token_urlsafe(48),
        "cookie_secret": secrets.token_urlsafe(48),
        "allowed_hosts": ("shop.test", "*.shop.test", "127.0.0.1", "localhost"),
        "cors_origins": ("https://admin.shop.test",),
        "auto_migrate": False,
        "log_json": True,
    }
    values.update(overrides)
    return Settings.load(**values)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """An in-process client that renders app errors instead of raising them."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.test")
