"""Two results batches over the same runs never deadlock, whatever order their items come in.

Completions lock their runs in id order, in one statement; a failure locks its own run when its
turn comes. So a batch completing a step of run 1 and failing one of run 2 and a batch completing
a step of run 2 and failing one of run 1 could each hold the run the other waited for, a cycle
Postgres breaks by aborting one of them after ``deadlock_timeout`` (the API then retries it). A
batch carrying failures now locks every run it touches first, in id order, in one statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from api import results
from api.schemas import ErrorIn, ResultIn
from db.models import DEFAULT_TENANT_ID
from db.pg import Conn, Row, init_connection
from db.types import Effects
from tests.integration.conftest import Api

WAIT_S = 10.0  # far longer than any step here takes; the deadlock check runs after 0.1 s


@pytest.fixture
async def conns(db_url: str) -> AsyncIterator[list[asyncpg.Connection]]:
    dsn = db_url.replace("postgresql+asyncpg", "postgresql")
    opened = [await asyncpg.connect(dsn, record_class=Row) for _ in range(3)]
    for conn in opened:
        await init_connection(conn)
    yield opened
    for conn in opened:
        await conn.close()


async def _held_steps(api: Api) -> dict[tuple[str, str], dict[str, Any]]:
    """Two runs of two independent steps, all four step runs claimed: (run, step) → task."""
    await api.register("rl", [{"name": "p"}, {"name": "q"}])
    first, second = await api.trigger("rl"), await api.trigger("rl")
    w = await api.worker(["rl.p", "rl.q"])
    tasks = await api.poll(w, max_tasks=4)
    assert len(tasks) == 4
    names = {first["id"]: "r1", second["id"]: "r2"}
    return {(names[t["run_id"]], t["step"]): t for t in tasks}


def _batch(done: dict[str, Any], failed: dict[str, Any]) -> results.Batch:
    items = [
        ResultIn(step_run_id=done["step_run_id"], lease_token=done["lease_token"], output=1),
        ResultIn(
            step_run_id=failed["step_run_id"],
            lease_token=failed["lease_token"],
            error=ErrorIn(type="Boom", message="no"),
            retryable=False,
        ),
    ]
    return results.prepare(items, max_batch=100, max_payload_bytes=1 << 20)


async def _waiting_for_a_lock(watcher: asyncpg.Connection, conn: asyncpg.Connection) -> None:
    pid = conn.get_server_pid()
    for _ in range(int(WAIT_S / 0.01)):
        state = await watcher.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        if state == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


async def _apply(conn: asyncpg.Connection, batch: results.Batch) -> list[dict[str, Any]]:
    async with conn.transaction():
        await conn.execute("SET LOCAL deadlock_timeout = '100ms'")
        return await results.apply(Conn(conn, []), DEFAULT_TENANT_ID, batch, Effects())


async def test_crossed_batches_with_failures_do_not_deadlock(
    api: Api, conns: list[asyncpg.Connection]
) -> None:
    steps = await _held_steps(api)
    blocker, conn_a, conn_b = conns
    a = _batch(done=steps["r1", "p"], failed=steps["r2", "p"])
    b = _batch(done=steps["r2", "q"], failed=steps["r1", "q"])
    # A third transaction holds the step run batch A completes, so A stops there while B runs
    # into it: before, A held run 1 there and B, holding run 2 from its completion, then waited
    # for run 1; once A went on to its failure it waited for run 2: a cycle.
    hold = blocker.transaction()
    await hold.start()
    await blocker.execute(
        "SELECT 1 FROM step_runs WHERE id = $1 FOR UPDATE", steps["r1", "p"]["step_run_id"]
    )
    task_a = asyncio.create_task(_apply(conn_a, a))
    await _waiting_for_a_lock(blocker, conn_a)
    task_b = asyncio.create_task(_apply(conn_b, b))
    await _waiting_for_a_lock(blocker, conn_b)
    await hold.rollback()
    answers_a, answers_b = await asyncio.wait_for(asyncio.gather(task_a, task_b), WAIT_S)

    assert [o["status"] for o in answers_a] == ["succeeded", "failed"]
    assert [o["status"] for o in answers_b] == ["succeeded", "failed"]
    for run_id in {t["run_id"] for t in steps.values()}:
        run = await api.run(run_id)
        assert run["status"] == "failed"
        assert sorted(s["status"] for s in run["steps"]) == ["failed", "succeeded"]
        assert all(len(s["attempts"]) == 1 for s in run["steps"])
