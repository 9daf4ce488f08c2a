"""Workers and leases: register, poll (claim), heartbeat, complete, fail, deregister."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from db import queries as Q
from db import queries_workers as QW
from db import transitions
from db.errors import CairnDBError, LeaseConflict, NotFound
from db.pg import Conn
from db.types import Effects, PollResult, WorkerInfo


def _worker(row: Any) -> WorkerInfo:
    return WorkerInfo(
        id=str(row.id),
        name=row.name,
        actions=tuple(row.actions),
        slots=row.slots,
        heartbeat_interval_s=row.heartbeat_interval_s,
        lease_timeout_s=row.lease_timeout_s,
    )


async def register_worker(
    conn: Conn,
    tenant: str,
    *,
    name: str,
    actions: list[str],
    slots: int,
    heartbeat_interval_s: float,
    lease_timeout_s: float,
    now: datetime | None = None,
) -> WorkerInfo:
    row = (
        await conn.execute(
            QW.INSERT_WORKER,
            {
                "tenant": tenant,
                "name": name,
                "actions": sorted(set(actions)),
                "slots": slots,
                "hb": heartbeat_interval_s,
                "lease": lease_timeout_s,
                "now": now,
            },
        )
    ).one()
    return _worker(row)


async def _touch(conn: Conn, tenant: str, worker_id: str, now: datetime | None) -> Any:
    row = (
        await conn.execute(QW.TOUCH_WORKER, {"tenant": tenant, "worker": worker_id, "now": now})
    ).first()
    if row is None:
        raise NotFound(f"worker {worker_id} is not registered (register again)")
    return row


async def _deliver_cancellations(
    conn: Conn, worker_id: str, ids: list[str], effects: Effects, now: datetime | None
) -> list[str]:
    if not ids:
        return []
    rows = (
        await conn.execute(Q.DELIVER_CANCELLATIONS, {"ids": ids, "worker": worker_id, "now": now})
    ).all()
    effects.step_statuses["cancelled"] += len(rows)
    effects.step_durations.extend(float(r[1]) for r in rows if r[1] is not None)
    return [r[0] for r in rows]


async def _claim(
    conn: Conn,
    tenant: str,
    worker_id: str,
    max_tasks: int,
    effects: Effects,
    now: datetime | None,
    floors: str | None,
) -> tuple[PollResult, tuple[str, ...]]:
    """CLAIM once: what it claimed, and the cancellations waiting to be delivered (when there
    are any it claimed nothing)."""
    rows = await conn.execute(
        Q.CLAIM,
        {
            "tenant": tenant,
            "worker": worker_id,
            "max_tasks": max_tasks,
            "now": now,
            "floors": floors,
        },
    )
    if not rows:
        raise NotFound(f"worker {worker_id} is not registered (register again)")
    head = rows.first()
    tasks: tuple[str, ...] = ()
    if head["task"] is not None:
        tasks = tuple([r["task"] for r in rows])
        effects.queue_latencies.extend(max(float(r["queue_latency"] or 0.0), 0.0) for r in rows)
        effects.step_statuses["running"] += len(tasks)
    result = PollResult(
        tasks=tasks,
        cancelled=(),
        actions=tuple(head["actions"]),
        full=len(tasks) >= head["n"],
        floors=head["floors"],
        lease_timeout_s=float(head["lease_timeout_s"]),
    )
    return result, tuple(head["cancelled"])


async def claim(
    conn: Conn,
    tenant: str,
    worker_id: str,
    *,
    max_tasks: int,
    effects: Effects,
    now: datetime | None = None,
    floors: str | None = None,
) -> PollResult | None:
    """One statement, which needs no transaction block: claim up to ``max_tasks`` (never beyond
    free slots), each action read from its floor (``floors``: ``db.claim_floors``). ``None``
    (nothing claimed) while cancellations wait to be delivered: ``poll`` delivers them, in a
    transaction."""
    result, pending = await _claim(conn, tenant, worker_id, max_tasks, effects, now, floors)
    return None if pending else result


async def poll(
    conn: Conn,
    tenant: str,
    worker_id: str,
    *,
    max_tasks: int,
    effects: Effects,
    now: datetime | None = None,
    floors: str | None = None,
) -> PollResult:
    """In the caller's transaction: deliver pending cancellations (their slots are free then),
    and claim up to ``max_tasks`` (never beyond free slots)."""
    result, pending = await _claim(conn, tenant, worker_id, max_tasks, effects, now, floors)
    if not pending:
        return result
    cancelled = await _deliver_cancellations(conn, worker_id, list(pending), effects, now)
    again, _ = await _claim(conn, tenant, worker_id, max_tasks, effects, now, floors)
    # A cancellation requested in between claims nothing more: the next poll delivers it.
    return PollResult(
        tasks=again.tasks,
        cancelled=tuple(cancelled),
        actions=again.actions,
        full=again.full,
        floors=again.floors,
        lease_timeout_s=again.lease_timeout_s,
    )


async def heartbeat(
    conn: Conn,
    tenant: str,
    worker_id: str,
    step_run_ids: list[str],
    *,
    grace_s: float,
    effects: Effects,
    now: datetime | None = None,
) -> dict[str, str]:
    """Renew the leases this worker holds; answer held | cancelled | lost per step run."""
    worker = await _touch(conn, tenant, worker_id, now)
    ids = sorted(set(step_run_ids))
    answers: dict[str, str] = {}
    if not ids:
        return answers
    for (sid,) in await conn.execute(
        Q.RENEW_LEASES,
        {"ids": ids, "worker": worker_id, "lease_s": worker.lease_timeout_s, "now": now},
    ):
        answers[sid] = "held"
    rest = [i for i in ids if i not in answers]
    for sid in await _deliver_cancellations(conn, worker_id, rest, effects, now):
        answers[sid] = "cancelled"
    rest = [i for i in rest if i not in answers]
    if rest:
        rows = await conn.execute(
            Q.HEARTBEAT_LEFTOVERS,
            {"ids": rest, "worker": worker_id, "tenant": tenant, "grace": grace_s, "now": now},
        )
        for r in rows:
            if r.held:
                answers[r.id] = "held"
            elif r.status == "cancelled" and r.worker_id == worker_id:
                answers[r.id] = "cancelled"
                if r.ignored:
                    effects.ignored_cancellations += 1
        for sid in rest:
            answers.setdefault(sid, "lost")
    return answers


async def _conflict(
    conn: Conn,
    tenant: str,
    step_run_id: str,
    token: str,
    output_json: str | None,
    error: dict[str, Any] | None = None,
) -> LeaseConflict:
    """Explain why a fenced write was refused, and whether it conflicts with what is stored:
    a completion (``output_json``) or a failure (``error``) repeating its attempt's own stored
    result is benign; any other result is conflicting."""
    row = (
        await conn.execute(
            Q.DIAGNOSE,
            {
                "id": step_run_id,
                "tenant": tenant,
                "token": token,
                "output": output_json,
                "error": transitions.dump_error(error),
            },
        )
    ).first()
    if row is None:
        raise NotFound(f"step run {step_run_id} does not exist")
    if row.token_attempt is None:
        return LeaseConflict(
            "lease_lost",
            "that lease token was never issued for this step run",
            conflicting=True,
            reason="unknown_token",
        )
    older = row.token_attempt < row.attempt
    if row.status == "cancelled" or row.cancel_requested:
        # The attempt the cancellation stopped ran once and its result is dropped: only a
        # report from an attempt before it means the step ran twice.
        return LeaseConflict(
            "cancelled", "the run was cancelled", conflicting=older, reason="cancelled"
        )
    if row.token_outcome in ("lease_expired", "released", "timed_out"):
        # The holder's attempt was ended for it (its lease ran out, its worker gave it back,
        # its timeout passed), whatever became of the step run since: its lease is lost.
        return LeaseConflict(
            "lease_lost",
            f"the lease of that attempt ended ({row.token_outcome})",
            conflicting=True,
            reason="lease_expired",
        )
    repeat = (output_json is not None and row.token_outcome == "succeeded" and row.same_output) or (
        output_json is None and row.token_outcome == "failed" and row.same_error
    )
    if row.token_outcome in ("succeeded", "failed"):
        # The holder's own attempt already reported, whatever became of the step run since (a
        # retryable failure queued it again): the same result again is a resend, not a second run.
        return LeaseConflict(
            "already_finished",
            f"that attempt already reported ({row.token_outcome}); the step run is {row.status}",
            conflicting=not repeat,
            reason="already_finished",
        )
    benign = not older and repeat
    if row.status in ("succeeded", "failed", "skipped") and not older:
        return LeaseConflict(
            "already_finished",
            f"the step run already {row.status}",
            conflicting=not benign,
            reason="already_finished",
        )
    return LeaseConflict(
        "lease_lost",
        "the lease expired or was reassigned" + (" to a newer attempt" if older else ""),
        conflicting=not benign,
        reason="stale_attempt" if older else "lease_expired",
    )


def _quote(value: str) -> str:
    """A JSON string (orjson: a third of ``json.dumps``' cost, twice per item)."""
    return orjson.dumps(value).decode()


def completion_items(items: list[tuple[str, str, str]]) -> str:
    """``COMPLETE_MANY``'s items: ``(step_run_id, lease_token, output_json)`` as a JSON array."""
    doc = ",".join(
        f'{{"id":{_quote(sid)},"token":{_quote(token)},"output":{{"v":{output}}}}}'
        for sid, token, output in items
    )
    return f"[{doc}]"


async def complete_many(
    conn: Conn,
    tenant: str,
    items: list[tuple[str, str, str]],
    *,
    effects: Effects,
    now: datetime | None = None,
) -> list[CairnDBError | None]:
    """Apply completions ``(step_run_id, lease_token, output_json)``, each fenced by its token.

    Three statements for the whole batch; a refused item gets the reason it was refused (after
    any lease revocation it causes), in the order given.
    """
    # Columns by key: a Row attribute is a Python call per column (see Row).
    done = {
        r["id"]: r
        for r in await conn.execute(
            Q.COMPLETE_MANY, {"items": completion_items(items), "tenant": tenant, "now": now}
        )
    }
    if done:
        effects.step_statuses["succeeded"] += len(done)
        effects.step_durations.extend(float(r["duration"] or 0.0) for r in done.values())
        await transitions.after_success(
            conn, sorted({r["run_id"] for r in done.values()}), effects, now
        )
    results: list[CairnDBError | None] = []
    for sid, token, output in items:
        if sid in done:
            results.append(None)
            done.pop(sid)  # a repeated item in the batch is a duplicate, not a second success
            continue
        await _end_refused_holder(conn, tenant, sid, token, effects, now)
        try:
            results.append(await _conflict(conn, tenant, sid, token, output))
        except NotFound as err:
            results.append(err)
    return results


async def complete(
    conn: Conn,
    tenant: str,
    step_run_id: str,
    token: str,
    output_json: str,
    *,
    effects: Effects,
    now: datetime | None = None,
) -> CairnDBError | None:
    """Apply one completion, or return why it was refused."""
    [result] = await complete_many(
        conn, tenant, [(step_run_id, token, output_json)], effects=effects, now=now
    )
    return result


async def _end_refused_holder(
    conn: Conn,
    tenant: str,
    step_run_id: str,
    token: str,
    effects: Effects,
    now: datetime | None,
) -> None:
    """A holder whose report was refused still holds the step run: its run was cancelled (it
    has stopped: revoke the lease now), or its lease or timeout ran out before the reaper saw
    it (end the attempt now, as the reaper would), so the answer is the same either way."""
    step = (
        await conn.execute(
            Q.LOCK_HELD_STEP, {"id": step_run_id, "tenant": tenant, "token": token, "now": now}
        )
    ).first()
    if step is None:
        return
    if step.cancel_requested_at is not None:
        await transitions.cancel_running(conn, step, effects, now)
    else:
        await transitions.end_overdue(conn, step, effects, now)


async def fail(
    conn: Conn,
    tenant: str,
    step_run_id: str,
    token: str,
    error: dict[str, Any],
    *,
    retryable: bool,
    retry_after_s: float | None,
    effects: Effects,
    now: datetime | None = None,
) -> str | LeaseConflict:
    """Apply a failure (retry or final); return the new status, or why it was refused."""
    step = (
        await conn.execute(
            Q.LOCK_HELD_STEP, {"id": step_run_id, "tenant": tenant, "token": token, "now": now}
        )
    ).first()
    if step is None or step.cancel_requested_at is not None or step.lease_due or step.timeout_due:
        if step is not None and step.cancel_requested_at is not None:
            await transitions.cancel_running(conn, step, effects, now)
        elif step is not None:  # after a deadline the reaper had not seen yet: as it would
            await transitions.end_overdue(conn, step, effects, now)
        return await _conflict(conn, tenant, step_run_id, token, None, error)
    return await transitions.fail_attempt(
        conn,
        step,
        error=error,
        outcome="failed",
        retryable=retryable,
        retry_after_s=retry_after_s,
        effects=effects,
        now=now,
    )


async def lock_runs(conn: Conn, tenant: str, step_run_ids: list[str]) -> None:
    """Lock the runs of these step runs, in id order (``LOCK_RUNS_OF_STEPS``): done first by a
    batch whose items would otherwise lock their runs in the order they come."""
    await conn.execute(Q.LOCK_RUNS_OF_STEPS, {"ids": step_run_ids, "tenant": tenant})


async def held_by(conn: Conn, worker_id: str) -> list[tuple[str, str]]:
    return [
        (str(r.id), str(r.run_id))
        for r in await conn.execute(QW.WORKER_HELD, {"worker": worker_id})
    ]


async def deregister(conn: Conn, tenant: str, worker_id: str, now: datetime | None = None) -> None:
    await conn.execute(QW.LOCK_WORKER_CLAIMS, {"worker": worker_id})
    row = (
        await conn.execute(
            QW.DEREGISTER_WORKER, {"tenant": tenant, "worker": worker_id, "now": now}
        )
    ).first()
    if row is None:
        raise NotFound(f"worker {worker_id} is not registered")
