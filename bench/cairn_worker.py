"""A Cairn worker process for the bench: ``python -m bench.cairn_worker URL [RECORD_FILE]``.

Runs ``worker_sdk.Worker`` with the settings a user gets by default (slots and all). The
``bench_lat`` step appends ``run_id step_run_id time.time()`` at step start to RECORD_FILE.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
import time
from typing import Any

from worker_sdk import Context, Worker, Workflow

noop = Workflow("bench_noop")
chain = Workflow("bench_chain")
diamond = Workflow("bench_diamond")
lat = Workflow("bench_lat")


@noop.step()
def step(ctx: Context) -> dict[str, Any]:
    return {}


@chain.step()
def c1(ctx: Context) -> dict[str, Any]:
    return {}


@chain.step(parents=[c1])
def c2(ctx: Context) -> dict[str, Any]:
    return {}


@chain.step(parents=[c2])
def c3(ctx: Context) -> dict[str, Any]:
    return {}


@diamond.step()
def d_start(ctx: Context) -> dict[str, Any]:
    return {}


def _branch(name: str) -> Any:
    def fn(ctx: Context) -> dict[str, Any]:
        return {}

    fn.__name__ = fn.__qualname__ = name
    return diamond.step(parents=[d_start], name=name)(fn)


BRANCHES = [_branch(f"d_mid{i}") for i in range(4)]


@diamond.step(parents=BRANCHES)
def d_end(ctx: Context) -> dict[str, Any]:
    return {}


_record_lock = threading.Lock()
_record: Any = None


@lat.step()
def timed(ctx: Context) -> dict[str, Any]:
    now = time.time()
    if _record is not None:
        with _record_lock:
            _record.write(f"{ctx.run_id} {ctx.step_run_id} {now:.6f}\n")
            _record.flush()
    return {}


WORKFLOWS = [noop, chain, diamond, lat]


def default_slots() -> int:
    """What ``Worker(...)`` uses when the user does not pass ``slots``."""
    default = inspect.signature(Worker.__init__).parameters["slots"].default
    return int(default)


def main(argv: list[str]) -> int:
    global _record
    logging.basicConfig(level=logging.WARNING)
    url = argv[0]
    if len(argv) > 1:
        _record = open(argv[1], "a", buffering=1)  # noqa: SIM115
    Worker(url, workflows=WORKFLOWS).run()  # default slots, heartbeats, poll wait
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
