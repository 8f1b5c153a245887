"""hardened.ledger under concurrency: storms of duplicate and racing operations, then the books."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from hardened.errors import ValidationFailed
from hardened.ledger import (
    InsufficientCredits,
    KeyReused,
    OperationKind,
    RefundExceedsCapture,
    Reservation,
    ReservationNotHeld,
    ReservationStatus,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import Awaitable

    from conftest import Books
    from hardened.ledger import Operation

pytestmark = pytest.mark.anyio

AMOUNT = 7


async def _wallet(books: Books, owner: str, funds: int) -> uuid.UUID:
    async with books.sessions() as s, s.begin():
        wallet = await books.ledger.open_account(s, owner)
        await books.ledger.top_up(s, wallet, funds, f"seed-{owner}")
    return wallet


async def _watch_balance(books: Books, wallet: uuid.UUID, done: asyncio.Event) -> list[int]:
    """Every balance and available amount seen while the storm runs, read by short transactions."""
    seen: list[int] = []
    while not done.is_set():
        async with books.sessions() as s:
            balance = await books.ledger.balance(s, wallet)
        seen += [balance.balance, balance.available]
        await asyncio.sleep(0.002)
    return seen


async def test_debit_storm_never_overdraws_nor_debits_a_key_twice(books: Books) -> None:
    """1,000 concurrent debits (300 on SQLite), 30% duplicate keys, too few credits: exact books."""
    ledger, rng = books.ledger, random.Random(6)
    total = 1000 if books.backend == "postgres" else 300
    distinct = total * 7 // 10
    keys = [f"sms-{i}" for i in range(distinct)]
    calls = keys + [rng.choice(keys) for _ in range(total - distinct)]
    rng.shuffle(calls)
    affordable = distinct * 6 // 10  # some distinct debits must be refused
    start = AMOUNT * affordable + 3
    wallet = await _wallet(books, "storm", start)

    async def debit(key: str) -> tuple[str, Operation | None]:
        try:
            return key, await ledger.run(books.sessions, ledger.debit, wallet, AMOUNT, key)
        except InsufficientCredits:
            return key, None

    done = asyncio.Event()
    watcher = asyncio.create_task(_watch_balance(books, wallet, done))
    results = await asyncio.gather(*(debit(key) for key in calls))
    done.set()
    seen = await watcher

    outcomes: dict[str, list[Operation | None]] = defaultdict(list)
    for key, result in results:
        outcomes[key].append(result)
    succeeded = set()
    for key, got in outcomes.items():
        if got[0] is None:
            assert all(g is None for g in got), key  # refused once, refused always
            continue
        applied = [g for g in got if g is not None and not g.replayed]
        assert len(applied) == 1, key  # one effect, the rest replays of it
        assert {g.id for g in got if g is not None} == {applied[0].id}, key
        assert len(got) == len([g for g in got if g is not None]), key
        succeeded.add(key)
    assert len(succeeded) == affordable
    assert min(seen, default=0) >= 0

    o = books.tables.operations
    per_key = select(o.c.idempotency_key, func.count()).where(
        o.c.account_id == wallet, o.c.kind == OperationKind.DEBIT
    )
    async with books.sessions() as s:
        rows = (await s.execute(per_key.group_by(o.c.idempotency_key))).all()
        balance = await ledger.balance(s, wallet)
        violations = await ledger.check_invariants(s)
    assert dict(rows) == dict.fromkeys(succeeded, 1)
    assert (balance.balance, balance.reserved) == (start - AMOUNT * len(succeeded), 0)
    assert balance.balance == 3
    assert violations == []


async def test_duplicate_reserves_racing_on_one_key_hold_once(books: Books) -> None:
    """Fifty concurrent reserves with one key return one reservation and hold its amount once."""
    wallet = await _wallet(books, "race", 100)
    ledger = books.ledger
    got = await asyncio.gather(
        *(ledger.run(books.sessions, ledger.reserve, wallet, 40, "campaign-1") for _ in range(50))
    )
    assert {r.id for r in got} == {got[0].id}
    assert sum(not r.replayed for r in got) == 1
    async with books.sessions() as s:
        assert (await ledger.balance(s, wallet)).reserved == 40
        assert await ledger.check_invariants(s) == []


async def test_racing_capture_release_and_expiry_close_each_hold_once(books: Books) -> None:
    """Captures, releases and the expiry job racing on the same holds close each exactly once."""
    wallet = await _wallet(books, "race", 1000)
    ledger = books.ledger
    holds = [
        await ledger.run(books.sessions, ledger.reserve, wallet, 10, f"c-{i}", ttl=30 + i % 2)
        for i in range(20)
    ]
    due = ledger.now() + timedelta(seconds=30)  # the job sees half of them expired

    async def attempt(call: Awaitable[object]) -> object:
        try:
            return await call
        except (ReservationNotHeld, InsufficientCredits) as exc:
            return exc

    calls: list[Awaitable[object]] = []
    for i, hold in enumerate(holds):
        for _ in range(2):
            calls.append(ledger.run(books.sessions, ledger.capture, hold.id, f"s-{i}", amount=4))
            calls.append(ledger.run(books.sessions, ledger.release, hold.id, f"r-{i}"))
    random.Random(6).shuffle(calls)
    calls.append(ledger.run(books.sessions, ledger.release_expired, now=due))
    await asyncio.gather(*(attempt(c) for c in calls))

    async with books.sessions() as s:
        closed = [await ledger.reservation(s, h.id) for h in holds]
        balance = await ledger.balance(s, wallet)
        assert await ledger.check_invariants(s) == []
    assert all(r.status != ReservationStatus.HELD for r in closed)
    captured = sum(r.captured for r in closed)
    assert (balance.balance, balance.reserved) == (1000 - captured, 0)


_EXPECTED = (
    InsufficientCredits,
    KeyReused,
    RefundExceedsCapture,
    ReservationNotHeld,
    ValidationFailed,
)


class _MixedStorm:
    """Random operations on a few wallets, remembering what each applied."""

    def __init__(self, books: Books, wallets: list[uuid.UUID]) -> None:
        self.books, self.ledger, self.wallets = books, books.ledger, wallets
        self.holds: list[Reservation] = []
        self.spends: list[Operation] = []
        self.applied: list[Operation] = []
        self.refusals: Counter[str] = Counter()

    async def worker(self, seed: int, steps: int) -> None:
        rng = random.Random(seed)
        for _ in range(steps):
            try:
                self.note(await self.step(rng))
            except _EXPECTED as exc:
                self.refusals[type(exc).__name__] += 1

    async def step(self, rng: random.Random) -> Operation | Reservation | int:
        ledger, sessions = self.ledger, self.books.sessions
        wallet, key, choice = rng.choice(self.wallets), f"k-{rng.randrange(400)}", rng.random()
        call: Awaitable[Operation | Reservation | int]
        if choice < 0.15:
            call = ledger.run(sessions, ledger.top_up, wallet, rng.randint(1, 50), key)
        elif choice < 0.35:
            call = ledger.run(sessions, ledger.debit, wallet, rng.randint(1, 40), key)
        elif choice < 0.55:
            amount, ttl = rng.randint(1, 60), rng.choice([5.0, 3600.0])
            call = ledger.run(sessions, ledger.reserve, wallet, amount, key, ttl=ttl)
        elif choice < 0.7 and self.holds:
            hold = rng.choice(self.holds)
            part = rng.choice([None, max(1, hold.amount // 2)])
            call = ledger.run(sessions, ledger.capture, hold.id, key, amount=part)
        elif choice < 0.8 and self.holds:
            call = ledger.run(sessions, ledger.release, rng.choice(self.holds).id, key)
        elif choice < 0.9 and self.spends:
            spent, amount = rng.choice(self.spends), rng.randint(1, 20)
            call = ledger.run(
                sessions, ledger.refund, spent.account_id, amount, key, of_operation=spent.id
            )
        else:
            self.books.clock.now += rng.choice([0.0, 3.0])
            call = ledger.run(sessions, ledger.release_expired)
        return await call

    def note(self, result: Operation | Reservation | int) -> None:
        if isinstance(result, int) or result.replayed:
            return
        if isinstance(result, Reservation):
            self.holds.append(result)
            return
        self.applied.append(result)
        if result.kind in {OperationKind.CAPTURE, OperationKind.DEBIT}:
            self.spends.append(result)

    def expected_balances(self, start: int) -> Counter[uuid.UUID]:
        signs = {
            OperationKind.TOP_UP: 1,
            OperationKind.REFUND: 1,
            OperationKind.DEBIT: -1,
            OperationKind.CAPTURE: -1,
        }
        expected: Counter[uuid.UUID] = Counter(dict.fromkeys(self.wallets, start))
        for op in self.applied:
            expected[op.account_id] += signs.get(op.kind, 0) * op.amount
        return expected


async def test_mixed_storm_keeps_every_invariant(books: Books) -> None:
    """Ten workers mixing every operation, duplicate keys and the expiry job leave sound books."""
    storm = _MixedStorm(books, [await _wallet(books, f"shop-{i}", 500) for i in range(3)])
    await asyncio.gather(*(storm.worker(seed, 30) for seed in range(10)))
    expected = storm.expected_balances(500)
    async with books.sessions() as s:
        assert await books.ledger.check_invariants(s) == []
        for wallet in storm.wallets:
            assert (await books.ledger.balance(s, wallet)).balance == expected[wallet]
    assert len(storm.applied) > 50
    assert storm.refusals  # the storm did hit the refusals it is meant to survive
