import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from shopfront.migrate import upgrade_async
from shopfront.models import Base


@pytest.mark.anyio
async def test_migrations_match_the_models(any_database_url: str) -> None:
    """After every migration the schema equals the models (SQLite and PostgreSQL)."""
    await upgrade_async(any_database_url)
    engine = create_async_engine(any_database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == []
