"""Concurrent single triggers share a statement: ``POST /workflows/{name}/runs`` under load.

Each single trigger is one statement (``db.runs.trigger_batch``), and most of its cost in
Postgres is per statement, not per run: the executor's start, the constraint checks' setup,
the commit and its WAL flush. Triggers of the same workflow version that arrive while others
are being written wait for the next statement together, which then creates all of them; each
request still gets its own answer (its run, 201, or the run its idempotency key names, 200).

Nothing waits on purpose: a trigger that finds a free slot (fewer than ``max_in_flight``
statements running) starts its statement in the same turn of the event loop, alone or with
the triggers that arrived in that turn. Batches form only while statements are in flight, so
a lone trigger pays no added latency.

A batch's failure is not shared by the innocent: when Postgres refuses a batch's statement
(which rolls all of it back: nothing was created), ``db.runs.trigger_batch`` makes its runs one
at a time, so only the trigger at fault gets the error. A connection lost or a workflow version
not registered answers every trigger of the batch, as each would have been answered alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from db import runs as run_db
from db.pg import Conn
from db.types import Effects, Run

Key = tuple[str, str, int | None]  # tenant, workflow name, version asked for (None: latest)
Statement = Callable[[Callable[[Conn, Effects], Awaitable[Any]]], Awaitable[Any]]


@dataclass
class _Pending:
    input_json: str
    idempotency_key: str | None
    answer: asyncio.Future[tuple[Run, bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TriggerBatcher:
    """Creates runs for single triggers, several per statement when they arrive together."""

    def __init__(self, statement: Statement, *, max_batch: int, max_in_flight: int) -> None:
        self._statement = statement  # ``Service.statement``: one statement, metrics after it
        self.max_batch = max(max_batch, 1)
        self.max_in_flight = max(max_in_flight, 1)
        self._pending: dict[Key, deque[_Pending]] = {}
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.statements = 0  # statements run (batches), for tests and the curious

    async def trigger(
        self,
        tenant: str,
        workflow: str,
        input_json: str,
        *,
        idempotency_key: str | None,
        version: int | None,
    ) -> tuple[Run, bool]:
        """Create a run (``db.runs.trigger_batch``'s contract for one item), alone or in a
        batch; its error, if any, is raised."""
        item = _Pending(input_json, idempotency_key)
        self._pending.setdefault((tenant, workflow, version), deque()).append(item)
        if not self._scheduled:
            self._scheduled = True
            # At the end of this turn: the triggers that arrive in it go together.
            asyncio.get_running_loop().call_soon(self._dispatch)
        return await item.answer

    def _dispatch(self) -> None:
        self._scheduled = False
        while self._pending and self._in_flight < self.max_in_flight:
            key = next(iter(self._pending))
            queue = self._pending[key]
            batch: list[_Pending] = []
            while queue and len(batch) < self.max_batch:
                item = queue.popleft()
                if not item.answer.done():  # its request was cancelled: not created
                    batch.append(item)
            if queue:
                self._pending[key] = self._pending.pop(key)  # the other versions' turn first
            else:
                del self._pending[key]
            if batch:
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._write(key, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _write(self, key: Key, batch: list[_Pending]) -> None:
        try:
            results = await self._create(key, batch)
        except BaseException as err:  # the whole statement failed: nothing was created
            _answer_all(batch, err)
            if not isinstance(err, Exception):
                raise
        else:
            for item, result in zip(batch, results, strict=True):
                if item.answer.done():
                    continue  # its request went away meanwhile; the run exists
                if isinstance(result, Exception):
                    item.answer.set_exception(result)
                else:
                    item.answer.set_result(result)
        finally:
            self._in_flight -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._dispatch)

    async def _create(self, key: Key, batch: list[_Pending]) -> list[tuple[Run, bool] | Exception]:
        tenant, workflow, version = key
        items = [(item.input_json, item.idempotency_key) for item in batch]

        async def work(conn: Conn, effects: Effects) -> list[tuple[Run, bool] | Exception]:
            return await run_db.trigger_batch(
                conn, tenant, workflow, items, version=version, effects=effects
            )

        self.statements += 1
        result: list[tuple[Run, bool] | Exception] = await self._statement(work)
        return result

    async def close(self) -> None:
        """Wait for the statements under way (their runs are being created)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _answer_all(batch: list[_Pending], err: BaseException) -> None:
    for item in batch:
        if not item.answer.done():
            item.answer.set_exception(err)
