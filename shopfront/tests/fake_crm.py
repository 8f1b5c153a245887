"""A CRM fake over a real socket: per-shop telecom catalogs, slow like a real one, counted.

``GET /shops/{shop_id}/{plans|addons|installations|categories|metadata|availability}``
answers after ``delay`` seconds (an ``asyncio.sleep``, so concurrent requests
overlap as they would against a real CRM) with that shop's catalog: made up
from the shop id, so two shops' data always differ, or set in ``catalogs``.
Every request is counted per endpoint and per shop, so a test can tell how
many reads the cache saved. ``down`` answers 503, ``hang`` never answers,
``status`` answers that status (with ``retry_after`` as ``Retry-After``),
``reset`` drops the connection without an answer; with ``fail_times`` set,
those three faults hit only that many more reads, then the fake recovers
(a fault that clears itself). With ``require_token``
every read needs the bearer token ``POST /oauth/token`` issued last
(client credentials ``shopfront``/``crm-secret``); `expire_token` ends that
session, so the next read is a 401 until the client fetches a new token.

Run as a script (``python shopfront/tests/fake_crm.py --port 8099``) it serves
the same catalogs for a live server (e.g. a schemathesis run with CRM_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["ENDPOINTS", "FakeCrm", "catalog_for", "mark_of", "running_fake_crm"]

ENDPOINTS = ("plans", "addons", "installations", "categories", "metadata", "availability")


def mark_of(shop_id: str) -> str:
    """The mark every SKU and name of the shop's made-up catalog carries."""
    return hashlib.sha256(shop_id.encode()).hexdigest()[:8]


def catalog_for(shop_id: str) -> dict[str, Any]:
    """The made-up catalog of ``shop_id``: every name and SKU carries the shop's mark."""
    mark = mark_of(shop_id)
    plans = [
        {
            "sku": f"PLAN-{mark}-{n}",
            "name": f"Mobile {n * 10} GB ({mark})",
            "monthly_price_cents": 999 + n * 500,
            "data_gb": n * 10,
            "contract_months": 24,
            "internal_margin": 0.3,  # a field the CRM has and the service does not show
        }
        for n in (1, 2, 3)
    ]
    return {
        "plans": plans,
        "addons": [
            {
                "sku": f"ADDON-{mark}-roaming",
                "name": f"EU roaming ({mark})",
                "price_cents": 499,
                "plans": [p["sku"] for p in plans],
            }
        ],
        "installations": [
            {
                "sku": f"INST-{mark}-fibre",
                "name": f"Fibre installation ({mark})",
                "price_cents": 4900,
                "duration_minutes": 120,
            }
        ],
        "categories": [
            {"id": f"cat-{mark}-mobile", "name": "Mobile", "parent": None},
            {"id": f"cat-{mark}-5g", "name": "5G", "parent": f"cat-{mark}-mobile"},
        ],
        "metadata": {
            "shop_name": f"Shop {mark}",
            "currency": "EUR",
            "catalog_version": f"v1-{mark}",
            "updated_at": "2026-01-15T09:30:00Z",
        },
        "availability": [
            {"sku": p["sku"], "available": True, "stock": 100 + i} for i, p in enumerate(plans)
        ],
    }


@dataclass
class FakeCrm:
    """State and fault switches of the fake; mutate them between requests."""

    delay: float = 0.3
    down: bool = False
    hang: bool = False
    catalogs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per shop id, a catalog replacing the made-up one (whole or some endpoints)."""
    calls: Counter[str] = field(default_factory=Counter)
    """Requests per endpoint (every request, answered or not)."""
    calls_by_shop: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Requests per (shop id, endpoint)."""
    status: int | None = None
    retry_after: str | None = None
    reset: bool = False
    fail_times: int | None = None
    """When set, ``reset``, ``down`` and ``status`` answer only this many more reads."""
    require_token: bool = False
    tokens_issued: int = 0
    current_token: str | None = None
    rejected: int = 0
    """Reads answered 401 (no token, or not the current one)."""
    in_progress: int = 0
    max_in_progress: int = 0
    url: str = ""

    def expire_token(self) -> None:
        """End the current upstream session: its token is refused from now on."""
        self.current_token = None

    async def issue_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if (form.get("client_id"), form.get("client_secret")) != ("shopfront", "crm-secret"):
            return web.json_response({"error": "invalid_client"}, status=401)
        self.tokens_issued += 1
        self.current_token = f"crm-token-{self.tokens_issued}"
        return web.json_response({"access_token": self.current_token, "expires_in": 720})

    @property
    def total(self) -> int:
        """Every request the fake received."""
        return sum(self.calls.values())

    async def handle(self, request: web.Request) -> web.Response:
        shop, what = request.match_info["shop_id"], request.match_info["what"]
        if what not in ENDPOINTS:
            return web.json_response({"error": "unknown endpoint"}, status=404)
        self.calls[what] += 1
        self.calls_by_shop[shop, what] += 1
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            return await self._answer(request, shop, what)
        finally:
            self.in_progress -= 1

    def _faulty(self) -> bool:
        """Whether this read gets the fault switched on (counting it against ``fail_times``)."""
        if not (self.reset or self.down or self.status is not None):
            return False
        if self.fail_times is None:
            return True
        if self.fail_times <= 0:
            return False
        self.fail_times -= 1
        return True

    async def _answer(self, request: web.Request, shop: str, what: str) -> web.Response:
        if self.require_token:
            sent = request.headers.get("authorization", "")
            if self.current_token is None or sent != f"Bearer {self.current_token}":
                self.rejected += 1
                return web.json_response({"error": "session expired"}, status=401)
        if self.hang:
            await asyncio.sleep(3600)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._faulty():
            if self.reset:
                assert request.transport is not None
                request.transport.close()
                return web.json_response({}, status=500)
            if self.down:
                return web.json_response({"error": "maintenance"}, status=503)
            if self.status is not None:
                headers = {"retry-after": self.retry_after} if self.retry_after else {}
                return web.json_response({"error": "fault"}, status=self.status, headers=headers)
        catalog = {**catalog_for(shop), **self.catalogs.get(shop, {})}
        return web.json_response(catalog[what])


def _app(fake: FakeCrm) -> web.Application:
    app = web.Application()
    app.router.add_get("/shops/{shop_id}/{what}", fake.handle)
    app.router.add_post("/oauth/token", fake.issue_token)
    return app


@contextlib.asynccontextmanager
async def running_fake_crm(*, delay: float = 0.3) -> AsyncIterator[FakeCrm]:
    """Serve the fake on 127.0.0.1 (a free port) for the duration of the block."""
    fake = FakeCrm(delay=delay)
    runner = web.AppRunner(_app(fake), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def main() -> None:
    """Serve the fake until interrupted (for a live server's CRM_URL)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(_app(FakeCrm(delay=args.delay)), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
