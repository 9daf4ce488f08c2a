"""Leases, fencing, retries, timeouts and the reaper, with the clock injected."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.conftest import Api


async def test_retry_with_backoff_then_success(api: Api) -> None:
    await api.register(
        "r", [{"name": "s", "retries": 2, "backoff": {"initial_s": 30, "factor": 2, "jitter": 0}}]
    )
    run = await api.trigger("r")
    w = await api.worker(["r.s"])
    [t1] = await api.poll(w)
    r = await api.fail(t1)
    assert r.json() == {"status": "queued"}
    assert await api.poll(w) == []  # backing off for 30 s
    step = (await api.run(run["id"]))["steps"][0]
    assert step["status"] == "queued" and step["attempt"] == 1
    await api.age(31)
    [t2] = await api.poll(w)
    assert t2["attempt"] == 2 and t2["lease_token"] != t1["lease_token"]
    await api.complete(t2, "ok")
    final = await api.run(run["id"])
    assert final["status"] == "succeeded"
    assert [a["outcome"] for a in final["steps"][0]["attempts"]] == ["failed", "succeeded"]
    assert await api.metric("cairn_retries_total") == 1


async def test_non_retryable_fails_at_once_and_skips_descendants(api: Api) -> None:
    await api.register(
        "nr",
        [
            {"name": "a", "retries": 5},
            {"name": "b", "parents": ["a"]},
            {"name": "c", "parents": ["b"]},
        ],
    )
    run = await api.trigger("nr")
    w = await api.worker(["nr.a", "nr.b", "nr.c"])
    [t] = await api.poll(w)
    r = await api.fail(t, retryable=False)
    assert r.json() == {"status": "failed"}
    final = await api.run(run["id"])
    assert final["status"] == "failed"
    assert [s["status"] for s in final["steps"]] == ["failed", "skipped", "skipped"]
    assert final["error"]["step"] == "a"


async def test_retry_after_overrides_backoff(api: Api) -> None:
    await api.register("ra", [{"name": "s", "retries": 1}])
    await api.trigger("ra")
    w = await api.worker(["ra.s"])
    [t] = await api.poll(w)
    await api.fail(t, retry_after_s=0)
    [t2] = await api.poll(w)
    assert t2["attempt"] == 2


async def test_lease_expiry_requeues_and_zombie_gets_409(api: Api) -> None:
    await api.register("z", [{"name": "s", "retries": 1}])
    run = await api.trigger("z")
    zombie = await api.worker(["z.s"], lease_timeout_s=3)
    [old] = await api.poll(zombie)
    assert await api.reap(ahead_s=1) == 0  # lease still valid
    assert await api.reap(ahead_s=10) == 1  # expired: re-queued
    assert await api.metric("cairn_lease_expirations_total") == 1
    fresh = await api.worker(["z.s"])
    [new] = await api.poll(fresh)
    assert new["step_run_id"] == old["step_run_id"] and new["attempt"] == 2
    await api.complete(new, {"by": "fresh"})
    r = await api.complete(old, {"by": "zombie"}, expect=409)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "lease_lost"
    assert (
        await api.metric(
            "cairn_duplicate_completions_total", reason="lease_lost", conflicting="true"
        )
        == 1
    )
    final = await api.run(run["id"])
    assert final["steps"][0]["output"] == {"by": "fresh"}
    outcomes = [a["outcome"] for a in final["steps"][0]["attempts"]]
    assert outcomes == ["lease_expired", "succeeded"]


async def test_lease_expiry_without_retries_fails_the_run(api: Api) -> None:
    await api.register("z0", [{"name": "s"}])
    run = await api.trigger("z0")
    w = await api.worker(["z0.s"], lease_timeout_s=3)
    await api.poll(w)
    await api.reap(ahead_s=10)
    final = await api.run(run["id"])
    assert final["status"] == "failed"
    assert final["steps"][0]["error"]["type"] == "lease_lost"


async def test_heartbeat_renews_and_reports_lost(api: Api) -> None:
    await api.register("hb", [{"name": "s", "retries": 1}])
    await api.trigger("hb")
    w = await api.worker(["hb.s"], lease_timeout_s=3)
    [t] = await api.poll(w)
    body = {"step_run_ids": [t["step_run_id"]]}
    r = await api.json("POST", f"/workers/{w}/heartbeat", json=body)
    assert r == {"step_runs": {t["step_run_id"]: "held"}}
    await api.reap(ahead_s=10)
    r = await api.json("POST", f"/workers/{w}/heartbeat", json=body)
    assert r == {"step_runs": {t["step_run_id"]: "lost"}}


async def test_benign_duplicate_completion_is_not_conflicting(api: Api) -> None:
    await api.register("d", [{"name": "s"}])
    await api.trigger("d")
    w = await api.worker(["d.s"])
    [t] = await api.poll(w)
    await api.complete(t, {"v": 1})
    r = await api.complete(t, {"v": 1}, expect=409)
    assert r.json()["code"] == "already_finished" and r.json()["conflicting"] is False
    r = await api.complete(t, {"v": 2}, expect=409)
    assert r.json()["conflicting"] is True
    assert (
        await api.metric(
            "cairn_duplicate_completions_total", reason="already_finished", conflicting="false"
        )
        == 1
    )
    assert (
        await api.metric(
            "cairn_duplicate_completions_total", reason="already_finished", conflicting="true"
        )
        == 1
    )


async def test_a_repeated_failure_is_benign_only_with_the_same_error(api: Api) -> None:
    await api.register("df", [{"name": "s", "retries": 1, "backoff": {"initial_s": 60}}])
    await api.trigger("df")
    w = await api.worker(["df.s"])
    [t] = await api.poll(w)
    err = {"type": "E", "message": "m"}
    body = {"lease_token": t["lease_token"], "error": err, "retryable": True}
    path = f"/step-runs/{t['step_run_id']}/fail"
    assert (await api.json("POST", path, json=body))["status"] == "queued"  # retried later
    # The holder's own attempt already reported, though the step run is queued again.
    same = await api.call("POST", path, 409, json=body)
    assert (same.json()["code"], same.json()["conflicting"]) == ("already_finished", False)
    other = {**body, "error": {"type": "Other", "message": "zz"}}
    r = await api.call("POST", path, 409, json=other)
    assert (r.json()["code"], r.json()["conflicting"]) == ("already_finished", True)
    r = await api.complete(t, "after all", expect=409)
    assert (r.json()["code"], r.json()["conflicting"]) == ("already_finished", True)
    # Still so once the next attempt holds the step run: a resend is not a second run.
    await api.age(80)  # past the backoff: 60 s, jitter 0.2
    [t2] = await api.poll(w)
    assert t2["attempt"] == 2
    same = await api.call("POST", path, 409, json=body)
    assert (same.json()["code"], same.json()["conflicting"]) == ("already_finished", False)
    for conflicting, n in (("false", 2), ("true", 2)):
        labels = {"reason": "already_finished", "conflicting": conflicting}
        assert await api.metric("cairn_duplicate_completions_total", **labels) == n
    await api.complete(t2, "ok")
    stored = await api.run((await api.json("GET", "/runs?workflow=df"))["runs"][0]["id"])
    assert stored["steps"][0]["attempts"][0]["error"] == err
    assert stored["steps"][0]["output"] == "ok"


async def test_execution_timeout_counts_as_retryable_failure(api: Api) -> None:
    await api.register(
        "to",
        [{"name": "s", "retries": 1, "timeout_s": 5, "backoff": {"initial_s": 0, "jitter": 0}}],
    )
    run = await api.trigger("to")
    w = await api.worker(["to.s"], lease_timeout_s=600)
    [t] = await api.poll(w)
    await api.reap(ahead_s=6)
    [t2] = await api.poll(w)
    assert t2["attempt"] == 2
    await api.complete(t, "late", expect=409)
    await api.reap(ahead_s=6)
    final = await api.run(run["id"])
    assert final["status"] == "failed"
    assert [a["outcome"] for a in final["steps"][0]["attempts"]] == ["timed_out", "timed_out"]


async def test_schedule_timeout_fails_a_step_nobody_claims(api: Api) -> None:
    await api.register("st", [{"name": "s", "schedule_timeout_s": 5}])
    run = await api.trigger("st")
    await api.reap(ahead_s=2)
    assert (await api.run(run["id"]))["status"] == "queued"
    await api.reap(ahead_s=6)
    final = await api.run(run["id"])
    assert final["status"] == "failed"
    assert final["steps"][0]["error"]["type"] == "schedule_timeout"


async def test_at_most_once_is_not_rerun_after_lease_loss(api: Api) -> None:
    await api.register("amo", [{"name": "s", "retries": 3, "delivery": "at_most_once"}])
    run = await api.trigger("amo")
    w = await api.worker(["amo.s"], lease_timeout_s=3)
    await api.poll(w)
    await api.reap(ahead_s=10)
    final = await api.run(run["id"])
    assert final["steps"][0]["status"] == "failed"
    assert final["steps"][0]["attempt"] == 1
    assert await api.poll(w) == []


async def test_slots_bound_the_claim(api: Api) -> None:
    await api.register("sl", [{"name": "s"}])
    for _ in range(5):
        await api.trigger("sl")
    w = await api.worker(["sl.s"], slots=2)
    assert len(await api.poll(w, max_tasks=10)) == 2
    assert await api.poll(w, max_tasks=10) == []


async def test_deregister_releases_leases_at_once(api: Api) -> None:
    await api.register("dr", [{"name": "s"}])
    run = await api.trigger("dr")
    w = await api.worker(["dr.s"])
    [t] = await api.poll(w)
    await api.call("DELETE", f"/workers/{w}", 204)
    w2 = await api.worker(["dr.s"])
    [t2] = await api.poll(w2)
    assert t2["step_run_id"] == t["step_run_id"] and t2["attempt"] == 2
    await api.complete(t2, 1)
    assert (await api.run(run["id"]))["status"] == "succeeded"
    await api.call("POST", f"/workers/{w}/poll", 404, json={"max_tasks": 1, "wait_s": 0})


async def test_concurrent_polls_of_one_worker_never_lease_beyond_its_slots(api: Api) -> None:
    """A client polling one worker from several connections at once: the polls take turns."""
    await api.register("cp", [{"name": "s"}])
    await api.call("POST", "/workflows/cp/runs/bulk", 201, json={"runs": [{}] * 60})
    w = await api.worker(["cp.s"], slots=3)
    held: list[Any] = []
    for _ in range(4):
        got = await asyncio.gather(*(api.poll(w, max_tasks=3) for _ in range(8)))
        held = [t for tasks in got for t in tasks]
        assert len(held) == 3, [len(tasks) for tasks in got]
        # The same again, each poll carrying a result (the claim inside ``cairn_poll``): the
        # three slots it frees are all there is to claim, however many polls ask at once.
        carried = [
            {"step_run_id": t["step_run_id"], "lease_token": t["lease_token"], "output": 1}
            for t in held
        ]
        got = await asyncio.gather(
            *(
                api.json(
                    "POST",
                    f"/workers/{w}/poll",
                    json={"max_tasks": 3, "wait_s": 0, "results": carried[i : i + 1]},
                )
                for i in range(3)
            ),
            *(api.poll(w, max_tasks=3) for _ in range(5)),
        )
        answers = [a if isinstance(a, list) else a["tasks"] for a in got]
        tasks = [t for answer in answers for t in answer]
        assert len(tasks) <= 3, len(tasks)
        for t in tasks:
            await api.complete(t, 2)
    running = await api.json("GET", "/runs?workflow=cp&status=running&limit=100")
    assert len(running["runs"]) == 0


async def test_a_holder_whose_lease_ran_out_is_told_lease_lost_even_once_the_step_failed(
    api: Api,
) -> None:
    """No retry left: the expiry fails the step for good. The late holder's report is still a
    lost lease (not ``already_finished``, which would say its own result was taken)."""
    await api.register("ll", [{"name": "s"}])
    run = await api.trigger("ll")
    w = await api.worker(["ll.s"], lease_timeout_s=3)
    [task] = await api.poll(w)
    await api.reap(ahead_s=4)
    assert (await api.run(run["id"]))["status"] == "failed"
    body = (await api.complete(task, "late", expect=409)).json()
    assert body["code"] == "lease_lost" and body["conflicting"] is True
    r = await api.call(
        "POST",
        f"/step-runs/{task['step_run_id']}/fail",
        409,
        json={"lease_token": task["lease_token"], "error": {"type": "E", "message": "m"}},
    )
    assert r.json()["code"] == "lease_lost"
    labels = {"reason": "lease_lost", "conflicting": "true"}
    assert await api.metric("cairn_duplicate_completions_total", **labels) == 2
