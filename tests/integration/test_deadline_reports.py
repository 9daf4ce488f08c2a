"""Reports that arrive after a deadline the reaper has not acted on yet, and reports refused
because the run was cancelled: the answer never depends on when the reaper last ran."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import Api

TIMED = {"name": "s", "retries": 1, "timeout_s": 5, "backoff": {"initial_s": 0, "jitter": 0}}


def outcomes(run: dict[str, Any]) -> list[str]:
    return [a["outcome"] for a in run["steps"][0]["attempts"]]


async def test_a_completion_past_the_timeout_is_refused_and_times_the_attempt_out(
    api: Api,
) -> None:
    await api.register("late", [TIMED])
    run = await api.trigger("late")
    w = await api.worker(["late.s"], lease_timeout_s=600)
    [t] = await api.poll(w)
    await api.age(6)  # past timeout_at; the reaper has not run

    r = await api.complete(t, "too late", expect=409)

    assert r.json()["code"] == "lease_lost" and "timed_out" in r.json()["detail"]
    after = await api.run(run["id"])
    assert after["steps"][0]["status"] == "queued" and after["steps"][0]["output"] is None
    assert outcomes(after) == ["timed_out"]
    assert await api.metric("cairn_retries_total") == 1
    assert await api.reap() == 0  # nothing left for the reaper: it was done on the report

    # The same through a poll carrying the result (the cairn_poll function's path).
    [t2] = await api.poll(w)
    await api.age(6)
    item = {"step_run_id": t2["step_run_id"], "lease_token": t2["lease_token"], "output": 1}
    body = {"max_tasks": 1, "wait_s": 0, "results": [item]}
    answer = await api.json("POST", f"/workers/{w}/poll", json=body)
    [res] = answer["results"]
    assert (res["status"], res["code"]) == ("rejected", "lease_lost")
    final = await api.run(run["id"])
    assert final["status"] == "failed" and final["steps"][0]["status"] == "failed"
    assert outcomes(final) == ["timed_out", "timed_out"]
    assert final["steps"][0]["error"]["type"] == "timeout"


async def test_a_completion_before_the_timeout_still_succeeds(api: Api) -> None:
    await api.register("intime", [TIMED])
    run = await api.trigger("intime")
    w = await api.worker(["intime.s"], lease_timeout_s=600)
    [t] = await api.poll(w)
    await api.age(4)
    await api.complete(t, "ok")
    assert (await api.run(run["id"]))["status"] == "succeeded"


async def test_a_failure_past_the_timeout_is_refused_and_recorded_as_the_timeout(
    api: Api,
) -> None:
    await api.register("latefail", [{**TIMED, "retries": 0}])
    run = await api.trigger("latefail")
    w = await api.worker(["latefail.s"], lease_timeout_s=600)
    [t] = await api.poll(w)
    await api.age(6)

    r = await api.fail(t, expect=409)

    assert r.json()["code"] == "lease_lost"
    final = await api.run(run["id"])
    assert final["status"] == "failed"
    assert outcomes(final) == ["timed_out"]
    assert final["steps"][0]["error"]["type"] == "timeout"


async def test_a_completion_past_the_lease_is_refused_and_expires_the_lease(api: Api) -> None:
    await api.register("lapsed", [{"name": "s", "retries": 1}])
    run = await api.trigger("lapsed")
    w = await api.worker(["lapsed.s"], lease_timeout_s=3)
    [t] = await api.poll(w)
    await api.age(4)

    r = await api.complete(t, "ok", expect=409)

    assert r.json()["code"] == "lease_lost" and "lease_expired" in r.json()["detail"]
    after = await api.run(run["id"])
    assert after["steps"][0]["status"] == "queued"
    assert outcomes(after) == ["lease_expired"]
    assert await api.metric("cairn_lease_expirations_total") == 1


async def test_the_cancelled_attempt_repeating_its_report_is_not_a_conflict(api: Api) -> None:
    await api.register("cx", [{"name": "s"}])
    run = await api.trigger("cx")
    w = await api.worker(["cx.s"])
    [t] = await api.poll(w)
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)

    first = await api.complete(t, 1, expect=409)
    again = await api.complete(t, 1, expect=409)

    for r in (first, again):
        assert (r.json()["code"], r.json()["conflicting"]) == ("cancelled", False)
    labels = {"reason": "cancelled", "conflicting": "false"}
    assert await api.metric("cairn_duplicate_completions_total", **labels) == 2
    assert (
        await api.metric("cairn_duplicate_completions_total", **labels | {"conflicting": "true"})
        == 0
    )


async def test_an_older_attempt_reporting_after_a_cancellation_is_a_conflict(api: Api) -> None:
    await api.register("cxo", [{"name": "s", "retries": 1}])
    run = await api.trigger("cxo")
    w = await api.worker(["cxo.s"], lease_timeout_s=3)
    [old] = await api.poll(w)
    await api.reap(ahead_s=4)  # its lease expired: re-queued
    [current] = await api.poll(w)
    assert current["attempt"] == 2
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)

    r = await api.complete(old, 1, expect=409)

    assert (r.json()["code"], r.json()["conflicting"]) == ("cancelled", True)
    labels = {"reason": "cancelled", "conflicting": "true"}
    assert await api.metric("cairn_duplicate_completions_total", **labels) == 1
