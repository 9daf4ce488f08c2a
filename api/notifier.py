"""LISTEN/NOTIFY inside one replica: a long-poll wakes at once when work is queued, or when
a step run its worker holds is cancelled.

One notification wakes one waiting long-poll of that (tenant, action), not all of them: a
trigger at light load then costs one claim, not one per idle worker. Nothing is lost by it:
a woken poll whose claim filled its cap (there may be more), or that leaves without claiming
(disconnect, deadline), passes the wake on to another waiter, and every poll re-checks on its
own every ``poll_recheck_s`` anyway.
"""

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


def worker_key(tenant: str, worker: str) -> str:
    """The wake-up key of one worker's polls ("@" never appears in an action's name)."""
    return f"{tenant}:@worker:{worker}"


class Notifier:
    """One LISTEN connection per replica; waiters subscribe by (tenant, action)."""

    def __init__(self, url: str, *, reconnect_s: float = 1.0) -> None:
        self._dsn = asyncpg_dsn(url)
        self._reconnect_s = reconnect_s
        # Insertion-ordered: the poll woken least recently comes first.
        self._waiters: dict[str, dict[Subscription, None]] = defaultdict(dict)
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
        self.wake_one(payload)

    def wake_one(self, key: str, *, besides: Subscription | None = None) -> None:
        """Wake one waiter of ``key``, longest-idle first: an idle one if any, else one busy
        claiming (it claims again); none when every waiter is already woken."""
        subs = self._waiters.get(key)
        if not subs:
            return
        chosen: Subscription | None = None
        for sub in subs:
            if sub is besides or sub.event.is_set():
                continue
            if not sub.claiming:
                chosen = sub
                break
            chosen = chosen or sub
        if chosen is not None:
            chosen.event.set()
            del subs[chosen]  # to the back of the line: the next wake goes to another poll
            subs[chosen] = None

    def wake_all(self) -> None:
        for subs in self._waiters.values():
            for sub in subs:
                sub.event.set()

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
                log.warning("notifier connection lost: %s", str(err) or type(err).__name__)
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(self._reconnect_s)

    @contextlib.contextmanager
    def subscribe(
        self, tenant: str, actions: tuple[str, ...], *, worker: str | None = None
    ) -> Iterator[Subscription]:
        """``worker``: also wake when a step run that worker holds is cancelled."""
        sub = Subscription(self, tenant, worker)
        sub.set_actions(actions)
        try:
            yield sub
        finally:
            sub.close()

    def _add(self, key: str, sub: Subscription) -> None:
        self._waiters[key][sub] = None

    def _remove(self, key: str, sub: Subscription) -> None:
        subs = self._waiters.get(key)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._waiters[key]


class Subscription:
    """One long-poll's interest in its actions; ``event`` is set when it should claim."""

    def __init__(self, notifier: Notifier, tenant: str, worker: str | None = None) -> None:
        self._notifier = notifier
        self._tenant = tenant
        self._worker_key = [worker_key(tenant, worker)] if worker is not None else []
        self._keys: list[str] = []
        self.event = asyncio.Event()
        self.claiming = False
        self._woken = False

    def set_actions(self, actions: tuple[str, ...]) -> None:
        for key in self._keys:
            self._notifier._remove(key, self)
        self._keys = [f"{self._tenant}:{a}" for a in actions] + self._worker_key
        for key in self._keys:
            self._notifier._add(key, self)

    def close(self) -> None:
        for key in self._keys:
            self._notifier._remove(key, self)
        if self.event.is_set():  # woken but leaving without claiming: someone else should
            self.pass_on()
        self._keys = []

    def begin_claim(self) -> None:
        """About to claim: a wake that arrives from now on needs another claim."""
        self._woken = self.event.is_set()
        self.event.clear()
        self.claiming = True

    def end_claim(self, *, more: bool) -> None:
        """Claim done. ``more``: it filled its cap or had no room, so work may remain; if a
        wake brought this claim, hand that wake on."""
        self.claiming = False
        if more and self._woken:
            self.pass_on()

    def pass_on(self) -> None:
        for key in self._keys:
            self._notifier.wake_one(key, besides=self)
