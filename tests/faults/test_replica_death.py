"""Scenario 3: three `cairn serve` replicas behind a real nginx; one is SIGKILLed mid-load and
restarted. Clients trigger with idempotency keys and retry: no run is lost, none is created
twice, and workers carry on through the other replicas.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Proc, free_port, render_nginx, wait_until
from tests.faults import flows
from tests.faults.load import audit
from worker_sdk import AsyncClient

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
RUNS = 600

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)


async def test_replica_killed_behind_nginx(
    server: Callable[..., Proc], procs: Callable[..., Proc], db_url: str, tmp_path: Path
) -> None:
    replicas = [server() for _ in range(3)]
    ports = [int((r.url or "").rsplit(":", 1)[1]) for r in replicas]
    listen = free_port()
    conf = render_nginx(tmp_path, listen, ports)
    procs([str(NGINX), "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"], {}, "nginx")
    url = f"http://127.0.0.1:{listen}"

    def via_nginx() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    await asyncio.to_thread(wait_until, via_nginx, 20, "nginx up")
    for _ in range(2):
        procs(
            [sys.executable, "-m", "api.cli", "worker", "tests.faults.flows:worker"],
            {"CAIRN_URL": url},
            "worker",
        )

    acknowledged: dict[str, str] = {}
    async with AsyncClient(url, timeout=30) as client:
        await client.register(flows.chain)

        async def trigger(i: int) -> None:
            run = await client.trigger("chain", {"v": i}, idempotency_key=f"k{i}")
            acknowledged[f"k{i}"] = run["id"]

        async def load() -> None:
            for i in range(0, RUNS, 20):
                await asyncio.gather(*(trigger(j) for j in range(i, i + 20)))

        async def kill_one() -> None:
            while len(acknowledged) < RUNS // 3:
                await asyncio.sleep(0.02)
            victim = replicas[0]
            victim.signal(signal.SIGKILL)
            victim.popen.wait(5)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(server, port=ports[0])  # back on the same port

        await asyncio.gather(load(), kill_one())
        for run_id in acknowledged.values():
            final = await client.wait(run_id, timeout=120)
            assert final["status"] == "succeeded"

    count, violations = await audit(db_url)
    assert count == RUNS == len(set(acknowledged.values()))
    assert violations == []
    print(
        json.dumps(
            {
                "scenario": "replica_death",
                "replicas": 3,
                "runs": RUNS,
                "kills": 1,
                "lost": 0,
                "duplicated": 0,
            }
        )
    )
