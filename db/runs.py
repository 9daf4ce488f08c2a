"""Runs: trigger, read, list, cancel, replay."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text

from db import queries as Q
from db import queries_reads as R
from db import queries_runs as QR
from db import transitions
from db import workflows as wf
from db.engine import refused, translate
from db.errors import InvalidPayload, InvalidState, NotFound
from db.ids import run_ids
from db.models import RUN_ATTENTION
from db.pg import Conn
from db.types import Attempt, Effects, Run, RunPage, StepRun


def _runs_doc(ids: list[str], items: list[tuple[str, str | None]]) -> str:
    """``:runs`` of the create statements: ``(input_json, idempotency_key)`` per run id."""
    doc = ",".join(
        f'{{"id":"{rid}","input":{{"v":{input_json}}},"idem":{json.dumps(idem)}}}'
        for rid, (input_json, idem) in zip(ids, items, strict=True)
    )
    return f"[{doc}]"


def _run(row: Any, steps: tuple[StepRun, ...] | None = None) -> Run:
    return Run(
        id=str(row.id),
        workflow=row.workflow_name,
        version=row.version,
        status=row.status,
        input=row.input,
        idempotency_key=row.idempotency_key,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        steps=steps,
    )


async def trigger_many(
    conn: Conn,
    tenant: str,
    workflow: str,
    items: list[tuple[str, str | None]],
    *,
    version: int | None,
    effects: Effects,
    now: datetime | None = None,
) -> tuple[int, list[tuple[str, bool]]]:
    """Create runs ``(input_json, idempotency_key)`` in one statement.

    Returns the version used and, per item in order, ``(run_id, created)``: an item whose
    idempotency key was already used gets the existing run and ``created=False``.
    """
    definition, workflow_id = await wf.get(conn, tenant, workflow, version, with_versions=False)
    ids = run_ids(len(items))
    created = {
        r.id
        for r in await conn.execute(
            QR.CREATE_RUNS,
            {
                "tenant": tenant,
                "workflow_id": workflow_id,
                "name": workflow,
                "runs": _runs_doc(ids, items),
                "now": now,
            },
        )
    }
    existing: dict[str, str] = {}
    missing = [idem for rid, (_, idem) in zip(ids, items, strict=True) if rid not in created]
    if missing:
        rows = await conn.execute(
            QR.RUNS_BY_IDEMPOTENCY_KEYS, {"tenant": tenant, "name": workflow, "keys": missing}
        )
        existing = {r.idempotency_key: r.id for r in rows}
    result: list[tuple[str, bool]] = []
    for rid, (_, idem) in zip(ids, items, strict=True):
        if rid in created:
            result.append((rid, True))
        elif idem is not None and idem in existing:
            result.append((existing[idem], False))
        else:  # pragma: no cover - a conflict without a key cannot happen
            raise InvalidState(f"run for idempotency key {idem!r} vanished; retry")
    if created:
        roots = [s for s in definition.definition["steps"] if not s["parents"]]
        for s in roots:
            effects.notify.add((tenant, s["action"]))
        effects.step_statuses["queued"] += len(roots) * len(created)
    return definition.version, result


async def trigger_batch(
    conn: Conn,
    tenant: str,
    workflow: str,
    items: Sequence[tuple[str, str | None]],
    *,
    version: int | None,
    effects: Effects,
    now: datetime | None = None,
) -> list[tuple[Run, bool] | Exception]:
    """Create one run per item ``(input_json, idempotency_key)`` of the latest version (or
    ``version``), all in one statement with the version's lookup and the wake-up of the
    long-polls (``QR.CREATE_RUN`` for one item, ``QR.CREATE_RUN_BATCH`` for more).

    Per item, in order: (run, created), where a taken idempotency key (taken before, or by an
    earlier item of the same batch) gives the run it was first used for, ``created=False``;
    or the error for that item alone: ``NotFound`` when the workflow version is not registered
    (and the item's key names no run), ``InvalidState`` when the run its key names no longer
    exists, or what Postgres refused in it (the batch is then made one item at a time, so the
    others are created). Raises what fails the whole statement (nothing is created then)."""
    ids = run_ids(len(items))
    params: dict[str, Any] = {"tenant": tenant, "name": workflow, "version": version, "now": now}
    if len(items) == 1:
        statement = QR.CREATE_RUN
        params.update(id=ids[0], input=f'{{"v":{items[0][0]}}}', idem=items[0][1])
    else:
        statement = QR.CREATE_RUN_BATCH
        params["runs"] = _runs_doc(ids, list(items))
    try:
        rows = list(await conn.execute(statement, params))
    except Exception as err:
        if len(items) == 1 or not refused(err):
            raise
        # Refused as a whole (nothing was created): each item alone, so that only the one at
        # fault gets the error.
        out: list[tuple[Run, bool] | Exception] = []
        for item in items:
            try:
                out += await trigger_batch(
                    conn, tenant, workflow, [item], version=version, effects=effects, now=now
                )
            except Exception as one:
                if not refused(one):
                    raise
                mapped = translate(one)
                out.append(mapped if isinstance(mapped, Exception) else one)
        return out
    by_run: dict[str, list[Any]] = {}
    for row in rows:
        if row["id"] is not None:
            by_run.setdefault(row["id"], []).append(row)
    created: dict[str, Run] = {}
    for run_id, run_rows in by_run.items():
        steps = tuple(_new_step(r) for r in run_rows if r["step_run_id"] is not None)
        effects.step_statuses["queued"] += sum(1 for st in steps if st.status == "queued")
        created[run_id] = _run(run_rows[0], steps)
    taken = {idem for rid, (_, idem) in zip(ids, items, strict=True) if rid not in created and idem}
    existing: dict[str, Run] = {}
    if taken:
        found = await conn.execute(
            QR.RUNS_BY_IDEMPOTENCY_KEYS, {"tenant": tenant, "name": workflow, "keys": sorted(taken)}
        )
        for row in found:
            existing[row.idempotency_key] = await get(conn, tenant, row.id)
    answers: list[tuple[Run, bool] | Exception] = []
    for run_id, (_, idem) in zip(ids, items, strict=True):
        if run_id in created:
            answers.append((created[run_id], True))
        elif idem is not None and idem in existing:
            answers.append((existing[idem], False))  # the key decides, whatever the version
        elif not rows:
            answers.append(wf.not_registered(workflow, version))
        else:
            answers.append(InvalidState(f"run for idempotency key {idem!r} vanished; retry"))
    return answers


def _new_step(row: Any) -> StepRun:
    """A step run as ``CREATE_RUN`` made it: not attempted yet."""
    return StepRun(
        step_run_id=row["step_run_id"],
        name=row["step_name"],
        action=row["action"],
        status=row["step_status"],
        attempt=0,
        max_attempts=row["max_attempts"],
        delivery=row["delivery"],
        is_on_failure=row["is_on_failure"],
        parents=tuple(row["parents"]),
        output=None,
        error=None,
        queued_at=row["queued_at"],
        started_at=None,
        finished_at=None,
        cancel_requested=False,
    )


async def get(conn: Conn, tenant: str, run_id: str) -> Run:
    """A run with its step runs and their attempts, read in one statement (one snapshot)."""
    rows = list(await conn.execute(R.GET_RUN, {"tenant": tenant, "id": run_id}))
    if not rows:
        raise NotFound(f"run {run_id} does not exist")
    steps: list[StepRun] = []
    attempts: list[Attempt] = []
    for i, row in enumerate(rows):
        if row["step_run_id"] is None:
            break  # a run without step runs (none is made so; read it all the same)
        if row["a_attempt"] is not None:
            attempts.append(
                Attempt(
                    attempt=row["a_attempt"],
                    worker_id=row["a_worker_id"],
                    lease_token=row["a_lease_token"],
                    started_at=row["a_started_at"],
                    ended_at=row["a_ended_at"],
                    outcome=row["a_outcome"],
                    error=row["a_error"],
                )
            )
        if i + 1 < len(rows) and rows[i + 1]["step_run_id"] == row["step_run_id"]:
            continue  # more attempts of this step run
        steps.append(
            StepRun(
                step_run_id=row["step_run_id"],
                name=row["step_name"],
                action=row["action"],
                status=row["step_status"],
                attempt=row["step_attempt"],
                max_attempts=row["max_attempts"],
                delivery=row["delivery"],
                is_on_failure=row["is_on_failure"],
                parents=tuple(row["parents"]),
                output=row["step_output"],
                error=row["step_error"],
                queued_at=row["queued_at"],
                started_at=row["step_started_at"],
                finished_at=row["step_finished_at"],
                cancel_requested=row["cancel_requested_at"] is not None,
                attempts=tuple(attempts),
            )
        )
        attempts = []
    return _run(rows[0], tuple(steps))


def _encode_cursor(created_at: datetime, run_id: str) -> str:
    raw = f"{created_at.isoformat()}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, run_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), run_id
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidPayload("cursor is not one this server issued") from err


async def list_runs(
    conn: Conn,
    tenant: str,
    *,
    workflow: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> RunPage:
    """Newest first, keyset-paginated on (created_at, id)."""
    clauses = ["runs.tenant_id = :tenant"]
    params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1}
    if workflow is not None:
        clauses.append("runs.workflow_name = :workflow")
        params["workflow"] = workflow
    if status is not None:
        # The stored status narrows the scan; the derived one decides (see Q.RUN_FROM). Failed
        # and cancelled runs have their own index (models.RUN_ATTENTION); the others are read
        # newest first, where queued and running runs are, and succeeded ones are most runs.
        stored = {"queued": "'queued'", "running": "'queued', 'running'"}.get(status, ":status")
        clauses.append(f"runs.status IN ({stored}) AND {Q.RUN_STATUS} = :status")
        if status in RUN_ATTENTION:
            clauses.append("runs.attention_status = :status")
        params["status"] = status
    if cursor is not None:
        params["c_at"], params["c_id"] = _decode_cursor(cursor)
        clauses.append("(runs.created_at, runs.id) < (:c_at, CAST(:c_id AS uuid))")
    sql = (
        f"SELECT {Q.RUN_COLUMNS} FROM {Q.RUN_FROM} WHERE {' AND '.join(clauses)} "
        "ORDER BY runs.created_at DESC, runs.id DESC LIMIT :limit"
    )
    rows = (await conn.execute(text(sql), params)).all()
    page = rows[:limit]
    next_cursor = (
        _encode_cursor(page[-1].created_at, str(page[-1].id))
        if len(rows) > limit and page
        else None
    )
    return RunPage(runs=tuple(_run(r) for r in page), next_cursor=next_cursor)


async def cancel(
    conn: Conn, tenant: str, run_id: str, effects: Effects, now: datetime | None = None
) -> Run:
    """Cancel queued/pending step runs now; flag running ones for their holders to learn."""
    run = (await conn.execute(Q.LOCK_RUN, {"tenant": tenant, "id": run_id})).first()
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    if run.status in ("succeeded", "failed"):
        raise InvalidState(f"run {run_id} already {run.status}; nothing to cancel")
    if run.status != "cancelled":
        if (await conn.execute(Q.CANCEL_RUN, {"tenant": tenant, "id": run_id, "now": now})).first():
            effects.run_statuses["cancelled"] += 1
        for status, holder in await conn.execute(Q.CANCEL_OPEN_STEPS, {"run": run_id, "now": now}):
            if status == "cancelled":
                effects.step_statuses["cancelled"] += 1
            elif holder is not None:  # its waiting poll answers now, not at its next re-check
                transitions.wake_worker(effects, tenant, holder)
    return await get(conn, tenant, run_id)


async def replay(
    conn: Conn, tenant: str, run_id: str, effects: Effects, now: datetime | None = None
) -> Run:
    """Re-queue the failed/cancelled steps and what depends on them; keep succeeded outputs."""
    run = (await conn.execute(Q.LOCK_RUN, {"tenant": tenant, "id": run_id})).first()
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    if run.status not in ("failed", "cancelled"):
        raise InvalidState(f"run {run_id} is {run.status}; only failed or cancelled runs replay")
    # A step still running under a cancel flag may still be executing on its worker: queued
    # again now, it would run twice at once (at-most-once included). Its worker stops it at its
    # next heartbeat or poll, or the reaper revokes it after the grace period; replay then.
    running = (await conn.execute(Q.REPLAY_RUNNING_STEPS, {"run": run_id})).scalar_one()
    if running:
        raise InvalidState(
            f"run {run_id} is still stopping: {running} step run(s) are running until their"
            " worker learns of the cancel (at its next heartbeat or poll) or the cancel's grace"
            " period ends; replay after that"
        )
    definition, _ = await wf.get(conn, tenant, run.workflow_name, run.version)
    retries = {s["name"]: s["retries"] for s in definition.definition["steps"]}
    if "on_failure" in definition.definition:
        handler = definition.definition["on_failure"]
        retries[handler["name"]] = handler["retries"]
    await conn.execute(Q.REPLAY_RESET_STEPS, {"run": run_id, "retries": json.dumps(retries)})
    await conn.execute(Q.REPLAY_START_RUN, {"run": run_id})
    await transitions.promote_children(conn, [run_id], effects, now)
    return await get(conn, tenant, run_id)
