"""The Worker loops against an in-memory fake server (httpx.MockTransport, no sockets)."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from tests.unit.sdk_fakes import (
    FakeServer,
    echo_workflow,
    make_worker,
    until,
    work_until_reported,
)
from worker_sdk import Context, DefinitionError, NonRetryableError, Worker, Workflow


async def test_runs_steps_and_reports_outcomes() -> None:
    wf = Workflow("orders")

    @wf.step
    async def double(ctx: Context) -> int:
        return int(ctx.input["x"]) * 2

    @wf.step(parents=[double])
    def check(ctx: Context) -> None:
        raise NonRetryableError(f"bad {ctx.parent_output(double)}")

    @wf.step(parents=[double])
    def weird(ctx: Context) -> object:
        return {1, 2}

    @wf.on_failure
    def boom(ctx: Context) -> None:
        raise ValueError("kaput")

    server = FakeServer()
    server.add_task("1", "orders.double")
    server.add_task("2", "orders.check", parents={"double": 42})
    server.add_task("3", "orders.weird")
    server.add_task("4", "orders.boom")
    server.add_task("5", "orders.unknown")
    worker = make_worker(server, [wf], name="w-test")
    await work_until_reported(worker, server, 5)

    assert server.definitions == {"orders": wf.definition()}
    (reg,) = server.registrations
    assert reg == {
        "name": "w-test",
        "actions": ["orders.boom", "orders.check", "orders.double", "orders.weird"],
        "slots": 4,
    }
    got = {sr: (kind, body) for sr, kind, body in server.reports}
    assert got["1"] == ("complete", {"lease_token": "lease-1", "output": 42})
    assert got["2"] == (
        "fail",
        {"lease_token": "lease-2", "error": {"type": "NonRetryableError", "message": "bad 42"},
         "retryable": False},
    )  # fmt: skip
    assert got["3"][1]["error"]["type"] == "OutputNotSerializable"
    assert got["3"][1]["retryable"] is False
    assert got["4"][1]["error"] == {"type": "ValueError", "message": "kaput"}
    assert got["4"][1]["retryable"] is True
    assert got["5"][1]["error"]["type"] == "ActionNotRegistered"
    assert server.deleted == ["w1"]


async def test_never_asks_for_more_tasks_than_free_slots() -> None:
    wf = Workflow("w")
    release = asyncio.Event()

    @wf.step
    async def slow(ctx: Context) -> str:
        await release.wait()
        return ctx.step_run_id

    server = FakeServer()
    for i in range(3):
        server.add_task(str(i), "w.slow")
    worker = make_worker(server, [wf], slots=2)
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.heartbeats) >= 3 and len(server.heartbeats[-1]) == 2)
    assert server.polls == [2]  # both slots busy: no poll at all
    release.set()
    await until(lambda: len(server.reports) == 3)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert len(server.polls) >= 2  # polling resumed once a slot freed
    assert 1 <= max(server.polls) <= 2


async def test_a_poll_asks_only_for_the_slots_the_server_finds_free() -> None:
    """A result on its way on its own keeps its slot busy on the server until it is applied:
    a poll counting that slot as free would claim nothing for it, and a real server's poll
    that claims nothing waits for new work instead of answering."""
    wf = echo_workflow()
    server = FakeServer()
    server.carry = True
    server.poll_cap = 2  # fewer than the worker's slots: it polls again while steps run
    # The second poll carries nothing (its steps had not finished): while it is answered, the
    # first poll's steps finish and their results go on their own, and take a while.
    server.bare_poll_delay = 0.05
    server.results_delay = 0.3
    for i in range(16):
        server.add_task(str(i), "w.quick")
    worker = make_worker(server, [wf], slots=4)
    await work_until_reported(worker, server, 16)
    assert sorted(sr for sr, _, _ in server.reports) == sorted(str(i) for i in range(16))
    assert server.overasked == []


async def test_cancelled_and_lost_steps_stop_and_are_not_reported() -> None:
    wf = Workflow("w")
    seen: dict[str, str | None] = {}

    @wf.step
    async def waits(ctx: Context) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            seen[ctx.step_run_id] = ctx.cancel_reason

    @wf.step
    def spins(ctx: Context) -> str:
        ctx.wait_cancelled(5)
        seen[ctx.step_run_id] = ctx.cancel_reason
        return "too late"

    server = FakeServer()
    server.add_task("a", "w.waits")
    server.add_task("b", "w.spins")
    server.add_task("c", "w.waits")
    server.verdicts = {"a": "cancelled", "b": "lost"}
    worker = make_worker(server, [wf])
    runner = asyncio.create_task(worker.arun())
    await until(lambda: "a" in seen and "b" in seen)
    with server.lock:
        server.poll_cancelled.append("c")
    await until(lambda: "c" in seen)
    await until(lambda: not worker._steps.ids())
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert seen == {"a": "cancelled", "b": "lost", "c": "cancelled"}
    assert server.reports == []


async def test_reregisters_when_the_server_forgot_the_worker() -> None:
    wf = Workflow("w")

    @wf.step
    def one(ctx: Context) -> int:
        return 1

    server = FakeServer()
    server.forget_worker = True
    server.add_task("1", "w.one")
    worker = make_worker(server, [wf])
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == 1)
    assert worker.worker_id == "w2"
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert len(server.registrations) == 2
    assert server.deleted == ["w2"]


async def test_409_on_report_is_dropped_without_retry() -> None:
    wf = Workflow("w")

    @wf.step
    async def one(ctx: Context) -> int:
        return 1

    server = FakeServer()
    server.report_status = 409
    server.add_task("1", "w.one")
    worker = make_worker(server, [wf])
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == 1)
    await until(lambda: not worker._steps.ids())
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert len(server.reports) == 1


async def test_graceful_shutdown_finishes_quick_steps_and_abandons_slow_ones() -> None:
    wf = Workflow("w")
    started: list[str] = []

    @wf.step
    async def quick(ctx: Context) -> str:
        started.append(ctx.step_run_id)
        await asyncio.sleep(0.01)
        return "done"

    @wf.step
    async def stuck(ctx: Context) -> None:
        started.append(ctx.step_run_id)
        await asyncio.sleep(30)

    server = FakeServer()
    server.add_task("q", "w.quick")
    server.add_task("s", "w.stuck")
    worker = make_worker(server, [wf], shutdown_grace_s=0.1)
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(started) == 2)
    polls = len(server.polls)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    assert [(sr, kind) for sr, kind, _ in server.reports] == [("q", "complete")]
    assert server.deleted == ["w1"]
    assert len(server.polls) <= polls + 1  # polling stopped at once


def test_conflicting_actions_across_workflows_are_rejected() -> None:
    a, b = Workflow("a"), Workflow("b")
    a.step(name="x", action="shared")(lambda ctx: 1)
    b.step(name="y", action="shared")(lambda ctx: 2)
    with pytest.raises(DefinitionError, match="bound to two functions"):
        Worker("http://cairn", workflows=[a, b])
    with pytest.raises(DefinitionError, match="at least one"):
        Worker("http://cairn", workflows=[])


def test_run_blocks_until_stop_from_another_thread() -> None:
    wf = Workflow("w")
    wf.step(name="x")(lambda ctx: 1)
    server = FakeServer()
    worker = make_worker(server, [wf])

    def stop_once_registered() -> None:  # a stop before it registers leaves nothing to delete
        deadline = time.monotonic() + 10
        while not server.registrations and time.monotonic() < deadline:
            time.sleep(0.005)
        worker.stop()

    threading.Thread(target=stop_once_registered, daemon=True).start()
    before = signal.getsignal(signal.SIGTERM)
    worker.run()  # on pytest's main thread: installs signal handlers, then restores them
    assert signal.getsignal(signal.SIGTERM) is before
    assert server.deleted == ["w1"]


async def test_stop_before_start_returns_without_registering() -> None:
    wf = Workflow("w")
    wf.step(name="x")(lambda ctx: 1)
    server = FakeServer()
    worker = make_worker(server, [wf])
    worker.stop()
    await asyncio.wait_for(worker.arun(), 5)
    assert server.registrations == []
    assert server.polls == []
