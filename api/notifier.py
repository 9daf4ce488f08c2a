"""LISTEN/NOTIFY fan-out inside one replica: long-polls wake at once when work is queued."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import asyncpg

from db.engine import asyncpg_dsn

log = logging.getLogger("cairn.notifier")
CHANNEL = "cairn_queue"


class Notifier:
    """One LISTEN connection per replica; waiters subscribe by (tenant, action)."""

    def __init__(self, url: str, *, reconnect_s: float = 1.0) -> None:
        self._dsn = asyncpg_dsn(url)
        self._reconnect_s = reconnect_s
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cairn-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        for event in self._waiters.get(payload, ()):
            event.set()

    def wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _run(self) -> None:
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=10, server_settings={"application_name": "cairn-listen"}
                )
                await conn.add_listener(CHANNEL, self._on_notify)
                self.connected.set()
                # Anything queued while we were not listening: let every waiter re-check.
                self.wake_all()
                while not conn.is_closed():
                    await asyncio.sleep(self._reconnect_s)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # connection refused, terminated, ...
                log.warning("notifier connection lost: %s", err)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(self._reconnect_s)

    @contextlib.contextmanager
    def subscribe(self, tenant: str, actions: tuple[str, ...]) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        keys = [f"{tenant}:{a}" for a in actions]
        for key in keys:
            self._waiters[key].add(event)
        try:
            yield event
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(event)
                    if not waiters:
                        del self._waiters[key]
