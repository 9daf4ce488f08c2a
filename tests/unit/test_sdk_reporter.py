"""Results are coalesced while a request is in flight; a batch refused whole falls back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from worker_sdk.errors import HTTPError
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


async def test_held_results_wait_for_a_poll_and_come_back_when_it_fails() -> None:
    sent: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)["results"]
        sent.append([i["step_run_id"] for i in items])
        out = [{"step_run_id": i["step_run_id"], "status": "succeeded"} for i in items]
        return httpx.Response(200, json={"results": out})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://c") as h:
        reporter = Reporter(h, deadline_s=lambda: 5.0)
        task = asyncio.create_task(reporter.run())
        reporter.hold()
        a = asyncio.create_task(reporter.report("a", "ta", complete(1), lambda: False))
        b = asyncio.create_task(reporter.report("b", "tb", complete(2), lambda: False))
        gone = asyncio.create_task(reporter.report("c", "tc", complete(3), lambda: True))
        await asyncio.sleep(0.02)
        assert sent == []  # held: left for the poll
        carried = reporter.take(10)
        assert [i.step_run_id for i in carried] == ["a", "b"]
        assert await gone == {"status": "dropped"}
        reporter.settle(carried[:1], [{"step_run_id": "a", "status": "succeeded"}])
        assert await a == {"step_run_id": "a", "status": "succeeded"}
        reporter.give_back(carried[1:])  # that poll failed: sent on its own, even while held
        assert (await b)["status"] == "succeeded" and sent == [["b"]]
        late = asyncio.create_task(reporter.report("d", "td", complete(4), lambda: False))
        await asyncio.sleep(0.02)
        assert sent == [["b"]]
        reporter.release()  # the poll loop waits now: send directly
        assert (await late)["status"] == "succeeded" and sent == [["b"], ["d"]]
        await reporter.close(task)


async def test_a_poll_answer_short_of_results_fails_the_missing_items() -> None:
    async with httpx.AsyncClient(base_url="http://c") as h:
        reporter = Reporter(h, deadline_s=lambda: 5.0)
        reporter.hold()
        a = asyncio.create_task(reporter.report("a", "ta", complete(1), lambda: False))
        b = asyncio.create_task(reporter.report("b", "tb", complete(2), lambda: False))
        await asyncio.sleep(0)
        carried = reporter.take(10)
        reporter.settle(carried, [{"step_run_id": "a", "status": "succeeded"}])
        assert (await a)["status"] == "succeeded"
        with pytest.raises(HTTPError):
            await b
