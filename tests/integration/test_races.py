"""Scenario 6 (the River #1302 class of bug): completions racing lease expiry.

Every step run ends with exactly one outcome: either the completion was accepted and the reaper
left it alone, or the reaper expired the lease first and the completion got 409.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from db.check import run_checks
from tests.integration.conftest import Api

N = 100


async def test_completion_and_expiry_race_leaves_one_outcome(api: Api) -> None:
    await api.register("race", [{"name": "s", "retries": 1}])
    await api.json("POST", "/workflows/race/runs/bulk", 201, json={"runs": [{}] * N})
    w = await api.worker(["race.s"], slots=N)
    tasks = await api.poll(w, max_tasks=N)
    assert len(tasks) == N
    # The middle 40 leases end 100 ms from now, so completions and reaper passes straddle that
    # instant; the first 30 stay valid and the last 30 have already expired, so both outcomes
    # are certain to occur whatever the machine's speed.
    ids = [t["step_run_id"] for t in tasks]
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE step_runs SET lease_expires_at = clock_timestamp() + interval '100 ms' "
                "WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": ids[30:70]},
        )
        await conn.execute(
            text(
                "UPDATE step_runs SET lease_expires_at = clock_timestamp() - interval '1 s' "
                "WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": ids[70:]},
        )

    async def complete_all() -> list[int]:
        codes = []
        for i, t in enumerate(tasks):
            if i % 10 == 0:
                await asyncio.sleep(0.01)
            r = await api.complete(t, {"i": i}, expect=None)
            codes.append(r.status_code)
        return codes

    async def reap_repeatedly() -> None:
        for _ in range(40):
            await api.reap()
            await asyncio.sleep(0.005)

    codes, _ = await asyncio.gather(complete_all(), reap_repeatedly())
    await api.reap()  # whatever expired after the last pass
    assert set(codes) <= {200, 409}
    accepted = {t["step_run_id"] for t, c in zip(tasks, codes, strict=True) if c == 200}
    async with api.svc.db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT s.id::text, s.status, a.outcome FROM step_runs s JOIN step_attempts a "
                    "ON a.step_run_id = s.id AND a.attempt = 1"
                )
            )
        ).all()
        assert await run_checks(conn) == []
    for sid, status, first in rows:
        if sid in accepted:
            assert (status, first) == ("succeeded", "succeeded")
        else:
            assert first == "lease_expired" and status in ("queued", "running")
    assert set(ids[:30]) <= accepted and not set(ids[70:]) & accepted
