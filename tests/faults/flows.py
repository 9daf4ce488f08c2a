"""The workload of the fault scenarios: a 3-step chain with a short, real pause per step."""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from worker_sdk import Context, Worker, Workflow

chain = Workflow("chain")
RETRIES = 25


def _record(ctx: Context) -> None:
    path = os.environ.get("E2E_LEDGER")
    if path:
        line = {"step_run_id": ctx.step_run_id, "attempt": ctx.attempt, "pid": os.getpid()}
        with open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")


@chain.step(retries=RETRIES)
def one(ctx: Context) -> dict[str, Any]:
    _record(ctx)
    time.sleep(random.uniform(0, 0.02))
    return {"v": ctx.input["v"]}


@chain.step(parents=[one], retries=RETRIES)
def two(ctx: Context) -> dict[str, Any]:
    _record(ctx)
    time.sleep(random.uniform(0, 0.02))
    return {"v": ctx.parent_output(one)["v"] + 1}


@chain.step(parents=[two], retries=RETRIES)
def three(ctx: Context) -> dict[str, Any]:
    _record(ctx)
    time.sleep(random.uniform(0, 0.02))
    return {"v": ctx.parent_output(two)["v"] * 2}


def make_worker() -> Worker:
    return Worker(
        os.environ["CAIRN_URL"],
        workflows=[chain],
        slots=int(os.environ.get("E2E_SLOTS", "8")),
        lease_timeout_s=float(os.environ.get("E2E_LEASE_S", "2")),
        heartbeat_interval_s=float(os.environ.get("E2E_HEARTBEAT_S", "0.4")),
        poll_wait_s=2.0,
    )


worker = make_worker() if os.environ.get("CAIRN_URL") else None
