"""A poll may carry finished step runs: applied first, in the claim's own transaction."""

from __future__ import annotations

import time
import uuid
from typing import Any

from tests.integration.conftest import Api
from tests.integration.test_batches import count_statements


def result(task: dict[str, Any], output: Any = None, **kw: Any) -> dict[str, Any]:
    return {"step_run_id": task["step_run_id"], "lease_token": task["lease_token"], **kw} | (
        {} if "error" in kw else {"output": output}
    )


async def poll(api: Api, worker: str, expect: int = 200, **body: Any) -> Any:
    r = await api.call("POST", f"/workers/{worker}/poll", expect, json=body)
    return r.json()


async def test_carried_results_free_their_slots_for_the_same_claim(api: Api) -> None:
    await api.register("carry", [{"name": "a"}, {"name": "b", "parents": ["a"]}])
    runs = await api.json("POST", "/workflows/carry/runs/bulk", 201, json={"runs": [{}] * 3})
    w = await api.worker(["carry.a", "carry.b"], slots=2)
    first = await api.poll(w, max_tasks=5)
    assert [t["step"] for t in first] == ["a", "a"]  # two slots
    out = await poll(
        api, w, max_tasks=2, wait_s=30, results=[result(t, i) for i, t in enumerate(first)]
    )
    assert [(o["step_run_id"], o["status"]) for o in out["results"]] == [
        (t["step_run_id"], "succeeded") for t in first
    ]
    # Both slots were freed by the carried completions, in the same transaction: the third run's
    # a and a child b its completion queued (visible to the claim that follows it) come back.
    assert sorted(t["step"] for t in out["tasks"]) == ["a", "b"]
    done = [
        r for r in runs["runs"] if (await api.run(r["id"]))["steps"][0]["status"] == "succeeded"
    ]
    assert len(done) == 2


async def test_a_poll_carrying_results_does_not_wait(api: Api) -> None:
    await api.register("nowait", [{"name": "s"}])
    await api.trigger("nowait")
    w = await api.worker(["nowait.s"])
    [t] = await api.poll(w)
    started = time.monotonic()
    out = await poll(api, w, max_tasks=10, wait_s=60, results=[result(t, {"ok": 1})])
    assert time.monotonic() - started < 30  # would otherwise wait the full minute for work
    assert out["tasks"] == [] and out["results"][0]["status"] == "succeeded"
    run = await api.run(t["run_id"])
    assert run["status"] == "succeeded" and run["steps"][0]["output"] == {"ok": 1}


async def test_carried_results_are_fenced_and_counted_like_the_results_endpoint(api: Api) -> None:
    await api.register("fence", [{"name": "s", "retries": 1}])
    await api.json("POST", "/workflows/fence/runs/bulk", 201, json={"runs": [{}] * 3})
    w = await api.worker(["fence.s"])
    t = await api.poll(w, max_tasks=3)
    items = [
        result(t[0], 1),
        {"step_run_id": t[1]["step_run_id"], "lease_token": t[2]["lease_token"], "output": 2},
        result(t[2], error={"type": "Boom", "message": "x"}, retry_after_s=0),
    ]
    out = await poll(api, w, max_tasks=1, wait_s=0, results=items)
    assert [(o["status"], o["code"]) for o in out["results"]] == [
        ("succeeded", None),
        ("rejected", "lease_lost"),
        ("queued", None),
    ]
    assert [x["step_run_id"] for x in out["tasks"]] == [t[2]["step_run_id"]]  # the retry
    labels = {"reason": "lease_lost", "conflicting": "true"}
    assert await api.metric("cairn_duplicate_completions_total", **labels) == 1


async def test_an_unknown_worker_applies_none_of_the_results(api: Api) -> None:
    await api.register("atomic", [{"name": "s"}])
    await api.trigger("atomic")
    w = await api.worker(["atomic.s"])
    [t] = await api.poll(w)
    body = await poll(api, str(uuid.uuid4()), 404, max_tasks=1, wait_s=0, results=[result(t, 1)])
    assert body["code"] == "not_found"
    assert (await api.run(t["run_id"]))["steps"][0]["status"] == "running"


async def test_bad_carried_results_are_refused_whole(api: Api) -> None:
    await api.register("bad", [{"name": "s"}])
    await api.trigger("bad")
    w = await api.worker(["bad.s"])
    [t] = await api.poll(w)
    big = "x" * (api.svc.settings.max_payload_bytes + 10)
    r = await api.call("POST", f"/workers/{w}/poll", json={"results": [result(t, big)]})
    assert r.status_code in (413, 422) and r.headers["content-type"] == "application/problem+json"
    r = await api.call("POST", f"/workers/{w}/poll", json={"results": [{"output": 1}]})
    assert r.status_code == 422
    many = [result(t, 1)] * (api.svc.settings.max_batch + 1)
    r = await api.call("POST", f"/workers/{w}/poll", json={"results": many})
    assert r.status_code == 422
    assert (await api.run(t["run_id"]))["steps"][0]["status"] == "running"


async def test_steady_state_cycle_is_one_call(api: Api) -> None:
    """Pinned: one statement, no transaction block: ``cairn_poll`` (complete + attempts; promote
    + settle; the claim with the worker's touch)."""
    await api.register("cycle", [{"name": "s"}])
    w = await api.worker(["cycle.s"], slots=40)

    async def cycle(n: int) -> list[str]:
        await api.json("POST", "/workflows/cycle/runs/bulk", 201, json={"runs": [{}] * n})
        tasks = await api.poll(w, max_tasks=n)
        with count_statements(api) as seen:
            out = await poll(api, w, max_tasks=n, wait_s=0, results=[result(x) for x in tasks])
        assert {o["status"] for o in out["results"]} == {"succeeded"} and out["tasks"] == []
        return seen

    small, large = await cycle(2), await cycle(40)
    assert len(small) == len(large) == 1, "\n---\n".join(large)
    assert large[0].startswith("SELECT * FROM cairn_poll(")
    # Counted as the statements count them: 42 step runs and runs succeeded, 42 durations.
    assert await api.metric("cairn_step_runs_total", status="succeeded") == 42
    assert await api.metric("cairn_runs_total", status="succeeded") == 42
    assert await api.metric("cairn_step_duration_seconds_count") == 42
    page = await api.json("GET", "/runs?workflow=cycle&status=succeeded&limit=100")
    assert len(page["runs"]) == 42


async def test_a_task_is_rendered_whole_and_its_times_in_utc_whatever_the_db_time_zone(
    db_url: str, settings_factory: Any
) -> None:
    """The poll's tasks are JSON rendered by Postgres: every field, the input as stored, and
    the deadlines as RFC 3339 in UTC even when the database's own time zone is not UTC."""
    from datetime import datetime, timedelta

    import asyncpg
    import httpx

    from api.app import create_app
    from db.engine import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f"ALTER DATABASE \"{name}\" SET timezone = 'Pacific/Chatham'")
    finally:
        await conn.close()
    app = create_app(settings_factory())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cairn") as client:
            api = Api(client, app)
            await api.register("tz", [{"name": "a"}, {"name": "b", "parents": ["a"]}])
            payload = {"naïve": "☃", "big": 12345678901234567890123, "nested": [[{"x": None}]]}
            run = await api.trigger("tz", payload)
            w = await api.worker(["tz.a", "tz.b"])
            [a] = await api.poll(w)
            assert set(a) == {
                "step_run_id", "run_id", "workflow", "version", "step", "action", "attempt",
                "lease_token", "input", "parents", "timeout_at", "lease_expires_at", "delivery",
            }  # fmt: skip
            assert a["run_id"] == run["id"] and a["workflow"] == "tz" and a["version"] == 1
            assert (a["step"], a["action"], a["attempt"]) == ("a", "tz.a", 1)
            assert a["input"] == payload and a["parents"] == {}
            assert a["delivery"] == "at_least_once"
            now = await api.db_now()
            for key in ("timeout_at", "lease_expires_at"):
                assert a[key].endswith("+00:00"), a[key]
                at = datetime.fromisoformat(a[key])
                assert now < at < now + timedelta(days=2)
            conn = await asyncpg.connect(asyncpg_dsn(db_url))
            try:
                stored = await conn.fetchrow(
                    "SELECT timeout_at, lease_expires_at FROM step_runs WHERE id = $1",
                    uuid.UUID(a["step_run_id"]),
                )
            finally:
                await conn.close()
            assert stored is not None
            for key in ("timeout_at", "lease_expires_at"):
                assert datetime.fromisoformat(a[key]) == stored[key]  # the same instant
            await api.complete(a, {"out": [1, 2.5, "é"]})
            [b] = await api.poll(w)
            assert b["step"] == "b" and b["parents"] == {"a": {"out": [1, 2.5, "é"]}}
            assert b["input"] == payload


async def test_two_results_for_one_step_run_in_a_batch_apply_in_their_order(api: Api) -> None:
    """As if sent one by one: the first applies, a later one is refused and counted."""
    await api.register("twice", [{"name": "s", "retries": 2}])
    await api.json("POST", "/workflows/twice/runs/bulk", 201, json={"runs": [{}] * 3})
    w = await api.worker(["twice.s"])
    t = await api.poll(w, max_tasks=3)
    fail = {"error": {"type": "Boom", "message": "x"}, "retryable": False}
    # Through the results endpoint: a failure, then a completion of the same step run.
    answer = await api.json(
        "POST", "/step-runs/results", json={"results": [result(t[0], **fail), result(t[0], 9)]}
    )
    assert [(o["status"], o["code"]) for o in answer["results"]] == [
        ("failed", None),
        ("rejected", "already_finished"),
    ]
    assert (await api.run(t[0]["run_id"]))["status"] == "failed"
    # Carried by a poll: completions only, the same output twice (benign), then a different one.
    items = [result(t[1], 1), result(t[2], 2), result(t[1], 1), result(t[1], 3)]
    out = await poll(api, w, max_tasks=1, wait_s=0, results=items)
    assert [(o["step_run_id"], o["status"], o["conflicting"]) for o in out["results"]] == [
        (t[1]["step_run_id"], "succeeded", None),
        (t[2]["step_run_id"], "succeeded", None),
        (t[1]["step_run_id"], "rejected", False),
        (t[1]["step_run_id"], "rejected", True),
    ]
    assert (await api.run(t[1]["run_id"]))["steps"][0]["output"] == 1
    assert (await api.run(t[2]["run_id"]))["steps"][0]["output"] == 2
    assert (
        await api.metric(
            "cairn_duplicate_completions_total", reason="already_finished", conflicting="true"
        )
        == 2
    )
    assert (
        await api.metric(
            "cairn_duplicate_completions_total", reason="already_finished", conflicting="false"
        )
        == 1
    )
