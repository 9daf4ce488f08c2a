"""Drain measurement for queue-style systems (peers and the raw floor), all measured alike.

Each system enqueues N no-op jobs into its own database (then ANALYZE), after which W worker
processes drain it. Runs/s spans the first job start (written by each worker process) to the
moment the queue is seen empty (polled every 50 ms) or, for systems whose workers report it,
their last completion. SQL transactions per job come from ``pg_stat_database`` deltas.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.pg import Pg, analyze, xacts

POLL_S = 0.05


@dataclass
class QueueSystem:
    key: str  # also the database name suffix
    label: str
    setup: Callable[[Pg, str, int], Awaitable[None]]  # create schema, enqueue N jobs
    worker_args: Callable[[Pg, str, Path], list[str]]  # python args for one worker process
    remaining_sql: str  # jobs not yet completed
    reports_last: bool = False  # worker files hold "first last count"
    note: str = ""


def median_sample(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample with the median runs/s (the lower middle of an even count), carrying every
    sample's runs/s as ``samples_runs_per_s``; the first error when no sample succeeded."""
    ok = sorted(
        (x for x in samples if "error" not in x and x.get("runs_per_s")),
        key=lambda x: float(x["runs_per_s"]),
    )
    if not ok:
        return samples[0]
    chosen = dict(ok[(len(ok) - 1) // 2])
    chosen["samples_runs_per_s"] = [x.get("runs_per_s") for x in samples]
    cpus = [x["cpu_per_job"] for x in ok if x.get("cpu_per_job")]
    if cpus:  # each figure's own median over the samples
        chosen["cpu_per_job"] = {k: statistics.median(c[k] for c in cpus) for k in cpus[0]}
    return chosen


async def run_system(
    system: QueueSystem, pg: Pg, n: int, workers: int, workdir: Path, sampler: procs.RssSampler
) -> dict[str, Any]:
    """Measure one system; any failure becomes ``{"error": ...}`` instead of an exception."""
    try:
        return await _run(system, pg, n, workers, workdir, sampler)
    except Exception as exc:
        traceback.print_exc()
        return {"label": system.label, "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _run(
    system: QueueSystem, pg: Pg, n: int, workers: int, workdir: Path, sampler: procs.RssSampler
) -> dict[str, Any]:
    database = f"bench_{system.key}"
    await pg.create_database(database)
    t0 = time.perf_counter()
    await system.setup(pg, database, n)
    enqueue_s = time.perf_counter() - t0
    await analyze(pg, database)
    before = await xacts(pg, database)
    files = [workdir / f"{system.key}-first-{i}.txt" for i in range(workers)]
    for f in files:
        f.unlink(missing_ok=True)
    running: list[subprocess.Popen[bytes]] = []
    sampler.watch(f"{system.key}:worker", lambda: [p.pid for p in running if p.poll() is None])
    polls = 0
    try:
        for i, f in enumerate(files):
            args = system.worker_args(pg, database, f)
            running.append(procs.spawn(args, log=workdir / f"{system.key}-worker-{i}.log"))
        conn = await pg.connect(database)
        try:
            end, polls = await _wait_empty(system, conn, running, n)
        finally:
            await conn.close()
        exited = procs.wait_all(running, timeout=60)
    finally:
        procs.stop(running, timeout=10)
        sampler.unwatch(f"{system.key}:worker")
    after = await xacts(pg, database)
    first, last, count = _read_files(files)
    if system.reports_last and last is not None:
        end = last
    if first is None:
        raise RuntimeError("no worker ran a job")
    seconds = end - first
    done = count if system.reports_last else n
    return {
        "label": system.label,
        "runs": n,
        "completed": done,
        "seconds": round(seconds, 3),
        "runs_per_s": round(done / seconds, 1) if seconds > 0 else None,
        "enqueue_per_s": round(n / enqueue_s, 1) if enqueue_s > 0 else None,
        "xacts_per_step": round((after.total - before.total - polls) / max(done, 1), 2),
        "cpu_per_job": await sampler.cpu_per_job_after(first, end, done),
        "worker_peak_rss_mb": sampler.peak_mb(f"{system.key}:worker"),
        "workers_exited_cleanly": exited,
        "note": system.note,
    }


async def _wait_empty(
    system: QueueSystem, conn: Any, running: list[subprocess.Popen[bytes]], n: int
) -> tuple[float, int]:
    polls = 0
    last, last_change = -1, time.monotonic()
    while True:
        remaining = int(await conn.fetchval(system.remaining_sql))
        polls += 1
        if remaining == 0:
            return time.time(), polls
        if remaining != last:
            last, last_change = remaining, time.monotonic()
        elif time.monotonic() - last_change > 90:
            raise RuntimeError(f"stalled with {remaining}/{n} jobs left")
        if all(p.poll() is not None for p in running):
            codes = [p.returncode for p in running]
            raise RuntimeError(f"workers exited ({codes}) with {remaining} jobs left")
        await asyncio.sleep(POLL_S)


def _read_files(files: list[Path]) -> tuple[float | None, float | None, int]:
    firsts: list[float] = []
    lasts: list[float] = []
    count = 0
    for f in files:
        try:
            parts = f.read_text().split()
        except OSError:
            continue
        if parts:
            firsts.append(float(parts[0]))
        if len(parts) >= 3:
            lasts.append(float(parts[1]))
            count += int(parts[2])
    return (
        min(firsts) if firsts else None,
        max(lasts) if lasts else None,
        count,
    )
