"""The hot path to Postgres: an asyncpg pool and a thin connection wrapper.

Named statements stay SQLAlchemy ``text()`` clauses (``db/queries.py``); this module renders them
once to asyncpg's ``$n`` form and runs them on a plain asyncpg connection. SQLAlchemy's engine is
kept for migrations only: on this path it cost about four times the CPU per transaction
(pool pre-ping, reset-on-return, result processing), which showed in every benchmark.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from sqlalchemy import TextClause

# The same pattern SQLAlchemy's text() uses for ``:name`` (not ``::cast``, not ``\:``).
BIND = re.compile(r"(?<![:\w\x5c]):(\w+)(?![:\w])", re.UNICODE)
_compiled: dict[str, tuple[str, tuple[str, ...]]] = {}

StatementListener = Callable[[str], None]


def compile_sql(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` placeholders to ``$n`` (one number per distinct name), cached per text."""
    hit = _compiled.get(sql)
    if hit is not None:
        return hit
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    out = (BIND.sub(number, sql).replace("\\:", ":"), tuple(names))
    _compiled[sql] = out
    return out


# A run of 19 digits: possibly an integer beyond 64 bits, which orjson reads as a float (rounded)
# and the standard library reads exactly. A long digit run inside a string only costs the slower
# parser.
_LONG_DIGITS = re.compile(r"\d{19}")


def _loads(text: str) -> Any:
    if _LONG_DIGITS.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _dumps(value: Any) -> str:
    # Statements pass JSON as text (``CAST(:x AS jsonb)``); anything else is serialised here.
    return value if isinstance(value, str) else json.dumps(value)


async def init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, encoder=_dumps, decoder=_loads, schema="pg_catalog", format="text"
        )


async def reset_connection(conn: asyncpg.Connection) -> None:
    """On release: roll back a transaction left open (nothing else is session state here)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class Row(asyncpg.Record):  # type: ignore[misc]
    """A result row; columns read as attributes (``row.id``) or by name (``row["id"]``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Result:
    """The rows of one statement (the subset of SQLAlchemy's ``Result`` this project uses)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[Any]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


class Conn:
    """One pooled connection: ``await conn.execute(Q.SOMETHING, {...})``."""

    def __init__(self, raw: asyncpg.Connection, listeners: Sequence[StatementListener]) -> None:
        self.raw = raw
        self._listeners = listeners

    async def execute(
        self, statement: TextClause | str, parameters: Mapping[str, Any] | None = None
    ) -> Result:
        sql, names = compile_sql(statement if isinstance(statement, str) else statement.text)
        params = parameters or {}
        for listener in self._listeners:
            listener(sql)
        rows = await self.raw.fetch(sql, *[params[n] for n in names])
        return Result(rows)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        """A savepoint inside the current transaction (or a transaction outside one)."""
        async with self.raw.transaction():
            yield

    async def rollback(self) -> None:
        if self.raw.is_in_transaction():
            await self.raw.execute("ROLLBACK")


async def create_pool(dsn: str, *, max_size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        max_inactive_connection_lifetime=300.0,
        init=init_connection,
        reset=reset_connection,
        record_class=Row,
        timeout=10,
        # Every statement here is short: JIT compilation (on by default where Postgres is built
        # with LLVM) costs more than it saves, up to a second per execution when the planner's
        # row estimates of JSON set-returning functions push a plan over ``jit_above_cost``.
        # And every statement reaches its rows through an index: a connection keeps its
        # statements' plans (generic ones after five executions) until the tables' statistics
        # change, and a plan made while a table was small reads it whole, kept as the queue grows
        # until autovacuum next analyzes it (a claim's update scanned 70,000 step runs to find
        # the 60 it claimed). Whole-table reads (``db/check.py``) turn sequential scans back on.
        server_settings={"application_name": "cairn", "jit": "off", "enable_seqscan": "off"},
    )
