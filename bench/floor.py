"""The floor: a raw asyncpg claim/complete loop on a minimal table, no framework at all.

Claim: ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``;
complete: one ``UPDATE`` per job (batch 1) or one per claimed batch (``id = ANY($1)``).
Worker process: ``python -m bench.floor DSN BATCH OUT_FILE``; writes ``first last count``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import asyncpg

from bench.harness import QueueSystem
from bench.pg import Pg

SCHEMA = """
CREATE TABLE floor_jobs (
  id bigserial PRIMARY KEY,
  status text NOT NULL DEFAULT 'queued',
  payload jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz
);
CREATE INDEX floor_jobs_queued ON floor_jobs (id) WHERE status = 'queued';
"""

CLAIM = """
UPDATE floor_jobs SET status = 'running', started_at = now()
WHERE id IN (SELECT id FROM floor_jobs WHERE status = 'queued' ORDER BY id
             FOR UPDATE SKIP LOCKED LIMIT $1)
RETURNING id, payload
"""
COMPLETE_ONE = "UPDATE floor_jobs SET status = 'done', finished_at = now() WHERE id = $1"
COMPLETE_MANY = "UPDATE floor_jobs SET status = 'done', finished_at = now() WHERE id = ANY($1)"


async def setup(pg: Pg, database: str, n: int) -> None:
    conn = await pg.connect(database)
    try:
        await conn.execute(SCHEMA)
        await conn.execute(
            "INSERT INTO floor_jobs (payload) SELECT jsonb_build_object('i', g)"
            " FROM generate_series(1, $1) g",
            n,
        )
    finally:
        await conn.close()


def system(batch: int) -> QueueSystem:
    def worker_args(pg: Pg, database: str, out: Path) -> list[str]:
        return ["-m", "bench.floor", pg.dsn(database), str(batch), str(out)]

    return QueueSystem(
        key=f"floor_b{batch}",
        label=f"raw asyncpg floor, batch {batch}",
        setup=setup,
        worker_args=worker_args,
        remaining_sql="SELECT count(*) FROM floor_jobs WHERE status <> 'done'",
        reports_last=True,
        note="claim+complete statements only; no history, no leases",
    )


async def work(dsn: str, batch: int, out: str) -> None:
    conn = await asyncpg.connect(dsn)
    first = last = 0.0
    count = 0
    try:
        claim = await conn.prepare(CLAIM)
        one = await conn.prepare(COMPLETE_ONE)
        many = await conn.prepare(COMPLETE_MANY)
        while True:
            rows = await claim.fetch(batch)
            if not rows:
                break
            if not first:
                first = time.time()
                Path(out).write_text(f"{first:.6f}\n")
            ids = [r["id"] for r in rows]  # the no-op "job"
            if batch == 1:
                await one.fetch(ids[0])
            else:
                await many.fetch(ids)
            count += len(ids)
            last = time.time()
    finally:
        await conn.close()
    if count:
        Path(out).write_text(f"{first:.6f} {last:.6f} {count}\n")


if __name__ == "__main__":
    asyncio.run(work(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
