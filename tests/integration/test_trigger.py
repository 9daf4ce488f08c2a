"""``POST /workflows/{name}/runs``: one statement makes the run, wakes its workers and gives
everything the answer shows, which must be the run exactly as it reads back."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from db import queries_runs as QR
from db.models import DEFAULT_TENANT_ID
from db.pg import compile_sql
from tests.integration.conftest import Api
from tests.integration.test_batches import count_statements

DAG: list[dict[str, Any]] = [
    {"name": "a", "retries": 2, "delivery": "at_most_once", "timeout_s": 5},
    {"name": "b", "parents": ["a"], "schedule_timeout_s": 30},
    {"name": "c", "parents": ["a"]},
    {"name": "d", "parents": ["b", "c"]},
    {"name": "e"},
]
HANDLER = {"name": "cleanup", "retries": 1}


async def test_the_answer_is_the_run_as_it_reads_back(api: Api) -> None:
    await api.register("shape", DAG, on_failure=HANDLER)
    for body in (
        {"input": {"n": [1, {"x": None}], "s": "é"}},
        {"input": None},
        {"input": 7, "idempotency_key": "k-1"},
        {},
    ):
        made = await api.json("POST", "/workflows/shape/runs", 201, json=body)
        assert made == await api.run(made["id"]), body
    assert made["status"] == "queued" and made["input"] == {}
    steps = {s["name"]: s for s in made["steps"]}
    assert [s["name"] for s in made["steps"]] == ["a", "b", "c", "d", "e", "cleanup"]
    assert {n for n, s in steps.items() if s["status"] == "queued"} == {"a", "e"}
    assert steps["a"]["max_attempts"] == 3 and steps["a"]["delivery"] == "at_most_once"
    assert steps["d"]["parents"] == ["b", "c"] and steps["d"]["queued_at"] is None
    assert steps["cleanup"]["on_failure"] and steps["cleanup"]["status"] == "pending"
    assert steps["a"]["queued_at"] is not None and steps["a"]["attempts"] == []


async def test_a_version_is_taken_as_asked(api: Api) -> None:
    await api.register("vers", [{"name": "a"}])
    await api.register("vers", [{"name": "a"}, {"name": "b", "parents": ["a"]}])
    latest = await api.trigger("vers")
    pinned = await api.trigger("vers", version=1)
    assert (latest["version"], len(latest["steps"])) == (2, 2)
    assert (pinned["version"], len(pinned["steps"])) == (1, 1)
    assert pinned == await api.run(pinned["id"])
    w = await api.worker(["vers.a"])
    assert {t["version"] for t in await api.poll(w)} == {1, 2}


async def test_a_trigger_is_one_statement_that_wakes_a_waiting_worker(
    slow_recheck_api: Api,
) -> None:
    api = slow_recheck_api
    await api.register("one", [{"name": "s"}])
    w = await api.worker(["one.s"])
    assert await api.poll(w, wait_s=0) == []  # the replica now knows the worker's actions
    before = await api.metric("cairn_step_runs_total", status="queued")

    async def trigger_soon() -> list[str]:
        await asyncio.sleep(0.3)
        with count_statements(api) as seen:
            await api.trigger("one", {"k": 1})
        return seen

    # Not woken, the poll would answer after its wait (30 s at most here; its last claim finds
    # the task): give up well before.
    both = asyncio.gather(api.poll(w, wait_s=60), trigger_soon())
    tasks, seen = await asyncio.wait_for(both, timeout=15)
    assert len(seen) == 1, seen  # the lookup, the rows, the wake-up and the answer
    assert [t["input"] for t in tasks] == [{"k": 1}]
    assert await api.metric("cairn_step_runs_total", status="queued") == before + 1


async def test_unknown_workflow_or_version_is_404_and_creates_nothing(api: Api) -> None:
    r = await api.call("POST", "/workflows/nope/runs", 404, json={})
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "'nope' is not registered" in r.json()["detail"]
    await api.register("known", [{"name": "s"}])
    r = await api.call("POST", "/workflows/known/runs", 404, json={"version": 9})
    assert "'known' version 9 is not registered" in r.json()["detail"]
    assert (await api.json("GET", "/runs?workflow=known"))["runs"] == []


async def test_a_taken_key_answers_the_first_run_whatever_else_is_asked(api: Api) -> None:
    await api.register("keyed", [{"name": "s"}])
    first = await api.json(
        "POST", "/workflows/keyed/runs", 201, json={"input": 1, "idempotency_key": "k"}
    )
    for body in (
        {"input": 2, "idempotency_key": "k"},
        {"input": 1, "idempotency_key": "k", "version": 1},
        {"input": 1, "idempotency_key": "k", "version": 99},  # as before: the key decides
    ):
        again = await api.json("POST", "/workflows/keyed/runs", 200, json=body)
        assert again == await api.run(first["id"]), body
    assert len((await api.json("GET", "/runs?workflow=keyed"))["runs"]) == 1


async def test_the_statement_is_planned_as_one_run_and_runs_without_jit(api: Api) -> None:
    """Estimated as one run (not a JSON array's default 100, times 100 steps, times itself),
    its plan stays far below ``jit_above_cost``, and the API's connections run with JIT off:
    on a Postgres built with LLVM, compiling such a plan took about a second per trigger."""
    await api.register("plan", DAG, on_failure=HANDLER)
    sql, names = compile_sql(QR.CREATE_RUN.text)
    params = {
        "tenant": DEFAULT_TENANT_ID,
        "name": "plan",
        "version": None,
        "id": str(uuid.uuid4()),
        "input": '{"v":{}}',
        "idem": None,
        "now": None,
    }
    async with api.svc.db.connect() as conn:
        assert await conn.raw.fetchval("SHOW jit") == "off"
        plan = await conn.raw.fetchval("EXPLAIN (FORMAT JSON) " + sql, *[params[n] for n in names])
    root = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    assert root["Total Cost"] < 10_000, root["Total Cost"]


async def test_runs_and_their_step_runs_are_made_and_claimed_in_the_order_asked(api: Api) -> None:
    # Run ids are UUIDv7 made in order (db/ids.py); a step run's id is its run's id with its
    # position in the last 16 bits. So step runs queued at the same instant (one bulk trigger)
    # are claimed in the order their runs were listed, and a run's rows sit together.
    await api.register("ordered", [{"name": "a"}, {"name": "b", "parents": ["a"]}, {"name": "c"}])
    made = await api.json(
        "POST",
        "/workflows/ordered/runs/bulk",
        201,
        json={"runs": [{"input": i} for i in range(30)]},
    )
    run_ids = [r["id"] for r in made["runs"]]
    assert run_ids == sorted(run_ids)
    single = await api.trigger("ordered", 30)
    assert single["id"] > run_ids[-1]
    for run_id in (run_ids[0], single["id"]):
        run = await api.run(run_id)
        for position, step in enumerate(run["steps"]):
            expected = uuid.UUID(int=uuid.UUID(run_id).int | position)
            assert uuid.UUID(step["step_run_id"]) == expected, (run_id, step["name"])
    w = await api.worker(["ordered.a", "ordered.c"], slots=100)
    tasks = await api.poll(w, max_tasks=100)
    assert [(t["input"], t["step"]) for t in tasks] == [
        (i, s) for i in range(30) for s in ("a", "c")
    ] + [(30, "a"), (30, "c")]
