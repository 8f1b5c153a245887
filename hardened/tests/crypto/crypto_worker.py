"""One batch run in its own process, so a test can SIGKILL it in the middle of a batch.

``python crypto_worker.py reencrypt|backfill <db url> [--batch N]`` runs `reencrypt`
over `Kyc` or `PlaintextMigration.backfill` over `TaxRecord` with the test
keyring. Each batch prints ``progress <task> <table> <done>/<total>``; the end
prints ``finished <rows>``. Its connections carry the application name
``crypto_worker:<pid>``, so the test finds its backends in ``pg_stat_activity``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from crypto_models import Kyc, crypto
from scale_models import tax_migration
from sqlalchemy.ext.asyncio import create_async_engine

from hardened.crypto import BatchConfig, Progress, reencrypt


def application_name(pid: int) -> str:
    """The application name of worker ``pid``'s connections."""
    return f"crypto_worker:{pid}"


def show(progress: Progress) -> None:
    sys.stdout.write(
        f"progress {progress.task} {progress.table} {progress.done}/{progress.total}\n"
    )
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["reencrypt", "backfill"])
    parser.add_argument("url")
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    engine = create_async_engine(
        args.url, connect_args={"application_name": application_name(os.getpid())}
    )
    c = crypto()
    config = BatchConfig(batch=args.batch)
    try:
        if args.command == "reencrypt":
            report = await reencrypt(engine, c, Kyc, config=config, progress=show)
            rows = sum(report.moved.values())
        else:
            rows = await tax_migration(c).backfill(engine, config=config, progress=show)
    finally:
        await engine.dispose()
    sys.stdout.write(f"finished {rows}\n")


if __name__ == "__main__":
    asyncio.run(main())
