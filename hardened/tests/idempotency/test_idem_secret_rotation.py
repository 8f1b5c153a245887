"""Rotating the fingerprint secret: records stored under the previous secret still replay."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from hardened.http._request_id import RequestIdMiddleware
from hardened.idempotency import HttpIdempotencyConfig, IdempotencyMiddleware, StoreBackend
from hardened.idempotency._keys import fingerprint, fingerprints
from hardened.stores import MemoryStore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.requests import Request

    from conftest import IdemBackend
    from hardened.idempotency import IdempotencyBackend

pytestmark = pytest.mark.anyio

SECRET_A = b"secret-a-0123456789abcdef01234567"
SECRET_B = b"secret-b-76543210fedcba9876543210"


class Shop:
    """An app whose handler counts its runs; ``gate`` holds the first slow request."""

    def __init__(self) -> None:
        self.runs = 0
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    def app(self) -> Starlette:
        async def orders(request: Request) -> JSONResponse:
            self.runs += 1
            body = await request.body()
            return JSONResponse(
                {"run": self.runs, "id": uuid.uuid4().hex, "echo": body.decode()}, 201
            )

        async def slow(request: Request) -> JSONResponse:
            self.runs += 1
            self.entered.set()
            await self.gate.wait()
            return JSONResponse({"run": self.runs}, 201)

        return Starlette(
            routes=[
                Route("/orders", orders, methods=["POST"]),
                Route("/slow", slow, methods=["POST"]),
            ]
        )


def client(
    shop: Shop, backend: IdempotencyBackend, secret: bytes, previous: Sequence[bytes] = ()
) -> httpx.AsyncClient:
    """A client of the shop behind a middleware built with this secret (as after a restart)."""
    guarded = IdempotencyMiddleware(
        shop.app(),
        backend=backend,
        secret=secret,
        previous_secrets=previous,
        config=HttpIdempotencyConfig(lease=30.0),
    )
    transport = httpx.ASGITransport(app=RequestIdMiddleware(guarded), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://shop.example")


def key() -> dict[str, str]:
    return {"idempotency-key": str(uuid.uuid4())}


async def test_retry_after_rotation_replays_the_response_stored_under_the_old_secret(
    idem_backend: IdemBackend,
) -> None:
    """Stored under A; rebuilt with B and previous (A,): the retry replays, the handler ran once."""
    shop, headers = Shop(), key()
    async with client(shop, idem_backend.backend, SECRET_A) as before:
        first = await before.post("/orders", content=b'{"amount": 5}', headers=headers)
    async with client(shop, idem_backend.backend, SECRET_B, (SECRET_A,)) as after:
        retry = await after.post("/orders", content=b'{"amount": 5}', headers=headers)
    assert first.status_code == retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert shop.runs == 1


async def test_another_body_after_rotation_is_still_422(idem_backend: IdemBackend) -> None:
    """The previous secret matches only the same request: another body is 422, nothing runs."""
    shop, headers = Shop(), key()
    async with client(shop, idem_backend.backend, SECRET_A) as before:
        await before.post("/orders", content=b'{"amount": 5}', headers=headers)
    async with client(shop, idem_backend.backend, SECRET_B, (SECRET_A,)) as after:
        other = await after.post("/orders", content=b'{"amount": 6}', headers=headers)
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency.key_reused"
    assert shop.runs == 1


async def test_without_the_previous_secret_the_retry_is_a_mismatch() -> None:
    """Why previous_secrets exists: rotated without it, the retry of a stored request is 422."""
    shop, headers, backend = Shop(), key(), StoreBackend(MemoryStore())
    async with client(shop, backend, SECRET_A) as before:
        await before.post("/orders", content=b'{"amount": 5}', headers=headers)
    async with client(shop, backend, SECRET_B) as after:
        retry = await after.post("/orders", content=b'{"amount": 5}', headers=headers)
    assert retry.status_code == 422
    assert shop.runs == 1


async def test_records_made_during_the_overlap_carry_the_current_fingerprint(
    idem_backend: IdemBackend,
) -> None:
    """A request first seen during the overlap still replays once the previous secret is dropped."""
    shop, headers = Shop(), key()
    async with client(shop, idem_backend.backend, SECRET_B, (SECRET_A,)) as overlap:
        first = await overlap.post("/orders", content=b'{"amount": 5}', headers=headers)
    async with client(shop, idem_backend.backend, SECRET_B) as later:
        retry = await later.post("/orders", content=b'{"amount": 5}', headers=headers)
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert shop.runs == 1


async def test_request_still_running_under_the_old_secret_is_409_not_422() -> None:
    """A retry while the pre-rotation request still holds its lease is in flight (409)."""
    shop, headers, backend = Shop(), key(), StoreBackend(MemoryStore())
    async with (
        client(shop, backend, SECRET_A) as before,
        client(shop, backend, SECRET_B, (SECRET_A,)) as after,
    ):
        running = asyncio.create_task(before.post("/slow", json={"a": 1}, headers=headers))
        await shop.entered.wait()
        retry = await after.post("/slow", json={"a": 1}, headers=headers)
        shop.gate.set()
        original = await running
    assert retry.status_code == 409
    assert retry.json()["code"] == "idempotency.in_flight"
    assert original.status_code == 201
    assert shop.runs == 1


@pytest.mark.parametrize(
    ("previous", "match"),
    [((SECRET_B,), "repeat"), ((b"",), "non-empty"), (("text",), "bytes")],
)
def test_previous_secrets_are_checked(previous: Any, match: str) -> None:
    """Repeating the current secret, an empty or a non-bytes previous secret refuses to build."""
    with pytest.raises(ValueError, match=match):
        IdempotencyMiddleware(
            Shop().app(),
            backend=StoreBackend(MemoryStore()),
            secret=SECRET_B,
            previous_secrets=previous,
        )


def test_fingerprints_are_the_fingerprint_under_each_secret_in_order() -> None:
    """`fingerprints` yields what `fingerprint` gives under each secret, current first."""
    parts = (b"POST", b"/orders", b"", b"raw", b'{"a":1}')
    assert list(fingerprints((SECRET_B, SECRET_A), *parts)) == [
        fingerprint(SECRET_B, *parts),
        fingerprint(SECRET_A, *parts),
    ]
