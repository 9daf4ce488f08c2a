"""Database URL options: both connection paths (the request pool on asyncpg and the SQLAlchemy
engine of migrations and admin commands) take the same ones, however a provider spells them."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from db.engine import Database, create_engine

# ``prefer`` falls back to plain when the server has no TLS, so these run on any test server.
OPTIONS = [
    "sslmode=prefer",  # libpq's spelling, what managed providers document
    "ssl=prefer",  # SQLAlchemy's asyncpg dialect's spelling
    "sslmode=prefer&connect_timeout=5&application_name=shop",
]


@pytest.mark.parametrize("options", OPTIONS)
async def test_both_connection_paths_take_the_urls_options(db_url: str, options: str) -> None:
    url = f"{db_url}{'&' if '?' in db_url else '?'}{options}"
    db = Database(create_engine(url, pool_size=1, max_overflow=0), pool_size=2)
    try:
        async with db.engine.connect() as conn:  # migrations' path
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        async with db.connect() as conn:  # requests' path
            assert (await conn.execute("SELECT count(*) FROM runs")).scalar() == 0
    finally:
        await db.dispose()
