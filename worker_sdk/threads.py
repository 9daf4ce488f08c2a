"""Sync steps run on a pool of threads; their results come back to the event loop in batches.

Like ``loop.run_in_executor`` on a ``ThreadPoolExecutor``, without its per-call costs that a
busy worker feels: no ``concurrent.futures.Future`` chained to an asyncio one, and one loop
wake-up for all the results that finished since the last one, not one per step. Threads start
on demand up to ``size`` and are daemon threads: a step abandoned at shutdown cannot keep the
process alive (Python cannot stop a thread; its result is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class StepThreads:
    def __init__(self, size: int, *, name: str = "cairn-step") -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._done: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def started(self) -> int:
        return len(self._threads)

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a pool thread; await the returned future for its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("step threads are shut down")
            self._loop = loop
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put((future, fn, args))
        return future

    def shutdown(self) -> None:
        """Idle threads exit; busy ones exit after their step (whose result is dropped)."""
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        for _ in range(threads):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, fn, args = job
            try:
                item: tuple[asyncio.Future[Any], Any, BaseException | None] = (
                    future,
                    fn(*args),
                    None,
                )
            except BaseException as exc:  # handed to the awaiting coroutine
                item = (future, None, exc)
            del job, future, fn, args
            self._finish(item)
            self._idle.release()

    def _finish(self, item: tuple[asyncio.Future[Any], Any, BaseException | None]) -> None:
        with self._lock:
            self._done.append(item)
            first = len(self._done) == 1
            loop = self._loop
        if first and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
                loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for future, result, exc in done:
            if future.cancelled():
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)
