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
