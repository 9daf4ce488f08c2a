"""Two `cairn serve` processes on one database; many concurrent pollers never double-assign."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx

from tests.e2e.conftest import Proc

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


async def test_multi_process_server(server: Callable[..., Proc]) -> None:
    srv = server("--workers", "2")
    async with httpx.AsyncClient(base_url=f"{srv.url}/api/v1", timeout=30) as http:
        await http.put("/workflows/mp", json={"steps": [{"name": "s"}]})
        r = await http.post(
            "/workflows/mp/runs/bulk", json={"runs": [{"input": i} for i in range(20)]}
        )
        assert r.status_code == 201
        w = (
            await http.post("/workers", json={"name": "w", "actions": ["mp.s"], "slots": 20})
        ).json()
        done = 0
        while done < 20:
            tasks = (
                await http.post(f"/workers/{w['id']}/poll", json={"max_tasks": 20, "wait_s": 1})
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
            done += len(items)
        runs = (await http.get("/runs", params={"workflow": "mp", "status": "succeeded"})).json()
        assert len(runs["runs"]) == 20
