"""``python -m bench [--runs N] [--depth-max N] ...``: every system on one embedded Postgres."""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from bench import cairn_sql, cairn_worker, floor, peers, procs, report
from bench.cairn_bench import CairnBench, Options
from bench.cairn_server import serve_supports_workers
from bench.depth import run_depth
from bench.harness import QueueSystem, median_sample, run_system
from bench.pg import Pg

ALL = ("floor", "pgqueuer", "procrastinate", "cairn_sql", "cairn", "depth")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--runs", type=int, default=20_000, help="no-op runs to drain (20,000)")
    p.add_argument(
        "--dag-runs", type=int, default=None, help="runs per DAG shape (runs/10 within 100..1,000)"
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes per system (2)")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="drains per system, each from an empty database; the median is reported (3)",
    )
    p.add_argument("--depth-max", type=int, default=1_000_000, help="deep backlog (1,000,000)")
    p.add_argument("--depth-min", type=int, default=1_000, help="shallow backlog (1,000)")
    p.add_argument("--depth-samples", type=int, default=200, help="claims timed per depth")
    p.add_argument(
        "--depth-claimed",
        type=int,
        default=200_000,
        help="then claims behind this many step runs claimed since the last VACUUM (0: skip)",
    )
    p.add_argument("--light-rate", type=float, default=50.0, help="light load runs/s (50)")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="per latency phase (10)")
    p.add_argument(
        "--server-workers", type=int, default=1, help="cairn serve processes (needs --workers)"
    )
    p.add_argument(
        "--multi-server-workers",
        type=int,
        default=2,
        help="also drain Cairn with `cairn serve --workers N` (2; 0 or 1: skip)",
    )
    p.add_argument("--no-bulk", action="store_true", help="never try the bulk trigger endpoint")
    p.add_argument(
        "--systems", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}"
    )
    p.add_argument("--out", type=Path, default=procs.ROOT / "bench" / "results")
    return p.parse_args(argv)


def dag_runs(args: argparse.Namespace) -> int:
    if args.dag_runs is not None:
        return int(args.dag_runs)
    return min(max(int(args.runs) // 10, 100), 1_000)


SINGLE_TRIGGER_CONNECTIONS = 32


def single_trigger_count(args: argparse.Namespace) -> int:
    return min(max(int(args.runs) // 4, 100), 5_000)


def peer_systems(selected: set[str], slots: int) -> list[QueueSystem]:
    out: list[QueueSystem] = []
    if "floor" in selected:
        out += [floor.system(1), floor.system(100)]
    if "pgqueuer" in selected:
        out += [peers.pgqueuer_system(None), peers.pgqueuer_system(100)]
    if "procrastinate" in selected:
        out += [peers.procrastinate_system(None), peers.procrastinate_system(slots)]
    if "cairn_sql" in selected:
        out.append(cairn_sql.system())
    return out


def cairn_options(args: argparse.Namespace, workdir: Path) -> Options:
    return Options(
        runs=args.runs,
        dag_runs=dag_runs(args),
        workers=args.workers,
        light_rate=args.light_rate,
        latency_s=args.latency_seconds,
        server_workers=args.server_workers,
        allow_bulk=not args.no_bulk,
        workdir=workdir,
    )


async def run_cairn(
    pg: Pg,
    args: argparse.Namespace,
    selected: set[str],
    workdir: Path,
    sampler: procs.RssSampler,
    bench: CairnBench | None,
    out: dict[str, Any],
) -> dict[str, Any]:
    """Cairn's phases after its drains (taken by ``amain``, interleaved with the peers')."""
    errors: dict[str, str] = out["errors"]
    if bench is not None:
        try:
            print(f"  cairn drain: {out['drain'].get('runs_per_s')} runs/s", flush=True)
            await bench.reset()  # an empty database and a running server for the phases below
            out["single_trigger"] = await _phase(
                errors,
                "single trigger",
                bench.single_triggers(single_trigger_count(args), SINGLE_TRIGGER_CONNECTIONS),
            )
            print(f"  cairn single triggers: {out['single_trigger']}", flush=True)
            await bench.reset()
            out["dag"] = {
                "chain3": await _phase(errors, "dag chain3", bench.dag("bench_chain")),
                "diamond": await _phase(errors, "dag diamond", bench.dag("bench_diamond")),
            }
            print(f"  cairn dag: {out['dag']}", flush=True)
            rates = {"light": args.light_rate}
            max_rate = out["drain"].get("runs_per_s")
            if max_rate:
                rates["half_max"] = round(max_rate * 0.5, 1)
            out["latency"] = await _phase(errors, "latency", bench.latency(rates))
        except Exception as exc:
            traceback.print_exc()
            errors["setup"] = f"{type(exc).__name__}: {exc}"
        finally:
            bench.close()
        out["server_peak_rss_mb"] = sampler.peak_mb("cairn:server")
        out["worker_peak_rss_mb"] = sampler.peak_mb("cairn:worker")
    if "depth" in selected:
        sizes = sorted({args.depth_min, args.depth_max})
        out["depth"] = await _phase(
            errors,
            "depth",
            run_depth(
                pg,
                sizes,
                args.depth_samples,
                workdir,
                args.server_workers,
                claimed=args.depth_claimed,
            ),
        )
    return out


async def drains(
    pg: Pg,
    args: argparse.Namespace,
    selected: set[str],
    workdir: Path,
    sampler: procs.RssSampler,
    results: dict[str, Any],
) -> tuple[CairnBench | None, dict[str, Any]]:
    """Every system's drain samples, interleaved: each round drains every system once (from an
    empty database), so a machine whose speed drifts during the run moves every system's
    samples alike and the ratios of the medians hold."""
    systems = peer_systems(selected, cairn_worker.default_slots())
    samples: dict[str, list[dict[str, Any]]] = {s.key: [] for s in systems}
    cairn: dict[str, Any] = {"worker_slots": cairn_worker.default_slots(), "errors": {}}
    cairn_samples: list[dict[str, Any]] = []
    bench: CairnBench | None = None
    if "cairn" in selected:
        bench = CairnBench(pg, cairn_options(args, workdir), sampler)
        try:
            await bench.setup()  # fails early if the server cannot start at all
            bench.server.stop()  # and no idle Cairn server beside the peers' drains
        except Exception as exc:
            traceback.print_exc()
            cairn["errors"]["setup"] = f"{type(exc).__name__}: {exc}"
            bench.close()
            bench = None
    multi = multi_bench(pg, args, selected, workdir, sampler)
    multi_samples: list[dict[str, Any]] = []
    rounds = max(args.repeat, 1)
    for i in range(rounds):
        for system in systems:
            print(f"bench: {system.label} (sample {i + 1}/{rounds}) ...", flush=True)
            r = await run_system(system, pg, args.runs, args.workers, workdir, sampler)
            samples[system.key].append(r)
            print(f"  {r.get('runs_per_s', r.get('error'))} runs/s", flush=True)
        if bench is not None:
            print(f"bench: cairn (sample {i + 1}/{rounds}) ...", flush=True)
            sample = await _phase(cairn["errors"], "drain", _fresh_drain(bench))
            cairn_samples.append(sample)
            print(f"  {sample.get('runs_per_s', sample.get('error'))} runs/s", flush=True)
        if multi is not None:
            n = multi.opts.server_workers
            print(f"bench: cairn, {n} server processes (sample {i + 1}/{rounds}) ...", flush=True)
            sample = await _phase(cairn["errors"], "drain_multi", _fresh_drain(multi))
            multi_samples.append(sample)
            print(f"  {sample.get('runs_per_s', sample.get('error'))} runs/s", flush=True)
    if multi is not None:
        multi.close()
        cairn["drain_multi"] = {
            "server_workers": multi.opts.server_workers,
            **median_sample(multi_samples),
            "server_peak_rss_mb": sampler.peak_mb("cairn_multi:server"),
        }
    for system in systems:
        results["systems"][system.key] = median_sample(samples[system.key])
    if bench is not None:
        cairn["drain"] = median_sample(cairn_samples)
    return bench, cairn


def multi_bench(
    pg: Pg,
    args: argparse.Namespace,
    selected: set[str],
    workdir: Path,
    sampler: procs.RssSampler,
) -> CairnBench | None:
    """The second Cairn drain: the same, with ``cairn serve --workers N`` (its own database)."""
    n = int(args.multi_server_workers)
    if "cairn" not in selected or n <= 1 or n == args.server_workers:
        return None
    if not serve_supports_workers():
        print("bench: cairn serve has no --workers: no multi-process drain", flush=True)
        return None
    opts = replace(cairn_options(args, workdir), server_workers=n)
    return CairnBench(pg, opts, sampler, database="bench_cairn_multi", key="cairn_multi")


async def _fresh_drain(bench: CairnBench) -> dict[str, Any]:
    """One drain from an empty database, as the peers' are; the server is down between samples,
    so no idle Cairn server runs beside another system's drain."""
    await bench.reset()
    try:
        return await bench.drain()
    finally:
        bench.server.stop()


async def _phase(errors: dict[str, str], name: str, coro: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await coro
        return result
    except Exception as exc:
        traceback.print_exc()
        errors[name] = f"{type(exc).__name__}: {exc}"[:300]
        return {"error": errors[name]}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    selected = {s.strip() for s in args.systems.split(",") if s.strip()}
    unknown = selected - set(ALL)
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}")
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="cairn-bench-work-"))
    print(f"bench: logs and worker files in {workdir}", flush=True)
    pg = Pg.start()
    sampler = procs.RssSampler(postmaster=pg.postmaster_pid())
    sampler.start()
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in psutil.getloadavg()],
        },
        "systems": {},
    }
    try:
        results["postgres"] = await pg.settings()
        has_pss = await pg.has_pg_stat_statements()
        results["sql_count_source"] = (
            "pg_stat_database xact_commit+xact_rollback deltas per completed step run "
            "(pg_stat_statements is not shipped in the embedded server"
            + (")" if not has_pss else "; available but not preloaded)")
        )
        print(
            f"bench: postgres {results['postgres'].get('server_version')}, "
            f"{args.workers} worker processes per system",
            flush=True,
        )
        bench, cairn = await drains(pg, args, selected, workdir, sampler, results)
        if selected & {"cairn", "depth"}:
            print("bench: cairn ...", flush=True)
            results["cairn"] = await run_cairn(pg, args, selected, workdir, sampler, bench, cairn)
    finally:
        sampler.close()
        pg.stop(keep_log=workdir / "postgres.log")
    results["machine"]["load_avg_at_end"] = [round(x, 2) for x in psutil.getloadavg()]
    results["elapsed_s"] = round(time.time() - started, 1)
    return results


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: children stopped, Postgres stopped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    results = asyncio.run(amain(args))
    print()
    print(report.table(results))
    json_path, png = report.write(results, args.out)
    print(
        f"\nwrote {json_path}" + (f" and {png}" if png else "") + f" in {results['elapsed_s']:.0f}s"
    )
    return 0
