"""Long-polls wake on NOTIFY, not on a timer."""

from __future__ import annotations

import asyncio

from tests.integration.conftest import Api


async def test_long_poll_wakes_when_work_is_queued(slow_recheck_api: Api) -> None:
    api = slow_recheck_api
    await api.register("wake", [{"name": "a"}, {"name": "b", "parents": ["a"]}])
    w = await api.worker(["wake.a", "wake.b"])
    assert await api.poll(w, wait_s=0) == []

    async def trigger_soon() -> None:
        await asyncio.sleep(0.3)
        await api.trigger("wake")

    # Not woken, a poll answers after its wait (30 s at most here; its last claim finds the
    # task): give up well before.
    poll, _ = await asyncio.wait_for(
        asyncio.gather(api.poll(w, wait_s=60), trigger_soon()), timeout=15
    )
    assert [t["step"] for t in poll] == ["a"]

    # A child queued by its parent's completion wakes a waiting poll too.
    async def complete_soon() -> None:
        await asyncio.sleep(0.3)
        await api.complete(poll[0], 1)

    w2 = await api.worker(["wake.b"])
    nxt, _ = await asyncio.wait_for(
        asyncio.gather(api.poll(w2, wait_s=60), complete_soon()), timeout=15
    )
    assert [t["step"] for t in nxt] == ["b"]


async def test_long_poll_returns_empty_after_wait(api: Api) -> None:
    await api.register("idle", [{"name": "a"}])
    w = await api.worker(["idle.a"])
    assert await api.poll(w, wait_s=0.3) == []


async def test_a_long_poll_waits_at_most_half_its_workers_lease(api: Api) -> None:
    """A worker frozen (or cut off) while its poll waits is not handed work for it after it could
    have been noticed: work queued later goes to a poll that is still live."""
    await api.register("half", [{"name": "a"}])
    frozen = await api.worker(["half.a"], lease_timeout_s=2, heartbeat_interval_s=0.5)
    live = await api.worker(["half.a"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Asked for 30 s; the worker then stops (its process frozen: nobody reads the answer).
    frozen_poll = asyncio.create_task(api.poll(frozen, wait_s=30))
    await asyncio.sleep(1.5)  # past half of its 2 s lease
    live_poll = asyncio.create_task(api.poll(live, wait_s=10))
    await asyncio.sleep(0.2)
    await api.trigger("half")
    [task] = await asyncio.wait_for(live_poll, timeout=15)
    assert task["attempt"] == 1
    assert await asyncio.wait_for(frozen_poll, timeout=15) == []  # answered empty, at about 1 s
    assert loop.time() - started < 10
    # A worker with the default 60 s lease waits as long as it asked (here 1.5 s).
    started = loop.time()
    assert await api.poll(live, wait_s=1.5) == []
    assert loop.time() - started >= 1.4


async def test_a_waiting_poll_answers_when_a_step_its_worker_holds_is_cancelled(
    slow_recheck_api: Api,
) -> None:
    """The poll's contract: it returns at once when a held step run is cancelled. Only a
    NOTIFY can wake it in time here (re-checks are hourly)."""
    api = slow_recheck_api
    await api.register("stop", [{"name": "a"}])
    run = await api.trigger("stop")
    w = await api.worker(["stop.a"], lease_timeout_s=300)
    [task] = await api.poll(w)
    other = await api.worker(["stop.a"], lease_timeout_s=300)
    others_poll = asyncio.create_task(api.poll(other, wait_s=1))
    body = {"max_tasks": 1, "wait_s": 60}
    waiting = asyncio.create_task(api.json("POST", f"/workers/{w}/poll", json=body))
    await asyncio.sleep(0.3)  # let it wait
    assert not waiting.done()
    await api.call("POST", f"/runs/{run['id']}/cancel", 202)
    # Not woken, it answers after its 60 s wait: give up well before.
    answer = await asyncio.wait_for(waiting, timeout=15)
    assert answer["cancelled"] == [task["step_run_id"]]
    assert answer["tasks"] == []
    assert await others_poll == []  # the other worker's poll was not handed anything
    assert (await api.run(run["id"]))["status"] == "cancelled"
