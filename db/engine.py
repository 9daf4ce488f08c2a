"""Engine creation, URL handling, migrations and the transaction helper.

Driver errors are translated once, here, into :mod:`db.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from db.errors import DatabaseBusy, DatabaseUnavailable, InvalidPayload, SchemaNotReady
from db.pg import Conn, StatementListener, create_pool

log = logging.getLogger("cairn.db")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# SQLSTATEs worth retrying the whole transaction for: deadlock, serialization failure.
RETRYABLE_SQLSTATES = {"40P01", "40001"}
# Connection exceptions, operator intervention (shutdown, restart), insufficient resources, and
# what refuses a connection outright (bad credentials, no such database): all "unavailable".
# 55000: the database does not accept connections now (ALTER DATABASE ... ALLOW_CONNECTIONS false).
CONNECTION_SQLSTATE_PREFIXES = ("08", "57P", "53", "28", "3D", "55000")
# A table or function the schema should have is missing: the database is not migrated (a server
# started with CAIRN_RUN_MIGRATIONS=false before `cairn migrate`), which /readyz reports too.
SCHEMA_MISSING_SQLSTATES = {"42P01", "42883"}


def async_url(url: str) -> str:
    """Normalise any postgres URL to the SQLAlchemy asyncpg dialect."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        u = u.set(drivername="postgresql+asyncpg")
    return u.render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    """The SQLAlchemy engine (migrations, admin commands). It connects as the request pool
    does, from the libpq-style URL (``asyncpg_dsn``), so both take the same URL options."""
    dsn = asyncpg_dsn(url)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn, timeout=10, server_settings={"application_name": "cairn"})

    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_timeout=10,
        pool_recycle=1800,
        async_creator=connect,
    )


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _stored_revisions(sync_conn: Connection) -> set[str]:
    if sync_conn.execute(text("SELECT to_regclass('alembic_version')")).scalar() is None:
        return set()
    return {str(r[0]) for r in sync_conn.execute(text("SELECT version_num FROM alembic_version"))}


def _upgrade(sync_conn: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    newer = _stored_revisions(sync_conn) - known_revisions()
    if newer:
        # A newer release migrated this database (its migrations add, never take away, so this
        # code still works on it): nothing to do here, and nothing this code could undo.
        log.warning(
            "the database schema is at %s, newer than this server's migrations (head %s): "
            "left as it is",
            ", ".join(sorted(newer)),
            ", ".join(sorted(script_heads())),
        )
        return
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to head (serialised by an advisory lock inside the migration env)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


@functools.cache
def script_heads() -> frozenset[str]:
    """The migration heads this code expects (read from the migration scripts, cached)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every migration this code has (a revision not among them is a newer release's)."""
    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(r.revision for r in scripts.walk_revisions())


async def stored_revisions(conn: Conn) -> set[str] | None:
    """The revisions the database's schema is at; None when it was never migrated."""
    exists = (await conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL")).scalar()
    if not exists:
        return None
    return {str(r[0]) for r in await conn.execute("SELECT version_num FROM alembic_version")}


async def at_head(conn: Conn) -> bool:
    """Whether the database's schema is one this code can serve: at its newest migration, or
    migrated further by a newer release (whose migrations only add: during a rolling upgrade
    the old replicas keep serving once the new release's migration has run)."""
    stored = await stored_revisions(conn)
    return stored is not None and (stored == script_heads() or bool(stored - known_revisions()))


def sqlstate(err: BaseException) -> str | None:
    orig = getattr(err, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), err):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def _retry_pause(attempt: int) -> float:
    """Before retrying an aborted transaction: growing, with jitter, so two transactions that
    deadlocked do not meet again in step."""
    return random.uniform(0.005, 0.02) * attempt


def translate(err: BaseException) -> BaseException:
    """Map a driver error to a domain error, or return it unchanged."""
    # A value asyncpg itself could not encode (not SQLSTATE 22, which the server raises): a bug.
    client_side = isinstance(err, asyncpg_base.DataError)
    if client_side:
        return err
    code = sqlstate(err)
    if code is not None:
        if code in RETRYABLE_SQLSTATES:  # still aborted after the retries: nothing applied
            return DatabaseBusy(
                f"the database aborted this request's transaction (SQLSTATE {code}) on every"
                " try: contention with concurrent requests; nothing was applied, send it again"
            )
        if code in ("22021", "22P05"):  # a NUL (or a character the encoding lacks) in text
            return InvalidPayload(
                "a text value holds a character Postgres cannot store, such as NUL (\\u0000)"
                f" (SQLSTATE {code})"
            )
        if code.startswith("22"):  # data exception: bad JSON text, out of range, ...
            return InvalidPayload(f"the database rejected a value (SQLSTATE {code})")
        if code.startswith(CONNECTION_SQLSTATE_PREFIXES):
            return DatabaseUnavailable(f"database unavailable (SQLSTATE {code})")
        if code in SCHEMA_MISSING_SQLSTATES:
            return SchemaNotReady(
                f"the database schema is not at this server's version (SQLSTATE {code}):"
                " run `cairn migrate`"
            )
    if isinstance(err, sa_exc.TimeoutError):
        return DatabaseUnavailable("database connection pool exhausted")
    if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
        return DatabaseUnavailable("database connection lost")
    if isinstance(
        err,
        sa_exc.InterfaceError
        | sa_exc.OperationalError
        | asyncpg.InterfaceError
        | asyncpg_base.InternalClientError
        | OSError
        | ConnectionError,
    ):
        return DatabaseUnavailable("database unavailable")
    return err


def refused(err: BaseException) -> bool:
    """Postgres refused the statement for what it was asked (its work rolled back, the
    connection fine, the same statement no likelier to pass again): bad data, a broken
    constraint. Not a connection failure, a deadlock or a serialization failure."""
    code = sqlstate(err)
    return (
        isinstance(err, asyncpg.PostgresError)
        and code is not None
        and code not in RETRYABLE_SQLSTATES
        and not code.startswith(CONNECTION_SQLSTATE_PREFIXES)
    )


# The TLS switch as SQLAlchemy's asyncpg dialect spells it (``?ssl=require``), and libpq
# options asyncpg does not take (it would send them to the server as settings, which refuses
# them): both are mapped, so a URL works whichever way a provider documents it.
_SSL_AS_SSLMODE = {"true": "require", "false": "disable"}
_LIBPQ_ONLY = ("connect_timeout",)


def asyncpg_dsn(url: str) -> str:
    """A libpq-style URL asyncpg accepts, from any postgres URL (``?sslmode=require`` or
    ``?ssl=require``, ``connect_timeout`` ignored: every connection has a 10 s timeout)."""
    u = make_url(url).set(drivername="postgresql")
    query = dict(u.query)
    ssl = query.pop("ssl", None)
    if isinstance(ssl, str) and "sslmode" not in query:
        query["sslmode"] = _SSL_AS_SSLMODE.get(ssl.lower(), ssl)
    for option in _LIBPQ_ONLY:
        query.pop(option, None)
    return u.set(query=query).render_as_string(hide_password=False)


# What a driver call can raise; anything else is a bug and propagates as it is.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg_base.InternalClientError,
    OSError,
    ConnectionError,
)


def _connection_error(err: BaseException) -> bool:
    return isinstance(translate(err), DatabaseUnavailable)


class Database:
    """The asyncpg pool every request uses, the SQLAlchemy engine migrations use, and the one
    way this project runs a transaction."""

    def __init__(self, engine: AsyncEngine, *, pool_size: int = 20) -> None:
        self.engine = engine
        self.pool_size = pool_size
        self.acquire_timeout_s = 10.0
        self.listeners: list[StatementListener] = []  # called with each statement's SQL
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    dsn = asyncpg_dsn(self.engine.url.render_as_string(hide_password=False))
                    self._pool = await create_pool(dsn, max_size=self.pool_size)
        return self._pool

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; one that failed at the connection level is discarded, not
        returned (a terminated backend can leave the driver in a state no query recovers)."""
        try:
            pool = await self._get_pool()
            raw = await pool.acquire(timeout=self.acquire_timeout_s)
        except TimeoutError as err:
            raise DatabaseUnavailable(
                f"no database connection within {self.acquire_timeout_s:g} s (the database does"
                " not answer, or every pooled connection is busy)"
            ) from err
        except DRIVER_ERRORS as err:
            raise translate(err) from err
        broken = False
        try:
            yield raw
        except DRIVER_ERRORS as err:
            broken = _connection_error(err)
            raise
        finally:
            if broken:
                raw.terminate()
            try:
                await pool.release(raw)
            except Exception as err:  # the connection broke: the pool replaces it
                log.debug("releasing a connection failed: %s", err)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Conn]:
        """A connection outside any transaction (each statement commits on its own)."""
        try:
            async with self._acquire() as raw:
                yield Conn(raw, self.listeners)
        except DRIVER_ERRORS as err:
            raise translate(err) from err

    async def transaction(self, fn: Callable[[Conn], Awaitable[T]], *, attempts: int = 5) -> T:
        """Run ``fn`` in one transaction; retry on deadlock or serialization failure, and on a
        connection found dead before the transaction began (as after a database restart)."""
        stale_retries = self.pool_size + 1
        attempt = 0
        while True:
            attempt += 1
            began = False
            try:
                async with self._acquire() as raw:
                    tx = raw.transaction()
                    await tx.start()
                    began = True
                    try:
                        result = await fn(Conn(raw, self.listeners))
                    except BaseException:
                        if not raw.is_closed():
                            with contextlib.suppress(Exception):
                                await tx.rollback()
                        raise
                    await tx.commit()
                    return result
            except DRIVER_ERRORS as err:
                if sqlstate(err) in RETRYABLE_SQLSTATES and attempt < attempts:
                    log.info("retrying transaction after %s", sqlstate(err))
                    await asyncio.sleep(_retry_pause(attempt))
                    continue
                if not began and _connection_error(err) and stale_retries > 0:
                    stale_retries -= 1  # nothing was sent but BEGIN: safe on a fresh connection
                    attempt -= 1
                    continue
                raise translate(err) from err

    async def autocommit(self, fn: Callable[[Conn], Awaitable[T]], *, attempts: int = 5) -> T:
        """Run ``fn`` with no transaction block: each of its statements commits on its own (for
        work that is one statement: no BEGIN and COMMIT round trips). Retried on deadlock or
        serialization failure, which roll the statement back."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._acquire() as raw:
                    return await fn(Conn(raw, self.listeners))
            except DRIVER_ERRORS as err:
                if sqlstate(err) in RETRYABLE_SQLSTATES and attempt < attempts:
                    log.info("retrying statement after %s", sqlstate(err))
                    await asyncio.sleep(_retry_pause(attempt))
                    continue
                raise translate(err) from err

    async def dispose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:
                pool.terminate()
        await self.engine.dispose()
