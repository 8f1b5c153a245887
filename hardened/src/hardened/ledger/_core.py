"""`Ledger`: prepaid credits moved by idempotent operations inside the caller's transaction.

Why in the caller's transaction: seed 003 debited credits and wrote the
message log separately, so a crash between them charged for an unsent
message (or sent one for free). Every method takes the caller's
`AsyncSession` or `AsyncConnection` and only executes statements on it; the
caller commits its own writes and the ledger's together. `Ledger.run` is the
shortcut for a ledger-only transaction, retried on serialization failures.

Each operation follows one sequence: lock the wallet row (``FOR UPDATE``; on
SQLite the immediate transaction already holds the write lock), look up the
idempotency key (a repeat with the same arguments returns the first result,
``replayed=True``, and writes nothing; different arguments raise `KeyReused`),
check the state (funds, reservation status), then write: the operation row
first (``ON CONFLICT DO NOTHING`` on the key, so a duplicate that got past the
lock anyway leaves nothing behind), then journal entries and balances. A
refusal raised by a check writes nothing of the refused operation and leaves
the transaction usable (a wallet found short first releases its own holds
already past expiry, which is their due anyway); the CHECK constraints are
the last line and map to the same errors (after which the transaction must
be rolled back, as after any database error). Refusals are not recorded
under the key: a retry after a top-up can succeed.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from sqlalchemy import select, update

from hardened.db.transaction import run_transaction
from hardened.errors import ValidationFailed
from hardened.ledger import _audit
from hardened.ledger._errors import (
    AccountNotFound,
    InsufficientCredits,
    OperationNotFound,
    RefundExceedsCapture,
    ReservationExpired,
    ReservationNotHeld,
)
from hardened.ledger._holds import (
    close_reservation,
    expire_holds,
    release_expired,
    reservation_row,
)
from hardened.ledger._schema import AccountKind, OperationKind, ReservationStatus
from hardened.ledger._sql import (
    AnyRow,
    Intent,
    Wallet,
    check_amount,
    find_prior,
    insert_ignoring_conflicts,
    map_constraint_errors,
    post,
    record_operation,
    require_wallet,
    to_operation,
    to_reservation,
)
from hardened.ledger._types import Balance, Operation, Reservation
from hardened.observability.metrics import counter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy.ext.asyncio import AsyncSession

    from hardened.ledger._schema import LedgerTables
    from hardened.ledger._types import Executor

__all__ = ["DEFAULT_RESERVATION_TTL", "Ledger"]

P = ParamSpec("P")
T = TypeVar("T")

#: Seed 003's reservations lasted 24 h: long enough for a campaign, not forever.
DEFAULT_RESERVATION_TTL = 24 * 3600.0
_MAX_TTL = 366 * 86400.0
_SWEEP_LIMIT = 1000
_FUNDING, _REVENUE = AccountKind.FUNDING, AccountKind.REVENUE

_OPERATIONS = counter(
    "ledger_operations_total",
    "Ledger operations by kind and outcome (applied, replayed, refused).",
    ["kind", "outcome"],
)


class Ledger:
    """Prepaid credits over the tables of `ledger_tables`.

    ``clock`` returns the time in epoch seconds (``time.time`` by default; a
    `hardened.testing.ManualClock` in tests). ``retries`` and
    ``statement_timeout`` apply to `run`'s own transactions.
    """

    def __init__(
        self,
        tables: LedgerTables,
        *,
        clock: Callable[[], float] | None = None,
        retries: int = 5,
        statement_timeout: float | None = None,
    ) -> None:
        self.tables = tables
        self._clock = clock or time.time
        self._retries = retries
        self._statement_timeout = statement_timeout

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def run(
        self,
        sessions: Callable[[], AsyncSession],
        op: Callable[Concatenate[AsyncSession, P], Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run one operation in its own transaction.

        ``await ledger.run(sessionmaker, ledger.debit, wallet, 5, "order-1")``
        goes through `hardened.db.run_transaction`: serialization failures,
        deadlocks and SQLite's "locked" are retried with backoff (safe: a retry
        of an applied key is a replay). On SQLite the engine needs
        `sqlite_immediate_transactions`.
        """

        async def body(session: AsyncSession) -> T:
            return await op(session, *args, **kwargs)

        return await run_transaction(
            sessions, body, retries=self._retries, statement_timeout=self._statement_timeout
        )

    # --- accounts -------------------------------------------------------------------

    async def open_account(self, conn: Executor, owner: str, *, unit: str = "credits") -> uuid.UUID:
        """The wallet of ``owner`` in ``unit``, created (with its book) on first use."""
        if not 0 < len(owner) <= 255 or not 0 < len(unit) <= 32:
            raise ValidationFailed(
                "owner must be 1-255 and unit 1-32 characters.", code="ledger.invalid_account"
            )
        a = self.tables.accounts
        now = self.now()
        rows = [
            {"id": uuid.uuid4(), "owner": owner, "unit": unit, "kind": kind, "created_at": now}
            for kind in (AccountKind.WALLET, AccountKind.FUNDING, AccountKind.REVENUE)
        ]
        stmt = insert_ignoring_conflicts(conn, a, ["owner", "unit", "kind"])
        await conn.execute(stmt.values(rows))
        found = select(a.c.id).where(
            a.c.owner == owner, a.c.unit == unit, a.c.kind == AccountKind.WALLET
        )
        account: uuid.UUID = (await conn.execute(found)).scalar_one()
        return account

    async def balance(self, conn: Executor, account: uuid.UUID) -> Balance:
        """The wallet's posted, reserved and available credits (a plain read, no lock)."""
        a = self.tables.accounts
        stmt = select(a.c.balance, a.c.reserved).where(
            a.c.id == account, a.c.kind == AccountKind.WALLET
        )
        row = (await conn.execute(stmt)).one_or_none()
        if row is None:
            raise AccountNotFound("The account does not exist.", context={"account": str(account)})
        return Balance(
            balance=row.balance, reserved=row.reserved, available=row.balance - row.reserved
        )

    async def reservation(
        self, conn: Executor, reservation_id: uuid.UUID, *, account: uuid.UUID | None = None
    ) -> Reservation:
        """The reservation's current state; `ReservationNotFound` if not ``account``'s."""
        return to_reservation(await reservation_row(conn, self.tables, reservation_id, account))

    # --- operations -----------------------------------------------------------------

    async def top_up(self, conn: Executor, account: uuid.UUID, amount: int, key: str) -> Operation:
        """Add purchased credits (from the book's funding account)."""
        intent = Intent.of(OperationKind.TOP_UP, key, check_amount(amount))
        wallet = await require_wallet(conn, self.tables, account)
        prior = await self._prior(conn, account, intent)
        if prior is not None:
            return prior
        now = self.now()
        row = await self._record(conn, account, intent, amount=amount, now=now)
        if isinstance(row, Operation):
            return row
        await post(conn, self.tables, wallet, row.id, now=now, delta=amount, counter=_FUNDING)
        return self._applied(row)

    async def debit(self, conn: Executor, account: uuid.UUID, amount: int, key: str) -> Operation:
        """Spend credits at once (a reserve and a full capture in one operation)."""
        intent = Intent.of(OperationKind.DEBIT, key, check_amount(amount))
        wallet = await require_wallet(conn, self.tables, account)
        prior = await self._prior(conn, account, intent)
        if prior is not None:
            return prior
        now = self.now()
        await self._ensure_available(conn, wallet, amount, intent.kind, now)
        row = await self._record(conn, account, intent, amount=amount, now=now)
        if isinstance(row, Operation):
            return row
        await post(conn, self.tables, wallet, row.id, now=now, delta=-amount, counter=_REVENUE)
        return self._applied(row)

    async def reserve(
        self,
        conn: Executor,
        account: uuid.UUID,
        amount: int,
        key: str,
        *,
        ttl: float = DEFAULT_RESERVATION_TTL,
    ) -> Reservation:
        """Hold credits until captured, released or ``ttl`` seconds pass.

        A replay returns the same reservation, in its current state.
        """
        if not 0 < ttl <= _MAX_TTL:
            raise ValidationFailed("ttl must be between 0 and 366 days.", code="ledger.invalid_ttl")
        intent = Intent.of(OperationKind.RESERVE, key, check_amount(amount), float(ttl))
        wallet = await require_wallet(conn, self.tables, account)
        prior = await self._prior(conn, account, intent)
        if prior is None:
            now = self.now()
            await self._ensure_available(conn, wallet, amount, intent.kind, now)
            reservation_id = uuid.uuid4()
            row = await self._record(
                conn, account, intent, amount=amount, now=now, reservation_id=reservation_id
            )
            if not isinstance(row, Operation):
                r = self.tables.reservations
                held = (
                    await conn.execute(
                        r.insert()
                        .values(
                            id=reservation_id,
                            account_id=account,
                            operation_id=row.id,
                            amount=amount,
                            captured=0,
                            status=ReservationStatus.HELD,
                            expires_at=now + timedelta(seconds=ttl),
                            created_at=now,
                        )
                        .returning(*r.c)
                    )
                ).one()
                await post(conn, self.tables, wallet, row.id, now=now, reserved=amount)
                self._applied(row)
                return to_reservation(held)
            prior = row
        if prior.reservation_id is None:  # pragma: no cover - reserve rows always have one
            msg = "reserve operation without a reservation"
            raise RuntimeError(msg)
        found = await reservation_row(conn, self.tables, prior.reservation_id)
        return to_reservation(found, replayed=True)

    async def capture(
        self,
        conn: Executor,
        reservation_id: uuid.UUID,
        key: str,
        *,
        amount: int | None = None,
        account: uuid.UUID | None = None,
    ) -> Operation:
        """Spend a held reservation: all of it, or ``amount`` of it and release the rest.

        Pass the caller's wallet as ``account`` to refuse (404) a reservation
        of another wallet: reservation ids reach clients.
        """
        limit = None if amount is None else check_amount(amount)
        intent = Intent.of(OperationKind.CAPTURE, key, str(reservation_id), limit)
        wallet, prior, held = await self._open_reservation(conn, reservation_id, intent, account)
        if prior is not None:
            return prior
        now = self.now()
        if held.expires_at <= now:
            _OPERATIONS.labels(kind=intent.kind, outcome="refused").inc()
            raise ReservationExpired(
                "The reservation expired; reserve again.",
                context={"reservation": str(reservation_id)},
            )
        spent = held.amount if limit is None else limit
        if spent > held.amount:
            raise ValidationFailed(
                "Cannot capture more than the reservation holds.",
                code="ledger.capture_exceeds_reservation",
            )
        row = await self._record(
            conn, wallet.id, intent, amount=spent, now=now, reservation_id=reservation_id
        )
        if isinstance(row, Operation):
            return row
        await close_reservation(
            conn, self.tables, reservation_id, ReservationStatus.CAPTURED, now, captured=spent
        )
        await post(
            conn,
            self.tables,
            wallet,
            row.id,
            now=now,
            delta=-spent,
            counter=_REVENUE,
            reserved=-held.amount,
        )
        return self._applied(row)

    async def release(
        self,
        conn: Executor,
        reservation_id: uuid.UUID,
        key: str,
        *,
        account: uuid.UUID | None = None,
    ) -> Operation:
        """Give a held reservation back to the wallet (also after its expiry); see `capture`."""
        intent = Intent.of(OperationKind.RELEASE, key, str(reservation_id))
        wallet, prior, held = await self._open_reservation(conn, reservation_id, intent, account)
        if prior is not None:
            return prior
        now = self.now()
        row = await self._record(
            conn, wallet.id, intent, amount=held.amount, now=now, reservation_id=reservation_id
        )
        if isinstance(row, Operation):
            return row
        await close_reservation(conn, self.tables, reservation_id, ReservationStatus.RELEASED, now)
        await post(conn, self.tables, wallet, row.id, now=now, reserved=-held.amount)
        return self._applied(row)

    async def refund(
        self,
        conn: Executor,
        account: uuid.UUID,
        amount: int,
        key: str,
        *,
        of_operation: uuid.UUID,
    ) -> Operation:
        """Return credits spent by a capture or debit of this wallet, at most what it spent."""
        intent = Intent.of(OperationKind.REFUND, key, check_amount(amount), str(of_operation))
        wallet = await require_wallet(conn, self.tables, account)
        prior = await self._prior(conn, account, intent)
        if prior is not None:
            return prior
        o = self.tables.operations
        original = (
            await conn.execute(
                select(o.c.amount, o.c.refunded).where(
                    o.c.id == of_operation,
                    o.c.account_id == account,
                    o.c.kind.in_([OperationKind.CAPTURE, OperationKind.DEBIT]),
                )
            )
        ).one_or_none()
        if original is None:
            raise OperationNotFound(
                "No capture or debit with this id on this account.",
                context={"operation": str(of_operation)},
            )
        if original.refunded + amount > original.amount:
            _OPERATIONS.labels(kind=intent.kind, outcome="refused").inc()
            raise RefundExceedsCapture(
                f"At most {original.amount - original.refunded} credits of this operation "
                "can still be refunded.",
                context={"operation": str(of_operation)},
            )
        now = self.now()
        row = await self._record(
            conn, account, intent, amount=amount, now=now, refund_of=of_operation
        )
        if isinstance(row, Operation):
            return row
        with map_constraint_errors(self.tables):
            await conn.execute(
                update(o).where(o.c.id == of_operation).values(refunded=o.c.refunded + amount)
            )
        await post(conn, self.tables, wallet, row.id, now=now, delta=amount, counter=_REVENUE)
        return self._applied(row)

    # --- expiry and audit -----------------------------------------------------------

    async def release_expired(
        self, conn: Executor, *, now: datetime | None = None, limit: int = 1000
    ) -> int:
        """Release up to ``limit`` reservations past their expiry; the number released.

        The periodic job (run it every minute or so, in its own transaction:
        ``ledger.run(sessions, ledger.release_expired)``). Each wallet is locked
        with ``SKIP LOCKED`` on PostgreSQL: a wallet busy with live traffic is
        left for the next run, and two job runners never wait for each other.
        Each release is an ``expire`` operation with no idempotency key: the
        reservation's status change makes it happen once.
        """
        return await release_expired(conn, self.tables, now or self.now(), limit)

    async def check_invariants(self, conn: Executor, *, limit: int = 100) -> list[str]:
        """Every broken invariant, as a sentence (empty: the books are sound).

        Journal sums equal balances, each operation's entries sum to zero and
        move exactly its amount, each book sums to zero, no negative wallet or
        revenue, reserved equals the held reservations, each closed reservation
        was closed by exactly one operation, refunds within what was spent, no
        key used twice. At most ``limit`` findings per check.
        """
        return await _audit.check_invariants(conn, self.tables, limit=limit)

    # --- steps ----------------------------------------------------------------------

    async def _prior(self, conn: Executor, account: uuid.UUID, intent: Intent) -> Operation | None:
        row = await find_prior(conn, self.tables, account, intent)
        if row is None:
            return None
        _OPERATIONS.labels(kind=intent.kind, outcome="replayed").inc()
        return to_operation(row, replayed=True)

    async def _record(
        self,
        conn: Executor,
        account: uuid.UUID,
        intent: Intent,
        *,
        amount: int,
        now: datetime,
        reservation_id: uuid.UUID | None = None,
        refund_of: uuid.UUID | None = None,
    ) -> AnyRow | Operation:
        """The new operation row, or the replay of a duplicate that won a race to the key."""
        row = await record_operation(
            conn,
            self.tables,
            account=account,
            intent=intent,
            amount=amount,
            now=now,
            reservation_id=reservation_id,
            refund_of=refund_of,
        )
        if row is not None:
            return row
        prior = await self._prior(conn, account, intent)
        if prior is None:  # pragma: no cover - the conflicting row is committed by now
            msg = "idempotency key conflict without a visible operation"
            raise RuntimeError(msg)
        return prior

    def _applied(self, row: AnyRow) -> Operation:
        _OPERATIONS.labels(kind=row.kind, outcome="applied").inc()
        return to_operation(row)

    async def _ensure_available(
        self, conn: Executor, wallet: Wallet, amount: int, kind: str, now: datetime
    ) -> None:
        if wallet.available < amount:
            # Holds past their expiry no longer bind the customer, even if the
            # job has not run yet: release them now (we hold the lock).
            _, freed = await expire_holds(conn, self.tables, wallet, now, _SWEEP_LIMIT)
            wallet.reserved -= freed
        if wallet.available < amount:
            _OPERATIONS.labels(kind=kind, outcome="refused").inc()
            raise InsufficientCredits(
                f"Not enough credits: {max(0, wallet.available)} available, {amount} needed.",
                context={"account": str(wallet.id)},
            )

    async def _open_reservation(
        self,
        conn: Executor,
        reservation_id: uuid.UUID,
        intent: Intent,
        account: uuid.UUID | None,
    ) -> tuple[Wallet, Operation | None, AnyRow]:
        """Lock the reservation's wallet, then replay the key or re-read the held reservation.

        The wallet is locked before the reservation is read, in the same order
        as every other operation (and the expiry job), so they cannot deadlock.
        """
        first = await reservation_row(conn, self.tables, reservation_id, account)
        wallet = await require_wallet(conn, self.tables, first.account_id)
        prior = await self._prior(conn, wallet.id, intent)
        if prior is not None:
            return wallet, prior, first
        held = await reservation_row(conn, self.tables, reservation_id)
        if held.status != ReservationStatus.HELD:
            _OPERATIONS.labels(kind=intent.kind, outcome="refused").inc()
            raise ReservationNotHeld(
                f"The reservation is already {held.status}.",
                context={"reservation": str(reservation_id), "status": held.status},
            )
        return wallet, None, held
