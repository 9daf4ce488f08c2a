"""Sync steps run on a pool of threads; their results come back to the event loop in batches.

Like ``loop.run_in_executor`` on a ``ThreadPoolExecutor``, without its per-call costs that a
busy worker feels: no ``concurrent.futures.Future`` chained to an asyncio one, and one loop
wake-up for all the results that finished since the last one, not one per step. ``submit``
hands each result to a callback on the loop (no future at all); ``call`` returns a future.
Threads start on demand up to ``size`` and are daemon threads: a step abandoned at shutdown
cannot keep the process alive (Python cannot stop a thread; its result is dropped).

Threads are woken one at a time: a call wakes an idle thread only when no thread is already on
its way to the queue, and a thread that takes a job wakes the next one if jobs are left. Every
job still starts without waiting for another to finish (up to ``size`` at once), but a batch of
quick steps is run by the few threads that are awake instead of waking one thread per step,
each of which would then queue for the GIL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("cairn.worker")

# Called on the event loop with (result, None) or (None, exception).
Done = Callable[[Any, "BaseException | None"], None]
_Job = tuple[Done, Callable[..., Any], tuple[Any, ...]]


class StepThreads:
    def __init__(self, size: int, *, name: str = "cairn-step") -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self._size = size
        self._name = name
        self._jobs: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._idle = 0  # threads waiting for a job
        self._waking = 0  # threads woken (or started) that have not taken a job yet
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()  # guards _done
        self._done: list[tuple[Done, Any, BaseException | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def started(self) -> int:
        return len(self._threads)

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on a pool thread; await the returned future for its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(result: Any, exc: BaseException | None) -> None:
            if future.cancelled():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self.submit(done, fn, *args)
        return future

    def submit(self, done: Done, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a pool thread, then ``done(result, exc)`` on the running loop."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._closed:
                raise RuntimeError("step threads are shut down")
            self._loop = loop
            self._jobs.append((done, fn, args))
            if self._waking == 0:
                self._wake_one()

    def shutdown(self) -> None:
        """Idle threads exit; busy ones exit after their step (whose result is dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _wake_one(self) -> None:
        """With ``_cond`` held: get one more thread to the queue (none if all are busy)."""
        if self._idle > 0:
            self._idle -= 1
            self._waking += 1
            self._cond.notify()
        elif len(self._threads) < self._size:
            self._waking += 1
            thread = threading.Thread(
                target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        waking = True  # started by _wake_one
        while True:
            with self._cond:
                while not self._jobs:
                    if waking:
                        self._waking -= 1
                        waking = False
                    if self._closed:
                        return
                    self._idle += 1
                    self._cond.wait()
                    if self._closed and not self._jobs:
                        # shutdown's notify_all: not woken by _wake_one, so not counted there
                        self._idle -= 1
                        return
                    waking = True  # woken by _wake_one, which counted us
                job = self._jobs.popleft()
                if waking:
                    self._waking -= 1
                    waking = False
                if self._jobs and self._waking == 0:
                    self._wake_one()  # more to do: pass the wake-up on
            done, fn, args = job
            try:
                item: tuple[Done, Any, BaseException | None] = (done, fn(*args), None)
            except BaseException as exc:  # handed to the callback
                item = (done, None, exc)
            del job, done, fn, args
            self._finish(item)

    def _finish(self, item: tuple[Done, Any, BaseException | None]) -> None:
        with self._lock:
            self._done.append(item)
            first = len(self._done) == 1
            loop = self._loop
        if first and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
                loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            finished, self._done = self._done, []
        for done, result, exc in finished:
            try:
                done(result, exc)
            except Exception:  # a callback's bug must not lose the other results
                log.exception("step result callback failed")
