"""The Worker loops against an in-memory fake server (httpx.MockTransport, no sockets)."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from worker_sdk import CairnError, Context, DefinitionError, NonRetryableError, Worker, Workflow


class FakeServer:
    """Just enough of the REST contract; thread-safe (the heartbeat runs on its own thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[dict[str, Any]] = []
        self.poll_cancelled: list[str] = []
        self.verdicts: dict[str, str] = {}
        self.report_status = 200
        self.reports: list[tuple[str, str, dict[str, Any]]] = []
        self.polls: list[int] = []
        self.heartbeats: list[list[str]] = []
        self.registrations: list[dict[str, Any]] = []
        self.definitions: dict[str, Any] = {}
        self.deleted: list[str] = []
        self.forget_worker = False  # next poll answers 404
        self.carry = False  # polls may carry results (announced at registration)
        self.carried: list[str] = []  # step run ids that arrived on a poll
        self.refuse_carrying = 0  # this many polls carrying results answer 422
        self.poll_cap: int | None = None  # tasks one poll hands out at most (poll_max_tasks)
        self.results_delay = 0.0  # seconds /step-runs/results takes to answer
        self.bare_poll_delay = 0.0  # seconds a poll carrying no result takes to answer
        self.outstanding = 0  # tasks handed out whose result has not arrived
        self.overasked: list[tuple[int, int]] = []  # (max_tasks, slots free here) of polls
        self.sync = httpx.MockTransport(self.handle)
        self.async_ = httpx.MockTransport(self.ahandle)

    def add_task(self, step_run_id: str, action: str, **over: Any) -> None:
        workflow, _, step = action.partition(".")
        task = {
            "step_run_id": step_run_id, "run_id": f"run-{step_run_id}", "workflow": workflow,
            "version": 1, "step": step, "action": action, "attempt": 1,
            "lease_token": f"lease-{step_run_id}", "input": {"x": 21}, "parents": {},
            "timeout_at": None, "lease_expires_at": None, "delivery": "at_least_once",
        }  # fmt: skip
        task.update(over)
        with self.lock:
            self.queue.append(task)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        body: Any = json.loads(request.content) if request.content else None
        with self.lock:
            if request.method == "PUT" and path.startswith("/workflows/"):
                self.definitions[path.split("/")[2]] = body
                return httpx.Response(201, json={"name": path.split("/")[2], "version": 1})
            if path == "/workers":
                self.registrations.append(body)
                wid = f"w{len(self.registrations)}"
                answer = {"id": wid, "heartbeat_interval_s": 0.02, "lease_timeout_s": 2}
                return httpx.Response(201, json=answer | {"poll_accepts_results": self.carry})
            if path.endswith("/heartbeat"):
                ids = body["step_run_ids"]
                self.heartbeats.append(ids)
                return httpx.Response(
                    200, json={"step_runs": {i: self.verdicts.get(i, "held") for i in ids}}
                )
            if path == "/step-runs/results":
                return httpx.Response(200, json={"results": self.take_results(body["results"])})
            if path.startswith("/step-runs/"):
                _, _, sr, kind = path.split("/")
                self.reports.append((sr, kind, body))
                if self.report_status != 200:
                    return httpx.Response(self.report_status, json={"code": "lease_lost"})
                return httpx.Response(200, json={"status": "succeeded"})
            if request.method == "DELETE":
                self.deleted.append(path.split("/")[2])
                return httpx.Response(204)
        return httpx.Response(404, json={"code": "not_found"})

    def take_results(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        self.outstanding -= len(items)
        for item in items:
            sr = item.pop("step_run_id")
            kind = "fail" if "error" in item else "complete"
            self.reports.append((sr, kind, item))
            if self.report_status == 200:
                out.append({"step_run_id": sr, "status": "succeeded"})
            else:
                out.append({"step_run_id": sr, "status": "rejected", "code": "lease_lost"})
        return out

    async def ahandle(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/poll"):
            if request.url.path.endswith("/step-runs/results") and self.results_delay:
                await asyncio.sleep(self.results_delay)
            return self.handle(request)
        body = json.loads(request.content)
        if self.bare_poll_delay and not body.get("results"):
            await asyncio.sleep(self.bare_poll_delay)
        with self.lock:
            if self.forget_worker:
                self.forget_worker = False
                return httpx.Response(404, json={"code": "not_found", "status": 404})
            carried = body.get("results", [])
            if carried and self.refuse_carrying:
                self.refuse_carrying -= 1
                return httpx.Response(422, json={"code": "invalid_payload", "status": 422})
            self.carried += [item["step_run_id"] for item in carried]
            results = self.take_results(carried)
            self.polls.append(body["max_tasks"])
            free = self.registrations[-1]["slots"] - self.outstanding
            if body["max_tasks"] > free:
                self.overasked.append((body["max_tasks"], free))
            n = min(body["max_tasks"], free, self.poll_cap or body["max_tasks"])
            tasks, self.queue = self.queue[:n], self.queue[n:]
            self.outstanding += len(tasks)
            cancelled, self.poll_cancelled = self.poll_cancelled, []
        if not tasks and not cancelled and not carried:
            await asyncio.sleep(0.01)
        answer = {"tasks": tasks, "cancelled": cancelled}
        return httpx.Response(200, json=answer | ({"results": results} if self.carry else {}))


def make_worker(server: FakeServer, workflows: list[Workflow], **kw: Any) -> Worker:
    kw.setdefault("slots", 4)
    kw.setdefault("gc_threshold", None)  # the test process's GC is left alone
    return Worker(
        "http://cairn",
        workflows=workflows,
        transport=server.sync,
        async_transport=server.async_,
        poll_wait_s=1,
        **kw,
    )


def echo_workflow() -> Workflow:
    """Workflow ``w`` with one sync step ``w.quick`` that returns its step run id."""
    wf = Workflow("w")

    @wf.step
    def quick(ctx: Context) -> str:
        return ctx.step_run_id

    return wf


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


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
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == 5)
    worker.stop()
    await asyncio.wait_for(runner, 5)

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
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == 16)
    worker.stop()
    await asyncio.wait_for(runner, 5)
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
    await until(lambda: not worker._held_ids())
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
    await until(lambda: not worker._held_ids())
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
    threading.Timer(0.05, worker.stop).start()
    started = time.monotonic()
    before = signal.getsignal(signal.SIGTERM)
    worker.run()  # on pytest's main thread: installs signal handlers, then restores them
    assert signal.getsignal(signal.SIGTERM) is before
    assert time.monotonic() - started < 3
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
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == 6)
    worker.stop()
    await asyncio.wait_for(runner, 5)
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
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == 3)
    worker.stop()
    await asyncio.wait_for(runner, 5)
    got = {sr: (kind, body) for sr, kind, body in server.reports}
    assert got["1"][0] == "fail" and got["1"][1]["error"]["type"] == "SystemExit"
    assert got["2"][0] == "fail" and got["2"][1]["error"]["type"] == "KeyboardInterrupt"
    assert got["1"][1]["retryable"] is True
    assert got["3"] == ("complete", {"lease_token": "lease-3", "output": "ok"})
