"""The bench's CPU accounting (bench/procs.py): by kind of process, over any span."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest

from bench.procs import CPU_GROUPS, RssSampler

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
IDLE = "import time; time.sleep(30)"


def test_interpolates_between_samples_and_refuses_spans_it_did_not_see() -> None:
    sampler = RssSampler()
    zero = dict.fromkeys(CPU_GROUPS, 0.0)
    sampler.cpu_series = [
        (100.0, zero),
        (101.0, {**zero, "postgres": 1.0, "workers": 0.5}),
        (102.0, {**zero, "postgres": 1.5, "workers": 1.5}),
    ]
    spent = sampler.cpu_between(100.5, 101.5)
    assert spent == pytest.approx({**zero, "postgres": 0.75, "workers": 0.75})
    per_job = sampler.cpu_per_job(100.5, 101.5, 1000)
    assert per_job is not None
    assert per_job["postgres_us"] == pytest.approx(750.0)
    assert per_job["total_us"] == pytest.approx(1500.0)
    assert per_job["cores_busy"] == pytest.approx(1.5)
    assert sampler.cpu_between(99.0, 101.0) is None  # before the first sample
    assert sampler.cpu_between(101.0, 103.0) is None  # after the last one
    assert sampler.cpu_per_job(100.5, 101.5, 0) is None


def test_counts_each_kind_and_the_time_of_processes_gone_between_samples() -> None:
    # Stand-ins: a "postmaster" whose "backend" burns 0.3 s and exits (reaped by it), a
    # "cairn serve" burning 0.2 s, a worker burning 0.5 s that exits and the test reaps; samples
    # 0.3 s apart, so the processes' last readings miss part of what they spent.
    backend = (
        "import subprocess, sys, time\n"
        f"subprocess.run([sys.executable, '-c', {BURN.format(s=0.3)!r}])\n" + IDLE
    )
    postgres = subprocess.Popen([sys.executable, "-c", backend])
    server = subprocess.Popen(
        [sys.executable, "-c", BURN.format(s=0.2) + IDLE, "-m", "api.cli", "serve"]
    )
    sampler = RssSampler(interval=0.3, postmaster=postgres.pid)
    try:
        sampler.sample_cpu()
        start = sampler.cpu_series[-1][0]
        sampler.start()
        worker = subprocess.Popen([sys.executable, "-c", BURN.format(s=0.5)])
        worker.wait(30)
        time.sleep(1.0)  # the stand-ins' burns end; samples after the worker is gone
        sampler.close()
        end = sampler.cpu_series[-1][0]
    finally:
        server.kill()
        postgres.kill()
        server.wait()
        postgres.wait()
    assert set(sampler._kinds.values()) == {"server", "workers"}
    spent = sampler.cpu_between(start, end)
    assert spent is not None
    assert 0.45 <= spent["workers"] < 1.0
    assert 0.15 <= spent["server"] < 0.6
    assert 0.25 <= spent["postgres"] < 0.8


def test_children_reaped_while_a_sample_is_read_are_counted_once() -> None:
    # Many short workers reaped by this thread while the sampler reads every millisecond: a
    # worker reaped between the reading of the reaped time and the listing of live processes
    # must be neither lost nor counted twice. The kernel's own account of the reaped children
    # (RUSAGE_CHILDREN) is the truth to match.
    sampler = RssSampler(interval=0.001)
    sampler.sample_cpu()
    start = sampler.cpu_series[-1][0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.start()
    try:
        for _ in range(40):
            subprocess.run([sys.executable, "-c", BURN.format(s=0.03)], check=True)
    finally:
        sampler.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler.sample_cpu()
    end = sampler.cpu_series[-1][0]
    truth = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    spent = sampler.cpu_between(start, end)
    assert spent is not None
    assert spent["workers"] == pytest.approx(truth, abs=0.05)
