"""Scenario 2: several zombies (SIGSTOP past the lease, then SIGCONT) report late.

Every late completion is refused with 409, the duplicate counter rises by exactly that many, and
every stored result is the current holder's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable

import httpx

from db.check import run_checks
from tests.e2e import flows
from tests.e2e.conftest import Proc, wait_until
from worker_sdk import AsyncClient

ZOMBIES = 4
METRIC = 'cairn_duplicate_completions_total{conflicting="true",reason="lease_lost"}'


def duplicate_count(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(METRIC):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_zombie_completions_are_all_refused_and_counted(
    server: Callable[..., Proc], procs: Callable[..., Proc], db_url: str
) -> None:
    srv = server()
    url = srv.url or ""
    async with AsyncClient(url) as client:
        await client.register(flows.pipeline)
        zombies = []
        runs = await client.trigger_many("pipeline", [{"n": i} for i in range(ZOMBIES)])
        for _ in range(ZOMBIES):
            z = procs(
                [sys.executable, "-m", "tests.e2e.zombie", url, "pipeline.fetch"], {}, "zombie"
            )
            await asyncio.to_thread(wait_until, lambda z=z: "claimed" in z.output(), 20, "claim")
            z.signal(signal.SIGSTOP)
            zombies.append(z)
        before = duplicate_count(url)
        procs(
            [sys.executable, "-m", "api.cli", "worker", "tests.e2e.flows:worker"],
            {"CAIRN_URL": url},
            "worker",
        )
        finals = [await client.wait(r["id"], timeout=60) for r in runs]
        assert {f["status"] for f in finals} == {"succeeded"}
        for z in zombies:
            z.signal(signal.SIGCONT)
        replies = []
        for z in zombies:
            line = await asyncio.to_thread(
                wait_until,
                lambda z=z: [ln for ln in z.output().splitlines() if '"status"' in ln],
                20,
                "zombie reply",
            )
            replies.append(json.loads(line[0]))
        assert [r["status"] for r in replies] == [409] * ZOMBIES
        assert {r["body"]["code"] for r in replies} == {"lease_lost"}
        assert duplicate_count(url) == before + ZOMBIES
        for r in runs:
            fetch = next(
                s for s in (await client.get_run(r["id"]))["steps"] if s["name"] == "fetch"
            )
            assert fetch["output"] != {"by": "zombie"}
            assert [a["outcome"] for a in fetch["attempts"]] == ["lease_expired", "succeeded"]

    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            assert await run_checks(conn) == []
    finally:
        await engine.dispose()
    print(
        json.dumps(
            {
                "scenario": "zombies",
                "zombies": ZOMBIES,
                "rejected": ZOMBIES,
                "counted": ZOMBIES,
                "lost": 0,
            }
        )
    )
