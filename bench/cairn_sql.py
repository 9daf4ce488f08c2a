"""Cairn's own SQL alone: ``cairn_poll`` called from asyncpg loops, no HTTP, no SDK.

The same database, schema and statements as the Cairn drain (the bulk trigger through the API,
then the poll function that a busy worker's poll runs: completions with their attempt rows, the
runs settled, the next batch claimed under new leases), called straight from an asyncpg
connection per worker process, as the peers' workers call their SQL. What it leaves out is the
HTTP hop, the API's and the SDK's Python; so this row is what Cairn's guarantees cost in Postgres,
and the gap between it and the Cairn drain is what the hop costs.

Worker process: ``python -m bench.cairn_sql DSN OUT_FILE``; writes ``first last count``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench import cairn_worker, trigger
from bench.cairn_server import CairnServer
from bench.harness import QueueSystem
from bench.pg import Pg

TENANT = "00000000-0000-0000-0000-000000000001"
ACTION = "bench_noop.step"
BATCH = 100  # the SDK's default slots: what one poll of a busy default worker asks for
REGISTER = """
INSERT INTO workers (id, tenant_id, name, actions, slots, heartbeat_interval_s, lease_timeout_s,
                     registered_at, last_seen_at)
VALUES (gen_random_uuid(), $1, 'bench-sql', ARRAY[$2], $3, 5, 60, now(), now())
RETURNING id
"""
POLL = "SELECT kind, task, floors FROM cairn_poll($1, $2, $3, $4, NULL, $5)"


async def setup(pg: Pg, database: str, n: int) -> None:
    """The schema (the server migrates it), the bench's workflows and ``n`` runs through the
    API's bulk trigger, as the Cairn drain has them; then the server stops."""
    server = CairnServer(pg, database, Path(tempfile.mkdtemp(prefix="cairn-sql-")))
    server.start()
    try:
        await trigger.register(
            server.url, {wf.name: wf.definition() for wf in cairn_worker.WORKFLOWS}
        )
        trig = await trigger.trigger_many(server.url, "bench_noop", n)
        if trig.errors:
            raise RuntimeError(f"{trig.errors} of {n} triggers failed")
    finally:
        server.stop()


def system() -> QueueSystem:
    def worker_args(pg: Pg, database: str, out: Path) -> list[str]:
        return ["-m", "bench.cairn_sql", pg.dsn(database), str(out)]

    return QueueSystem(
        key="cairn_sql",
        label=f"Cairn's SQL alone, batch {BATCH}",
        setup=setup,
        worker_args=worker_args,
        remaining_sql="SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'failed')",
        reports_last=True,
        note="cairn_poll via asyncpg (no HTTP/SDK); enqueue/s includes server start",
    )


async def work(dsn: str, out: str) -> None:
    # The API's session settings (db/pg.py create_pool).
    conn = await asyncpg.connect(dsn, server_settings={"jit": "off", "enable_seqscan": "off"})
    first = last = 0.0
    count = 0
    try:
        worker = await conn.fetchval(REGISTER, TENANT, ACTION, BATCH)
        poll = await conn.prepare(POLL)
        items = "[]"
        floors: str | None = None
        while True:
            rows = await poll.fetch(TENANT, worker, items, BATCH, floors)
            tasks = [json.loads(r["task"]) for r in rows if r["kind"] == "claim" and r["task"]]
            heads = [r["floors"] for r in rows if r["kind"] == "claim" and r["floors"]]
            floors = heads[0] if heads else floors
            count += len(json.loads(items))
            if items != "[]":
                last = time.time()
            if not tasks:
                if items == "[]":
                    break
                items = "[]"
                continue
            if not first:
                first = time.time()
                Path(out).write_text(f"{first:.6f}\n")
            # The no-op job; each completion fenced by its own lease token.
            items = json.dumps(
                [
                    {"id": t["step_run_id"], "token": t["lease_token"], "output": {"v": {}}}
                    for t in tasks
                ]
            )
    finally:
        await conn.close()
    if count:
        Path(out).write_text(f"{first:.6f} {last:.6f} {count}\n")


if __name__ == "__main__":
    asyncio.run(work(sys.argv[1], sys.argv[2]))
