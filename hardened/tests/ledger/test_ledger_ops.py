"""hardened.ledger operations on real SQLite and PostgreSQL: effects, replays, refusals, expiry."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from hardened.db import constraint_name
from hardened.errors import ValidationFailed
from hardened.ledger import (
    MAX_AMOUNT,
    AccountNotFound,
    InsufficientCredits,
    KeyReused,
    Ledger,
    OperationKind,
    OperationNotFound,
    RefundExceedsCapture,
    ReservationExpired,
    ReservationNotFound,
    ReservationNotHeld,
    ReservationStatus,
    ledger_tables,
)

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Books

pytestmark = pytest.mark.anyio


async def _wallet(books: Books, owner: str = "shop-1", funds: int = 100) -> uuid.UUID:
    async with books.sessions() as s, s.begin():
        wallet = await books.ledger.open_account(s, owner)
        if funds:
            await books.ledger.top_up(s, wallet, funds, f"seed-{owner}")
    return wallet


async def _count(books: Books, kind: str | None = None) -> int:
    o = books.tables.operations
    stmt = select(func.count()).select_from(o)
    if kind is not None:
        stmt = stmt.where(o.c.kind == kind)
    async with books.sessions() as s:
        return int((await s.execute(stmt)).scalar_one())


async def _healthy(books: Books) -> list[str]:
    async with books.sessions() as s:
        return await books.ledger.check_invariants(s)


async def test_top_up_and_debit_post_balanced_entries(books: Books) -> None:
    """A top-up and a debit on a caller's AsyncConnection move the balance and balance the books."""
    ledger = books.ledger
    async with books.engine.begin() as conn:
        wallet = await ledger.open_account(conn, "shop-1")
        top = await ledger.top_up(conn, wallet, 100, "buy-1")
        spent = await ledger.debit(conn, wallet, 30, "sms-1")
        balance = await ledger.balance(conn, wallet)
    assert (top.kind, top.amount, top.replayed) == (OperationKind.TOP_UP, 100, False)
    assert (spent.kind, spent.amount) == (OperationKind.DEBIT, 30)
    assert (balance.balance, balance.reserved, balance.available) == (70, 0, 70)
    e = books.tables.entries
    async with books.sessions() as s:
        legs = (await s.execute(select(e.c.amount).where(e.c.operation_id == spent.id))).scalars()
        assert sorted(legs) == [-30, 30]
    assert await _healthy(books) == []


async def test_open_account_is_get_or_create_per_owner_and_unit(books: Books) -> None:
    """Opening a wallet twice returns the same one; another unit or owner gets its own."""
    async with books.sessions() as s, s.begin():
        first = await books.ledger.open_account(s, "shop-1")
        again = await books.ledger.open_account(s, "shop-1")
        sms = await books.ledger.open_account(s, "shop-1", unit="sms")
        other = await books.ledger.open_account(s, "shop-2")
    assert first == again
    assert len({first, sms, other}) == 3


async def test_replay_with_same_key_returns_original_without_second_effect(books: Books) -> None:
    """A repeat with the same key and arguments returns the first result and writes nothing."""
    wallet = await _wallet(books)
    first = await books.ledger.run(books.sessions, books.ledger.debit, wallet, 10, "sms-1")
    again = await books.ledger.run(books.sessions, books.ledger.debit, wallet, 10, "sms-1")
    assert again.id == first.id
    assert (first.replayed, again.replayed) == (False, True)
    async with books.sessions() as s:
        assert (await books.ledger.balance(s, wallet)).balance == 90
    assert await _count(books, OperationKind.DEBIT) == 1


async def test_key_reused_with_other_arguments_is_422(books: Books) -> None:
    """The same key with another amount or another kind raises KeyReused (422 ledger.key_reused)."""
    wallet = await _wallet(books)
    await books.ledger.run(books.sessions, books.ledger.debit, wallet, 10, "sms-1")
    with pytest.raises(KeyReused) as other_amount:
        await books.ledger.run(books.sessions, books.ledger.debit, wallet, 11, "sms-1")
    with pytest.raises(KeyReused):
        await books.ledger.run(books.sessions, books.ledger.top_up, wallet, 10, "sms-1")
    assert isinstance(other_amount.value, ValidationFailed)
    assert (other_amount.value.status, other_amount.value.code) == (422, "ledger.key_reused")
    assert await _count(books, OperationKind.DEBIT) == 1


async def test_insufficient_credits_writes_nothing_and_keeps_the_transaction(books: Books) -> None:
    """A debit beyond the balance is a 409 with no writes, and the caller's transaction goes on."""
    wallet = await _wallet(books, funds=10)
    before = await _count(books)
    async with books.sessions() as s, s.begin():
        with pytest.raises(InsufficientCredits) as refused:
            await books.ledger.debit(s, wallet, 11, "sms-1")
        await books.ledger.debit(s, wallet, 4, "sms-2")
    assert (refused.value.status, refused.value.code) == (409, "ledger.insufficient_credits")
    assert await _count(books) == before + 1
    async with books.sessions() as s:
        assert (await books.ledger.balance(s, wallet)).balance == 6
    assert await _healthy(books) == []


async def test_ledger_effect_commits_or_rolls_back_with_the_callers_writes(books: Books) -> None:
    """A debit and the caller's message-log row commit together or not at all (seed 003)."""
    log = Table(
        f"{books.tables.accounts.name}_log",
        books.metadata,
        Column("id", Integer, primary_key=True),
        Column("text", String(50)),
    )
    async with books.engine.begin() as conn:
        await conn.run_sync(log.create)
    wallet = await _wallet(books, funds=10)
    with pytest.raises(RuntimeError, match="provider down"):
        await _debit_log_and_fail(books, log, wallet)
    async with books.sessions() as s, s.begin():
        await books.ledger.debit(s, wallet, 1, "sms-1")
        await s.execute(log.insert().values(text="hello"))
    async with books.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(log))).scalar_one() == 1
        assert (await books.ledger.balance(s, wallet)).balance == 9
    assert await _count(books, OperationKind.DEBIT) == 1


async def _debit_log_and_fail(books: Books, log: Table, wallet: uuid.UUID) -> None:
    async with books.sessions() as s, s.begin():
        await books.ledger.debit(s, wallet, 1, "sms-1")
        await s.execute(log.insert().values(text="hello"))
        raise RuntimeError("provider down")


async def test_reserve_replay_returns_the_same_reservation(books: Books) -> None:
    """A repeated reserve with its key returns the same reservation id and holds once."""
    wallet = await _wallet(books)
    ledger = books.ledger
    first = await ledger.run(books.sessions, ledger.reserve, wallet, 40, "campaign-1")
    again = await ledger.run(books.sessions, ledger.reserve, wallet, 40, "campaign-1")
    assert again.id == first.id
    assert (first.replayed, again.replayed) == (False, True)
    assert first.expires_at - books.ledger.now() == timedelta(hours=24)
    async with books.sessions() as s:
        balance = await ledger.balance(s, wallet)
    assert (balance.balance, balance.reserved, balance.available) == (100, 40, 60)
    assert await _healthy(books) == []


async def test_partial_capture_spends_part_and_releases_the_rest(books: Books) -> None:
    """Capturing 25 of a 40 hold spends 25, frees 15, and closes the reservation."""
    wallet = await _wallet(books)
    ledger, run = books.ledger, books.ledger.run
    held = await run(books.sessions, ledger.reserve, wallet, 40, "campaign-1")
    captured = await run(books.sessions, ledger.capture, held.id, "send-1", amount=25)
    replay = await run(books.sessions, ledger.capture, held.id, "send-1", amount=25)
    async with books.sessions() as s:
        balance = await ledger.balance(s, wallet)
        closed = await ledger.reservation(s, held.id)
    assert (captured.amount, replay.id, replay.replayed) == (25, captured.id, True)
    assert (balance.balance, balance.reserved, balance.available) == (75, 0, 75)
    assert (closed.status, closed.captured) == (ReservationStatus.CAPTURED, 25)
    with pytest.raises(ReservationNotHeld):
        await run(books.sessions, ledger.capture, held.id, "send-2")
    with pytest.raises(ReservationNotHeld):
        await run(books.sessions, ledger.release, held.id, "undo-1")
    assert await _healthy(books) == []


async def test_capture_beyond_the_hold_is_refused(books: Books) -> None:
    """A capture larger than its reservation is a 422 and leaves the hold intact."""
    wallet = await _wallet(books)
    held = await books.ledger.run(books.sessions, books.ledger.reserve, wallet, 40, "c-1")
    with pytest.raises(ValidationFailed) as refused:
        await books.ledger.run(books.sessions, books.ledger.capture, held.id, "s-1", amount=41)
    assert refused.value.code == "ledger.capture_exceeds_reservation"
    async with books.sessions() as s:
        assert (await books.ledger.reservation(s, held.id)).status == ReservationStatus.HELD


async def test_release_gives_the_hold_back(books: Books) -> None:
    """Releasing a reservation restores the available credits and posts nothing."""
    wallet = await _wallet(books)
    ledger = books.ledger
    held = await ledger.run(books.sessions, ledger.reserve, wallet, 40, "c-1")
    released = await ledger.run(books.sessions, ledger.release, held.id, "r-1")
    async with books.sessions() as s:
        balance = await ledger.balance(s, wallet)
        closed = await ledger.reservation(s, held.id)
    assert (released.kind, released.amount) == (OperationKind.RELEASE, 40)
    assert (balance.balance, balance.available) == (100, 100)
    assert closed.status == ReservationStatus.RELEASED
    assert await _healthy(books) == []


async def test_holds_count_against_available_credits(books: Books) -> None:
    """A reserve or debit beyond what other holds leave available is InsufficientCredits."""
    wallet = await _wallet(books)
    ledger = books.ledger
    await ledger.run(books.sessions, ledger.reserve, wallet, 80, "c-1")
    with pytest.raises(InsufficientCredits):
        await ledger.run(books.sessions, ledger.reserve, wallet, 30, "c-2")
    with pytest.raises(InsufficientCredits):
        await ledger.run(books.sessions, ledger.debit, wallet, 21, "d-1")
    await ledger.run(books.sessions, ledger.debit, wallet, 20, "d-2")
    assert await _healthy(books) == []


async def test_refunds_are_bounded_by_what_the_operation_spent(books: Books) -> None:
    """Refunds of a debit or capture total at most its amount; nothing else can be refunded."""
    wallet = await _wallet(books)
    other = await _wallet(books, owner="shop-2")
    ledger, run = books.ledger, books.ledger.run
    spent = await run(books.sessions, ledger.debit, wallet, 30, "d-1")
    held = await run(books.sessions, ledger.reserve, wallet, 10, "c-1")
    captured = await run(books.sessions, ledger.capture, held.id, "s-1")
    await run(books.sessions, ledger.refund, wallet, 20, "rf-1", of_operation=spent.id)
    with pytest.raises(RefundExceedsCapture) as exceeded:
        await run(books.sessions, ledger.refund, wallet, 11, "rf-2", of_operation=spent.id)
    await run(books.sessions, ledger.refund, wallet, 10, "rf-3", of_operation=spent.id)
    await run(books.sessions, ledger.refund, wallet, 10, "rf-4", of_operation=captured.id)
    replay = await run(books.sessions, ledger.refund, wallet, 10, "rf-4", of_operation=captured.id)
    seed = await _seed_operation(books, wallet)
    with pytest.raises(OperationNotFound):
        await run(books.sessions, ledger.refund, wallet, 1, "rf-5", of_operation=seed)
    with pytest.raises(OperationNotFound):
        await run(books.sessions, ledger.refund, other, 1, "rf-6", of_operation=spent.id)
    assert (exceeded.value.status, exceeded.value.code) == (409, "ledger.refund_exceeds_capture")
    assert replay.replayed
    async with books.sessions() as s:
        assert (await ledger.balance(s, wallet)).balance == 100
    assert await _healthy(books) == []


async def _seed_operation(books: Books, wallet: uuid.UUID) -> uuid.UUID:
    o = books.tables.operations
    stmt = select(o.c.id).where(o.c.account_id == wallet, o.c.kind == OperationKind.TOP_UP)
    async with books.sessions() as s:
        found: uuid.UUID = (await s.execute(stmt)).scalar_one()
    return found


async def test_release_expired_frees_only_due_holds_once(books: Books) -> None:
    """The expiry job releases holds past their expiry at the given now, each exactly once."""
    wallet = await _wallet(books)
    ledger = books.ledger
    short = await ledger.run(books.sessions, ledger.reserve, wallet, 10, "c-1", ttl=60)
    medium = await ledger.run(books.sessions, ledger.reserve, wallet, 20, "c-2", ttl=120)
    long = await ledger.run(books.sessions, ledger.reserve, wallet, 30, "c-3")
    start = ledger.now()
    assert await ledger.run(books.sessions, ledger.release_expired, now=start) == 0
    at_100 = start + timedelta(seconds=100)
    assert await ledger.run(books.sessions, ledger.release_expired, now=at_100) == 1
    assert await ledger.run(books.sessions, ledger.release_expired, now=at_100) == 0
    at_day = start + timedelta(hours=24)
    assert await ledger.run(books.sessions, ledger.release_expired, now=at_day, limit=1) == 1
    assert await ledger.run(books.sessions, ledger.release_expired, now=at_day) == 1
    async with books.sessions() as s:
        statuses = [(await ledger.reservation(s, r.id)).status for r in (short, medium, long)]
        balance = await ledger.balance(s, wallet)
    assert statuses == [ReservationStatus.EXPIRED] * 3
    assert (balance.balance, balance.reserved) == (100, 0)
    assert await _count(books, OperationKind.EXPIRE) == 3
    assert await _healthy(books) == []


async def test_expired_hold_cannot_be_captured_but_can_be_released(books: Books) -> None:
    """Past its expiry a hold refuses capture (409 reservation_expired) and accepts release."""
    wallet = await _wallet(books)
    ledger = books.ledger
    held = await ledger.run(books.sessions, ledger.reserve, wallet, 10, "c-1", ttl=60)
    books.clock.now += 61
    with pytest.raises(ReservationExpired) as expired:
        await ledger.run(books.sessions, ledger.capture, held.id, "s-1")
    released = await ledger.run(books.sessions, ledger.release, held.id, "r-1")
    assert (expired.value.status, expired.value.code) == (409, "ledger.reservation_expired")
    assert released.amount == 10
    assert await _healthy(books) == []


async def test_expired_holds_do_not_block_spending_before_the_job_runs(books: Books) -> None:
    """A debit that needs credits held by an expired reservation frees it and succeeds."""
    wallet = await _wallet(books)
    ledger = books.ledger
    held = await ledger.run(books.sessions, ledger.reserve, wallet, 100, "c-1", ttl=60)
    with pytest.raises(InsufficientCredits):
        await ledger.run(books.sessions, ledger.debit, wallet, 50, "d-1")
    books.clock.now += 60
    await ledger.run(books.sessions, ledger.debit, wallet, 50, "d-1")
    async with books.sessions() as s:
        assert (await ledger.reservation(s, held.id)).status == ReservationStatus.EXPIRED
        assert (await ledger.balance(s, wallet)).available == 50
    assert await _healthy(books) == []


async def test_check_invariants_reports_tampered_books(books: Books) -> None:
    """A balance edited behind the journal's back and a doubled journal entry are both reported."""
    wallet = await _wallet(books)
    spent = await books.ledger.run(books.sessions, books.ledger.debit, wallet, 5, "d-1")
    a, e = books.tables.accounts, books.tables.entries
    async with books.sessions() as s, s.begin():
        await s.execute(update(a).where(a.c.id == wallet).values(balance=a.c.balance + 5))
        legs = (await s.execute(select(e).where(e.c.operation_id == spent.id))).all()
        await s.execute(
            e.insert().values(
                [
                    {
                        "operation_id": leg.operation_id,
                        "account_id": leg.account_id,
                        "amount": leg.amount,
                        "created_at": leg.created_at,
                    }
                    for leg in legs
                ]
            )
        )
    found = await _healthy(books)
    assert any(f"account {wallet} (wallet): balance" in v for v in found), found
    assert any(f"operation {spent.id} (debit) of 5: journal moved 10" in v for v in found), found


async def test_check_constraint_violation_is_a_409_not_a_500(books: Books) -> None:
    """When only the database CHECK stops a negative balance, the caller gets a 409, not a 500."""
    wallet = await _wallet(books)
    spent = await books.ledger.run(books.sessions, books.ledger.debit, wallet, 5, "d-1")
    a = books.tables.accounts
    async with books.sessions() as s, s.begin():
        await s.execute(update(a).where(a.c.kind == "revenue").values(balance=0))
    with pytest.raises(InsufficientCredits) as refused:
        await books.ledger.run(
            books.sessions, books.ledger.refund, wallet, 5, "rf-1", of_operation=spent.id
        )
    assert refused.value.context["constraint"] in books.tables.funds_checks
    with pytest.raises(IntegrityError) as raw:
        async with books.sessions() as s, s.begin():
            await s.execute(update(a).where(a.c.id == wallet).values(balance=-1))
    assert constraint_name(raw.value) in books.tables.funds_checks


async def test_unknown_account_reservation_and_operation_are_404s(books: Books) -> None:
    """Operations on ids that do not exist raise the ledger's NotFound errors."""
    ledger, missing = books.ledger, uuid.uuid4()
    with pytest.raises(AccountNotFound):
        await ledger.run(books.sessions, ledger.debit, missing, 1, "d-1")
    with pytest.raises(AccountNotFound):
        await ledger.run(books.sessions, ledger.balance, missing)
    with pytest.raises(ReservationNotFound):
        await ledger.run(books.sessions, ledger.capture, missing, "s-1")
    wallet = await _wallet(books)
    with pytest.raises(OperationNotFound):
        await ledger.run(books.sessions, ledger.refund, wallet, 1, "rf-1", of_operation=missing)


async def test_reservations_of_another_wallet_are_404s_when_scoped(books: Books) -> None:
    """With account= a capture, release or read of another wallet's reservation is NotFound."""
    mine, theirs = await _wallet(books), await _wallet(books, owner="shop-2")
    ledger, run = books.ledger, books.ledger.run
    held = await run(books.sessions, ledger.reserve, theirs, 10, "c-1")
    with pytest.raises(ReservationNotFound):
        await run(books.sessions, ledger.capture, held.id, "s-1", account=mine)
    with pytest.raises(ReservationNotFound):
        await run(books.sessions, ledger.release, held.id, "r-1", account=mine)
    with pytest.raises(ReservationNotFound):
        await run(books.sessions, ledger.reservation, held.id, account=mine)
    captured = await run(books.sessions, ledger.capture, held.id, "s-1", account=theirs)
    assert captured.account_id == theirs


@pytest.mark.parametrize("amount", [0, -1, True, MAX_AMOUNT + 1, 1.5])
async def test_amounts_must_be_positive_whole_numbers(books: Books, amount: object) -> None:
    """Zero, negative, boolean, fractional or oversized amounts are 422 ledger.invalid_amount."""
    wallet = await _wallet(books, funds=0)
    with pytest.raises(ValidationFailed) as refused:
        await books.ledger.run(books.sessions, books.ledger.top_up, wallet, amount, "t-1")  # type: ignore[arg-type]
    assert refused.value.code == "ledger.invalid_amount"


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_keys_must_be_1_to_255_characters(books: Books, key: str) -> None:
    """An empty or over-long idempotency key is 422 ledger.invalid_key."""
    wallet = await _wallet(books, funds=0)
    with pytest.raises(ValidationFailed) as refused:
        await books.ledger.run(books.sessions, books.ledger.top_up, wallet, 1, key)
    assert refused.value.code == "ledger.invalid_key"


async def test_sqlite_without_immediate_transactions_is_refused(tmp_path: Path) -> None:
    """On SQLite the ledger refuses an engine whose transactions do not take the write lock."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    metadata = MetaData()
    ledger = Ledger(ledger_tables(metadata))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        sessions = async_sessionmaker(engine)
        async with sessions() as s, s.begin():
            wallet = await ledger.open_account(s, "shop-1")
        with pytest.raises(RuntimeError, match="sqlite_immediate_transactions"):
            await ledger.run(sessions, ledger.top_up, wallet, 1, "t-1")
    finally:
        await engine.dispose()


def test_tables_keep_their_constraint_names_under_a_naming_convention() -> None:
    """A service's naming convention and prefix do not rename the constraints the ledger maps."""
    metadata = MetaData(naming_convention={"ck": "ck_%(table_name)s_%(constraint_name)s"})
    tables = ledger_tables(metadata, prefix="credits_", schema="billing")
    names = {str(c.name) for c in tables.accounts.constraints}
    assert tables.funds_checks <= names
    assert tables.accounts.fullname == "billing.credits_accounts"
    assert set(metadata.tables) == {
        "billing.credits_accounts",
        "billing.credits_operations",
        "billing.credits_entries",
        "billing.credits_reservations",
    }
