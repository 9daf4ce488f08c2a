"""Cairn's own numbers: drain, DAG shapes and dispatch latency, through the real API and SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cairn_worker, procs, trigger
from bench.cairn_server import CairnServer
from bench.pg import Pg, analyze, xacts

DATABASE = "bench_cairn"
TENANT = "00000000-0000-0000-0000-000000000001"


@dataclass
class Options:
    runs: int
    dag_runs: int
    workers: int
    light_rate: float
    latency_s: float
    server_workers: int
    allow_bulk: bool
    workdir: Path


class CairnBench:
    def __init__(
        self,
        pg: Pg,
        opts: Options,
        sampler: procs.RssSampler,
        *,
        database: str = DATABASE,
        key: str = "cairn",
    ) -> None:
        self.pg = pg
        self.opts = opts
        self.sampler = sampler
        self.database = database
        self.key = key
        self.server = CairnServer(pg, database, opts.workdir, server_workers=opts.server_workers)
        self.workers: list[subprocess.Popen[bytes]] = []
        self._spawned: list[subprocess.Popen[bytes]] = []  # every worker ever started
        self.bulk_ok = opts.allow_bulk  # cleared when the server has no bulk endpoint
        sampler.watch(f"{key}:server", self.server.pids)
        sampler.watch(f"{key}:worker", self._worker_pids)

    def _worker_pids(self) -> list[int]:
        return [p.pid for p in self.workers if p.poll() is None]

    # ---------------------------------------------------------------- processes
    def start_workers(self, record: bool = False) -> None:
        self.workers = []
        for i in range(self.opts.workers):
            args = ["-m", "bench.cairn_worker", self.server.url]
            if record:
                args.append(str(self.opts.workdir / f"cairn-lat-{i}.txt"))
            log = self.opts.workdir / f"{self.database}-worker-{i}.log"
            self.workers.append(procs.spawn(args, log=log))
        self._spawned += self.workers

    def stop_workers(self) -> None:
        procs.stop(self.workers, timeout=40)
        self.workers = []

    async def wait_registered(self, since: float, timeout: float = 60.0) -> None:
        conn = await self.pg.connect(self.database)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                n = await conn.fetchval(
                    "SELECT count(*) FROM workers WHERE deregistered_at IS NULL"
                    " AND registered_at >= to_timestamp($1)",
                    since,
                )
                if n >= self.opts.workers:
                    await asyncio.sleep(1.0)  # first long-polls subscribe to NOTIFY
                    return
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        raise RuntimeError("cairn workers did not register in time")

    async def wait_runs_done(self, workflow: str, expected: int) -> None:
        """Until every run of ``workflow`` is finished; fails after 90 s without step progress.

        Progress is counted in finished step runs: a wide DAG drained breadth-first finishes
        no run for a long while.
        """
        conn = await self.pg.connect(self.database)
        try:
            last, last_change = -1, time.monotonic()
            while True:
                row = await conn.fetchrow(
                    "SELECT (SELECT count(*) FROM runs WHERE tenant_id = $1"
                    "        AND workflow_name = $2"
                    "        AND status IN ('succeeded', 'failed', 'cancelled')) AS runs,"
                    "       (SELECT count(*) FROM step_runs"
                    "        WHERE finished_at IS NOT NULL) AS steps",
                    TENANT,
                    workflow,
                )
                assert row is not None
                if row["runs"] >= expected:
                    return
                if row["steps"] != last:
                    last, last_change = row["steps"], time.monotonic()
                elif time.monotonic() - last_change > 90:
                    raise RuntimeError(
                        f"{workflow}: stalled at {row['runs']}/{expected} runs "
                        "(no step run finished for 90 s)"
                    )
                await asyncio.sleep(0.5)
        finally:
            await conn.close()

    async def cancel_open(self, workflow: str) -> None:
        """Cancel (through the API) every run of ``workflow`` still queued or running."""
        conn = await self.pg.connect(self.database)
        try:
            ids = [
                str(r["id"])
                for r in await conn.fetch(
                    "SELECT id FROM runs WHERE workflow_name = $1"
                    " AND status IN ('queued', 'running')",
                    workflow,
                )
            ]
        finally:
            await conn.close()
        if ids:
            print(f"  cancelling {len(ids)} unfinished {workflow} runs", flush=True)
            await trigger.cancel_runs(self.server.url, ids)

    async def span(self, workflow: str) -> dict[str, Any]:
        """First claim to last run finished, from the database's own timestamps."""
        conn = await self.pg.connect(self.database)
        try:
            row = await conn.fetchrow(
                """
                SELECT count(*) FILTER (WHERE r.status = 'succeeded') AS ok,
                       count(*) AS total,
                       extract(epoch FROM max(r.finished_at) -
                         (SELECT min(s.started_at) FROM step_runs s JOIN runs r2
                            ON r2.id = s.run_id WHERE r2.workflow_name = $1)) AS seconds,
                       (SELECT count(*) FROM step_runs s JOIN runs r3 ON r3.id = s.run_id
                         WHERE r3.workflow_name = $1 AND s.status = 'succeeded') AS steps,
                       extract(epoch FROM max(r.finished_at)) AS last_epoch
                FROM runs r WHERE r.workflow_name = $1
                """,
                workflow,
            )
        finally:
            await conn.close()
        assert row is not None
        seconds = float(row["seconds"] or 0.0)
        last = float(row["last_epoch"] or 0.0)
        # CPU per step run over the same span (every process's, by kind: procs.RssSampler)
        cpu = await self.sampler.cpu_per_job_after(last - seconds, last, int(row["steps"]))
        return {
            "runs": int(row["total"]),
            "succeeded": int(row["ok"]),
            "step_runs": int(row["steps"]),
            "seconds": round(seconds, 3),
            "runs_per_s": round(row["ok"] / seconds, 1) if seconds > 0 else None,
            "steps_per_s": round(row["steps"] / seconds, 1) if seconds > 0 else None,
            "cpu_per_job": cpu,
        }

    # ---------------------------------------------------------------- phases
    async def setup(self) -> None:
        await self.pg.create_database(self.database)
        self.server.start()
        await trigger.register(
            self.server.url, {wf.name: wf.definition() for wf in cairn_worker.WORKFLOWS}
        )

    async def reset(self) -> None:
        """A new empty database and a server on it, as ``setup`` leaves them."""
        self.server.stop()
        await self.setup()

    async def drain(self) -> dict[str, Any]:
        """One drain of ``--runs`` no-op runs on the server ``setup``/``reset`` left running;
        returns with the server stopped."""
        n = self.opts.runs
        trig = await trigger.trigger_many(
            self.server.url, "bench_noop", n, allow_bulk=self.opts.allow_bulk
        )
        self.bulk_ok = self.bulk_ok and trig.path == "bulk"
        print(
            f"  cairn: triggered {n} runs via {trig.path} path in {trig.seconds:.1f}s "
            f"({trig.per_s:.0f}/s, {trig.errors} errors)",
            flush=True,
        )
        # Restart the server around the drain so every backend has flushed its counters.
        self.server.stop()
        await analyze(self.pg, self.database)
        before = await xacts(self.pg, self.database)
        self.server.start()
        self.start_workers()
        await self.wait_runs_done("bench_noop", n - trig.errors)
        self.stop_workers()
        self.server.stop()
        after = await xacts(self.pg, self.database)
        result = await self.span("bench_noop")
        result.update(
            trigger_path=trig.path,
            trigger_per_s=round(trig.per_s, 1),
            trigger_errors=trig.errors,
            xacts_per_step=round((after.total - before.total) / max(result["step_runs"], 1), 2),
        )
        return result  # the server is left stopped: no idle Cairn beside the next system's drain

    async def dag(self, workflow: str) -> dict[str, Any]:
        n = self.opts.dag_runs
        trig = await trigger.trigger_many(
            self.server.url, workflow, n, allow_bulk=self.opts.allow_bulk
        )
        await analyze(self.pg, self.database)
        self.start_workers()
        try:
            await self.wait_runs_done(workflow, n - trig.errors)
        finally:
            self.stop_workers()
            await self.cancel_open(workflow)  # leave nothing behind for the next phase
        result = await self.span(workflow)
        result.update(trigger_path=trig.path, trigger_per_s=round(trig.per_s, 1))
        return result

    async def single_triggers(self, count: int, connections: int) -> dict[str, Any]:
        """``count`` single ``POST .../runs`` from ``connections`` clients at once, no worker
        running: triggers/s, and CPU per trigger of the server, Postgres and this client. The
        runs stay queued: ``reset`` before a phase that runs workers."""
        bodies = [json.dumps({"input": {"k": k}}).encode() for k in range(count)]
        path = "/api/v1/workflows/bench_noop/runs"
        t0 = time.time()
        seconds, codes = await trigger.post_concurrently(self.server.url, path, bodies, connections)
        cpu = await self.sampler.cpu_per_job_after(t0, t0 + seconds, count)
        return {
            "count": count,
            "connections": connections,
            "seconds": round(seconds, 3),
            "triggers_per_s": round(count / seconds, 1) if seconds > 0 else None,
            "statuses": {str(k): v for k, v in sorted(codes.items())},
            "cpu_per_trigger": cpu,
        }

    async def latency(self, rates: dict[str, float]) -> dict[str, Any]:
        """Steady open-loop triggering at each rate; trigger accepted → step start on a worker."""
        since = time.time() - 1.0
        for f in self.opts.workdir.glob("cairn-lat-*.txt"):
            f.unlink()
        self.start_workers(record=True)
        out: dict[str, Any] = {}
        try:
            await self.wait_registered(since)
            for label, rate in rates.items():
                accepted, errors, mode = await trigger.trigger_steady(
                    self.server.url, "bench_lat", rate, self.opts.latency_s, bulk=self.bulk_ok
                )
                await self._wait_ids(list(accepted))
                out[label] = await self._latency_stats(accepted, errors, rate)
                out[label]["trigger_mode"] = mode
                print(
                    f"  cairn latency @ {rate:.0f}/s: dispatch p50 "
                    f"{out[label]['dispatch']['p50_ms']} ms, p99 "
                    f"{out[label]['dispatch']['p99_ms']} ms",
                    flush=True,
                )
        finally:
            self.stop_workers()
        return out

    async def _wait_ids(self, ids: list[str], timeout: float = 180.0) -> None:
        conn = await self.pg.connect(self.database)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                open_ = await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE id = ANY($1::uuid[])"
                    " AND status IN ('queued', 'running')",
                    ids,
                )
                if open_ == 0:
                    return
                await asyncio.sleep(0.25)
        finally:
            await conn.close()

    async def _latency_stats(
        self, accepted: dict[str, float], errors: dict[str, int], rate: float
    ) -> dict[str, Any]:
        started: dict[str, float] = {}
        for f in self.opts.workdir.glob("cairn-lat-*.txt"):
            for line in f.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    started.setdefault(parts[0], float(parts[2]))
        dispatch = [started[r] - t for r, t in accepted.items() if r in started]
        conn = await self.pg.connect(self.database)
        try:
            rows = await conn.fetch(
                "SELECT id::text AS id, extract(epoch FROM created_at) AS created,"
                " extract(epoch FROM finished_at - created_at) AS s FROM runs"
                " WHERE id = ANY($1::uuid[]) AND finished_at IS NOT NULL",
                list(accepted),
            )
        finally:
            await conn.close()
        e2e = [float(r["s"]) for r in rows]
        created = [started[r["id"]] - float(r["created"]) for r in rows if r["id"] in started]
        return {
            "rate_per_s": round(rate, 1),
            "seconds": self.opts.latency_s,
            "triggered": len(accepted),
            "trigger_errors": errors,
            "dispatch": procs.summary_ms(dispatch),
            # The same, from the run's created_at (database clock, same machine): immune to a
            # trigger client too busy to read its answers promptly at high rates.
            "created_to_start": procs.summary_ms(created),
            "queued_to_completed": procs.summary_ms(e2e),
        }

    def close(self) -> None:
        self.stop_workers()
        procs.stop([p for p in self._spawned if p.poll() is None], timeout=40)
        self.server.stop()
        self.sampler.unwatch(f"{self.key}:server")
        self.sampler.unwatch(f"{self.key}:worker")
