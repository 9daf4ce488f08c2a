"""Bulk trigger, batched results, and the SQL statement budget of a step run's lifecycle."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from db import queries as Q
from db.models import DEFAULT_TENANT_ID
from db.pg import compile_sql
from tests.integration.conftest import Api


async def test_bulk_trigger_with_idempotency_keys(api: Api) -> None:
    await api.register("bulk", [{"name": "a"}, {"name": "b", "parents": ["a"]}])
    runs = [
        {"input": {"i": i}, **({"idempotency_key": f"k{i % 3}"} if i < 6 else {})}
        for i in range(10)
    ]
    first = await api.json("POST", "/workflows/bulk/runs/bulk", 201, json={"runs": runs})
    assert first["version"] == 1 and len(first["runs"]) == 10
    by_key: dict[str, set[str]] = {}
    for r in first["runs"][:6]:
        by_key.setdefault(r["idempotency_key"], set()).add(r["id"])
    assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 3
    assert [r["created"] for r in first["runs"]] == [True] * 3 + [False] * 3 + [True] * 4
    again = await api.json("POST", "/workflows/bulk/runs/bulk", 201, json={"runs": runs[:6]})
    assert [r["id"] for r in again["runs"]] == [r["id"] for r in first["runs"][:6]]
    assert not any(r["created"] for r in again["runs"])
    page = await api.json("GET", "/runs?workflow=bulk&limit=100")
    assert len(page["runs"]) == 7
    one = await api.run(first["runs"][9]["id"])
    assert one["input"] == {"i": 9} and [s["status"] for s in one["steps"]] == ["queued", "pending"]
    r = await api.call("POST", "/workflows/bulk/runs/bulk", json={"runs": []})
    assert r.status_code == 422
    r = await api.call("POST", "/workflows/nope/runs/bulk", json={"runs": [{"input": 1}]})
    assert r.status_code == 404


async def test_batched_results_are_fenced_per_item(api: Api) -> None:
    await api.register("res", [{"name": "s", "retries": 1}])
    await api.json("POST", "/workflows/res/runs/bulk", 201, json={"runs": [{}] * 5})
    w = await api.worker(["res.s"])
    t = await api.poll(w, max_tasks=5)
    assert len(t) == 5
    items: list[dict[str, Any]] = [
        {"step_run_id": t[0]["step_run_id"], "lease_token": t[0]["lease_token"], "output": 0},
        {"step_run_id": t[1]["step_run_id"], "lease_token": t[1]["lease_token"], "output": 1},
        {
            "step_run_id": t[2]["step_run_id"],
            "lease_token": t[2]["lease_token"],
            "error": {"type": "Boom", "message": "x"},
            "retryable": True,
            "retry_after_s": 0,
        },
        {"step_run_id": t[3]["step_run_id"], "lease_token": t[4]["lease_token"], "output": 3},
        {"step_run_id": str(uuid.uuid4()), "lease_token": t[4]["lease_token"], "output": 4},
        {
            "step_run_id": t[4]["step_run_id"],
            "lease_token": t[4]["lease_token"],
            "error": {"type": "Fatal", "message": "y"},
            "retryable": False,
        },
    ]
    out = (await api.json("POST", "/step-runs/results", json={"results": items}))["results"]
    assert [(o["status"], o["code"]) for o in out] == [
        ("succeeded", None),
        ("succeeded", None),
        ("queued", None),
        ("rejected", "lease_lost"),
        ("rejected", "not_found"),
        ("failed", None),
    ]
    assert (
        await api.metric(
            "cairn_duplicate_completions_total", reason="lease_lost", conflicting="true"
        )
        == 1
    )
    # The same batch again: every completion is now a benign duplicate.
    again = (await api.json("POST", "/step-runs/results", json={"results": items[:2]}))["results"]
    assert [(o["code"], o["conflicting"]) for o in again] == [("already_finished", False)] * 2


@contextmanager
def count_statements(api: Api) -> Iterator[list[str]]:
    seen: list[str] = []
    listeners = api.svc.db.listeners
    listeners.append(seen.append)
    try:
        yield seen
    finally:
        listeners.remove(seen.append)


async def lifecycle(api: Api, n: int) -> list[str]:
    w = await api.worker(["cost.s"], slots=n)
    with count_statements(api) as seen:
        await api.json("POST", "/workflows/cost/runs/bulk", 201, json={"runs": [{}] * n})
        tasks = await api.poll(w, max_tasks=n)
        assert len(tasks) == n
        results = [
            {"step_run_id": t["step_run_id"], "lease_token": t["lease_token"], "output": None}
            for t in tasks
        ]
        out = await api.json("POST", "/step-runs/results", json={"results": results})
        assert {o["status"] for o in out["results"]} == {"succeeded"}
    return seen


async def test_statements_per_lifecycle_are_pinned(api: Api) -> None:
    """Trigger, claim and complete a batch: the statement count does not grow with its size.

    Pinned: bulk trigger 3 (workflow lookup, insert, NOTIFY), poll 1 (the claim, with the
    worker's touch), results 2 (complete + attempts; promote + settle). Raise these only on
    purpose.
    """
    await api.register("cost", [{"name": "s"}])
    small, large = await lifecycle(api, 2), await lifecycle(api, 40)
    assert len(small) == len(large) == 6, "\n---\n".join(large)
    page = await api.json("GET", "/runs?workflow=cost&status=succeeded&limit=100")
    assert len(page["runs"]) == 42


async def test_json_null_input_and_output_are_values(api: Api) -> None:
    await api.register("nul", [{"name": "s"}])
    r = await api.json("POST", "/workflows/nul/runs/bulk", 201, json={"runs": [{"input": None}]})
    run = await api.trigger("nul", None)
    w = await api.worker(["nul.s"])
    for t in await api.poll(w, max_tasks=2):
        assert t["input"] in (None, {})
        await api.complete(t, None)
    for rid in (r["runs"][0]["id"], run["id"]):
        final = await api.run(rid)
        assert final["status"] == "succeeded" and final["steps"][0]["output"] is None
    assert (await api.run(r["runs"][0]["id"]))["input"] is None


async def test_completion_reads_its_step_runs_by_key_however_many_run(api: Api) -> None:
    """Statistics taken while nothing ran (as after a bulk trigger) must not lead the completion
    to read every running step run through a partial index: it reads its own, by key."""
    await api.register("bykey", [{"name": "s"}])
    await api.json("POST", "/workflows/bykey/runs/bulk", 201, json={"runs": [{}] * 60})
    async with api.svc.db.connect() as conn:
        await conn.execute("ANALYZE step_runs")
    w = await api.worker(["bykey.s"], slots=60)
    tasks = await api.poll(w, max_tasks=60)
    assert len(tasks) == 60
    items = [
        {"id": t["step_run_id"], "token": t["lease_token"], "output": {"v": None}}
        for t in tasks[:5]
    ]
    sql, names = compile_sql(Q.COMPLETE_MANY.text)
    params = {"items": json.dumps(items), "tenant": DEFAULT_TENANT_ID, "now": None}
    async with api.svc.db.connect() as conn, conn.raw.transaction():
        # A small table is read whole; without that option the planner picks among indexes,
        # as it does on a table of any size.
        await conn.raw.execute("SET LOCAL enable_seqscan = off")
        plan = await conn.raw.fetchval("EXPLAIN (FORMAT JSON) " + sql, *[params[n] for n in names])
    scans = {
        node["Index Name"]
        for node in _plan_nodes(json.loads(plan) if isinstance(plan, str) else plan)
        if node.get("Relation Name") == "step_runs" and "Index Name" in node
    }
    assert scans == {"pk_step_runs"}, scans


def _plan_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    if isinstance(plan, list):
        for p in plan:
            yield from _plan_nodes(p)
    elif isinstance(plan, dict):
        if "Node Type" in plan:
            yield plan
        for key in ("Plan", "Plans"):
            if key in plan:
                yield from _plan_nodes(plan[key])
