"""Steady load and a completion-rate meter for the recovery figures of the fault scenarios.

The figures follow the published queue-benchmark convention: completion rate in the recovery
phase divided by the clean baseline, and seconds until the rate is back above 90 % of it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from db.check import Violation, run_checks
from worker_sdk import AsyncClient


@dataclass
class SteadyLoad:
    """Triggers ``rate`` runs a second, each with an idempotency key, until stopped."""

    client: AsyncClient
    rate: float
    prefix: str
    acknowledged: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        i, start = 0, time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        while not self._stop.is_set():
            due = start + i / self.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(self._one(f"{self.prefix}-{i}", i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.gather(*pending)

    async def _one(self, key: str, i: int) -> None:
        give_up = time.monotonic() + 120
        while time.monotonic() < give_up:  # the SDK retries too; keep on until acknowledged
            try:
                run = await self.client.trigger("chain", {"v": i}, idempotency_key=key)
                self.acknowledged[key] = run["id"]
                return
            except Exception:
                self.failures += 1
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Meter:
    """Samples the number of succeeded runs from the database every ``every`` seconds."""

    db_url: str
    every: float = 0.5
    table: str = "runs"  # or "step_runs": count succeeded step runs instead of whole runs
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        engine = create_async_engine(
            self.db_url,
            pool_size=1,
            max_overflow=0,
            connect_args={"server_settings": {"application_name": "meter"}},
        )
        try:
            while not self._stop.is_set():
                try:
                    async with engine.connect() as conn:
                        sql = f"SELECT count(*) FROM {self.table} WHERE status = 'succeeded'"
                        n = (await conn.execute(text(sql))).scalar_one()
                    self.samples.append((time.monotonic(), int(n)))
                except Exception:
                    pass
                await asyncio.sleep(self.every)
        finally:
            await engine.dispose()

    def stop(self) -> None:
        self._stop.set()

    def rate(self, start: float, end: float) -> float:
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def seconds_to(
        self, fraction: float, baseline: float, after: float, window: float = 2.0
    ) -> float:
        """Seconds after ``after`` until the rolling rate is back above ``fraction`` of baseline."""
        for t, _ in self.samples:
            if t < after:
                continue
            if self.rate(t, t + window) >= fraction * baseline:
                return round(t - after, 1)
        return float("inf")


async def finish(
    load: SteadyLoad,
    meter: Meter,
    client: AsyncClient,
    loading: asyncio.Future[None],
    metering: asyncio.Future[None],
) -> None:
    """End a scenario's load: stop triggering, wait until every acknowledged run has succeeded
    (a lost one fails here), then stop the meter."""
    load.stop()
    await loading
    for run_id in load.acknowledged.values():
        final = await client.wait(run_id, timeout=120)
        assert final["status"] == "succeeded", final
    meter.stop()
    await metering


async def audit(db_url: str) -> tuple[int, list[Violation]]:
    """How many runs exist, and what `cairn check` finds: the end of every scenario."""
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            runs = (await conn.execute(text("SELECT count(*) FROM runs"))).scalar_one()
            return int(runs), await run_checks(conn)
    finally:
        await engine.dispose()
