"""``Held``: what a worker keeps for a step run it holds, from claim until its result settles."""

from __future__ import annotations

import asyncio
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
