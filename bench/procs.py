"""Child processes, RSS sampling and small statistics helpers shared by every system."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    args: Sequence[str], *, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python args...`` from the repo root; output goes to ``log`` (or is dropped)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [PYTHON, *args], cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    finally:
        if log is not None and not isinstance(out, int):
            out.close()


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_all(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> bool:
    """Wait for every process to exit by itself; False (and kill them) on timeout."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            stop(procs, timeout=5)
            return False
    return True


def tree_rss(pid: int) -> int:
    """RSS of a process and its descendants, in bytes (0 if gone)."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return int(total)
    except psutil.Error:
        return 0


CPU_GROUPS = ("postgres", "server", "workers", "bench")


@dataclass
class RssSampler:
    """Samples processes every ``interval`` s in a thread: each watched group's peak RSS, and the
    CPU time of every process by kind, so any span's CPU cost can be read off afterwards.

    ``server``: peak of the summed RSS of the group's process trees (one value per system);
    ``worker``: peak RSS of any single process of the group.

    CPU (user + system, cumulative): ``postgres`` the postmaster and its backends (which serve
    whichever system is being measured, one at a time), ``server`` a ``cairn serve`` process and
    its children, ``workers`` every other process the bench started, ``bench`` the bench process
    itself (its client, its waits, this sampler). ``cpu_between`` interpolates between samples.
    """

    interval: float = 0.25
    postmaster: int | None = None
    peaks: dict[str, float] = field(default_factory=dict)
    cpu_series: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _cpu_last: dict[tuple[int, float], tuple[str, float, bool]] = field(default_factory=dict)
    _kinds: dict[tuple[int, float], str] = field(default_factory=dict)
    _gone: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_GROUPS, 0.0))
    _reaped: float | None = None
    _groups: dict[str, Callable[[], list[int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, key: str, pids: Callable[[], list[int]]) -> None:
        with self._lock:
            self._groups[key] = pids

    def unwatch(self, key: str) -> None:
        with self._lock:
            self._groups.pop(key, None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def peak_mb(self, key: str) -> float | None:
        value = self.peaks.get(key)
        return round(value / MB, 1) if value is not None else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                groups = list(self._groups.items())
            for key, pids in groups:
                try:
                    alive = pids()
                except Exception:  # a group whose processes are being replaced
                    continue
                sizes = [tree_rss(p) for p in alive]
                if not sizes:
                    continue
                value = float(sum(sizes) if key.endswith(":server") else max(sizes))
                self.peaks[key] = max(self.peaks.get(key, 0.0), value)
            self.sample_cpu()

    def sample_cpu(self) -> None:
        """One reading of the CPU time of each kind, appended to ``cpu_series``.

        A process's CPU goes to its parent's ``children_*`` times when the parent reaps it, so
        nothing is lost when one exits between two samples: Postgres is the postmaster's own and
        reaped time plus its live backends'; a process the bench started counts with what it
        reaped, and once the bench reaps it, the growth of the bench's reaped time is shared
        among the kinds of its children that went away since the last sample. The listing of
        live processes is retaken when a child was reaped while it was read (the reaped times
        before and after differ), so a child is either still listed or already in the reaped
        time, never neither nor both.
        """
        now = time.time()
        me = psutil.Process()
        for _ in range(5):
            before = _reaped_times(me, self.postmaster)
            reading = self._read_processes(me)
            if _reaped_times(me, self.postmaster) == before:
                break
        mine, postgres, live = reading
        totals = dict.fromkeys(CPU_GROUPS, 0.0)
        totals["bench"] = mine.user + mine.system
        totals["postgres"] = postgres
        reaped = mine.children_user + mine.children_system
        if self._reaped is not None:
            gone = [v for k, v in self._cpu_last.items() if k not in live and v[2]]
            grown = max(reaped - self._reaped, 0.0)
            last = sum(v[1] for v in gone)
            for kind, seconds, _ in gone:  # each its last reading plus its share of the rest
                extra = (grown - last) * (seconds / last if last > 0 else 1 / len(gone))
                self._gone[kind] += seconds + max(extra, 0.0)
        self._reaped = reaped
        self._cpu_last = live
        for kind, seconds, _ in live.values():
            totals[kind] += seconds
        for kind in ("server", "workers"):
            totals[kind] += self._gone[kind]
        self.cpu_series.append((now, totals))

    def _read_processes(
        self, me: psutil.Process
    ) -> tuple[Any, float, dict[tuple[int, float], tuple[str, float, bool]]]:
        """The bench's own times, Postgres's CPU seconds, and each live child's (kind,
        cumulative CPU seconds, started directly by the bench)."""
        mine = me.cpu_times()
        postgres = 0.0
        pg_pids: set[int] = set()
        if self.postmaster is not None:
            with contextlib.suppress(psutil.Error):
                pm = psutil.Process(self.postmaster)
                t = pm.cpu_times()
                postgres = t.user + t.system + t.children_user + t.children_system
                for backend in pm.children():
                    pg_pids.add(backend.pid)
                    with contextlib.suppress(psutil.Error):
                        b = backend.cpu_times()
                        postgres += b.user + b.system
        live: dict[tuple[int, float], tuple[str, float, bool]] = {}
        with contextlib.suppress(psutil.Error):
            for proc in me.children(recursive=True):
                if proc.pid in pg_pids or proc.pid == self.postmaster:
                    continue
                try:
                    key = (proc.pid, proc.create_time())
                    kind = self._kinds.get(key) or _kind(proc, me.pid)
                    t = proc.cpu_times()
                    direct = proc.ppid() == me.pid
                except psutil.Error:
                    continue
                self._kinds[key] = kind
                live[key] = (kind, t.user + t.system + t.children_user + t.children_system, direct)
        return mine, postgres, live

    def cpu_between(self, t0: float, t1: float) -> dict[str, float] | None:
        """CPU seconds of each kind spent between two ``time.time()`` moments (``None`` when
        the samples do not cover the span)."""
        series = list(self.cpu_series)
        if t1 <= t0 or len(series) < 2 or series[0][0] > t0 or series[-1][0] < t1:
            return None

        def at(t: float) -> dict[str, float]:
            for (ta, a), (tb, b) in itertools.pairwise(series):
                if ta <= t <= tb:
                    w = (t - ta) / (tb - ta) if tb > ta else 0.0
                    return {k: a[k] + (b[k] - a[k]) * w for k in CPU_GROUPS}
            raise AssertionError("covered above")

        start, end = at(t0), at(t1)
        return {k: end[k] - start[k] for k in CPU_GROUPS}

    async def cpu_per_job_after(self, t0: float, t1: float, jobs: int) -> dict[str, float] | None:
        """``cpu_per_job``, once a sample after ``t1`` is in (a few intervals at most)."""
        for _ in range(20):
            if self.cpu_series and self.cpu_series[-1][0] > t1:
                break
            await asyncio.sleep(self.interval / 2)
        return self.cpu_per_job(t0, t1, jobs)

    def cpu_per_job(self, t0: float, t1: float, jobs: int) -> dict[str, float] | None:
        """CPU µs per job of each kind over a drain's span, its total and the cores busy."""
        spent = self.cpu_between(t0, t1)
        if spent is None or jobs <= 0:
            return None
        out = {f"{k}_us": round(v * 1e6 / jobs, 1) for k, v in spent.items()}
        total = sum(spent.values())
        out["total_us"] = round(total * 1e6 / jobs, 1)
        out["cores_busy"] = round(total / (t1 - t0), 2)
        return out


def _reaped_times(me: psutil.Process, postmaster: int | None) -> tuple[float, float]:
    """The CPU seconds of the children the bench and the postmaster have reaped."""
    mine = me.cpu_times()
    pm = 0.0
    if postmaster is not None:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(postmaster).cpu_times()
            pm = t.children_user + t.children_system
    return mine.children_user + mine.children_system, pm


def _kind(proc: psutil.Process, bench_pid: int) -> str:
    """``server`` for a ``cairn serve`` process or one it started, else ``workers``."""
    for p in (proc, *proc.parents()):
        if p.pid == bench_pid:
            break
        cmd = p.cmdline()
        if "api.cli" in cmd and "serve" in cmd:
            return "server"
    return "workers"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank-interpolated percentile (``q`` in 0..100); None for no data."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max in milliseconds, plus the sample count."""

    def ms(v: float | None) -> float | None:
        return round(v * 1000.0, 2) if v is not None else None

    return {
        "n": len(seconds),
        "p50_ms": ms(percentile(seconds, 50)),
        "p95_ms": ms(percentile(seconds, 95)),
        "p99_ms": ms(percentile(seconds, 99)),
        "max_ms": ms(max(seconds) if seconds else None),
    }


def read_first_starts(paths: Iterable[Path]) -> float | None:
    """Earliest ``first job started`` timestamp written by worker processes."""
    stamps: list[float] = []
    for path in paths:
        with contextlib.suppress(OSError, ValueError):
            stamps.append(float(path.read_text().split()[0]))
    return min(stamps) if stamps else None


class FirstStart:
    """In a worker process: write ``time.time()`` of the first job to ``path``, once."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.done = path is None
        self.count = 0

    def mark(self) -> None:
        self.count += 1
        if not self.done:
            self.done = True
            assert self.path is not None
            Path(self.path).write_text(f"{time.time():.6f}\n")
