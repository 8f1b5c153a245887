"""Coupon redemptions on one hot row: the helper against raw SQL, and the oversell it prevents.

Run: ``uv run python bench/integrity.py``. Prints one JSON line.

* Throughput: redemptions/s through `hardened.db.integrity.conditional_increment`
  (an AsyncSession and a transaction per redemption) against the floor, the same
  conditional ``UPDATE … RETURNING`` as ``text()`` on an engine connection, on
  the same engine and concurrency; and, to show where the difference goes, that
  ``text()`` through an AsyncSession too (``session_raw``). In each of the 3
  rounds the variants alternate in slices of 250; the median round is kept.
* Oversell: a naive read-modify-write redemption (SELECT used; if used < limit:
  UPDATE used = :used + 1) at READ COMMITTED, against the helper, with a limit
  of 50 and 500 concurrent attempts; oversold = successes - limit.

A fresh database ``bench_integrity_<random>`` is created on the server of
``DATABASE_URL`` and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hardened.db.integrity import conditional_increment

CONCURRENCY = 16
ROUNDS = 3
PER_ROUND = 3000
SLICE = 250
HOT = 1
LIMIT = 50
ATTEMPTS = 500
RAW_SQL = text(
    "UPDATE coupons SET used = used + :amount "
    "WHERE id = :id AND used + :amount <= usage_limit RETURNING used"
)


class Base(DeclarativeBase):
    pass


class Coupon(Base):
    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(primary_key=True)
    used: Mapped[int] = mapped_column(default=0)
    usage_limit: Mapped[int]


async def _storm(n: int, redeem: object) -> float:
    """Run ``n`` redemptions over CONCURRENCY workers; return the seconds taken."""
    remaining = n

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await redeem()  # type: ignore[operator]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - start


async def _throughput(engine: AsyncEngine) -> dict[str, list[float]]:
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def helper() -> None:
        async with sessions.begin() as s:
            value = await conditional_increment(
                s, Coupon.used, where=[Coupon.id == HOT], ceiling=Coupon.usage_limit
            )
        if value is None:
            raise RuntimeError

    async def raw() -> None:
        async with engine.begin() as conn:
            value = (await conn.execute(RAW_SQL, {"amount": 1, "id": HOT})).scalar_one_or_none()
        if value is None:
            raise RuntimeError

    async def session_raw() -> None:  # the same text() through an AsyncSession
        async with sessions.begin() as s:
            value = (await s.execute(RAW_SQL, {"amount": 1, "id": HOT})).scalar_one_or_none()
        if value is None:
            raise RuntimeError

    variants = {"helper": helper, "raw": raw, "session_raw": session_raw}
    for redeem in variants.values():  # warm-up: pool, statement caches, server plans
        await _storm(500, redeem)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        # Within a round the variants take turns in short slices, so a burst
        # of load from elsewhere on the machine hits all of them alike.
        elapsed = dict.fromkeys(variants, 0.0)
        for _ in range(PER_ROUND // SLICE):
            for name, redeem in variants.items():
                elapsed[name] += await _storm(SLICE, redeem)
        for name in variants:
            rates[name].append(PER_ROUND // SLICE * SLICE / elapsed[name])
    return rates


async def _oversell(engine: AsyncEngine, coupon_id: int, *, naive: bool) -> tuple[int, int]:
    """500 concurrent redemptions of a coupon limited to 50: (successes, final used)."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def naive_redeem() -> bool:
        async with sessions.begin() as s:
            used, limit = (
                await s.execute(
                    select(Coupon.used, Coupon.usage_limit).where(Coupon.id == coupon_id)
                )
            ).one()
            await asyncio.sleep(0)  # any await between read and write: a log line, an API call
            if used >= limit:
                return False
            await s.execute(update(Coupon).where(Coupon.id == coupon_id).values(used=used + 1))
            return True

    async def helper_redeem() -> bool:
        async with sessions.begin() as s:
            value = await conditional_increment(
                s, Coupon.used, where=[Coupon.id == coupon_id], ceiling=Coupon.usage_limit
            )
            return value is not None

    redeem = naive_redeem if naive else helper_redeem
    results = await asyncio.gather(*(redeem() for _ in range(ATTEMPTS)))
    async with sessions() as s:
        final = await s.scalar(select(Coupon.used).where(Coupon.id == coupon_id))
    return sum(results), int(final or 0)


async def _run(url: str) -> dict[str, object]:
    engine = create_async_engine(
        url, pool_size=CONCURRENCY, max_overflow=0, isolation_level="READ COMMITTED"
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with async_sessionmaker(engine).begin() as s:
            s.add_all(
                [
                    Coupon(id=HOT, usage_limit=10**9),
                    Coupon(id=2, usage_limit=LIMIT),
                    Coupon(id=3, usage_limit=LIMIT),
                ]
            )
        rates = await _throughput(engine)
        naive_ok, naive_used = await _oversell(engine, 2, naive=True)
        helper_ok, helper_used = await _oversell(engine, 3, naive=False)
        async with engine.connect() as conn:
            server = (await conn.execute(text("SHOW server_version"))).scalar_one()
    finally:
        await engine.dispose()
    helper_per_s = statistics.median(rates["helper"])
    raw_per_s = statistics.median(rates["raw"])
    session_raw_per_s = statistics.median(rates["session_raw"])
    return {
        "bench": "integrity.coupon_hot_row",
        "helper_per_s": round(helper_per_s, 1),
        "raw_per_s": round(raw_per_s, 1),
        "ratio": round(helper_per_s / raw_per_s, 3),
        "session_raw_per_s": round(session_raw_per_s, 1),
        "ratio_vs_session_raw": round(helper_per_s / session_raw_per_s, 3),
        "naive_oversold": naive_ok - LIMIT,
        "helper_oversold": helper_ok - LIMIT,
        "naive_successes": naive_ok,
        "naive_final_used": naive_used,
        "helper_successes": helper_ok,
        "helper_final_used": helper_used,
        "limit": LIMIT,
        "attempts": ATTEMPTS,
        "rounds": ROUNDS,
        "redemptions_per_round": PER_ROUND,
        "slice": SLICE,
        "concurrency": CONCURRENCY,
        **{f"{name}_rounds_per_s": [round(r, 1) for r in v] for name, v in rates.items()},
        "postgres": server,
    }


def main() -> None:
    base = urlsplit(
        os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/hardened_test")
    )
    name = f"bench_integrity_{uuid.uuid4().hex[:10]}"
    admin = urlunsplit(base._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = urlunsplit(base._replace(scheme="postgresql+psycopg", path=f"/{name}"))
        result = asyncio.run(_run(url))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
