"""A poll carrying completions runs as one call of ``cairn_poll`` (``db/poll_fn.py``); anything
out of the common case falls back to the statements, and answers as they do."""

from __future__ import annotations

import asyncio

import asyncpg

from db import poll_fn
from tests.integration.conftest import Api
from tests.integration.test_batches import count_statements
from tests.integration.test_poll_results import poll, result


async def test_the_installed_function_is_the_one_built_from_the_named_statements(
    api: Api, db_url: str
) -> None:
    """A change to the statements the function runs needs a migration that re-creates it."""
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        installed = await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = $1", poll_fn.NAME
        )
    finally:
        await conn.close()
    assert installed == poll_fn.body(), (
        "db/queries.py changed a statement cairn_poll runs: add a migration that re-creates it"
        " (CREATE OR REPLACE FUNCTION with poll_fn.body())"
    )


async def test_a_refused_result_falls_back_and_the_others_apply_once(api: Api) -> None:
    await api.register("fb", [{"name": "s"}])
    await api.json("POST", "/workflows/fb/runs/bulk", 201, json={"runs": [{}] * 3})
    w = await api.worker(["fb.s"])
    t = await api.poll(w, max_tasks=3)
    items = [
        result(t[0], 1),
        {"step_run_id": t[1]["step_run_id"], "lease_token": t[2]["lease_token"], "output": 2},
        result(t[2], 3),
    ]
    with count_statements(api) as seen:
        out = await poll(api, w, max_tasks=1, wait_s=0, results=items)
    assert seen[0].startswith("SELECT * FROM cairn_poll(") and len(seen) > 1  # then one by one
    assert [(o["status"], o["code"]) for o in out["results"]] == [
        ("succeeded", None),
        ("rejected", "lease_lost"),
        ("succeeded", None),
    ]
    labels = {"reason": "lease_lost", "conflicting": "true"}
    assert await api.metric("cairn_duplicate_completions_total", **labels) == 1
    for task, output in ((t[0], 1), (t[2], 3)):
        run = await api.run(task["run_id"])
        assert run["status"] == "succeeded" and run["steps"][0]["output"] == output
        assert [a["outcome"] for a in run["steps"][0]["attempts"]] == ["succeeded"]
    assert (await api.run(t[1]["run_id"]))["steps"][0]["status"] == "running"


async def test_a_repeated_result_in_one_poll_is_a_duplicate_not_a_second_success(
    api: Api,
) -> None:
    await api.register("rep", [{"name": "s"}])
    await api.trigger("rep")
    w = await api.worker(["rep.s"])
    [t] = await api.poll(w)
    out = await poll(api, w, max_tasks=1, wait_s=0, results=[result(t, 1), result(t, 1)])
    assert [(o["status"], o["code"]) for o in out["results"]] == [
        ("succeeded", None),
        ("rejected", "already_finished"),
    ]
    assert await api.metric("cairn_step_runs_total", status="succeeded") == 1


async def test_a_waiting_cancellation_is_delivered_with_the_carried_results(api: Api) -> None:
    await api.register("cx", [{"name": "s"}])
    await api.json("POST", "/workflows/cx/runs/bulk", 201, json={"runs": [{}] * 3})
    w = await api.worker(["cx.s"], slots=2)
    done, doomed = await api.poll(w, max_tasks=2)
    await api.call("POST", f"/runs/{doomed['run_id']}/cancel", 202)
    out = await poll(api, w, max_tasks=2, wait_s=0, results=[result(done, "ok")])
    assert out["cancelled"] == [doomed["step_run_id"]]
    assert [o["status"] for o in out["results"]] == ["succeeded"]
    assert [x["step"] for x in out["tasks"]] == ["s"]  # the third run, in the freed slots
    assert (await api.run(done["run_id"]))["status"] == "succeeded"
    assert (await api.run(doomed["run_id"]))["steps"][0]["status"] == "cancelled"


async def test_a_child_queued_by_a_carried_result_wakes_a_waiting_poll(
    slow_recheck_api: Api,
) -> None:
    api = slow_recheck_api
    await api.register("cw", [{"name": "a"}, {"name": "b", "parents": ["a"]}])
    await api.trigger("cw")
    wa, wb = await api.worker(["cw.a"]), await api.worker(["cw.b"])
    [a] = await api.poll(wa)
    assert await api.poll(wb) == []  # wb's actions are known: its next poll waits on NOTIFY

    async def carry_soon() -> None:
        await asyncio.sleep(0.3)
        with count_statements(api) as seen:
            out = await poll(api, wa, max_tasks=1, wait_s=0, results=[result(a, {"x": 1})])
        # One statement for the carrying poll; the woken poll's claim may land in this window.
        mine = [q for q in seen if not q.lstrip().startswith("WITH w AS")]
        assert len(mine) == 1 and out["results"][0]["status"] == "succeeded"

    woken, _ = await asyncio.gather(api.poll(wb, wait_s=20), carry_soon())
    assert [(t["step"], t["parents"]) for t in woken] == [("b", {"a": {"x": 1}})]
