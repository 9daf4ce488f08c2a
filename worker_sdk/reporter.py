"""Results travel in batches: one ``POST /step-runs/results`` carries every result that is ready.

Natural batching: with no request in flight a result is sent at once (no added latency at light
load); while one is in flight, results queue up and the next request carries them all.
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


@dataclass
class _Item:
    step_run_id: str
    lease_token: str
    outcome: Outcome
    give_up: Callable[[], bool]
    done: asyncio.Future[dict[str, Any]] = field(repr=False)

    def encode(self) -> bytes:
        head = b'{"step_run_id":' + json.dumps(self.step_run_id).encode() + b","
        return head + self.outcome.with_lease(self.lease_token)[1:]


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
        self._wake = asyncio.Event()

    async def report(
        self, step_run_id: str, lease_token: str, outcome: Outcome, give_up: Callable[[], bool]
    ) -> dict[str, Any]:
        """Queue a result and wait for the server's verdict on it.

        Returns the item's result (``{"status": ..., "code": ...}``), or
        ``{"status": SEND_ONE_BY_ONE}`` when the caller should use the single endpoint.
        Raises HTTPError when the server could not be reached in time.
        """
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(step_run_id, lease_token, outcome, give_up, done))
        self._wake.set()
        return await done

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._send(batch)

    async def close(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for item in self._queue:
            if not item.done.done():
                item.done.set_exception(HTTPError("worker stopped before reporting"))
        self._queue.clear()

    async def _send(self, batch: list[_Item]) -> None:
        live = [i for i in batch if not i.give_up()]
        for item in batch:
            if item.give_up() and not item.done.done():
                item.done.set_result({"status": "dropped"})
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
    if not item.done.done():
        item.done.set_result(result)


def _fail(item: _Item, exc: Exception) -> None:
    if not item.done.done():
        item.done.set_exception(exc)
