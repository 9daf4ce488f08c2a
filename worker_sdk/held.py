"""``Held``: what a worker keeps for a step run it holds, from claim until its result settles."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker_sdk import outcome
from worker_sdk.context import Context, Task
from worker_sdk.outcome import Outcome
from worker_sdk.workflow import StepSpec

if TYPE_CHECKING:
    from worker_sdk.worker import Worker


@dataclass(eq=False)
class Held:
    task: Task
    ctx: Context
    spec: StepSpec | None
    worker: Worker
    future: asyncio.Task[None] | None = None  # an async step's task, or a one-by-one report's
    ended: bool = False  # the step function returned or raised
    unsettled: bool = False  # its result was handed to the reporter and has no verdict yet
    dropped: bool = False  # cancelled/lost/shutdown: never report

    def gave_up(self) -> bool:
        return self.dropped

    def cancel_future(self) -> None:
        """Cancel an async step's task (on the loop)."""
        if self.future is not None and not self.future.done():
            self.future.cancel()

    def ran(self, result: Outcome | None, exc: BaseException | None) -> None:
        """A sync step's thread is done (on the loop)."""
        if exc is not None:  # call_sync never raises; keep the slot accounting right anyway
            result = outcome.from_exception(exc)
        assert result is not None
        self.worker._finished(self, result)


class HeldSteps:
    """The step runs a worker holds, by id; thread-safe (the heartbeat thread reads and revokes).

    Keyed by step run: when a step's next attempt comes back to the worker still running the
    stale one (its lease was lost), the new attempt takes the place and the stale one is
    revoked as ``lost``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _by_id and every Held's ``dropped``
        self._by_id: dict[str, Held] = {}

    def add(self, held: Held) -> Held | None:
        """Hold ``held``; the stale attempt of the same step run it replaces, if any."""
        with self._lock:
            stale = self._by_id.get(held.task.step_run_id)
            self._by_id[held.task.step_run_id] = held
        return stale

    def remove(self, held: Held) -> bool:
        """Forget ``held`` (not a newer attempt in its place); True when nothing is held."""
        with self._lock:
            if self._by_id.get(held.task.step_run_id) is held:
                del self._by_id[held.task.step_run_id]
            return not self._by_id

    def get(self, step_run_id: str) -> Held | None:
        with self._lock:
            return self._by_id.get(step_run_id)

    def ids(self) -> list[str]:
        """What the heartbeat renews: the step runs held and not dropped."""
        with self._lock:
            return [k for k, h in self._by_id.items() if not h.dropped]

    def all(self) -> list[Held]:
        with self._lock:
            return list(self._by_id.values())

    def drop(self, held: Held, reason: str) -> None:
        """Never report ``held``; its context says why."""
        with self._lock:
            held.dropped = True
        held.ctx.mark_cancelled(reason)

    def revoke(self, held: Held, reason: str, loop: asyncio.AbstractEventLoop | None) -> None:
        """The server took the step back: drop it and stop it (an async step's task is
        cancelled on ``loop``; a sync step sees ``ctx.cancelled``). Callable from any thread."""
        if held.dropped:
            return
        self.drop(held, reason)
        held.ctx.log.warning("stopping step: %s", reason)
        if held.spec is not None and held.spec.is_async and loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(held.cancel_future)
