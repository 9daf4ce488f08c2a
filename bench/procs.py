"""Child processes, RSS sampling and small statistics helpers shared by every system."""

from __future__ import annotations

import contextlib
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


@dataclass
class RssSampler:
    """Samples groups of processes every ``interval`` s in a thread; keeps each group's peak.

    ``server``: peak of the summed RSS of the group's process trees (one value per system);
    ``worker``: peak RSS of any single process of the group.
    """

    interval: float = 0.25
    peaks: dict[str, float] = field(default_factory=dict)
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
