"""Scenario 7: connection carnage.

A. ``pg_terminate_backend`` on every Cairn connection twice a second for a minute.
B. 300 idle connections held open against the database, exhausting its connection slots.
Both under steady load: the service answers (200, or 503/429) rather than hanging, recovers by
itself, and loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from db.engine import asyncpg_dsn
from tests.e2e.conftest import Proc
from tests.faults import flows
from tests.faults.conftest import Starter
from tests.faults.load import Meter, SteadyLoad, audit, finish
from worker_sdk import AsyncClient

RATE = 40.0
BASELINE_S = 8.0
CARNAGE_S = float(os.environ.get("CAIRN_FAULT_CARNAGE_S", "60"))
HOG_S = 10.0
RECOVERY_S = 10.0


async def probe(url: str, stop: asyncio.Event, seen: list[Any]) -> None:
    """Plain requests during the fault: each must answer within 5 s."""
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            for path in ("/readyz", "/api/v1/runs?limit=1"):
                try:
                    seen.append((await http.get(url + path)).status_code)
                except httpx.TimeoutException:
                    seen.append("timeout")
                except httpx.HTTPError as err:
                    seen.append(type(err).__name__)
            await asyncio.sleep(0.3)


@pytest.mark.timeout(CARNAGE_S + 420)
async def test_connection_carnage(
    server: Callable[..., Proc], procs: Callable[..., Proc], db_url: str, background: Starter
) -> None:
    srv = server(db_pool_size=5, db_max_overflow=5)
    url = srv.url or ""
    for _ in range(2):
        procs(
            [sys.executable, "-m", "api.cli", "worker", "tests.faults.flows:worker"],
            {"CAIRN_URL": url, "E2E_LEASE_S": "5", "E2E_HEARTBEAT_S": "0.5"},
            "worker",
        )
    admin = await asyncpg.connect(
        asyncpg_dsn(db_url), server_settings={"application_name": "carnage"}
    )
    figures: dict[str, Any] = {"scenario": "connection_carnage"}
    async with AsyncClient(url, timeout=15) as client:
        await client.register(flows.chain)
        load = SteadyLoad(client, RATE, "carnage")
        meter = Meter(db_url)
        tasks = [background(load.run()), background(meter.run())]
        await asyncio.sleep(3 + BASELINE_S)
        base_end = time.monotonic()
        baseline = meter.rate(base_end - BASELINE_S, base_end)

        # A: terminate every Cairn backend twice a second.
        stop_probe, statuses = asyncio.Event(), []
        prober = background(probe(url, stop_probe, statuses))
        killed = 0
        until = time.monotonic() + CARNAGE_S
        while time.monotonic() < until:
            killed += await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'cairn%'"
            )
            await asyncio.sleep(0.5)
        a_end = time.monotonic()
        await asyncio.sleep(RECOVERY_S)
        figures["a"] = {
            "seconds": CARNAGE_S,
            "backends_terminated": killed,
            "rate_during_over_baseline": round(meter.rate(a_end - CARNAGE_S, a_end) / baseline, 2),
            "rate_recovery_over_baseline": round(
                meter.rate(a_end, a_end + RECOVERY_S) / baseline, 2
            ),
            "seconds_to_90pct": meter.seconds_to(0.9, baseline, a_end),
        }

        # B: hold idle connections until the server has no slots left.
        hogs: list[asyncpg.Connection] = []
        for _ in range(300):
            try:
                hogs.append(
                    await asyncpg.connect(
                        asyncpg_dsn(db_url), server_settings={"application_name": "hog"}
                    )
                )
            except (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError, OSError):
                break
        await asyncio.sleep(HOG_S)
        for h in hogs:
            await h.close()
        b_end = time.monotonic()
        await asyncio.sleep(RECOVERY_S)
        stop_probe.set()
        await prober
        figures["b"] = {
            "idle_connections": len(hogs),
            "rate_during_over_baseline": round(meter.rate(b_end - HOG_S, b_end) / baseline, 2),
            "rate_recovery_over_baseline": round(
                meter.rate(b_end, b_end + RECOVERY_S) / baseline, 2
            ),
            "seconds_to_90pct": meter.seconds_to(0.9, baseline, b_end),
        }
        await finish(load, meter, client, tasks[0], tasks[1])
    await admin.close()

    assert killed > 0 and len(hogs) > 0
    # Answered, never hung: 200 or a clear 503/429 while the database is unreachable.
    assert "timeout" not in statuses
    assert set(statuses) <= {200, 429, 503}, sorted(set(map(str, statuses)))
    runs, violations = await audit(db_url)
    assert runs == len(load.acknowledged) == len(set(load.acknowledged.values()))
    assert violations == []
    figures.update(
        {
            "runs": runs,
            "baseline_runs_per_s": round(baseline, 1),
            "lost": 0,
            "duplicated": 0,
            "probe_503s": statuses.count(503),
        }
    )
    print(json.dumps(figures))
