"""Two `cairn serve` processes on one database; many concurrent pollers never double-assign."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Proc, wait_until

RUNS = 300
POLLERS = 40


async def test_two_replicas_many_pollers_never_double_assign(server: Callable[..., Proc]) -> None:
    a, b = server(), server()
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(f"{a.url}/api/v1/workflows/par", json={"steps": [{"name": "s"}]})
        assert r.status_code == 201
        for i in range(0, RUNS, 50):
            await asyncio.gather(
                *(
                    http.post(f"{(a, b)[j % 2].url}/api/v1/workflows/par/runs", json={"input": j})
                    for j in range(i, i + 50)
                )
            )
        claims: list[str] = []

        async def poller(n: int) -> None:
            base = (a, b)[n % 2].url
            w = (
                await http.post(
                    f"{base}/api/v1/workers",
                    json={"name": f"p{n}", "actions": ["par.s"], "slots": 5},
                )
            ).json()
            idle = 0
            while idle < 2:
                r = await http.post(
                    f"{base}/api/v1/workers/{w['id']}/poll", json={"max_tasks": 5, "wait_s": 0.3}
                )
                tasks = r.json()["tasks"]
                idle = 0 if tasks else idle + 1
                for t in tasks:
                    claims.append(t["step_run_id"])
                    done = await http.post(
                        f"{base}/api/v1/step-runs/{t['step_run_id']}/complete",
                        json={"lease_token": t["lease_token"], "output": n},
                    )
                    assert done.status_code == 200, done.text

        await asyncio.gather(*(poller(n) for n in range(POLLERS)))
        dupes = [k for k, v in Counter(claims).items() if v > 1]
        assert dupes == [] and len(claims) == RUNS
        page = (
            await http.get(f"{b.url}/api/v1/runs", params={"status": "succeeded", "limit": 500})
        ).json()
        assert len(page["runs"]) == RUNS


def requests_per_process(metrics_dir: Path) -> dict[str, float]:
    """HTTP requests each server process counted, from its own file in the metrics directory."""
    served: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            if family.name == "cairn_http_requests":
                served[path.stem] = sum(s.value for s in family.samples)
    return served


def server_processes(parent: int) -> list[int]:
    """The live server processes uvicorn spawned (not its resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        mine = int(fields[1]) == parent and fields[0] != "Z"
        if mine and b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.append(int(stat.parent.name))
    return found


def scrape(url: str) -> dict[str, float]:
    """One scrape on a new connection (any of the processes may answer it)."""
    text = httpx.get(f"{url}/metrics", headers={"connection": "close"}, timeout=10).text
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    series = [ln.rsplit(" ", 1)[0] for ln in lines]
    assert len(series) == len(set(series)), "a series is exposed twice"
    return {k: v for f in text_string_to_metric_families(text) for k, v in _samples(f)}


def _samples(family: Metric) -> list[tuple[str, float]]:
    out = []
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out.append((f"{s.name}{{{labels}}}", s.value))
    return out


async def test_multi_process_server_and_its_metrics_are_totals(
    server: Callable[..., Proc], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes share the port; a scrape, whichever answers it, counts both's work."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    srv = server("--workers", "2")
    fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection, any process, each time
    polls = 0
    async with httpx.AsyncClient(base_url=f"{srv.url}/api/v1", timeout=30, limits=fresh) as http:
        await http.put("/workflows/mp", json={"steps": [{"name": "s"}]})
        r = await http.post(
            "/workflows/mp/runs/bulk", json={"runs": [{"input": i} for i in range(20)]}
        )
        assert r.status_code == 201
        w = (
            await http.post("/workers", json={"name": "w", "actions": ["mp.s"], "slots": 5})
        ).json()
        done, last = 0, None
        while done < 20:
            polls += 1
            tasks = (
                await http.post(f"/workers/{w['id']}/poll", json={"max_tasks": 5, "wait_s": 1})
            ).json()["tasks"]
            items = [
                {
                    "step_run_id": t["step_run_id"],
                    "lease_token": t["lease_token"],
                    "output": t["input"],
                }
                for t in tasks
            ]
            if items:
                out = (await http.post("/step-runs/results", json={"results": items})).json()
                assert {o["status"] for o in out["results"]} == {"succeeded"}
                last = items[-1]
            done += len(items)
        runs = (await http.get("/runs", params={"workflow": "mp", "status": "succeeded"})).json()
        assert len(runs["runs"]) == 20
        # A late completion with another output: refused (409) and counted once.
        assert last is not None
        late = await http.post(
            f"/step-runs/{last['step_run_id']}/complete",
            json={"lease_token": last["lease_token"], "output": "other"},
        )
        assert late.status_code == 409
        for _ in range(200):  # until both processes have answered something
            if len([n for n in requests_per_process(metrics_dir).values() if n > 0]) >= 2:
                break
            await http.get(f"{srv.url}/healthz")
    served = requests_per_process(metrics_dir)
    assert len([n for n in served.values() if n > 0]) >= 2, served
    poll_route = 'method="POST",route="/api/v1/workers/{worker_id}/poll",status="200"'
    for _ in range(8):
        m = scrape(srv.url)
        assert m['cairn_step_runs_total{status="succeeded"}'] == 20
        assert m['cairn_runs_total{status="succeeded"}'] == 20
        assert m["cairn_step_duration_seconds_count{}"] == 20
        assert m["cairn_queue_latency_seconds_count{}"] == 20
        assert m[f"cairn_http_requests_total{{{poll_route}}}"] == polls
        key = 'cairn_duplicate_completions_total{conflicting="true",reason="already_finished"}'
        assert m[key] == 1
        assert m['cairn_queue_depth{action="mp.s"}'] == 0
        assert m["cairn_workers_active{}"] == 1
    # A server process killed: uvicorn starts another; what the dead one counted still counts.
    first = server_processes(srv.pid)
    assert len(first) == 2, first
    os.kill(first[0], signal.SIGKILL)
    wait_until(
        lambda: first[0] not in (now := server_processes(srv.pid)) and len(now) == 2,
        30,
        "a new server process",
    )
    for _ in range(8):
        m = scrape(srv.url)
        assert m['cairn_step_runs_total{status="succeeded"}'] == 20
        assert m[f"cairn_http_requests_total{{{poll_route}}}"] == polls


def test_server_processes_stop_when_their_supervisor_is_killed(
    server: Callable[..., Proc],
) -> None:
    """SIGKILL to `cairn serve --workers 2` leaves no server process serving unsupervised."""
    srv = server("--workers", "2")
    supervisor = psutil.Process(srv.pid)

    def server_processes() -> list[psutil.Process]:
        return [c for c in supervisor.children() if "spawn_main" in " ".join(c.cmdline())]

    servers = wait_until(lambda: len(server_processes()) == 2 and server_processes(), 15, "both")
    srv.signal(signal.SIGKILL)
    srv.popen.wait(10)
    _, alive = psutil.wait_procs(servers, timeout=20)
    for orphan in alive:  # left running by a failure: not into the next tests
        orphan.kill()
    assert not alive, f"server processes outlived their supervisor: {alive}"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{srv.url}/healthz", timeout=2)
