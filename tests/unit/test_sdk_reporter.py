"""Results are coalesced while a request is in flight; a batch refused whole falls back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from worker_sdk.outcome import Outcome
from worker_sdk.reporter import SEND_ONE_BY_ONE, Reporter


def complete(value: Any) -> Outcome:
    return Outcome("complete", {"output": value}, json.dumps(value).encode())


async def test_results_queue_behind_an_in_flight_request() -> None:
    batches: list[list[dict[str, Any]]] = []
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)["results"]
        batches.append(items)
        if len(batches) == 1:
            await release.wait()
        return httpx.Response(
            200,
            json={
                "results": [{"step_run_id": i["step_run_id"], "status": "succeeded"} for i in items]
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://c") as h:
        reporter = Reporter(h, deadline_s=lambda: 5.0)
        task = asyncio.create_task(reporter.run())
        first = asyncio.create_task(reporter.report("s0", "t0", complete(0), lambda: False))
        while not batches:
            await asyncio.sleep(0.001)
        rest = [
            asyncio.create_task(reporter.report(f"s{i}", f"t{i}", complete(i), lambda: False))
            for i in range(1, 6)
        ]
        await asyncio.sleep(0.01)
        release.set()
        verdicts = await asyncio.gather(first, *rest)
        await reporter.close(task)
    assert [len(b) for b in batches] == [1, 5]
    assert batches[1][2] == {"step_run_id": "s3", "lease_token": "t3", "output": 3}
    assert {v["status"] for v in verdicts} == {"succeeded"}


async def test_a_batch_refused_as_a_whole_is_sent_one_by_one() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(413, json={"code": "payload_too_large", "status": 413})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://c") as h:
        reporter = Reporter(h, deadline_s=lambda: 5.0)
        task = asyncio.create_task(reporter.run())
        verdict = await reporter.report("s", "t", complete("x" * 10), lambda: False)
        await reporter.close(task)
    assert verdict == {"status": SEND_ONE_BY_ONE}
