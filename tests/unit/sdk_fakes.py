"""An in-memory fake Cairn server for the Worker's unit tests (httpx.MockTransport, no sockets)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from worker_sdk import Context, Worker, Workflow


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


async def work_until_reported(worker: Worker, server: FakeServer, n: int) -> None:
    """Run ``worker`` until ``server`` holds ``n`` reports, then stop it and wait for it."""
    runner = asyncio.create_task(worker.arun())
    await until(lambda: len(server.reports) == n)
    worker.stop()
    await asyncio.wait_for(runner, 5)
