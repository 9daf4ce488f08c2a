"""State transitions shared by completion, failure, cancellation and the reaper.

Every function here runs inside a transaction that already holds the run's row lock.
"""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

from db import queries as Q
from db.pg import Conn
from db.types import Effects

TIMEOUT_ERROR = {"type": "timeout", "message": "the step ran past its timeout_s"}
LEASE_ERROR = {"type": "lease_lost", "message": "the worker stopped renewing its lease"}


def backoff_delay(
    backoff: dict[str, Any], attempt: int, *, rng: random.Random | None = None
) -> float:
    """Exponential backoff with jitter for the retry after ``attempt`` failed."""
    cap = float(backoff.get("max_s", 60.0))
    try:
        base = float(backoff.get("initial_s", 1.0)) * float(backoff.get("factor", 2.0)) ** max(
            attempt - 1, 0
        )
    except OverflowError:
        base = cap
    delay = min(base, cap)
    jitter = float(backoff.get("jitter", 0.0))
    if jitter > 0:
        delay *= 1 + jitter * ((rng or random).random() * 2 - 1)
    return max(delay, 0.0)


def dump_error(error: dict[str, Any] | None) -> str | None:
    return None if error is None else json.dumps(error, ensure_ascii=False)


async def close_attempt(
    conn: Conn,
    step: Any,
    outcome: str,
    error: dict[str, Any] | None,
    now: datetime | None,
    effects: Effects | None = None,
) -> None:
    """Record how the attempt ``step`` (a running step run: id, lease_token) ended, before the
    step run itself changes; its ``duration``, when the row has one, goes to ``effects``
    (``cairn_step_duration_seconds``: every attempt, cancelled and released ones too)."""
    duration = getattr(step, "duration", None)
    if effects is not None and duration is not None:
        effects.step_durations.append(float(duration))
    await conn.execute(
        Q.CLOSE_ATTEMPT,
        {
            "id": str(step.id),
            "token": str(step.lease_token),
            "outcome": outcome,
            "error": dump_error(error),
            "now": now,
        },
    )


async def notify(conn: Conn, effects: Effects) -> None:
    """Wake long-polls for the actions this transaction queued (delivered at commit)."""
    for tenant, action in sorted(effects.notify):
        await conn.execute(Q.NOTIFY, {"payload": f"{tenant}:{action}"})


def wake_worker(effects: Effects, tenant: str, worker_id: str) -> None:
    """Wake the waiting polls of a worker (a step run it holds was cancelled); the key is
    ``api.notifier.worker_key``'s ("@" never appears in an action's name)."""
    effects.notify.add((tenant, f"@worker:{worker_id}"))


def _queued(effects: Effects, tenant: str, action: str) -> None:
    """A step run became queued: count it and wake the long-polls for its action."""
    effects.notify.add((tenant, action))
    effects.step_statuses["queued"] += 1


def _settled(effects: Effects, status: str) -> None:
    if status in ("succeeded", "failed"):
        effects.run_statuses[status] += 1


async def promote_children(
    conn: Conn, run_ids: list[str], effects: Effects, now: datetime | None
) -> None:
    """Queue the pending steps of these runs whose parents have all succeeded."""
    rows = await conn.execute(Q.PROMOTE_READY, {"runs": run_ids, "now": now})
    for tenant, action in rows:
        _queued(effects, str(tenant), action)


async def settle_runs(
    conn: Conn, run_ids: list[str], effects: Effects, now: datetime | None
) -> None:
    """Finish the runs with no open step left; mark the others running."""
    for row in await conn.execute(Q.SETTLE_RUNS, {"runs": run_ids, "now": now}):
        _settled(effects, row.status)


async def settle_run(conn: Conn, run_id: str, effects: Effects, now: datetime | None) -> None:
    await settle_runs(conn, [run_id], effects, now)


async def after_success(
    conn: Conn, run_ids: list[str], effects: Effects, now: datetime | None
) -> None:
    """Steps of these runs succeeded: queue what became ready, settle what is done."""
    for kind, a, b in await conn.execute(Q.SUCCEED_RUNS, {"runs": run_ids, "now": now}):
        if kind == "queued":
            _queued(effects, a, b)  # a tenant, b action
        else:
            _settled(effects, b)  # b the run's status


async def after_permanent_failure(
    conn: Conn,
    run_id: str,
    step_name: str,
    is_on_failure: bool,
    error: dict[str, Any],
    attempt: int,
    effects: Effects,
    now: datetime | None,
) -> None:
    """A step failed for good: skip what depends on it, start on_failure, settle the run."""
    if not is_on_failure:
        skipped = (
            await conn.execute(Q.SKIP_DESCENDANTS, {"run": run_id, "step": step_name, "now": now})
        ).all()
        effects.step_statuses["skipped"] += len(skipped)
        details = {"failed_step": step_name, "error": error, "attempt": attempt}
        rows = await conn.execute(
            Q.QUEUE_ON_FAILURE, {"run": run_id, "details": json.dumps(details), "now": now}
        )
        for tenant, action in rows:
            effects.notify.add((str(tenant), action))
    await settle_run(conn, run_id, effects, now)


async def fail_attempt(
    conn: Conn,
    step: Any,
    *,
    error: dict[str, Any],
    outcome: str,
    retryable: bool,
    effects: Effects,
    now: datetime | None,
    retry_after_s: float | None = None,
    reexecution_safe: bool = True,
) -> str:
    """End the current attempt of a running step run as a failure; retry it or fail it for good.

    ``step`` is a row holding id, run_id, step_name, attempt, max_attempts, delivery, backoff,
    lease_token, is_on_failure and duration. ``reexecution_safe`` is False when the attempt may
    have had effects the worker did not report (lease loss, timeout): an ``at_most_once`` step is
    then never re-run. Returns the step run's new status.
    """
    await close_attempt(conn, step, outcome, error, now, effects)
    at_most_once = step.delivery == "at_most_once"
    can_retry = retryable and step.attempt < step.max_attempts
    if can_retry and not (at_most_once and not reexecution_safe):
        delay = (
            retry_after_s
            if retry_after_s is not None
            else backoff_delay(step.backoff, step.attempt)
        )
        await conn.execute(Q.START_RUN, {"run": str(step.run_id), "now": now})
        rows = (
            await conn.execute(
                Q.REQUEUE_STEP,
                {
                    "id": step.id,
                    "error": dump_error(error),
                    "delay": delay,
                    "extra_attempts": 0,
                    "now": now,
                },
            )
        ).all()
        for tenant, action in rows:
            if delay <= 0:
                effects.notify.add((str(tenant), action))
        effects.retries += 1
        effects.step_statuses["queued"] += 1
        return "queued"
    await conn.execute(Q.FAIL_STEP, {"id": step.id, "error": dump_error(error), "now": now})
    effects.step_statuses["failed"] += 1
    await after_permanent_failure(
        conn,
        str(step.run_id),
        step.step_name,
        step.is_on_failure,
        error,
        step.attempt,
        effects,
        now,
    )
    return "failed"


async def end_overdue(conn: Conn, step: Any, effects: Effects, now: datetime | None) -> bool:
    """End the attempt of a running step run whose lease or execution timeout ran out, as the
    reaper does (``step`` also holds ``lease_due``, ``timeout_due``, ``cancel_requested_at``):
    a step of a cancelled run is cancelled, never retried; else the attempt failed
    (``lease_expired`` or ``timed_out``, retryable). Also called when the holder's own report
    comes after the deadline but before the reaper's tick, so the outcome never depends on
    when the reaper last ran. False when neither deadline has passed."""
    if not (step.lease_due or step.timeout_due):
        return False
    if step.cancel_requested_at is not None:
        await cancel_running(conn, step, effects, now)
        return True
    if step.lease_due:
        effects.lease_expirations += 1
    await fail_attempt(
        conn,
        step,
        error=LEASE_ERROR if step.lease_due else TIMEOUT_ERROR,
        outcome="lease_expired" if step.lease_due else "timed_out",
        retryable=True,
        retry_after_s=0.0 if step.lease_due else None,
        reexecution_safe=False,
        effects=effects,
        now=now,
    )
    return True


async def cancel_running(conn: Conn, step: Any, effects: Effects, now: datetime | None) -> None:
    """Revoke the lease of a running step run whose run was cancelled."""
    await close_attempt(conn, step, "cancelled", None, now, effects)
    await conn.execute(Q.CANCEL_STEP, {"id": step.id, "now": now})
    effects.step_statuses["cancelled"] += 1
    await settle_run(conn, str(step.run_id), effects, now)


async def release_running(conn: Conn, step: Any, effects: Effects, now: datetime | None) -> None:
    """A worker gave a running step run back unfinished (graceful shutdown, deregistration)."""
    if step.cancel_requested_at is not None:
        await cancel_running(conn, step, effects, now)
        return
    if step.delivery == "at_most_once":
        await fail_attempt(
            conn,
            step,
            error={"type": "lease_lost", "message": "the worker released the step unfinished"},
            outcome="released",
            retryable=False,
            effects=effects,
            now=now,
        )
        return
    await close_attempt(conn, step, "released", None, now, effects)
    await conn.execute(Q.START_RUN, {"run": str(step.run_id), "now": now})
    rows = (
        await conn.execute(
            Q.REQUEUE_STEP,
            {"id": step.id, "error": None, "delay": 0, "extra_attempts": 1, "now": now},
        )
    ).all()
    for tenant, action in rows:
        effects.notify.add((str(tenant), action))
    effects.step_statuses["queued"] += 1
