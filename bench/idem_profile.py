"""Where the idempotency middleware's own time goes, in process, without a network.

Run: ``uv run python bench/idem_profile.py`` (about a minute; ``--profile`` adds a
cProfile of the guarded app, its idempotency frames listed per request). Prints
one JSON line last.

The apps of ``bench/idem_apps.py`` on `MemoryStore` (no Redis round trip, so the
store is a few microseconds and the middleware's Python is most of what is left)
are driven by raw ASGI calls, one request after another on one loop: a fresh
scope (the headers a client sends: host, content-type, content-length and a new
Idempotency-Key), a ``receive`` answering the body once, a ``send`` that keeps
nothing. ``bare`` is the route alone; ``floor`` makes the middleware's claim and
complete in the handler; ``hardened`` is `IdempotencyMiddleware` over the same
backend. ``middleware_us = hardened_us - floor_us`` is the middleware's own
work per first request; ``replay_us`` is a repeated key on the guarded app. The
passes alternate over ``ROUNDS`` and each app reports its fastest pass (the one
least disturbed by other processes).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import pstats
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.idem_apps import floor, guarded, make_bare, store_app  # noqa: E402
from bench.idempotency import BODY  # noqa: E402

REQUESTS = 4000
ROUNDS = 5
BODY_BYTES = BODY.encode()


def _scope(key: str | None) -> dict[str, Any]:
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY_BYTES)).encode()),
    ]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _drive(app: Any, keys: list[str | None]) -> float:
    """Seconds per request over ``keys`` (each a request; None sends no key)."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter()
    for key in keys:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": BODY_BYTES, "more_body": False}
            await asyncio.Event().wait()  # never: the app does not wait for a disconnect
            raise AssertionError

        await app(_scope(key), receive, send)
    elapsed = time.perf_counter() - started
    if any(status != 200 for status in statuses):
        raise SystemExit(f"non-200 statuses: {sorted(set(statuses))}")
    return elapsed / len(keys)


def _apps() -> dict[str, Any]:
    from hardened.stores import MemoryStore

    return {
        "bare": make_bare(),
        "floor": store_app(MemoryStore(), floor),
        "hardened": store_app(MemoryStore(), guarded),
    }


async def measure() -> dict[str, Any]:
    apps = _apps()
    best: dict[str, float] = {}
    replay_key = f"replay-{uuid.uuid4().hex}"
    await _drive(apps["hardened"], [replay_key])
    for app in apps.values():  # warm: routes built, code paths hot
        await _drive(app, [uuid.uuid4().hex for _ in range(200)])
    for rnd in range(ROUNDS):
        for name in (*apps, "replay"):
            app = apps["hardened" if name == "replay" else name]
            keys: list[str | None] = (
                [replay_key] * REQUESTS
                if name == "replay"
                else [f"k-{rnd}-{i}-{uuid.uuid4().hex[:8]}" for i in range(REQUESTS)]
            )
            gc.collect()
            seconds = await _drive(app, keys)
            best[name] = min(best.get(name, seconds), seconds)
    out: dict[str, Any] = {f"{name}_us": round(s * 1e6, 1) for name, s in best.items()}
    out["store_us"] = round((best["floor"] - best["bare"]) * 1e6, 1)
    out["middleware_us"] = round((best["hardened"] - best["floor"]) * 1e6, 1)
    return out


async def profile(n: int) -> list[dict[str, Any]]:
    """Profile ``n`` guarded first requests (cProfile): the hardened frames, per request."""
    app = _apps()["hardened"]
    await _drive(app, [uuid.uuid4().hex for _ in range(200)])
    keys: list[str | None] = [uuid.uuid4().hex for _ in range(n)]
    profiler = cProfile.Profile()
    profiler.enable()
    await _drive(app, keys)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if "/hardened/" not in path or "/bench/" in path:
            continue
        short = path[path.index("/hardened/") + 1 :]
        rows.append(
            {
                "where": f"{short}:{line}({func})",
                "calls_per_request": round(calls / n, 2),
                "self_us": round(tottime / n * 1e6, 2),
                "cum_us": round(cumtime / n * 1e6, 2),
            }
        )
    rows.sort(key=lambda r: r["cum_us"], reverse=True)
    return rows


def main() -> int:
    out = {"bench": "idem_profile", "requests": REQUESTS, "rounds": ROUNDS}
    out.update(asyncio.run(measure()))
    if "--profile" in sys.argv:
        for row in asyncio.run(profile(REQUESTS)):
            print(json.dumps(row), file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
