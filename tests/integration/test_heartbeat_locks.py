"""A heartbeat never waits for a step run another transaction holds.

A poll carrying results locks the step runs it completes in the order the worker sent them, while
the same worker's heartbeat renewed its leases in id order and held its worker's row: each could
hold what the other waited for. Postgres broke every such cycle after ``deadlock_timeout`` (1 s)
by aborting one side (9 times in one run of the bench's half-of-max phase, which reached 42 s of
dispatch latency with the stale plans of ``test_stale_plans.py``). Now the heartbeat skips a
locked step run and answers it ``held`` from its stored state: the lease stands, the next
heartbeat renews it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from tests.integration.conftest import Api

# Far longer than a heartbeat takes, far shorter than the lock is held in these tests.
NOT_WAITING_S = 10.0


async def _setup(api: Api, n: int) -> tuple[str, list[dict[str, Any]]]:
    await api.register("hbl", [{"name": "s"}])
    for _ in range(n):
        await api.trigger("hbl")
    w = await api.worker(["hbl.s"])
    tasks = await api.poll(w, max_tasks=n)
    assert len(tasks) == n
    return w, sorted(tasks, key=lambda t: str(t["step_run_id"]))


async def _leases(conn: asyncpg.Connection, ids: list[str]) -> dict[str, datetime]:
    rows = await conn.fetch(
        "SELECT id::text AS id, lease_expires_at FROM step_runs WHERE id = ANY($1::uuid[])", ids
    )
    return {r["id"]: r["lease_expires_at"] for r in rows}


async def _heartbeat(api: Api, w: str, ids: list[str]) -> dict[str, str]:
    body = {"step_run_ids": ids}
    r = await asyncio.wait_for(
        api.json("POST", f"/workers/{w}/heartbeat", json=body), NOT_WAITING_S
    )
    answers: dict[str, str] = r["step_runs"]
    return answers


@pytest.fixture
async def pg(db_url: str) -> Any:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    yield conn
    await conn.close()


async def test_a_step_run_locked_elsewhere_is_skipped_and_answered_held(
    api: Api, pg: asyncpg.Connection
) -> None:
    w, (first, second) = await _setup(api, 2)
    ids = [str(first["step_run_id"]), str(second["step_run_id"])]
    before = await _leases(pg, ids)
    await api.age(5)  # so a renewal moves the expiry forward
    aged = await _leases(pg, ids)
    # Another transaction holds the second step run (as a poll completing it does), then wants
    # the first: the order that closed a cycle with a heartbeat renewing both in id order.
    tx = pg.transaction()
    await tx.start()
    try:
        await pg.execute("SELECT 1 FROM step_runs WHERE id = $1 FOR UPDATE", ids[1])
        answers = await _heartbeat(api, w, ids)
        assert answers == {ids[0]: "held", ids[1]: "held"}
        # The heartbeat committed and let go of the first step run: taking it does not wait.
        await pg.execute("SET LOCAL lock_timeout = '2s'")
        await pg.execute("SELECT 1 FROM step_runs WHERE id = $1 FOR UPDATE", ids[0])
    finally:
        await tx.rollback()
    after = await _leases(pg, ids)
    assert after[ids[0]] > aged[ids[0]]  # renewed
    assert after[ids[1]] == aged[ids[1]] < before[ids[1]]  # skipped: its lease as it was
    # Released: the next heartbeat renews it.
    assert await _heartbeat(api, w, ids) == {ids[0]: "held", ids[1]: "held"}
    assert (await _leases(pg, ids))[ids[1]] > aged[ids[1]]


async def test_a_cancellation_of_a_locked_step_run_is_told_by_the_next_heartbeat(
    api: Api, pg: asyncpg.Connection
) -> None:
    w, (task,) = await _setup(api, 1)
    sid = str(task["step_run_id"])
    await api.call("POST", f"/runs/{task['run_id']}/cancel", 202)
    tx = pg.transaction()
    await tx.start()
    try:
        await pg.execute("SELECT 1 FROM step_runs WHERE id = $1 FOR UPDATE", sid)
        assert await _heartbeat(api, w, [sid]) == {sid: "held"}
    finally:
        await tx.rollback()
    assert await _heartbeat(api, w, [sid]) == {sid: "cancelled"}
    step = (await api.run(task["run_id"]))["steps"][0]
    assert step["status"] == "cancelled"
    assert [a["outcome"] for a in step["attempts"]] == ["cancelled"]


async def test_a_step_run_finished_or_expired_is_still_lost(
    api: Api, pg: asyncpg.Connection
) -> None:
    w, (done, expired) = await _setup(api, 2)
    await api.complete(done, {"ok": True})
    await pg.execute(
        "UPDATE step_runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
        str(expired["step_run_id"]),
    )
    ids = [str(done["step_run_id"]), str(expired["step_run_id"])]
    assert await _heartbeat(api, w, ids) == {ids[0]: "lost", ids[1]: "lost"}
