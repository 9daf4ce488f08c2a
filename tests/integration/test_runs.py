"""Runs: DAG shapes, idempotency, versions, cancellation, replay, on_failure, listing."""

from __future__ import annotations

import asyncio

from db import leases
from db.check import run_checks
from db.models import DEFAULT_TENANT_ID
from db.pg import Conn
from db.types import Effects
from tests.integration.conftest import Api


async def test_diamond_waits_for_both_parents(api: Api) -> None:
    await api.register(
        "dia",
        [
            {"name": "a"},
            {"name": "b", "parents": ["a"]},
            {"name": "c", "parents": ["a"]},
            {"name": "d", "parents": ["b", "c"]},
        ],
    )
    run = await api.trigger("dia")
    w = await api.worker(["dia.a", "dia.b", "dia.c", "dia.d"])
    [a] = await api.poll(w)
    await api.complete(a, "A")
    mids = await api.poll(w)
    assert sorted(t["step"] for t in mids) == ["b", "c"]
    # Both parents finish concurrently: the child must be queued exactly once.
    await asyncio.gather(*(api.complete(t, t["step"].upper()) for t in mids))
    [d] = await api.poll(w)
    assert d["step"] == "d" and d["parents"] == {"b": "B", "c": "C"}
    await api.complete(d, "D")
    assert (await api.run(run["id"]))["status"] == "succeeded"


async def test_idempotent_trigger_returns_the_same_run(api: Api) -> None:
    await api.register("idem", [{"name": "s"}])
    body = {"input": {"n": 1}, "idempotency_key": "order-42"}
    first = await api.call("POST", "/workflows/idem/runs", 201, json=body)
    results = await asyncio.gather(
        *(api.call("POST", "/workflows/idem/runs", json=body) for _ in range(5))
    )
    assert {r.status_code for r in results} == {200}
    assert {r.json()["id"] for r in results} == {first.json()["id"]}
    page = await api.json("GET", "/runs?workflow=idem")
    assert len(page["runs"]) == 1


async def test_versions_pin_runs(api: Api) -> None:
    v1 = await api.register("ver", [{"name": "a"}])
    assert v1["version"] == 1
    again = await api.call("PUT", "/workflows/ver", 200, json={"steps": [{"name": "a"}]})
    assert again.json()["version"] == 1
    old_run = await api.trigger("ver")
    v2 = await api.call(
        "PUT",
        "/workflows/ver",
        201,
        json={"steps": [{"name": "a"}, {"name": "b", "parents": ["a"]}]},
    )
    assert v2.json()["version"] == 2
    new_run = await api.trigger("ver")
    assert new_run["version"] == 2 and len(new_run["steps"]) == 2
    w = await api.worker(["ver.a", "ver.b"])
    for t in await api.poll(w):
        await api.complete(t, 1)
    for t in await api.poll(w):
        await api.complete(t, 2)
    old = await api.run(old_run["id"])
    assert old["version"] == 1 and old["status"] == "succeeded" and len(old["steps"]) == 1
    assert (await api.run(new_run["id"]))["status"] == "succeeded"
    pinned = await api.trigger("ver", version=1)
    assert pinned["version"] == 1
    info = await api.json("GET", "/workflows/ver")
    assert info["version"] == 2 and info["versions"] == [1, 2]


async def test_cancel_reaches_running_step_through_heartbeat(api: Api) -> None:
    await api.register("cx", [{"name": "a"}, {"name": "b"}, {"name": "c", "parents": ["a"]}])
    run = await api.trigger("cx")
    w = await api.worker(["cx.a"])
    [a] = await api.poll(w)
    r = await api.call("POST", f"/runs/{run['id']}/cancel", 202)
    body = r.json()
    assert body["status"] == "cancelled"
    by_name = {s["name"]: s for s in body["steps"]}
    assert by_name["b"]["status"] == "cancelled" and by_name["c"]["status"] == "cancelled"
    assert by_name["a"]["status"] == "running" and by_name["a"]["cancel_requested"]
    hb = await api.json(
        "POST", f"/workers/{w}/heartbeat", json={"step_run_ids": [a["step_run_id"]]}
    )
    assert hb["step_runs"][a["step_run_id"]] == "cancelled"
    r = await api.complete(a, "late", expect=409)
    assert r.json()["code"] == "cancelled"
    final = await api.run(run["id"])
    assert [s["status"] for s in final["steps"]] == ["cancelled"] * 3
    assert final["steps"][0]["attempts"][0]["outcome"] == "cancelled"


async def test_cancel_is_learned_on_poll_too(api: Api) -> None:
    await api.register("cp", [{"name": "a"}])
    run = await api.trigger("cp")
    w = await api.worker(["cp.a"])
    [a] = await api.poll(w)
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)
    r = await api.json("POST", f"/workers/{w}/poll", json={"max_tasks": 1, "wait_s": 5})
    assert r["cancelled"] == [a["step_run_id"]]
    [attempt] = (await api.run(run["id"]))["steps"][0]["attempts"]  # written as it was told
    assert (attempt["outcome"], attempt["lease_token"], attempt["worker_id"]) == (
        "cancelled",
        a["lease_token"],
        w,
    )
    assert attempt["ended_at"] is not None


async def test_a_poll_delivers_a_cancellation_and_claims_into_its_slot(api: Api) -> None:
    # The claim takes nothing while a cancellation waits; the poll delivers it, which frees the
    # slot, and claims again in the same transaction.
    await api.register("cq", [{"name": "a"}])
    first = await api.trigger("cq")
    w = await api.worker(["cq.a"], slots=1)
    [a] = await api.poll(w)
    second = await api.trigger("cq")
    await api.call("POST", f"/runs/{first['id']}/cancel", 202)
    r = await api.json("POST", f"/workers/{w}/poll", json={"max_tasks": 5, "wait_s": 0})
    assert r["cancelled"] == [a["step_run_id"]]
    assert [t["run_id"] for t in r["tasks"]] == [second["id"]]
    again = await api.json("POST", f"/workers/{w}/poll", json={"max_tasks": 5, "wait_s": 0})
    assert again["cancelled"] == [] and again["tasks"] == []  # the one slot is taken
    assert (await api.run(first["id"]))["steps"][0]["status"] == "cancelled"


async def test_ignoring_cancellation_past_grace_is_counted(api: Api) -> None:
    await api.register("ig", [{"name": "a"}])
    run = await api.trigger("ig")
    w = await api.worker(["ig.a"])
    [a] = await api.poll(w)
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)
    body = {"step_run_ids": [a["step_run_id"]]}
    await api.json("POST", f"/workers/{w}/heartbeat", json=body)
    await api.age(api.svc.settings.cancel_grace_s + 1)
    hb = await api.json("POST", f"/workers/{w}/heartbeat", json=body)
    assert hb["step_runs"][a["step_run_id"]] == "cancelled"
    assert await api.metric("cairn_ignored_cancellations_total") == 1


async def test_cancel_grace_revokes_a_silent_holder(api: Api) -> None:
    await api.register("sg", [{"name": "a"}])
    run = await api.trigger("sg")
    w = await api.worker(["sg.a"], lease_timeout_s=600)
    await api.poll(w)
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)
    await api.reap(ahead_s=api.svc.settings.cancel_grace_s + 1)
    assert (await api.run(run["id"]))["steps"][0]["status"] == "cancelled"


async def test_replay_reruns_only_the_failed_part(api: Api) -> None:
    await api.register(
        "rp", [{"name": "a"}, {"name": "b", "parents": ["a"]}, {"name": "c", "parents": ["b"]}]
    )
    run = await api.trigger("rp", {"k": "v"})
    w = await api.worker(["rp.a", "rp.b", "rp.c"])
    [a] = await api.poll(w)
    await api.complete(a, "A")
    [b] = await api.poll(w)
    await api.fail(b, retryable=False)
    failed = await api.run(run["id"])
    assert failed["status"] == "failed"
    replayed = await api.json("POST", f"/runs/{run['id']}/replay", 202)
    assert replayed["status"] == "running"
    assert [s["status"] for s in replayed["steps"]] == ["succeeded", "queued", "pending"]
    [b2] = await api.poll(w)
    assert b2["step"] == "b" and b2["input"] == {"k": "v"} and b2["parents"] == {"a": "A"}
    assert b2["attempt"] == 2
    await api.complete(b2, "B")
    [c] = await api.poll(w)
    await api.complete(c, "C")
    final = await api.run(run["id"])
    assert final["status"] == "succeeded"
    assert len(final["steps"][0]["attempts"]) == 1  # a was not re-run
    await api.call("POST", f"/runs/{run['id']}/replay", 409)


async def test_on_failure_step_runs_with_failure_details(api: Api) -> None:
    await api.register(
        "of", [{"name": "a"}, {"name": "b", "parents": ["a"]}], on_failure={"name": "cleanup"}
    )
    run = await api.trigger("of")
    w = await api.worker(["of.a", "of.b", "of.cleanup"])
    [a] = await api.poll(w)
    await api.fail(a, retryable=False)
    [h] = await api.poll(w)
    assert h["step"] == "cleanup"
    assert h["parents"]["failed_step"] == "a"
    assert h["parents"]["error"]["type"] == "E"
    assert (await api.run(run["id"]))["status"] == "running"
    await api.complete(h, "cleaned")
    final = await api.run(run["id"])
    assert final["status"] == "failed"
    assert {s["name"]: s["status"] for s in final["steps"]} == {
        "a": "failed",
        "b": "skipped",
        "cleanup": "succeeded",
    }


async def test_replay_keeps_the_on_failure_steps_result(api: Api) -> None:
    """The handler's success is as final as any step's: a replay neither clears nor re-runs it."""
    await api.register(
        "ofr", [{"name": "a"}, {"name": "b", "parents": ["a"]}], on_failure={"name": "h"}
    )
    run = await api.trigger("ofr")
    w = await api.worker(["ofr.a", "ofr.b", "ofr.h"])
    [a] = await api.poll(w)
    await api.fail(a, retryable=False)
    [h] = await api.poll(w)
    await api.complete(h, {"handled": True})
    assert (await api.run(run["id"]))["status"] == "failed"
    replayed = await api.json("POST", f"/runs/{run['id']}/replay", 202)
    steps = {s["name"]: s for s in replayed["steps"]}
    assert steps["h"]["status"] == "succeeded" and steps["h"]["output"] == {"handled": True}
    [a2] = await api.poll(w)
    await api.fail(a2, retryable=False)  # fails again: the handler has already run
    assert await api.poll(w) == []
    final = await api.run(run["id"])
    assert final["status"] == "failed"
    steps = {s["name"]: s for s in final["steps"]}
    assert steps["h"]["output"] == {"handled": True} and len(steps["h"]["attempts"]) == 1
    async with api.svc.db.connect() as conn:
        assert await run_checks(conn) == []


async def test_on_failure_is_skipped_when_the_run_succeeds(api: Api) -> None:
    await api.register("ok", [{"name": "a"}], on_failure={"name": "cleanup"})
    run = await api.trigger("ok")
    w = await api.worker(["ok.a", "ok.cleanup"])
    [a] = await api.poll(w)
    await api.complete(a, 1)
    final = await api.run(run["id"])
    assert final["status"] == "succeeded"
    assert final["steps"][1]["status"] == "skipped"


async def test_list_runs_paginates_and_filters(api: Api) -> None:
    await api.register("ls", [{"name": "s"}])
    ids = [(await api.trigger("ls"))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        q = "/runs?workflow=ls&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await api.json("GET", q)
        seen += [r["id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    assert (await api.json("GET", "/runs?status=succeeded"))["runs"] == []
    await api.call("GET", "/runs?status=bogus", 422)
    await api.call("GET", "/runs?cursor=!!!", 422)


async def test_run_is_running_from_its_first_claim(api: Api) -> None:
    """The claim leaves the run's row alone; readers still see it running from then on."""
    await api.register("lazy", [{"name": "a", "retries": 1}, {"name": "b", "parents": ["a"]}])
    run = await api.trigger("lazy")
    other = await api.trigger("lazy")
    before = await api.run(run["id"])
    assert before["status"] == "queued" and before["started_at"] is None
    w = await api.worker(["lazy.a", "lazy.b"])
    [a, _] = await api.poll(w)
    started = await api.run(a["run_id"])
    assert started["status"] == "running"
    assert (
        started["started_at"] == next(s for s in started["steps"] if s["name"] == "a")["started_at"]
    )
    running = await api.json("GET", "/runs?workflow=lazy&status=running")
    queued = await api.json("GET", "/runs?workflow=lazy&status=queued")
    assert {r["id"] for r in running["runs"]} == {run["id"], other["id"]}
    assert queued["runs"] == []
    # A retry re-queues the step: the run stays running, and keeps its first start.
    await api.fail(a, retry_after_s=0)
    again = await api.run(a["run_id"])
    assert again["status"] == "running" and again["started_at"] == started["started_at"]
    [a2] = await api.poll(w)
    await api.complete(a2, "A")
    [b] = await api.poll(w)
    await api.complete(b, "B")
    done = await api.run(a["run_id"])
    assert done["status"] == "succeeded" and done["started_at"] == started["started_at"]


async def test_queued_runs_list_only_those_not_started(api: Api) -> None:
    await api.register("lazy2", [{"name": "a"}])
    first = await api.trigger("lazy2")
    second = await api.trigger("lazy2")
    w = await api.worker(["lazy2.a"])
    [t] = await api.poll(w, max_tasks=1)
    page = await api.json("GET", "/runs?workflow=lazy2&status=queued")
    assert [r["id"] for r in page["runs"]] == [
        second["id"] if t["run_id"] == first["id"] else first["id"]
    ]
    listed = await api.json("GET", "/runs?workflow=lazy2")
    assert {r["id"]: r["status"] for r in listed["runs"]} == {
        t["run_id"]: "running",
        (second if t["run_id"] == first["id"] else first)["id"]: "queued",
    }


async def test_failed_and_cancelled_runs_are_listed_and_leave_the_list_on_replay(api: Api) -> None:
    """Failed and cancelled runs are listed through their own index (a generated column)."""
    await api.register("att", [{"name": "s"}])
    ok, bad, gone, waiting = [(await api.trigger("att"))["id"] for _ in range(4)]
    await api.json("POST", f"/runs/{gone}/cancel", 202)
    w = await api.worker(["att.s"])
    tasks = {t["run_id"]: t for t in await api.poll(w)}
    assert set(tasks) == {ok, bad, waiting}
    await api.complete(tasks[ok], 1)
    await api.fail(tasks[bad], retryable=False)

    async def listed(status: str) -> set[str]:
        return {r["id"] for r in (await api.json("GET", f"/runs?status={status}"))["runs"]}

    assert await listed("failed") == {bad}
    assert await listed("cancelled") == {gone}
    assert await listed("succeeded") == {ok}
    assert await listed("running") == {waiting}
    await api.json("POST", f"/runs/{bad}/replay", 202)
    assert await listed("failed") == set()
    assert bad in await listed("queued") | await listed("running")


async def test_a_runs_completion_is_a_hot_update(api: Api) -> None:
    """No index covers what a run's completion changes: its row is rewritten on its page,
    with no new index entries (a HOT update)."""
    await api.register("hot", [{"name": "s"}])
    await api.json("POST", "/workflows/hot/runs/bulk", 201, json={"runs": [{}] * 20})
    w = await api.worker(["hot.s"], slots=20)
    tasks = await api.poll(w, max_tasks=20)
    items = [(t["step_run_id"], t["lease_token"], "null") for t in tasks]

    async def complete(conn: Conn) -> tuple[int, int]:
        refused = await leases.complete_many(conn, DEFAULT_TENANT_ID, items, effects=Effects())
        assert refused == [None] * 20
        row = (
            await conn.execute(
                "SELECT pg_stat_get_xact_tuples_updated(CAST('runs' AS regclass)),"
                " pg_stat_get_xact_tuples_hot_updated(CAST('runs' AS regclass))"
            )
        ).one()
        return int(row[0]), int(row[1])

    updated, hot = await api.svc.db.transaction(complete)
    assert updated == 20 and hot == 20, (updated, hot)
    assert {r["status"] for r in (await api.json("GET", "/runs?workflow=hot"))["runs"]} == {
        "succeeded"
    }


async def test_a_runs_started_at_is_its_first_steps_start_whatever_ends_it(api: Api) -> None:
    """Cancelled after a claim: started when its step started. Never claimed: never started,
    whether cancelled or failed by a schedule timeout; replayed, it is queued, not running."""
    await api.register("sa", [{"name": "s", "schedule_timeout_s": 5}])
    claimed, unclaimed, expired = [await api.trigger("sa") for _ in range(3)]
    w = await api.worker(["sa.s"])
    [task] = await api.poll(w, max_tasks=1)
    assert task["run_id"] == claimed["id"]
    step_start = (await api.run(claimed["id"]))["steps"][0]["started_at"]
    cancelled = await api.json("POST", f"/runs/{claimed['id']}/cancel", 202)
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] == step_start
    assert (await api.run(claimed["id"]))["started_at"] == step_start

    never = await api.json("POST", f"/runs/{unclaimed['id']}/cancel", 202)
    assert never["status"] == "cancelled" and never["started_at"] is None
    again = await api.json("POST", f"/runs/{unclaimed['id']}/replay", 202)
    assert again["status"] == "queued" and again["started_at"] is None

    await api.reap(ahead_s=6)  # the third run's step was never claimed: schedule timeout
    failed = await api.run(expired["id"])
    assert failed["status"] == "failed" and failed["started_at"] is None

    await api.call("POST", f"/runs/{claimed['id']}/replay", 409)  # its step is still stopping
    beat = {"step_run_ids": [task["step_run_id"]]}
    assert (await api.json("POST", f"/workers/{w}/heartbeat", json=beat))["step_runs"] == {
        task["step_run_id"]: "cancelled"
    }
    resumed = await api.json("POST", f"/runs/{claimed['id']}/replay", 202)
    assert resumed["status"] == "running" and resumed["started_at"] == step_start


async def test_a_cancelled_runs_step_that_times_out_is_cancelled_not_retried(api: Api) -> None:
    """Its execution timeout comes before the cancel's grace: the step ends cancelled, is
    never queued again nor handed out, and its attempt is timed like any other."""
    assert api.svc.settings.cancel_grace_s > 3
    await api.register("ct", [{"name": "a", "timeout_s": 2, "retries": 3}])
    run = await api.trigger("ct")
    w = await api.worker(["ct.a"], lease_timeout_s=600)
    assert len(await api.poll(w)) == 1
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)
    await api.reap(ahead_s=3)
    step = (await api.run(run["id"]))["steps"][0]
    assert step["status"] == "cancelled" and step["attempt"] == 1
    assert [x["outcome"] for x in step["attempts"]] == ["cancelled"]
    assert await api.poll(w) == []
    assert await api.metric("cairn_retries_total") == 0
    assert await api.metric("cairn_step_duration_seconds_count") == 1


async def test_every_cancelled_attempt_is_timed(api: Api) -> None:
    """``cairn_step_duration_seconds`` counts one per ended attempt: cancellations delivered by
    heartbeat, by poll, and ended by the reaper after the grace period included."""
    await api.register("ta", [{"name": "a"}])
    runs = [await api.trigger("ta") for _ in range(3)]
    w = await api.worker(["ta.a"], slots=1)
    held = []
    for run in runs:  # one at a time: the one slot is freed by each cancellation
        [task] = await api.poll(w)
        held.append(task)
        await api.call("POST", f"/runs/{run['id']}/cancel", 202)
        if len(held) == 1:
            beat = {"step_run_ids": [task["step_run_id"]]}
            hb = await api.json("POST", f"/workers/{w}/heartbeat", json=beat)
            assert hb["step_runs"][task["step_run_id"]] == "cancelled"
        elif len(held) == 2:
            continue  # the next poll delivers it, then claims the third run
        else:
            await api.reap(ahead_s=api.svc.settings.cancel_grace_s + 1)
    attempts = [(await api.run(r["id"]))["steps"][0]["attempts"] for r in runs]
    assert [[a["outcome"] for a in x] for x in attempts] == [["cancelled"]] * 3
    assert await api.metric("cairn_step_duration_seconds_count") == 3


async def test_a_replay_waits_until_the_cancelled_steps_have_stopped(api: Api) -> None:
    """Replayed at once, a step still running under a cancel flag would run twice at the same
    time (at-most-once too): the replay is refused until its worker has learnt of the cancel,
    which then hears ``cancelled``, not ``lost``; the step is handed out again only after."""
    await api.register("rw", [{"name": "a", "delivery": "at_most_once"}, {"name": "b"}])
    run = await api.trigger("rw")
    w1, w2 = await api.worker(["rw.a", "rw.b"]), await api.worker(["rw.a", "rw.b"])
    tasks = await api.poll(w1)
    assert sorted(t["step"] for t in tasks) == ["a", "b"]
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)
    problem = (await api.call("POST", f"/runs/{run['id']}/replay", 409)).json()
    assert problem["code"] == "invalid_state" and "still stopping" in problem["detail"]
    assert await api.poll(w2) == []  # nothing was queued again
    beat = {"step_run_ids": [t["step_run_id"] for t in tasks]}
    verdicts = (await api.json("POST", f"/workers/{w1}/heartbeat", json=beat))["step_runs"]
    assert set(verdicts.values()) == {"cancelled"}
    replayed = await api.json("POST", f"/runs/{run['id']}/replay", 202)
    assert [s["status"] for s in replayed["steps"]] == ["queued", "queued"]
    again = await api.poll(w2)
    assert sorted((t["step"], t["attempt"]) for t in again) == [("a", 2), ("b", 2)]
