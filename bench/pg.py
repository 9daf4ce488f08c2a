"""The embedded Postgres every system shares: one server, one database per system."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import asyncpg

from db.embedded import EmbeddedPostgres


@dataclass
class Pg:
    """A running embedded server; ``dsn``/``sa_url`` for each database on it."""

    embedded: EmbeddedPostgres
    host: str
    port: int
    tmp: tempfile.TemporaryDirectory[str] | None = None
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, pgdata: str | None = None) -> Pg:
        tmp = None
        if pgdata is None:
            tmp = tempfile.TemporaryDirectory(prefix="cairn-bench-")
            pgdata = str(Path(tmp.name) / "pgdata")
        embedded = EmbeddedPostgres(pgdata, cleanup="stop")
        url = embedded.start()
        query = parse_qs(urlparse(url).query)
        host = query.get("host", ["127.0.0.1"])[0]
        port = int(query.get("port", ["5432"])[0])
        return cls(embedded=embedded, host=host, port=port, tmp=tmp)

    def stop(self, keep_log: Path | None = None) -> None:
        self.embedded.stop()
        log = self.embedded.pgdata / "log"
        if keep_log is not None and log.exists():
            shutil.copyfile(log, keep_log)
        if self.tmp is not None:
            self.tmp.cleanup()

    def postmaster_pid(self) -> int | None:
        """The server's postmaster (first line of ``postmaster.pid``), for CPU accounting."""
        try:
            return int((self.embedded.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def sa_url(self, database: str) -> str:
        """SQLAlchemy URL (what ``CAIRN_DATABASE_URL`` takes)."""
        return self.embedded.url(database)

    def dsn(self, database: str) -> str:
        """libpq/asyncpg URL (socket directory as ``host``)."""
        return f"postgresql://postgres@/{database}?host={self.host}&port={self.port}"

    def conninfo(self, database: str) -> str:
        """psycopg key/value conninfo."""
        return f"host={self.host} port={self.port} user=postgres dbname={database}"

    async def connect(self, database: str = "postgres") -> Any:
        return await asyncpg.connect(
            host=self.host, port=self.port, user="postgres", database=database
        )

    async def create_database(self, name: str) -> None:
        conn = await self.connect()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.databases.append(name)

    async def settings(self) -> dict[str, str]:
        conn = await self.connect()
        try:
            rows = await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                [
                    "server_version",
                    "shared_buffers",
                    "max_connections",
                    "synchronous_commit",
                    "fsync",
                    "work_mem",
                    "shared_preload_libraries",
                ],
            )
            return {r["name"]: r["setting"] for r in rows}
        finally:
            await conn.close()

    async def has_pg_stat_statements(self) -> bool:
        conn = await self.connect()
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
            )
            return bool(found)
        finally:
            await conn.close()


@dataclass
class XactSnapshot:
    """``pg_stat_database`` counters of one database (flushed by backends that have exited)."""

    commits: int
    rollbacks: int
    at: float

    @property
    def total(self) -> int:
        return self.commits + self.rollbacks


async def xacts(pg: Pg, database: str) -> XactSnapshot:
    """Read the counters from a fresh connection (our own short transaction adds one)."""
    conn = await pg.connect()
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", database
        )
    finally:
        await conn.close()
    assert row is not None
    return XactSnapshot(int(row["xact_commit"]), int(row["xact_rollback"]), time.time())


async def analyze(pg: Pg, database: str) -> None:
    conn = await pg.connect(database)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def settle(pg: Pg, database: str, tables: tuple[str, ...]) -> None:
    """After a bulk load: VACUUM (ANALYZE) the tables and CHECKPOINT, so what follows measures
    the table as it stands, not the load's aftermath (hint bits set on first read, an autovacuum
    of the new rows and a checkpoint of their pages, all competing for the same 2 cores)."""
    conn = await pg.connect(database)
    try:
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(tables)}", timeout=900)
        await conn.execute("CHECKPOINT", timeout=900)
    finally:
        await conn.close()
