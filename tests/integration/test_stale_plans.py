"""The busy path reads its rows by key, even with plans made while the queue was small.

A session keeps the plans of ``cairn_poll``'s statements (generic ones, after five calls) until
the tables' statistics change, which on a growing queue is whenever autovacuum next analyzes
them. Plans made while step_runs held a few rows read it whole where a few rows were wanted; kept
while the queue grew, every poll carrying results read the whole table, twice (34 ms per poll
behind 70,000 step runs, found at the bench's half-of-max rate). Two ways in, both covered:
``cairn_poll`` runs with ``enable_seqscan = off`` (migration 0011), and so does every connection
of the API's pool (``db/pg.py``), for the statements run one by one.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from db import leases
from db.pg import Conn, create_pool
from db.types import Effects
from tests.integration.conftest import Api

POLL = "SELECT * FROM cairn_poll($1, $2, $3, $4, NULL, $5)"
SCANS = """
SELECT relname, seq_scan, COALESCE(idx_scan, 0) AS idx_scan FROM pg_stat_xact_user_tables
WHERE relname IN ('step_runs', 'runs', 'step_attempts', 'workers')
"""


async def _freeze_statistics(conn: asyncpg.Connection) -> None:
    """No autovacuum: the plans made on the small queue are kept however far it grows."""
    for table in ("step_runs", "runs", "step_attempts"):
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")


async def _grow(api: Api, workflow: str) -> None:
    for _ in range(4):
        await api.json("POST", f"/workflows/{workflow}/runs/bulk", 201, json={"runs": [{}] * 1000})


async def _scans(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """Sequential and index scans per table in the current transaction."""
    return {r["relname"]: (r["seq_scan"], r["idx_scan"]) for r in await conn.fetch(SCANS)}


def _read_by_key(scans: dict[str, tuple[int, int]]) -> None:
    assert scans["step_runs"][1] > 0 and scans["runs"][1] > 0, scans
    assert scans["step_runs"][0] == 0 and scans["runs"][0] == 0, scans


class Poller:
    """``cairn_poll`` called on one session, as an API connection does, results carried."""

    def __init__(self, conn: asyncpg.Connection, tenant: str, worker: str) -> None:
        self.conn, self.tenant, self.worker = conn, tenant, worker
        self.items: list[dict[str, Any]] = []
        self.floors: str | None = None

    async def poll(self, max_tasks: int) -> int:
        rows = await self.conn.fetch(
            POLL, self.tenant, self.worker, json.dumps(self.items), max_tasks, self.floors
        )
        tasks = [json.loads(r["task"]) for r in rows if r["kind"] == "claim" and r["task"]]
        self.floors = next((r["floors"] for r in rows if r["floors"]), self.floors)
        done = len(self.items)
        self.items = [
            {"id": t["step_run_id"], "token": t["lease_token"], "output": {"v": t["step"]}}
            for t in tasks
        ]
        return done


async def test_a_poll_reads_by_key_with_plans_made_on_a_small_queue(api: Api, db_url: str) -> None:
    await api.register("sp", [{"name": "s"}])
    w = await api.worker(["sp.s"], slots=100)
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await _freeze_statistics(conn)
        tenant = await conn.fetchval("SELECT tenant_id::text FROM workers WHERE id = $1", w)
        p = Poller(conn, tenant, w)
        # A small queue: this session's plans are made here (custom ones, then a generic one).
        for _ in range(10):
            await api.trigger("sp")
            await p.poll(10)
        await _grow(api, "sp")  # far past what those plans saw, with no ANALYZE in between
        await p.poll(50)
        tx = conn.transaction()
        await tx.start()
        try:
            assert await p.poll(50) == 50  # carried 50 results, claimed 50 more
            scans = await _scans(conn)
        finally:
            await tx.rollback()
    finally:
        await conn.close()
    _read_by_key(scans)


async def test_the_statements_one_by_one_read_by_key_on_an_api_connection(
    api: Api, db_url: str
) -> None:
    """The long-poll's claim and a results report, on a connection set up as the API's are."""
    await api.register("sq", [{"name": "s"}])
    w = await api.worker(["sq.s"], slots=100)
    dsn = db_url.replace("postgresql+asyncpg", "postgresql")
    admin = await asyncpg.connect(dsn)
    pool = await create_pool(dsn, max_size=1)
    try:
        await _freeze_statistics(admin)
        tenant = await admin.fetchval("SELECT tenant_id::text FROM workers WHERE id = $1", w)
        async with pool.acquire() as raw:
            conn = Conn(raw, [])
            floors: str | None = None

            async def claim_and_complete(n: int) -> int:
                nonlocal floors
                got = await leases.claim(
                    conn, tenant, w, max_tasks=n, effects=Effects(), floors=floors
                )
                assert got is not None
                floors = got.floors or floors
                items = [
                    (t["step_run_id"], t["lease_token"], '"done"')
                    for t in map(json.loads, got.tasks)
                ]
                refused = await leases.complete_many(conn, tenant, items, effects=Effects())
                assert refused == [None] * len(items)
                return len(items)

            for _ in range(10):  # a small queue: the plans are made here
                await api.trigger("sq")
                assert await claim_and_complete(10) == 1
            await _grow(api, "sq")
            tx = raw.transaction()
            await tx.start()
            try:
                assert await claim_and_complete(50) == 50
                scans = await _scans(raw)
            finally:
                await tx.rollback()
    finally:
        await pool.close()
        await admin.close()
    _read_by_key(scans)
