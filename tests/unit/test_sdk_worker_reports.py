"""The Worker's reports and its process-level behaviour, against the in-memory fake server."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from tests.unit.sdk_fakes import (
    FakeServer,
    echo_workflow,
    make_worker,
    until,
    work_until_reported,
)
from worker_sdk import CairnError, Context, Worker, Workflow


async def test_results_ride_on_the_next_poll_when_the_server_takes_them() -> None:
    wf = Workflow("w")
    gate = threading.Event()

    @wf.step
    def quick(ctx: Context) -> str:
        gate.wait(5)
        return ctx.step_run_id

    server = FakeServer()
    server.carry = True
    for i in range(8):
        server.add_task(str(i), "w.quick")
    worker = make_worker(server, [wf], slots=4)
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.polls) >= 1)
    gate.set()
    await until(lambda: len(server.reports) == 8)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert sorted(sr for sr, _, _ in server.reports) == [str(i) for i in range(8)]  # each once
    assert server.carried, "a busy worker's results should ride on its polls"
    assert all(
        body == {"lease_token": f"lease-{sr}", "output": sr} for sr, _, body in server.reports
    )


async def test_results_a_poll_could_not_carry_are_sent_on_their_own() -> None:
    wf = echo_workflow()
    server = FakeServer()
    server.carry = True
    server.refuse_carrying = 100  # e.g. an output the poll's body limit refuses
    for i in range(6):
        server.add_task(str(i), "w.quick")
    worker = make_worker(server, [wf], slots=2)
    await work_until_reported(worker, server, 6)
    assert server.carried == []
    assert sorted(sr for sr, _, _ in server.reports) == [str(i) for i in range(6)]


async def test_a_malformed_task_is_skipped_and_the_rest_of_its_poll_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wf = Workflow("mixed")

    @wf.step
    def ok(ctx: Context) -> int:
        return 1

    server = FakeServer()
    server.add_task("1", "mixed.ok")
    server.add_task("2", "mixed.ok", attempt="not a number")
    server.add_task("3", "mixed.ok")
    worker = make_worker(server, [wf])
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == 2)  # "2" was dropped before "1" and "3" started
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert sorted(sr for sr, _, _ in server.reports) == ["1", "3"]
    assert "ignoring malformed task" in caplog.text


async def test_a_running_worker_tunes_the_gc_unless_told_not_to() -> None:
    wf = Workflow("g")
    wf.step(name="s")(lambda ctx: None)
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        for threshold in (12_345, None):
            server = FakeServer()
            worker = make_worker(server, [wf], gc_threshold=threshold)
            runner = asyncio.create_task(worker.arun())
            await until(lambda s=server: len(s.polls) >= 1)  # type: ignore[misc]
            if threshold is None:
                assert gc.get_threshold() == before and gc.get_freeze_count() == frozen
            else:
                assert gc.get_threshold() == (threshold, *before[1:])
                assert gc.get_freeze_count() > frozen
            worker.stop()
            await asyncio.wait_for(runner, 5)
            gc.unfreeze()
            gc.set_threshold(*before)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    with pytest.raises(CairnError):
        Worker("http://x", workflows=[wf], gc_threshold=-1)


async def test_an_async_step_raising_systemexit_fails_and_the_worker_carries_on() -> None:
    """As for sync steps: SystemExit or KeyboardInterrupt from a step's code is its failure,
    not the worker's exit (else every worker that claims the step would stop)."""
    wf = Workflow("exits")

    @wf.step
    async def leave(ctx: Context) -> None:
        raise SystemExit(3)

    @wf.step
    async def interrupt(ctx: Context) -> None:
        raise KeyboardInterrupt

    @wf.step
    async def fine(ctx: Context) -> str:
        return "ok"

    server = FakeServer()
    server.add_task("1", "exits.leave")
    server.add_task("2", "exits.interrupt")
    server.add_task("3", "exits.fine")
    worker = make_worker(server, [wf])
    await work_until_reported(worker, server, 3)
    got = {sr: (kind, body) for sr, kind, body in server.reports}
    assert got["1"][0] == "fail" and got["1"][1]["error"]["type"] == "SystemExit"
    assert got["2"][0] == "fail" and got["2"][1]["error"]["type"] == "KeyboardInterrupt"
    assert got["1"][1]["retryable"] is True
    assert got["3"] == ("complete", {"lease_token": "lease-3", "output": "ok"})


async def test_a_new_attempt_handed_to_the_same_worker_stops_the_stale_one() -> None:
    """The worker lost the lease (frozen, say) and the step's next attempt came back to it: the
    old attempt learns it lost the step, and only the new one reports."""
    wf = Workflow("w")
    seen: dict[str, str | None] = {}
    release = threading.Event()

    @wf.step
    def waits(ctx: Context) -> int:
        attempt = ctx.attempt
        if attempt == 1:
            ctx.wait_cancelled(5)
            seen["first"] = ctx.cancel_reason
        else:
            release.wait(5)
        return attempt

    server = FakeServer()
    server.add_task("s", "w.waits")
    worker = make_worker(server, [wf])
    runner = asyncio.create_task(worker.arun())
    await until(lambda: "s" in worker._steps.ids())
    server.add_task("s", "w.waits", attempt=2, lease_token="lease-s-2")
    await until(lambda: "first" in seen)
    release.set()
    await until(lambda: len(server.reports) == 1)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert seen == {"first": "lost"}
    [(sid, kind, body)] = server.reports
    assert (sid, kind, body["lease_token"], body["output"]) == ("s", "complete", "lease-s-2", 2)
