"""``Worker``: registers workflows, long-polls for tasks, runs steps, reports their outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

import httpx

from worker_sdk import calls, lean_http, verdicts
from worker_sdk.client import build_headers, resolve_url
from worker_sdk.context import Context, Task, parse_tasks, step_log_enabled
from worker_sdk.errors import APIError, CairnError, HTTPError
from worker_sdk.execution import action_table, call_sync, run_async_step, unregistered
from worker_sdk.gc_tuning import tune_gc
from worker_sdk.heartbeat import Heartbeater, Registration
from worker_sdk.held import Held, HeldSteps
from worker_sdk.logs import configure_default_logging
from worker_sdk.outcome import Outcome
from worker_sdk.reporter import Reporter
from worker_sdk.threads import StepThreads
from worker_sdk.transport import RetryPolicy, asend, send
from worker_sdk.workflow import StepSpec, Workflow

log = logging.getLogger("cairn.worker")

POLL_HTTP_MARGIN_S = 10.0
MIN_EMPTY_POLL_S = 0.1  # never re-poll faster than this after an empty answer
POLL_LINGER_S = 0.005  # when busy, wait this long for more slots to free before polling
MAX_CARRIED = 500  # results one poll carries at most (the server's default limit is 1,000)


class Worker:
    """Runs the steps of ``workflows``; ``run()`` blocks until SIGTERM/SIGINT or ``stop()``.

    ``gc_threshold``: once registered, the worker freezes what the process holds out of the
    cyclic GC's scans and has the youngest generation collected every this many allocations
    (Python's default is 700); ``None`` leaves the process's GC alone.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        workflows: Iterable[Workflow],
        slots: int = 100,
        name: str | None = None,
        heartbeat_interval_s: float | None = None,
        lease_timeout_s: float | None = None,
        poll_wait_s: float = 30.0,
        shutdown_grace_s: float = 30.0,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        gc_threshold: int | None = 10_000,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise CairnError("slots must be an integer >= 1")
        if gc_threshold is not None and (isinstance(gc_threshold, bool) or gc_threshold < 0):
            raise CairnError("gc_threshold must be an integer >= 0, or None")
        self.workflows = list(workflows)
        self._actions = action_table(self.workflows)
        self.url = resolve_url(url)
        self.slots = slots
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.poll_wait_s = poll_wait_s
        self.shutdown_grace_s = shutdown_grace_s
        self._gc_threshold = gc_threshold
        self._wanted_heartbeat = heartbeat_interval_s
        self._wanted_lease = lease_timeout_s
        self._headers = build_headers(headers, token)
        self._transport = transport
        self._async_transport = async_transport
        self._lock = threading.Lock()  # guards the stop flags
        self._steps = HeldSteps()
        self._running = 0  # steps claimed and not finished yet (loop thread only)
        self._unsettled = 0  # results handed to the reporter without a verdict yet (loop only)
        self._stop_requested = False
        self._force = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._force_event: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._all_forgotten: asyncio.Event | None = None  # set when nothing is held any more
        self._threads: StepThreads | None = None
        self._ahttp: httpx.AsyncClient | None = None
        self._reporter: Reporter | None = None
        self.registration: Registration | None = None

    def use_token(self, token: str) -> None:
        """Authenticate with ``token`` from now on (before ``run()``)."""
        self._headers = build_headers(self._headers, token)

    @property
    def actions(self) -> list[str]:
        return sorted(self._actions)

    @property
    def worker_id(self) -> str | None:
        return self.registration.worker_id if self.registration else None

    # ----------------------------------------------------------------- lifecycle
    def run(self) -> None:
        """Block until stopped; on the main thread SIGTERM/SIGINT stop the worker gracefully
        (a second signal skips the grace period). Logs to stderr at INFO unless the program
        has configured logging."""
        configure_default_logging()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            asyncio.run(self.arun())
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        self.stop()

    def stop(self) -> None:
        """Ask the worker to stop (thread-safe). Calling it twice skips the grace period."""
        with self._lock:
            self._force = self._stop_requested
            self._stop_requested = True
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._signal_stop)

    def _signal_stop(self) -> None:
        with self._lock:
            stop, force = self._stop_requested, self._force
        if stop and self._stop_event is not None:
            self._stop_event.set()
        if force and self._force_event is not None:
            self._force_event.set()

    def _stopping(self) -> bool:
        with self._lock:
            return self._stop_requested

    async def arun(self) -> None:
        """Run until ``stop()``: register, poll, execute, heartbeat, then shut down gracefully."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._force_event = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._all_forgotten = asyncio.Event()
        self._signal_stop()  # stop() may have been called before we started
        control = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=30.0, transport=self._transport
        )
        beat_http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=30.0, transport=self._transport
        )
        self._ahttp = self._async_http()
        self._threads = StepThreads(self.slots, name="cairn-step")
        self._reporter = Reporter(self._ahttp, deadline_s=self._report_deadline)
        reporting = asyncio.create_task(self._reporter.run(), name="cairn-report")
        self.registration = reg = Registration(
            control,
            name=self.name,
            actions=self._actions,
            slots=self.slots,
            heartbeat_interval_s=self._wanted_heartbeat,
            lease_timeout_s=self._wanted_lease,
        )
        heart = Heartbeater(beat_http, reg, held_ids=self._steps.ids, on_revoked=self._revoke)
        try:
            if self._stopping():
                return
            try:
                await asyncio.to_thread(self._start_up, control, reg)
            except HTTPError:
                if self._stopping():
                    return  # stopped while the server was unreachable
                raise
            if self._stopping():
                return
            heart.start()
            if self._gc_threshold:
                tune_gc(self._gc_threshold)
            await self._serve()
        finally:
            await self._reporter.close(reporting)
            heart.stop()
            await asyncio.to_thread(reg.deregister)
            self._threads.shutdown()
            await self._ahttp.aclose()
            control.close()
            beat_http.close()
            log.info("worker %s stopped", self.name)

    def _async_http(self) -> httpx.AsyncClient:
        """The client of polls, results and async steps' reports: on the lean transport
        unless a transport was given, the URL is https or a proxy applies (``lean_http``)."""
        lean = self._async_transport is None and lean_http.suits(self.url)
        return httpx.AsyncClient(
            base_url=self.url,
            headers=self._headers,
            timeout=self.poll_wait_s + POLL_HTTP_MARGIN_S,
            transport=lean_http.LeanTransport() if lean else self._async_transport,
        )

    def _report_deadline(self) -> float:
        reg = self.registration
        return reg.lease_timeout_s if reg is not None else 60.0

    def _start_up(self, control: httpx.Client, reg: Registration) -> None:
        policy = RetryPolicy(deadline_s=60.0, max_delay_s=5.0)
        for wf in self.workflows:
            call = calls.put_workflow(wf.name, wf.definition())
            body = send(
                control,
                call,
                policy=policy,
                give_up=self._stopping,
                retry_log_level=logging.WARNING,  # a server not up yet: say so, not 60 s of silence
            ).json()
            log.info("workflow %s is at version %s", wf.name, body.get("version"))
        reg.register(give_up=self._stopping)

    async def _serve(self) -> None:
        assert self._stop_event is not None
        poller = asyncio.create_task(self._poll_loop(), name="cairn-poll")
        stopper = asyncio.create_task(self._stop_event.wait())
        try:
            await asyncio.wait({poller, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            poller.cancel()
            stopper.cancel()
            await asyncio.gather(poller, stopper, return_exceptions=True)
            assert self._reporter is not None
            self._reporter.release()  # no more polls: results go on their own
            await self._drain()
        failure = poller.exception() if poller.done() and not poller.cancelled() else None
        if failure is not None:
            raise failure

    async def _drain(self) -> None:
        """Let running steps finish (and report) within the grace period; drop the rest."""
        assert self._force_event is not None and self._all_forgotten is not None
        if pending := len(self._steps.all()):
            log.info("waiting up to %.3gs for %d step(s)", self.shutdown_grace_s, pending)
        deadline = time.monotonic() + self.shutdown_grace_s
        force = asyncio.create_task(self._force_event.wait())
        try:
            while not self._force_event.is_set():
                self._all_forgotten.clear()
                remaining = deadline - time.monotonic()
                if not self._steps.all() or remaining <= 0:
                    break
                waiter = asyncio.create_task(self._all_forgotten.wait())
                await asyncio.wait(
                    {waiter, force}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
        finally:
            force.cancel()
        leftovers = self._steps.all()
        for held in leftovers:
            log.warning("abandoning step run %s at shutdown", held.task.step_run_id)
            self._steps.drop(held, "shutdown")
            if held.future is not None:
                held.future.cancel()
        await asyncio.gather(*(h.future for h in leftovers if h.future), return_exceptions=True)

    # ----------------------------------------------------------------- polling
    async def _poll_loop(self) -> None:
        assert self._ahttp is not None and self._slot_freed is not None
        assert self.registration is not None and self._reporter is not None
        reporter = self._reporter
        failures = 0
        while not self._stopping():
            if self.registration.poll_accepts_results:
                reporter.hold()  # a result finished from here on rides on the next poll
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            if free < self.slots // 2:
                # Busy: let a few more slots free up so one poll claims a batch, not one task.
                await self._linger_for_slots(POLL_LINGER_S)
            worker_id = self.registration.worker_id
            assert worker_id is not None
            carried = reporter.take(MAX_CARRIED) if self.registration.poll_accepts_results else []
            if not carried:
                reporter.release()  # this poll may wait long: results go on their own meanwhile
            # The server frees a slot when it applies the step's result: results still on their
            # way (or queued beyond what this poll carries) keep theirs busy, so the poll asks
            # for what the server will find free (asking for more claims nothing more, and an
            # empty claim would wait for new work). One at least: the carried results must go.
            free = max(self.slots - self._running - self._unsettled + len(carried), 1)
            started = time.monotonic()
            try:
                response = await asend(
                    self._ahttp,
                    calls.poll(worker_id, free, self.poll_wait_s, [i.encode() for i in carried]),
                    timeout=self.poll_wait_s + POLL_HTTP_MARGIN_S,
                    policy=RetryPolicy(deadline_s=30.0, max_delay_s=5.0),
                    give_up=self._stopping,
                )
                body = response.json()
            except (APIError, HTTPError, ValueError) as exc:
                reporter.give_back(carried)
                if carried and isinstance(exc, APIError) and exc.status in (413, 422):
                    log.warning("a poll carrying %d result(s) was refused: %s", len(carried), exc)
                    continue  # they go on their own now; poll again at once
                reporter.release()
                failures += 1
                await self._poll_failed(worker_id, exc, failures)
                continue
            except BaseException:
                reporter.give_back(carried)  # cancelled (shutdown): report them on their own
                raise
            failures = 0
            if carried:
                reporter.settle(carried, body.get("results"))
            for step_run_id in body.get("cancelled") or []:
                self._revoke(str(step_run_id), "cancelled")
            tasks = body.get("tasks") or []
            if len(tasks) > free:
                log.warning("server sent %d tasks for %d free slot(s)", len(tasks), free)
            for task in parse_tasks(tasks, log):
                self._start(task)
            if tasks:
                # Let the new steps reach their threads before the next poll is built.
                await asyncio.sleep(0)
            elif not carried and not body.get("cancelled"):
                await asyncio.sleep(max(MIN_EMPTY_POLL_S - (time.monotonic() - started), 0))

    def _free_slots(self) -> int:
        """Slots the server will find free if the next poll carries every queued result."""
        assert self._reporter is not None and self.registration is not None
        carry = self.registration.poll_accepts_results
        carriable = self._reporter.carriable if carry else 0
        return self.slots - self._running - self._unsettled + carriable

    async def _linger_for_slots(self, seconds: float) -> None:
        assert self._slot_freed is not None
        deadline = time.monotonic() + seconds
        while self._free_slots() < self.slots // 2 and not self._stopping():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), remaining)

    async def _poll_failed(self, worker_id: str, exc: Exception, failures: int) -> None:
        assert self.registration is not None
        if isinstance(exc, APIError) and exc.status == 404:
            try:
                await asyncio.to_thread(self.registration.reregister, worker_id, self._stopping)
                return
            except CairnError as again:
                exc = again
        level = logging.ERROR if isinstance(exc, APIError) and exc.status < 500 else logging.WARNING
        delay = RetryPolicy(initial_s=0.5, max_delay_s=15.0).backoff(min(failures - 1, 10))
        log.log(level, "poll failed (%s); retrying in %.2fs", exc, delay)
        await self._sleep_unless_stopping(delay)

    async def _sleep_unless_stopping(self, delay: float) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=delay)

    # ----------------------------------------------------------------- running steps
    def _start(self, task: Task) -> None:
        wf_spec = self._actions.get(task.action)
        resolve = wf_spec[0].step_name if wf_spec else None
        spec = wf_spec[1] if wf_spec else None
        held = Held(task, Context(task, resolve_step=resolve), spec, self)
        if (stale := self._steps.add(held)) is not None:  # lost, and its next attempt is here
            self._steps.revoke(stale, "lost", self._loop)
        self._running += 1
        if spec is None:
            self._finished(held, unregistered(task.action))
            return
        if step_log_enabled(logging.DEBUG):
            held.ctx.log.debug("starting")
        if spec.is_async:
            held.future = asyncio.create_task(
                self._execute_async(held, spec), name=f"cairn-{task.step_run_id}"
            )
            return
        # A sync step (the common case) costs no task and no future: its thread hands the
        # outcome to ``_finished`` on the loop.
        assert self._threads is not None
        self._threads.submit(held.ran, call_sync, spec, held.ctx)

    async def _execute_async(self, held: Held, spec: StepSpec) -> None:
        try:
            result = await run_async_step(spec, held.ctx, dropped=held.gave_up)
        except BaseException:
            self._ended(held)
            self._forget(held)
            raise
        self._finished(held, result)

    def _ended(self, held: Held) -> None:
        """The step function is done: its slot is free, reported or not."""
        if not held.ended:
            held.ended = True
            self._running -= 1
            if self._slot_freed is not None:
                self._slot_freed.set()

    def _forget(self, held: Held) -> None:
        """Nothing more to do for this step run (reported, refused or dropped)."""
        if held.unsettled:
            held.unsettled = False
            self._unsettled -= 1
            if self._slot_freed is not None:
                self._slot_freed.set()
        if self._steps.remove(held) and self._all_forgotten is not None:
            self._all_forgotten.set()

    def _finished(self, held: Held, result: Outcome) -> None:
        """On the loop: the step ended with ``result``; queue it for the next report."""
        self._ended(held)
        if held.dropped:
            held.ctx.log.info("result dropped (%s)", held.ctx.cancel_reason)
            self._forget(held)
            return
        assert self._reporter is not None
        task = held.task
        # Heartbeats keep the lease until the report is answered (``_verdict`` forgets it).
        held.unsettled = True
        self._unsettled += 1
        self._reporter.add(
            task.step_run_id,
            task.lease_token,
            result,
            held.gave_up,
            lambda verdict: self._verdict(held, result, verdict),
        )

    def _verdict(self, held: Held, result: Outcome, verdict: dict[str, Any] | Exception) -> None:
        if verdicts.settled(verdict, result.kind, held.ctx, held.dropped):
            self._forget(held)
        else:  # the batch was refused as a whole: this result goes alone
            held.future = asyncio.create_task(self._send_alone(held, result))

    async def _send_alone(self, held: Held, result: Outcome) -> None:
        assert self._ahttp is not None and self.registration is not None
        try:
            await verdicts.send_alone(
                self._ahttp,
                held.ctx,
                result,
                deadline_s=self.registration.lease_timeout_s,
                give_up=held.gave_up,
            )
        finally:
            self._forget(held)

    # ----------------------------------------------------------------- cancellation
    def _revoke(self, step_run_id: str, reason: str) -> None:
        """The server took the step back ("cancelled" or "lost"); callable from any thread."""
        if (held := self._steps.get(step_run_id)) is not None:
            self._steps.revoke(held, reason, self._loop)
