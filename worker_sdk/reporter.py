"""Results travel in batches, on the next poll or on ``POST /step-runs/results``.

While the worker is busy its poll loop is about to poll anyway: it ``hold()``s the reporter and
its next poll carries every result that is ready (one request per batch: results in, new tasks
out). While the poll loop waits on a long poll, the reporter sends on its own, with natural
batching: with no request in flight a result is sent at once (no added latency at light load);
while one is in flight, results queue up and the next request carries them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from worker_sdk import calls
from worker_sdk.errors import APIError, HTTPError
from worker_sdk.outcome import Outcome
from worker_sdk.transport import RetryPolicy, asend

log = logging.getLogger("cairn.worker")

SEND_ONE_BY_ONE = "send_one_by_one"  # the batch was refused as a whole (e.g. one item too big)

# Called once per result, on the loop: with the server's verdict, or with the error that kept
# the result from being reported.
Verdict = Callable[["dict[str, Any] | Exception"], None]


@dataclass
class _Item:
    step_run_id: str
    lease_token: str
    outcome: Outcome
    give_up: Callable[[], bool]
    on_verdict: Verdict = field(repr=False)
    carry: bool = True  # may ride on a poll (cleared after a poll carrying it failed)
    settled: bool = False

    def encode(self) -> bytes:
        head = b'{"step_run_id":' + json.dumps(self.step_run_id).encode() + b","
        return head + self.outcome.with_lease(self.lease_token)[1:]

    def settle(self, verdict: dict[str, Any] | Exception) -> None:
        if not self.settled:
            self.settled = True
            try:
                self.on_verdict(verdict)
            except Exception:  # a callback's bug must not keep the other verdicts back
                log.exception("result verdict callback failed")


class Reporter:
    """Queue of results to report; ``run()`` is the one task that sends them."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        deadline_s: Callable[[], float],
        max_batch: int = 500,
    ) -> None:
        self._http = http
        self._deadline_s = deadline_s
        self._max_batch = max_batch
        self._queue: list[_Item] = []
        self._carriable = 0  # queued items that may ride on a poll
        self._wake = asyncio.Event()
        self._held = False  # the poll loop will carry what is queued

    async def report(
        self, step_run_id: str, lease_token: str, outcome: Outcome, give_up: Callable[[], bool]
    ) -> dict[str, Any]:
        """Queue a result and wait for the server's verdict on it.

        Returns the item's result (``{"status": ..., "code": ...}``), or
        ``{"status": SEND_ONE_BY_ONE}`` when the caller should use the single endpoint.
        Raises HTTPError when the server could not be reached in time.
        """
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_verdict(verdict: dict[str, Any] | Exception) -> None:
            if done.done():
                return
            if isinstance(verdict, Exception):
                done.set_exception(verdict)
            else:
                done.set_result(verdict)

        self.add(step_run_id, lease_token, outcome, give_up, on_verdict)
        return await done

    def add(
        self,
        step_run_id: str,
        lease_token: str,
        outcome: Outcome,
        give_up: Callable[[], bool],
        on_verdict: Verdict,
    ) -> None:
        """Queue a result; ``on_verdict`` gets what ``report`` would return or raise."""
        self._queue.append(_Item(step_run_id, lease_token, outcome, give_up, on_verdict))
        self._carriable += 1
        self._wake.set()

    @property
    def carriable(self) -> int:
        """Queued results the next poll may carry (``take`` hands them over)."""
        return self._carriable

    def hold(self) -> None:
        """The poll loop is about to poll: leave queued results for it to carry."""
        self._held = True

    def release(self) -> None:
        """The poll loop is waiting (long poll, back-off, shutdown): send results directly."""
        self._held = False
        if self._queue:
            self._wake.set()

    def take(self, limit: int) -> list[_Item]:
        """Up to ``limit`` queued results for a poll to carry (dropped ones are settled)."""
        taken: list[_Item] = []
        rest: list[_Item] = []
        for item in self._queue:
            if not item.carry or len(taken) >= limit:
                rest.append(item)
            elif item.give_up():
                self._carriable -= 1
                _resolve(item, {"status": "dropped"})
            else:
                self._carriable -= 1
                taken.append(item)
        self._queue = rest
        return taken

    def settle(self, items: list[_Item], results: Any) -> None:
        """The poll answered: hand each carried item its verdict."""
        if not isinstance(results, list) or len(results) != len(items):
            log.error("poll answered %r results for %d carried", results, len(items))
            results = results if isinstance(results, list) else []
        for item, result in zip(items, results, strict=False):
            _resolve(item, result if isinstance(result, dict) else {"status": "malformed"})
        for item in items[len(results) :]:
            _fail(item, HTTPError("no result for this item"))

    def give_back(self, items: list[_Item]) -> None:
        """The poll carrying ``items`` failed: send them on their own (never on a poll again)."""
        for item in items:
            item.carry = False
        self._queue[:0] = items
        if items:
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while batch := self._next_batch():
                await self._send(batch)

    def _next_batch(self) -> list[_Item]:
        if not self._held:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._carriable -= sum(1 for i in batch if i.carry)
            return batch
        batch = [i for i in self._queue if not i.carry][: self._max_batch]
        if batch:
            chosen = {id(i) for i in batch}
            self._queue = [i for i in self._queue if id(i) not in chosen]
        return batch

    async def close(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        queue, self._queue = self._queue, []
        self._carriable = 0
        for item in queue:
            item.settle(HTTPError("worker stopped before reporting"))

    async def _send(self, batch: list[_Item]) -> None:
        live = [i for i in batch if not i.give_up()]
        for item in batch:
            if item.give_up():
                item.settle({"status": "dropped"})
        if not live:
            return
        try:
            response = await asend(
                self._http,
                calls.results([i.encode() for i in live]),
                timeout=30.0,
                policy=RetryPolicy(deadline_s=self._deadline_s(), max_delay_s=5.0),
                give_up=lambda: all(i.give_up() for i in live),
            )
            results = response.json()["results"]
        except APIError as exc:
            if exc.status in (404, 405, 413, 422):
                for item in live:
                    _resolve(item, {"status": SEND_ONE_BY_ONE})
                return
            for item in live:
                _fail(item, exc)
            return
        except (HTTPError, ValueError, KeyError) as exc:
            for item in live:
                _fail(item, exc)
            return
        if len(results) != len(live):
            log.error("server answered %d results for %d sent", len(results), len(live))
        for item, result in zip(live, results, strict=False):
            _resolve(item, result)
        for item in live[len(results) :]:
            _fail(item, HTTPError("no result for this item"))


def _resolve(item: _Item, result: dict[str, Any]) -> None:
    item.settle(result)


def _fail(item: _Item, exc: Exception) -> None:
    item.settle(exc)
