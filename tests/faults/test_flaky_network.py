"""Scenario 5: workers reach the API through a proxy that drops, cuts and delays connections.

The SDK's retries keep every run moving; fencing and idempotency keys mean no request is
applied twice (every step has exactly one succeeded attempt, every key one run).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable

from tests.e2e.conftest import Proc, free_port, wait_until
from tests.faults import flows
from tests.faults.load import audit
from worker_sdk import AsyncClient

RUNS = 300


async def test_runs_finish_through_a_flaky_network(
    server: Callable[..., Proc], procs: Callable[..., Proc], db_url: str
) -> None:
    srv = server()
    api_port = int((srv.url or "").rsplit(":", 1)[1])
    proxy_port = free_port()
    proxy = procs(
        [sys.executable, "-m", "tests.faults.proxy", str(proxy_port), str(api_port), "5"],
        {},
        "proxy",
    )
    await asyncio.to_thread(wait_until, lambda: "listening" in proxy.output(), 10, "proxy")
    flaky = f"http://127.0.0.1:{proxy_port}"
    for _ in range(2):
        procs(
            [sys.executable, "-m", "api.cli", "worker", "tests.faults.flows:worker"],
            {"CAIRN_URL": flaky, "E2E_LEASE_S": "5", "E2E_HEARTBEAT_S": "0.5"},
            "worker",
        )
    async with AsyncClient(flaky, timeout=10) as client:
        await client.register(flows.chain)
        ids = []
        for i in range(RUNS):
            ids.append((await client.trigger("chain", {"v": i}, idempotency_key=f"f{i}"))["id"])
        for run_id in ids:
            assert (await client.wait(run_id, timeout=180))["status"] == "succeeded"
    proxy.signal(signal.SIGTERM)
    proxy.popen.wait(10)
    counts = json.loads([ln for ln in proxy.output().splitlines() if '"refused"' in ln][-1])
    assert counts["refused"] + counts["cut"] > 0  # the network really was hostile

    runs, violations = await audit(db_url)
    assert runs == RUNS == len(set(ids))
    assert violations == []
    print(
        json.dumps(
            {"scenario": "flaky_network", "runs": RUNS, **counts, "lost": 0, "duplicated": 0}
        )
    )
