"""Claim latency against a deep queue: 1,000 vs ``--depth-max`` queued step runs.

The backlog is written straight into Cairn's tables with ``INSERT ... SELECT generate_series``
shaped like ``db.queries.CREATE_RUN`` (a run row plus its queued root step run), then ANALYZE;
each sample is one ``POST /workers/{id}/poll`` with ``max_tasks=1, wait_s=0`` timed on the
client, and the claimed step run is completed (untimed) so the worker never runs out of slots.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.cairn_server import CairnServer
from bench.pg import Pg, analyze

DATABASE = "bench_depth"
TENANT = "00000000-0000-0000-0000-000000000001"
WORKFLOW = "bench_depth"
# Queued far longer than the default 300 s schedule timeout would allow: keep the reaper out.
DEFINITION = {"steps": [{"name": "noop", "schedule_timeout_s": 86400}]}
CHUNK = 100_000

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


async def _insert(pg: Pg, wf: dict[str, Any], count: int) -> None:
    step = wf["definition"]["steps"][0]
    conn = await pg.connect(DATABASE)
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


async def _workflow(pg: Pg) -> dict[str, Any]:
    conn = await pg.connect(DATABASE)
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


async def _queued(pg: Pg) -> int:
    conn = await pg.connect(DATABASE)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM step_runs WHERE status = 'queued'"))
    finally:
        await conn.close()


def _sample(http: httpx.Client, worker_id: str, samples: int, warmup: int = 10) -> list[float]:
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


async def run_depth(
    pg: Pg, sizes: list[int], samples: int, workdir: Path, server_workers: int = 1
) -> dict[str, Any]:
    await pg.create_database(DATABASE)
    server = CairnServer(pg, DATABASE, workdir, server_workers=server_workers)
    server.start()
    results: dict[str, Any] = {"samples": samples, "sizes": {}}
    try:
        with httpx.Client(base_url=server.url, timeout=60.0) as http:
            http.put(f"/api/v1/workflows/{WORKFLOW}", json=DEFINITION).raise_for_status()
            wf = await _workflow(pg)
            action = wf["definition"]["steps"][0]["action"]
            reg = http.post(
                "/api/v1/workers", json={"name": "bench-depth", "actions": [action], "slots": 1}
            )
            reg.raise_for_status()
            worker_id = reg.json()["id"]
            for size in sorted(sizes):
                missing = size - await _queued(pg)
                t = time.perf_counter()
                if missing > 0:
                    await _insert(pg, wf, missing)
                insert_s = time.perf_counter() - t
                await analyze(pg, DATABASE)
                http.post(f"/api/v1/workers/{worker_id}/heartbeat", json={"step_run_ids": []})
                seconds = _sample(http, worker_id, samples)
                stats = procs.summary_ms(seconds)
                stats["inserted"] = max(missing, 0)
                stats["insert_per_s"] = round(missing / insert_s, 0) if missing > 0 else None
                results["sizes"][str(size)] = stats
                print(
                    f"  depth {size:>9,}: claim p50 {stats['p50_ms']} ms, "
                    f"p95 {stats['p95_ms']} ms (backlog insert {insert_s:.1f}s)",
                    flush=True,
                )
    finally:
        server.stop()
    return results
