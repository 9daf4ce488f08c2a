"""Worker identity on the server, and the heartbeat thread that keeps its leases alive.

The heartbeat runs on its own thread with its own ``httpx.Client`` so that a step hogging the
CPU or blocking the event loop cannot make the worker lose its leases.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from worker_sdk import calls
from worker_sdk.errors import APIError, CairnError, HTTPError
from worker_sdk.transport import RetryPolicy, send

log = logging.getLogger("cairn.worker")

REVOKED_STATES = frozenset({"cancelled", "lost"})


class Registration:
    """The server-side worker id; re-registers (once, under a lock) when the server forgot it."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        name: str,
        actions: Iterable[str],
        slots: int,
        heartbeat_interval_s: float | None = None,
        lease_timeout_s: float | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._http = http
        self._lock = threading.Lock()
        self.name = name
        self.actions = sorted(set(actions))
        self.slots = slots
        self._wanted_heartbeat = heartbeat_interval_s
        self._wanted_lease = lease_timeout_s
        self.policy = policy or RetryPolicy(deadline_s=60.0, max_delay_s=5.0)
        self.worker_id: str | None = None
        self.heartbeat_interval_s = heartbeat_interval_s or 10.0
        self.lease_timeout_s = lease_timeout_s or 30.0
        self.poll_accepts_results = False  # the server says so when it registers us

    def register(self, give_up: Callable[[], bool] | None = None) -> str:
        with self._lock:
            return self._register_locked(give_up)

    def reregister(self, stale_id: str | None, give_up: Callable[[], bool] | None = None) -> str:
        """Register again unless another thread already replaced ``stale_id``."""
        with self._lock:
            if self.worker_id is not None and self.worker_id != stale_id:
                return self.worker_id
            log.warning("server does not know worker %s any more; registering again", stale_id)
            return self._register_locked(give_up)

    def _register_locked(self, give_up: Callable[[], bool] | None) -> str:
        call = calls.register_worker(
            self.name,
            self.actions,
            self.slots,
            heartbeat_interval_s=self._wanted_heartbeat,
            lease_timeout_s=self._wanted_lease,
        )
        body = send(self._http, call, policy=self.policy, give_up=give_up).json()
        self.apply(body)
        log.info(
            "registered worker %s (%s) for %d action(s); heartbeat %.3gs, lease %.3gs",
            self.worker_id,
            self.name,
            len(self.actions),
            self.heartbeat_interval_s,
            self.lease_timeout_s,
        )
        assert self.worker_id is not None
        return self.worker_id

    def apply(self, body: Mapping[str, Any]) -> None:
        """Adopt the registration answer (``id``, ``heartbeat_interval_s``, ``lease_timeout_s``,
        ``poll_accepts_results``)."""
        worker_id = body.get("id")
        if not isinstance(worker_id, str | int) or isinstance(worker_id, bool):
            raise CairnError(f"worker registration answer has no id: {dict(body)!r}")
        self.worker_id = str(worker_id)
        self.poll_accepts_results = body.get("poll_accepts_results") is True
        hb = body.get("heartbeat_interval_s")
        lease = body.get("lease_timeout_s")
        if isinstance(hb, int | float) and hb > 0:
            self.heartbeat_interval_s = float(hb)
        if isinstance(lease, int | float) and lease > 0:
            self.lease_timeout_s = float(lease)

    def deregister(self) -> None:
        """``DELETE /workers/{id}`` (best effort, short retries)."""
        with self._lock:
            worker_id, self.worker_id = self.worker_id, None
        if worker_id is None:
            return
        try:
            send(self._http, calls.deregister_worker(worker_id), policy=RetryPolicy(deadline_s=5))
        except APIError as exc:
            if exc.status != 404:
                log.warning("could not deregister worker %s: %s", worker_id, exc)
        except HTTPError as exc:
            log.warning("could not deregister worker %s: %s", worker_id, exc)
        else:
            log.info("deregistered worker %s", worker_id)


class Heartbeater:
    """Every ``heartbeat_interval_s``, reports the held step runs and applies the verdicts."""

    def __init__(
        self,
        http: httpx.Client,
        registration: Registration,
        *,
        held_ids: Callable[[], list[str]],
        on_revoked: Callable[[str, str], None],
    ) -> None:
        self._http = http
        self._reg = registration
        self._held_ids = held_ids
        self._on_revoked = on_revoked
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cairn-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self._reg.heartbeat_interval_s):
            try:
                self.beat()
            except Exception:  # the thread must survive anything
                log.exception("heartbeat failed unexpectedly")

    def beat(self) -> dict[str, str]:
        """One heartbeat; returns the server's verdicts (empty if it could not be sent)."""
        worker_id = self._reg.worker_id
        if worker_id is None:
            return {}
        interval = self._reg.heartbeat_interval_s
        ids = self._held_ids()
        try:
            response = send(
                self._http,
                calls.heartbeat(worker_id, ids),
                timeout=max(interval, 1.0),
                policy=RetryPolicy(deadline_s=interval, max_delay_s=interval / 2),
                give_up=self._stop.is_set,
            )
        except APIError as exc:
            if exc.status == 404:
                self._reregister(worker_id)
            elif exc.status >= 500 or exc.status == 429:  # transient: the next beat retries
                log.warning("heartbeat failed (%d held step run(s)): %s", len(ids), exc)
            else:
                log.error("heartbeat rejected: %s", exc)
            return {}
        except HTTPError as exc:
            log.warning("heartbeat failed (%d held step run(s)): %s", len(ids), exc)
            return {}
        raw = response.json().get("step_runs") or {}
        verdicts = {str(k): str(v) for k, v in raw.items()}
        for step_run_id, state in verdicts.items():
            if state in REVOKED_STATES:
                self._on_revoked(step_run_id, state)
        return verdicts

    def _reregister(self, stale_id: str) -> None:
        try:
            self._reg.reregister(stale_id, give_up=self._stop.is_set)
        except CairnError as exc:
            log.error("re-registration failed: %s", exc)
