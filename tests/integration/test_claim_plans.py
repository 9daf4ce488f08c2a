"""The poll reads its worker's own rows, whatever the planner's statistics say."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg

from db import queries as Q
from db import queries_reaper
from db.pg import compile_sql
from tests.integration.conftest import Api


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def explain(
    conn: asyncpg.Connection, statement: Any, params: dict[str, Any], *, buffers: bool = False
) -> list[Any]:
    """The plan's nodes, the statement executed (EXPLAIN ANALYZE) and rolled back."""
    sql, names = compile_sql(statement.text)
    options = "ANALYZE, BUFFERS, FORMAT JSON" if buffers else "ANALYZE, FORMAT JSON"
    tx = conn.transaction()
    await tx.start()
    try:
        raw = await conn.fetchval(f"EXPLAIN ({options}) " + sql, *[params[n] for n in names])
    finally:
        await tx.rollback()
    return list(nodes(json.loads(raw)[0]["Plan"]))


async def test_a_poll_counts_its_slots_from_its_own_rows_with_stale_statistics(
    api: Api, db_url: str
) -> None:
    """Statistics taken while nothing ran (an idle queue at ANALYZE time) must not send the
    free-slot count of every poll, or the reaper's deadline scan, through all the running step
    runs of every worker (migration 0009)."""
    await api.register("pl", [{"name": "s"}])
    await api.json("POST", "/workflows/pl/runs/bulk", 201, json={"runs": [{}] * 400})
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute("ALTER TABLE step_runs SET (autovacuum_enabled = false)")
        await conn.execute("ANALYZE step_runs")  # the statistics: nothing running
        workers = [await api.worker(["pl.s"], slots=100) for _ in range(4)]
        for w in workers:
            assert len(await api.poll(w, max_tasks=100)) == 100
        tenant = await conn.fetchval("SELECT tenant_id::text FROM workers LIMIT 1")
        claim = await explain(
            conn,
            Q.CLAIM,
            {"tenant": tenant, "worker": workers[0], "max_tasks": 10, "now": None, "floors": None},
        )
        reaper = await explain(
            conn, queries_reaper.REAPER_CANDIDATES, {"grace": 30, "batch": 100, "now": None}
        )
    finally:
        await conn.close()
    read = [n for n in claim if n.get("Relation Name") == "step_runs"]
    assert read and all(n.get("Index Name") != "ix_step_runs_deadline" for n in read), read
    # 300 of the 400 running step runs are other workers': none of them is read and dropped.
    assert max(n.get("Rows Removed by Filter", 0) for n in read) < 100, read
    # And the reaper reads the running step runs by deadline, not through the worker index.
    used = {n.get("Index Name") for n in reaper}
    assert "ix_step_runs_deadline" in used and "ix_step_runs_worker" not in used, used
