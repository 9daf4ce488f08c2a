"""Worker endpoints: register, long-poll, heartbeat, deregister; fenced complete and fail."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response

from api.fastjson import json_response
from api.routes import ERRORS
from api.schemas import (
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    OutcomeOut,
    PollIn,
    PollOut,
    ResultIn,
    ResultsIn,
    ResultsOut,
    WorkerIn,
    WorkerOut,
)
from api.service import Service, service
from api.tenancy import tenant_id
from db import leases, payloads, reaper
from db.errors import CairnDBError, InvalidPayload, LeaseConflict, NotFound
from db.pg import Conn
from db.types import Effects, PollResult

router = APIRouter(prefix="/api/v1")
Svc = Annotated[Service, Depends(service)]
Tenant = Annotated[str, Depends(tenant_id)]


def _lease_settings(svc: Service, body: WorkerIn) -> tuple[float, float]:
    s = svc.settings
    lease = body.lease_timeout_s if body.lease_timeout_s is not None else s.lease_timeout_s
    lease = min(max(lease, s.min_lease_timeout_s), s.max_lease_timeout_s)
    if body.heartbeat_interval_s is not None:
        hb = max(body.heartbeat_interval_s, s.min_heartbeat_interval_s)
        if hb * 3 > lease:
            raise InvalidPayload(
                f"heartbeat_interval_s {hb} is above a third of lease_timeout_s {lease}"
            )
    else:
        hb = max(min(s.heartbeat_interval_s, lease / 3), s.min_heartbeat_interval_s)
    if hb * 3 > lease:  # a floor raised it: give the lease room instead
        lease = hb * 3
    return hb, lease


@router.post("/workers", response_model=WorkerOut, status_code=201, responses=ERRORS)
async def register_worker(body: WorkerIn, svc: Svc, tenant: Tenant) -> WorkerOut:
    """Register a worker.

    The lease timeout is clamped to the server's bounds; a heartbeat interval above a third of
    the lease timeout is refused (422). Omitted values take the server defaults.
    """
    hb, lease = _lease_settings(svc, body)
    for action in body.actions:
        if not 1 <= len(action) <= 200 or not action.isprintable():
            raise InvalidPayload(f"action {action[:50]!r} must be 1-200 printable characters")

    async def work(conn: Conn, _: Effects) -> Any:
        return await leases.register_worker(
            conn,
            tenant,
            name=body.name,
            actions=body.actions,
            slots=body.slots,
            heartbeat_interval_s=hb,
            lease_timeout_s=lease,
        )

    info = await svc.tx(work)
    svc.remember_worker(info.id, info.actions)
    return WorkerOut(
        id=info.id,
        name=info.name,
        actions=list(info.actions),
        slots=info.slots,
        heartbeat_interval_s=info.heartbeat_interval_s,
        lease_timeout_s=info.lease_timeout_s,
    )


@router.post("/workers/{worker_id}/poll", response_model=PollOut, responses=ERRORS)
async def poll(
    worker_id: UUID, body: PollIn, request: Request, svc: Svc, tenant: Tenant
) -> Response:
    """Long-poll for up to ``max_tasks`` step runs (never beyond free slots), up to ``wait_s``.

    Returns at once when work is claimed or a held step run was cancelled; otherwise wakes on
    NOTIFY for the worker's actions, re-checking every ``poll_recheck_s`` as a fallback.
    """
    s = svc.settings
    wid = str(worker_id)
    max_tasks = min(body.max_tasks, s.poll_max_tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(body.wait_s, s.poll_max_wait_s)

    async def claim(conn: Conn, effects: Effects) -> PollResult:
        return await leases.poll(conn, tenant, wid, max_tasks=max_tasks, effects=effects)

    actions = svc.worker_actions(wid)
    while True:
        with svc.notifier.subscribe(tenant, actions or ()) as wake:
            result = await svc.tx(claim)
            if result.tasks or result.cancelled:
                break
            if actions is None:  # first poll seen by this replica: subscribe, then re-check
                actions = result.actions
                svc.remember_worker(wid, actions)
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(remaining, s.poll_recheck_s))
        if await request.is_disconnected():
            break
    return json_response({"tasks": result.tasks, "cancelled": result.cancelled})


@router.post("/workers/{worker_id}/heartbeat", response_model=HeartbeatOut, responses=ERRORS)
async def heartbeat(worker_id: UUID, body: HeartbeatIn, svc: Svc, tenant: Tenant) -> Response:
    """Renew leases: each step run answers ``held``, ``cancelled`` (stop it) or ``lost``."""
    ids = [str(i) for i in body.step_run_ids]

    async def work(conn: Conn, effects: Effects) -> dict[str, str]:
        return await leases.heartbeat(
            conn,
            tenant,
            str(worker_id),
            ids,
            grace_s=svc.settings.cancel_grace_s,
            effects=effects,
        )

    return json_response({"step_runs": await svc.tx(work)})


@router.delete("/workers/{worker_id}", status_code=204, responses=ERRORS)
async def deregister_worker(worker_id: UUID, svc: Svc, tenant: Tenant) -> Response:
    """Deregister and release every lease the worker holds, at once."""
    effects = Effects()
    await reaper.release_worker(svc.db, tenant, str(worker_id), effects)
    svc.metrics.record(effects)
    return Response(status_code=204)


@router.post("/step-runs/{step_run_id}/complete", response_model=OutcomeOut, responses=ERRORS)
async def complete(step_run_id: UUID, body: CompleteIn, svc: Svc, tenant: Tenant) -> OutcomeOut:
    """Report success. Only the current lease holder is accepted; anyone else gets 409."""
    output = payloads.dump(body.output, field="output", limit=svc.settings.max_payload_bytes)

    async def work(conn: Conn, effects: Effects) -> CairnDBError | None:
        return await leases.complete(
            conn, tenant, str(step_run_id), str(body.lease_token), output, effects=effects
        )

    refused = await svc.tx(work)
    if refused is not None:
        raise refused
    return OutcomeOut(status="succeeded")


@router.post("/step-runs/{step_run_id}/fail", response_model=OutcomeOut, responses=ERRORS)
async def fail(step_run_id: UUID, body: FailIn, svc: Svc, tenant: Tenant) -> OutcomeOut:
    """Report failure. Retried with backoff while attempts remain, unless ``retryable`` is false."""
    error = body.error.model_dump()
    payloads.dump(error, field="error", limit=svc.settings.max_payload_bytes)

    async def work(conn: Conn, effects: Effects) -> str | LeaseConflict:
        return await leases.fail(
            conn,
            tenant,
            str(step_run_id),
            str(body.lease_token),
            error,
            retryable=body.retryable,
            retry_after_s=body.retry_after_s,
            effects=effects,
        )

    outcome = await svc.tx(work)
    if isinstance(outcome, LeaseConflict):
        raise outcome
    return OutcomeOut(status=outcome)


@router.post("/step-runs/results", response_model=ResultsOut, responses=ERRORS)
async def report_results(body: ResultsIn, svc: Svc, tenant: Tenant) -> Response:
    """Report many results in one request: each item is fenced by its own lease token.

    An item with ``error`` is a failure, otherwise a completion. Refused items do not fail the
    request: they come back with ``status: "rejected"`` and the same ``code`` the single-item
    endpoints would answer with 409 (and are counted the same way).
    """
    s = svc.settings
    if len(body.results) > s.max_batch:
        raise InvalidPayload(f"{len(body.results)} results is over the batch limit {s.max_batch}")
    completions: list[tuple[int, tuple[str, str, str]]] = []
    failures: list[tuple[int, ResultIn, dict[str, Any]]] = []
    for i, item in enumerate(body.results):
        sid, token = str(item.step_run_id), str(item.lease_token)
        if item.error is None:
            output = payloads.dump(
                item.output, field=f"results[{i}].output", limit=s.max_payload_bytes
            )
            completions.append((i, (sid, token, output)))
        else:
            error = item.error.model_dump()
            payloads.dump(error, field=f"results[{i}].error", limit=s.max_payload_bytes)
            failures.append((i, item, error))

    refusals: list[CairnDBError] = []

    async def work(conn: Conn, effects: Effects) -> list[dict[str, Any]]:
        refusals.clear()
        out: list[dict[str, Any] | None] = [None] * len(body.results)
        if completions:
            refused = await leases.complete_many(
                conn, tenant, [c for _, c in completions], effects=effects
            )
            for (i, (sid, _, _)), why in zip(completions, refused, strict=True):
                out[i] = _result(sid, "succeeded", why)
                refusals.extend([why] if why is not None else [])
        for i, item, error in failures:
            try:
                outcome: str | CairnDBError = await leases.fail(
                    conn,
                    tenant,
                    str(item.step_run_id),
                    str(item.lease_token),
                    error,
                    retryable=item.retryable,
                    retry_after_s=item.retry_after_s,
                    effects=effects,
                )
            except NotFound as err:
                outcome = err
            if isinstance(outcome, CairnDBError):
                out[i] = _result(str(item.step_run_id), "", outcome)
                refusals.append(outcome)
            else:
                out[i] = _result(str(item.step_run_id), outcome, None)
        return [o for o in out if o is not None]

    results = await svc.tx(work)
    for why in refusals:
        if isinstance(why, LeaseConflict):
            svc.metrics.conflict(why)
    return json_response({"results": results})


def _result(step_run_id: str, status: str, why: CairnDBError | None) -> dict[str, Any]:
    """One item of a ResultsOut."""
    if why is None:
        return {
            "step_run_id": step_run_id,
            "status": status,
            "code": None,
            "detail": None,
            "conflicting": None,
        }
    conflicting = why.conflicting if isinstance(why, LeaseConflict) else None
    return {
        "step_run_id": step_run_id,
        "status": "rejected",
        "code": why.code,
        "detail": why.detail,
        "conflicting": conflicting,
    }
