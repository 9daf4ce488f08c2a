"""Engine creation, URL handling, migrations and the transaction helper.

Driver errors are translated once, here, into :mod:`db.errors`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from db.errors import DatabaseUnavailable, InvalidPayload

log = logging.getLogger("cairn.db")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# SQLSTATEs worth retrying the whole transaction for: deadlock, serialization failure.
RETRYABLE_SQLSTATES = {"40P01", "40001"}
CONNECTION_SQLSTATE_PREFIXES = ("08", "57P", "53")


def async_url(url: str) -> str:
    """Normalise any postgres URL to the SQLAlchemy asyncpg dialect."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_timeout=10,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "cairn"}, "timeout": 10},
    )


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _upgrade(sync_conn: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to head (serialised by an advisory lock inside the migration env)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def _heads_match(sync_conn: Connection) -> bool:
    ctx = MigrationContext.configure(sync_conn)
    script = ScriptDirectory.from_config(alembic_config())
    return set(ctx.get_current_heads()) == set(script.get_heads())


async def at_head(conn: AsyncConnection) -> bool:
    return await conn.run_sync(_heads_match)


def sqlstate(err: BaseException) -> str | None:
    orig = getattr(err, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), err):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def translate(err: BaseException) -> BaseException:
    """Map a driver error to a domain error, or return it unchanged."""
    code = sqlstate(err)
    if code is not None:
        if code.startswith("22"):  # data exception: bad JSON text, out of range, ...
            return InvalidPayload(f"the database rejected a value (SQLSTATE {code})")
        if code.startswith(CONNECTION_SQLSTATE_PREFIXES):
            return DatabaseUnavailable(f"database unavailable (SQLSTATE {code})")
    if isinstance(err, sa_exc.TimeoutError):
        return DatabaseUnavailable("database connection pool exhausted")
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return DatabaseUnavailable("database connection lost")
    if isinstance(err, sa_exc.InterfaceError | sa_exc.OperationalError | OSError | ConnectionError):
        return DatabaseUnavailable("database unavailable")
    return err


class Database:
    """An engine plus the one way this project runs a transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (sa_exc.SQLAlchemyError, OSError, ConnectionError) as err:
            raise translate(err) from err

    async def transaction(
        self, fn: Callable[[AsyncConnection], Awaitable[T]], *, attempts: int = 5
    ) -> T:
        """Run ``fn`` in one transaction; retry on deadlock or serialization failure."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.engine.begin() as conn:
                    return await fn(conn)
            except sa_exc.DBAPIError as err:
                if sqlstate(err) in RETRYABLE_SQLSTATES and attempt < attempts:
                    log.info("retrying transaction after %s", sqlstate(err))
                    await asyncio.sleep(0.01 * attempt)
                    continue
                raise translate(err) from err
            except (sa_exc.SQLAlchemyError, OSError, ConnectionError) as err:
                raise translate(err) from err
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        await self.engine.dispose()
