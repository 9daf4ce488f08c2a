"""Workflows run by the worker processes of the end-to-end tests.

Every execution appends a line to the ledger file named by ``E2E_LEDGER`` (one JSON object per
line), so tests can count executions across processes that were killed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from worker_sdk import Context, NonRetryableError, RetryAfter, Worker, Workflow


def ledger(event: str, ctx: Context, **extra: Any) -> None:
    path = os.environ.get("E2E_LEDGER")
    if not path:
        return
    line = {
        "event": event,
        "step": ctx.step,
        "step_run_id": ctx.step_run_id,
        "attempt": ctx.attempt,
        "pid": os.getpid(),
        **extra,
    }
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")


def _pause(ctx: Context, seconds: float) -> bool:
    """Sleep in small pieces; return True if the step was cancelled meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.cancelled:
            return True
        time.sleep(0.05)
    return ctx.cancelled


pipeline = Workflow("pipeline")


@pipeline.step(retries=3)
def fetch(ctx: Context) -> dict[str, Any]:
    ledger("start", ctx)
    return {"n": ctx.input.get("n", 0)}


@pipeline.step(parents=[fetch], retries=3)
def work(ctx: Context) -> dict[str, Any]:
    ledger("start", ctx)
    if _pause(ctx, float(ctx.input.get("sleep", 0))):
        ledger("cancel_seen", ctx)
        return {"cancelled": True}
    ledger("done", ctx)
    return {"n": ctx.parent_output(fetch)["n"] * 2, "pid": os.getpid()}


@pipeline.step(parents=[work], retries=3)
def publish(ctx: Context) -> dict[str, Any]:
    ledger("start", ctx)
    return {"result": ctx.parent_output(work)["n"] + 1}


outcomes = Workflow("outcomes")


@outcomes.step(retries=3, backoff={"initial_s": 0.05, "jitter": 0})
def flaky(ctx: Context) -> str:
    ledger("start", ctx)
    if ctx.attempt == 1:
        raise RetryAfter(0.1)
    if ctx.attempt == 2:
        raise RuntimeError("transient")
    return "third time lucky"


@outcomes.step(retries=5)
def doomed(ctx: Context) -> str:
    ledger("start", ctx)
    raise NonRetryableError("bad input, do not retry")


async_flow = Workflow("asyncflow")


@async_flow.step(retries=1)
async def waiter(ctx: Context) -> str:
    import asyncio

    ledger("start", ctx)
    try:
        await asyncio.sleep(float(ctx.input.get("sleep", 0)))
    except asyncio.CancelledError:
        ledger("cancel_seen", ctx)
        raise
    return "waited"


hog = Workflow("hog")


@hog.step()
async def block_the_loop(ctx: Context) -> str:
    """Blocks the worker's event loop well past the lease: heartbeats must come from a thread."""
    ledger("start", ctx)
    time.sleep(float(ctx.input.get("block", 0)))
    return "survived"


def make_worker() -> Worker:
    return Worker(
        os.environ["CAIRN_URL"],
        workflows=[pipeline, outcomes, async_flow, hog],
        slots=int(os.environ.get("E2E_SLOTS", "4")),
        lease_timeout_s=float(os.environ.get("E2E_LEASE_S", "2")),
        heartbeat_interval_s=float(os.environ.get("E2E_HEARTBEAT_S", "0.4")),
        poll_wait_s=2.0,
        shutdown_grace_s=float(os.environ.get("E2E_GRACE_S", "10")),
    )


worker = make_worker() if os.environ.get("CAIRN_URL") else None
