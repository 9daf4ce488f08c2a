"""The per-app service object: settings, database, metrics, notifier, and the tx helper."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from api.metrics import Metrics
from api.notifier import Notifier
from api.settings import Settings
from api.triggers import TriggerBatcher
from db import transitions
from db.claim_floors import ClaimFloors
from db.engine import Database
from db.pg import Conn
from db.types import Effects

T = TypeVar("T")

TRIGGER_BATCH = 100  # single triggers per statement, at most
TRIGGER_STATEMENTS_IN_FLIGHT = 4  # trigger statements running at once; the rest wait to batch


class Service:
    def __init__(
        self, settings: Settings, db: Database, notifier: Notifier, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.db = db
        self.notifier = notifier
        self.metrics = metrics
        # Where each action's next claim starts reading (db/claim_floors.py).
        self.claim_floors = ClaimFloors(rescan_s=settings.claim_floor_rescan_s)
        self._worker_actions: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        # Set when the server starts shutting down (api/httpproto.py): waiting long-polls answer
        # at once and the reaper stops, so the shutdown does not wait out every long-poll.
        self.draining = asyncio.Event()
        # Single triggers arriving together share a statement (api/triggers.py).
        self.triggers = TriggerBatcher(
            self.statement,
            max_batch=min(TRIGGER_BATCH, settings.max_batch),
            max_in_flight=TRIGGER_STATEMENTS_IN_FLIGHT,
        )

    def drain(self) -> None:
        """The server is shutting down: answer the waiting long-polls now (empty), stop reaping
        (another replica, or this one restarted, goes on)."""
        if not self.draining.is_set():
            self.draining.set()
            self.notifier.wake_all()

    async def tx(self, fn: Callable[[Conn, Effects], Awaitable[T]]) -> T:
        """One transaction; its wake-ups are sent inside it and its metrics after commit."""
        return await self._run(fn, self.db.transaction)

    async def statement(self, fn: Callable[[Conn, Effects], Awaitable[T]]) -> T:
        """``fn`` with no transaction block (work that is one statement); metrics as ``tx``."""
        return await self._run(fn, self.db.autocommit)

    async def _run(
        self,
        fn: Callable[[Conn, Effects], Awaitable[T]],
        runner: Callable[[Callable[[Conn], Awaitable[T]]], Awaitable[T]],
    ) -> T:
        holder: list[Effects] = []

        async def body(conn: Conn) -> T:
            effects = Effects()  # a fresh one for each attempt the runner makes
            holder[:] = [effects]
            result = await fn(conn, effects)
            await transitions.notify(conn, effects)
            return result

        result = await runner(body)
        self.metrics.record(holder[0])
        return result

    def remember_worker(self, worker_id: str, actions: tuple[str, ...]) -> None:
        self._worker_actions[worker_id] = actions
        self._worker_actions.move_to_end(worker_id)
        while len(self._worker_actions) > 10_000:
            self._worker_actions.popitem(last=False)

    def worker_actions(self, worker_id: str) -> tuple[str, ...] | None:
        return self._worker_actions.get(worker_id)


async def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc
