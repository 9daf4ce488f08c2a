"""A claim reads its actions' queues from the floors the app learnt (``db/claim_floors.py``):
not over the dead index entries of every step run claimed before, and never losing a row that
ends up below a floor."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from db import queries as Q
from db.claim_floors import ClaimFloors
from db.pg import compile_sql
from tests.clock import Clock
from tests.integration.conftest import Api
from tests.integration.test_claim_plans import explain
from tests.integration.test_poll_results import poll, result


async def pg(db_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))


def claim_params(tenant: str, worker: str, floors: str | None, n: int) -> dict[str, Any]:
    return {"tenant": tenant, "worker": worker, "max_tasks": n, "now": None, "floors": floors}


async def claim_index_blocks(conn: asyncpg.Connection, params: dict[str, Any]) -> int:
    """Pages of the claim index one CLAIM reads (run under EXPLAIN ANALYZE, rolled back)."""
    plan = await explain(conn, Q.CLAIM, params, buffers=True)
    scans = [n for n in plan if n.get("Index Name") == "ix_step_runs_claim"]
    assert len(scans) == 1, "the claim index is read once: by the scan of the queue"
    read: int = scans[0]["Shared Hit Blocks"] + scans[0]["Shared Read Blocks"]
    return read


async def test_a_claim_does_not_step_over_the_step_runs_claimed_before(
    api: Api, db_url: str
) -> None:
    api.svc.claim_floors = ClaimFloors(generation_s=0.0)  # each claim's floor: the last one
    await api.register("fl", [{"name": "s"}])
    for _ in range(4):  # 2,000 queued step runs, 500 by statement (one available_at each)
        await api.json("POST", "/workflows/fl/runs/bulk", 201, json={"runs": [{}] * 500})
    await api.age(10)  # queued 10 s ago: older than the claim's margin
    conn = await pg(db_url)
    try:
        await conn.execute("ALTER TABLE step_runs SET (autovacuum_enabled = false)")
        w = await api.worker(["fl.s"], slots=100)
        tasks = await api.poll(w, max_tasks=100)
        for _ in range(18):  # 1,900 claimed and completed: their dead entries head the index
            out = await poll(api, w, max_tasks=100, results=[result(t, 1) for t in tasks])
            assert all(r["status"] == "succeeded" for r in out["results"])
            tasks = out["tasks"]
        out = await poll(api, w, max_tasks=1, results=[result(t, 1) for t in tasks])
        assert len(out["tasks"]) == 1
        await poll(api, w, max_tasks=1, results=[result(out["tasks"][0], 1)])
        tenant = await conn.fetchval("SELECT tenant_id::text FROM workers LIMIT 1")
        floors = api.svc.claim_floors.param(tenant, ("fl.s",))
        assert floors is not None
        from_floor = await claim_index_blocks(conn, claim_params(tenant, w, floors, 1))
        from_start = await claim_index_blocks(conn, claim_params(tenant, w, None, 1))
        left = await conn.fetchval("SELECT count(*) FROM step_runs WHERE status = 'queued'")
    finally:
        await conn.close()
    assert left == 98
    # From the start, the claim reads every leaf page of the 1,902 dead entries first (about a
    # hundred entries a page); from its floor, a page or two (and the row's heap page).
    assert from_floor <= 6 and from_start >= 15, (from_floor, from_start)


async def test_a_step_run_below_the_floors_is_claimed_by_the_next_full_scan(
    api: Api, db_url: str
) -> None:
    clock = Clock()
    api.svc.claim_floors = ClaimFloors(rescan_s=5.0, clock=clock)
    await api.register("lo", [{"name": "s"}])
    await api.trigger("lo")
    w = await api.worker(["lo.s"])
    [t] = await api.poll(w)
    await api.complete(t, 1)
    assert await api.poll(w) == []  # the floor is learnt: now
    # A step run queued long ago (as one whose claim rolled back would be) sits below it.
    late = await api.trigger("lo")
    conn = await pg(db_url)
    try:
        await conn.execute(
            "UPDATE step_runs SET available_at = available_at - interval '1 hour',"
            " queued_at = queued_at - interval '1 hour' WHERE run_id = $1",
            late["id"],
        )
    finally:
        await conn.close()
    assert await api.poll(w) == []  # read from the floor: not seen yet
    clock.now += 5.0
    [found] = await api.poll(w)  # the action's full scan: late, never lost
    assert found["run_id"] == late["id"]


async def test_rows_a_multi_action_claim_locked_and_left_are_not_skipped_for_long(
    api: Api, db_url: str
) -> None:
    """A claim for two actions locks the oldest rows of each and leases the oldest of all; a
    concurrent claim skips the others (SKIP LOCKED) and learns a floor past them. The floor the
    first claim learnt still counts, so the next claim finds them."""
    api.svc.claim_floors = ClaimFloors(rescan_s=3600.0, clock=Clock())
    await api.register("xa", [{"name": "s"}])
    await api.register("xb", [{"name": "s"}])
    await api.trigger("xa")
    b_run = await api.trigger("xb")
    await api.age(10)  # both queued 10 s ago: older than the claim's margin
    both = await api.worker(["xa.s", "xb.s"], slots=1)
    only_b = await api.worker(["xb.s"], slots=1)
    api.svc.remember_worker(only_b, ("xb.s",))  # as its first poll here would have
    conn = await pg(db_url)
    try:
        tenant = await conn.fetchval("SELECT tenant_id::text FROM workers LIMIT 1")
        sql, names = compile_sql(Q.CLAIM.text)
        params = claim_params(tenant, both, None, 1)
        tx = conn.transaction()
        await tx.start()
        rows = await conn.fetch(sql, *[params[n] for n in names])
        assert [json.loads(r["task"])["action"] for r in rows] == ["xa.s"]  # the older one
        api.svc.claim_floors.learn(tenant, rows[0]["floors"])  # as the API that ran it would
        # xb's row is locked (and left) by that claim: this one skips it, and learns a floor
        # past it (nothing found: now).
        assert await api.poll(only_b) == []
        await tx.commit()
    finally:
        await conn.close()
    [found] = await api.poll(only_b)
    assert found["run_id"] == b_run["id"]
