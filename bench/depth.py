"""Claim latency against a deep queue: 1,000 vs ``--depth-max`` queued step runs, then behind
``--depth-claimed`` step runs claimed since the last VACUUM.

The backlog is written straight into Cairn's tables with ``INSERT ... SELECT generate_series``
shaped like ``db.queries_runs.CREATE_RUNS`` (a run row plus its queued root step run), then
``VACUUM (ANALYZE)`` and ``CHECKPOINT`` (``bench.pg.settle``: each size is sampled on a settled
table, not during the bulk load's autovacuum and checkpoint);
each sample is one ``POST /workers/{id}/poll`` with ``max_tasks=1, wait_s=0`` timed on the
client, and the claimed step run is completed (untimed) so the worker never runs out of slots.
Each size has its own database and server, and the sizes are sampled in interleaved rounds.

Claimed since the last VACUUM: the oldest ``--depth-claimed`` queued step runs are finished in
one statement with autovacuum off for the table, which leaves their dead entries at the head of
the claim index, as a busy queue has between two autovacuums. Sampled with the server as it
runs (claims read from their floors, ``db/claim_floors.py``, and from the start every 5 s) and
restarted with ``CAIRN_CLAIM_FLOOR_RESCAN_S=0`` (every claim from the start).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.cairn_server import CairnServer
from bench.pg import Pg, analyze, settle

DATABASE = "bench_depth"
TENANT = "00000000-0000-0000-0000-000000000001"
WORKFLOW = "bench_depth"
# Queued far longer than the default 300 s schedule timeout would allow: keep the reaper out.
DEFINITION = {"steps": [{"name": "noop", "schedule_timeout_s": 86400}]}
CHUNK = 100_000
ROUNDS = 10  # the sizes' claims are timed in this many interleaved rounds

BACKLOG = """
WITH r AS (
  INSERT INTO runs (id, tenant_id, workflow_id, workflow_name, version, status, input,
                    idempotency_key, trace_id, created_at)
  SELECT gen_random_uuid(), $1::uuid, $2::bigint, $3::text, $4::int, 'queued',
         jsonb_build_object('i', g), NULL, gen_random_uuid(), now()
  FROM generate_series(1, $5::int) g
  RETURNING id, tenant_id, created_at
)
INSERT INTO step_runs (id, tenant_id, run_id, step_name, action, position, parents,
                       is_on_failure, status, max_attempts, delivery, timeout_s,
                       schedule_timeout_s, backoff, parent_outputs, available_at, queued_at,
                       schedule_deadline)
SELECT gen_random_uuid(), r.tenant_id, r.id, $6::text, $7::text, 0, '{}'::text[], false,
       'queued', $8::int, $9::text, $10::float8, $11::float8, $12::jsonb, '{}'::jsonb,
       r.created_at, r.created_at, r.created_at + make_interval(secs => $11::float8)
FROM r
"""


async def _insert(pg: Pg, database: str, wf: dict[str, Any], count: int) -> None:
    step = wf["definition"]["steps"][0]
    conn = await pg.connect(database)
    try:
        done = 0
        while done < count:
            k = min(CHUNK, count - done)
            await conn.execute(
                BACKLOG,
                TENANT,
                wf["id"],
                WORKFLOW,
                wf["version"],
                k,
                step["name"],
                step["action"],
                int(step["retries"]) + 1,
                step["delivery"],
                float(step["timeout_s"]),
                float(step["schedule_timeout_s"]),
                json.dumps(step["backoff"]),
            )
            done += k
    finally:
        await conn.close()


async def _workflow(pg: Pg, database: str) -> dict[str, Any]:
    conn = await pg.connect(database)
    try:
        row = await conn.fetchrow(
            "SELECT id, version, definition::text AS d FROM workflows WHERE name = $1"
            " ORDER BY version DESC LIMIT 1",
            WORKFLOW,
        )
    finally:
        await conn.close()
    assert row is not None
    return {"id": row["id"], "version": row["version"], "definition": json.loads(row["d"])}


async def _queued(pg: Pg, database: str) -> int:
    conn = await pg.connect(database)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM step_runs WHERE status = 'queued'"))
    finally:
        await conn.close()


def _sample(http: httpx.Client, worker_id: str, samples: int, warmup: int = 10) -> list[float]:
    """``samples`` claims timed (after ``warmup`` untimed ones), each completed untimed."""
    out: list[float] = []
    for i in range(samples + warmup):
        t = time.perf_counter()
        r = http.post(f"/api/v1/workers/{worker_id}/poll", json={"max_tasks": 1, "wait_s": 0})
        dt = time.perf_counter() - t
        r.raise_for_status()
        tasks = r.json()["tasks"]
        if not tasks:
            raise RuntimeError("poll claimed nothing: the backlog is empty")
        task = tasks[0]
        done = http.post(
            f"/api/v1/step-runs/{task['step_run_id']}/complete",
            json={"lease_token": task["lease_token"], "output": {}},
        )
        done.raise_for_status()
        if i >= warmup:
            out.append(dt)
    return out


FINISH_OLDEST = """
UPDATE step_runs SET status = 'succeeded', output = '{}'::jsonb, finished_at = now()
WHERE id IN (SELECT id FROM step_runs WHERE status = 'queued'
             ORDER BY available_at, id LIMIT $1)
"""


async def _finish_oldest(pg: Pg, database: str, count: int) -> float:
    """Finish the oldest ``count`` queued step runs, autovacuum off: their dead entries stay."""
    conn = await pg.connect(database)
    try:
        await conn.execute("ALTER TABLE step_runs SET (autovacuum_enabled = false)")
        t = time.perf_counter()
        await conn.execute(FINISH_OLDEST, count, timeout=600)
        return time.perf_counter() - t
    finally:
        await conn.close()


async def _autovacuum_back(pg: Pg, database: str) -> None:
    conn = await pg.connect(database)
    try:
        await conn.execute("ALTER TABLE step_runs RESET (autovacuum_enabled)")
    finally:
        await conn.close()


async def _claimed_before(
    pg: Pg, server: CairnServer, worker_id: str, claimed: int, samples: int
) -> dict[str, Any]:
    seconds = await _finish_oldest(pg, server.database, claimed)
    await analyze(pg, server.database)
    out: dict[str, Any] = {"claimed": claimed, "finish_s": round(seconds, 1)}
    try:
        for label, env in (("floors", {}), ("from_start", {"CAIRN_CLAIM_FLOOR_RESCAN_S": "0"})):
            server.stop()
            server.env = env
            server.start()
            with httpx.Client(base_url=server.url, timeout=60.0) as http:
                stats = procs.summary_ms(_sample(http, worker_id, samples))
            out[label] = stats
            print(
                f"  depth, {claimed:,} claimed since VACUUM ({label}): claim p50 "
                f"{stats['p50_ms']} ms, p95 {stats['p95_ms']} ms",
                flush=True,
            )
    finally:
        server.env = {}
        await _autovacuum_back(pg, server.database)
    return out


class _Depth:
    """One backlog size: its own database, server and registered worker."""

    def __init__(self, pg: Pg, size: int, workdir: Path, server_workers: int) -> None:
        self.pg = pg
        self.size = size
        self.database = f"{DATABASE}_{size}"
        self.server = CairnServer(pg, self.database, workdir, server_workers=server_workers)
        self.worker_id = ""
        self.stats: dict[str, Any] = {}
        self.samples: list[float] = []

    async def fill(self) -> None:
        await self.pg.create_database(self.database)
        self.server.start()
        with httpx.Client(base_url=self.server.url, timeout=60.0) as http:
            http.put(f"/api/v1/workflows/{WORKFLOW}", json=DEFINITION).raise_for_status()
            wf = await _workflow(self.pg, self.database)
            action = wf["definition"]["steps"][0]["action"]
            reg = http.post(
                "/api/v1/workers", json={"name": "bench-depth", "actions": [action], "slots": 1}
            )
            reg.raise_for_status()
            self.worker_id = reg.json()["id"]
        t = time.perf_counter()
        await _insert(self.pg, self.database, wf, self.size)
        insert_s = time.perf_counter() - t
        await settle(self.pg, self.database, ("runs", "step_runs"))
        self.stats = {
            "inserted": self.size,
            "insert_per_s": round(self.size / insert_s, 0) if insert_s > 0 else None,
        }
        print(f"  depth {self.size:>9,}: backlog inserted in {insert_s:.1f}s", flush=True)


async def run_depth(
    pg: Pg,
    sizes: list[int],
    samples: int,
    workdir: Path,
    server_workers: int = 1,
    claimed: int = 0,
) -> dict[str, Any]:
    """Claim latency at each backlog size, the sizes' samples taken in interleaved rounds (each
    round times ``samples / ROUNDS`` claims at every size), so that the machine's speed, which
    drifts over seconds on these shared cores, moves every size's figure alike; then claims
    behind ``claimed`` finished step runs, on the largest backlog."""
    depths = [_Depth(pg, size, workdir, server_workers) for size in sorted(sizes)]
    results: dict[str, Any] = {"samples": samples, "rounds": ROUNDS, "sizes": {}}
    try:
        for d in depths:
            await d.fill()
        per_round = max(samples // ROUNDS, 1)
        for _ in range(ROUNDS):
            for d in depths:
                with httpx.Client(base_url=d.server.url, timeout=60.0) as http:
                    http.post(f"/api/v1/workers/{d.worker_id}/heartbeat", json={"step_run_ids": []})
                    d.samples += _sample(http, d.worker_id, per_round, warmup=2)
        for d in depths:
            stats = {**procs.summary_ms(d.samples), **d.stats}
            results["sizes"][str(d.size)] = stats
            print(
                f"  depth {d.size:>9,}: claim p50 {stats['p50_ms']} ms, p95 {stats['p95_ms']} ms",
                flush=True,
            )
        deepest = depths[-1]
        if claimed > 0:
            room = await _queued(pg, deepest.database) - 2 * (samples + 10) - 1
            results["claimed_before"] = await _claimed_before(
                pg, deepest.server, deepest.worker_id, min(claimed, room), samples
            )
    finally:
        for d in depths:
            d.server.stop()
    return results
