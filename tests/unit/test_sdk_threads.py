"""Sync steps' thread pool: concurrency up to its size, results and errors back on the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from worker_sdk.threads import StepThreads


async def test_every_call_runs_concurrently_up_to_the_size() -> None:
    pool = StepThreads(4)
    barrier = threading.Barrier(4, timeout=5)  # only passes if all four run at once

    def meet(i: int) -> tuple[int, str]:
        barrier.wait()
        return i, threading.current_thread().name

    results = await asyncio.gather(*(pool.call(meet, i) for i in range(4)))
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert len({r[1] for r in results}) == 4 and pool.started == 4
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("cairn-step"))
    # Idle threads are reused rather than new ones started.
    again = await asyncio.gather(
        *(pool.call(lambda: threading.current_thread().name) for _ in range(8))
    )
    assert set(again) <= {r[1] for r in results} and pool.started == 4
    pool.shutdown()


async def test_no_call_is_left_waiting_while_threads_idle() -> None:
    """Threads wake one another in a chain: whatever the mix of quick and blocking steps, every
    call runs, every blocking one alongside the others, and the pool ends with all idle."""
    pool = StepThreads(8)
    gate = threading.Event()
    blocked = [pool.call(gate.wait, 5) for _ in range(7)]  # 7 of 8 threads held
    quick = [pool.call(lambda i=i: i) for i in range(300)]  # all through the last thread
    assert await asyncio.gather(*quick) == list(range(300))
    gate.set()
    assert await asyncio.gather(*blocked) == [True] * 7
    for _ in range(100):  # the threads are back waiting once their last job is delivered
        with pool._cond:
            if pool._idle == pool.started and pool._waking == 0:
                break
        await asyncio.sleep(0.01)
    assert (pool._idle, pool._waking, pool.started) == (8, 0, 8)
    pool.shutdown()


async def test_errors_reach_the_caller_and_cancelled_calls_are_dropped() -> None:
    pool = StepThreads(2)

    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await pool.call(boom)
    gate = threading.Event()
    slow = pool.call(gate.wait, 5)
    slow.cancel()
    gate.set()
    assert await pool.call(lambda: 7) == 7  # the cancelled call's result was dropped quietly
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.call(lambda: 1)


async def test_shutdown_lets_idle_threads_exit() -> None:
    pool = StepThreads(3)
    await asyncio.gather(*(pool.call(lambda: None) for _ in range(3)))
    threads = list(pool._threads)
    pool.shutdown()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StepThreads(0)


async def test_submit_hands_each_outcome_to_its_callback_on_the_loop() -> None:
    pool = StepThreads(3)
    loop_thread = threading.get_ident()
    got: dict[int, tuple[object, str | None, bool]] = {}
    all_in = asyncio.Event()

    def done_for(i: int):  # type: ignore[no-untyped-def]
        def done(result: object, exc: BaseException | None) -> None:
            got[i] = (
                result,
                type(exc).__name__ if exc else None,
                threading.get_ident() == loop_thread,
            )
            if len(got) == 20:
                all_in.set()
            if i == 3:
                raise RuntimeError("a callback's bug")  # logged; the other results still arrive

        return done

    def work(i: int) -> int:
        if i % 5 == 0:
            raise ValueError(i)
        return i * 10

    for i in range(20):
        pool.submit(done_for(i), work, i)
    await asyncio.wait_for(all_in.wait(), 5)
    assert got == {
        i: ((None, "ValueError", True) if i % 5 == 0 else (i * 10, None, True)) for i in range(20)
    }
    pool.shutdown()
