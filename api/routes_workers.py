"""Worker endpoints: register, long-poll, heartbeat, deregister; fenced complete and fail."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request, Response

from api import results
from api.fastjson import json_response, poll_response
from api.routes import ERRORS
from api.schemas import (
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    OutcomeOut,
    PollIn,
    PollOut,
    ResultsIn,
    ResultsOut,
    WorkerIn,
    WorkerOut,
)
from api.service import Service, service
from api.tenancy import tenant_id
from db import leases, payloads, poll_fn, reaper
from db.errors import CairnDBError, InvalidPayload, LeaseConflict
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
    """Long-poll for up to ``max_tasks`` step runs (never beyond free slots), up to ``wait_s``
    (at most the server's cap and half the worker's lease timeout).

    Returns at once when work is claimed or a held step run was cancelled; otherwise waits to
    be woken by a NOTIFY for the worker's actions (one waiting poll per notification) or for a
    cancellation of a step run it holds, and re-checks every ``poll_recheck_s`` as a fallback.

    ``results`` (optional) carries finished step runs, exactly as ``/step-runs/results`` takes
    them: they are applied first, in the same transaction as the claim (so their slots are free
    for it), and answered in ``results``. A poll that carries results does not wait: it answers
    after its first claim, whatever it got. The request is atomic: an error answer applied none
    of the results.
    """
    s = svc.settings
    wid = str(worker_id)
    max_tasks = min(body.max_tasks, s.poll_max_tasks)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + min(body.wait_s, s.poll_max_wait_s)
    batch = (
        results.prepare(body.results, max_batch=s.max_batch, max_payload_bytes=s.max_payload_bytes)
        if body.results
        else None
    )
    answers: list[dict[str, Any]] = []
    floors: str | None = None  # where each action's claim starts (db/claim_floors.py)

    async def claim(conn: Conn, effects: Effects) -> PollResult:
        nonlocal answers
        if batch is not None:  # only one claim when results are carried (see the loop)
            answers = await results.apply(conn, tenant, batch, effects)
        return await leases.poll(
            conn, tenant, wid, max_tasks=max_tasks, effects=effects, floors=floors
        )

    async def claim_alone(conn: Conn, effects: Effects) -> PollResult | None:
        return await leases.claim(
            conn, tenant, wid, max_tasks=max_tasks, effects=effects, floors=floors
        )

    async def completing(conn: Conn, effects: Effects) -> PollResult | None:
        nonlocal answers
        assert batch is not None
        done = await poll_fn.poll_completing(
            conn,
            tenant,
            wid,
            leases.completion_items([c for _, c in batch.completions]),
            max_tasks=max_tasks,
            effects=effects,
            floors=floors,
        )
        if done is not None:
            answers = [
                results.answer(sid, "succeeded", None) for _, (sid, _, _) in batch.completions
            ]
        return done

    async def claim_once() -> PollResult:
        nonlocal floors
        floors = svc.claim_floors.param(tenant, actions)
        result = await claim_statements()
        svc.claim_floors.learn(tenant, result.floors)
        return result

    async def claim_statements() -> PollResult:
        if batch is None:  # one statement, no transaction block (unless cancellations wait)
            alone = await svc.statement(claim_alone)
            if alone is not None:
                return alone
        elif batch.simple:  # completions only: one call (db/poll_fn.py), usually
            done = await svc.statement(completing)
            if done is not None:
                return done
        return await svc.tx(claim)

    actions = svc.worker_actions(wid)
    # A poll carrying results claims once and never waits: it need not be woken.
    waits = batch is None
    with svc.notifier.subscribe(
        tenant, (actions or ()) if waits else (), worker=wid if waits else None
    ) as wake:
        while True:
            wake.begin_claim()
            full = True  # a claim that failed hands its wake on as well
            try:
                result = await claim_once()
                full = result.full
            finally:
                wake.end_claim(more=full)
            if result.tasks or result.cancelled or batch is not None:
                break
            if actions is None:  # first poll seen by this replica: subscribe, then re-check
                actions = result.actions
                svc.remember_worker(wid, actions)
                wake.set_actions(actions)
                continue
            if result.lease_timeout_s is not None:
                # A worker that stops while its poll waits (frozen, cut off) must not be handed
                # work after it could have been noticed: the poll waits at most half its lease,
                # so the claims made for it are those of a worker heard from within its lease.
                deadline = min(deadline, started + result.lease_timeout_s / 2)
            remaining = deadline - loop.time()
            if remaining <= 0 or svc.draining.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.event.wait(), min(remaining, s.poll_recheck_s))
            if await request.is_disconnected():
                break
    if actions is None:
        svc.remember_worker(wid, result.actions)
    if batch is not None:
        for why in batch.conflicts:
            svc.metrics.conflict(why)
    return poll_response(result.tasks, result.cancelled, answers)


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
    batch = results.prepare(
        body.results, max_batch=s.max_batch, max_payload_bytes=s.max_payload_bytes
    )

    async def work(conn: Conn, effects: Effects) -> list[dict[str, Any]]:
        return await results.apply(conn, tenant, batch, effects)

    answers = await svc.tx(work)
    for why in batch.conflicts:
        svc.metrics.conflict(why)
    return json_response({"results": answers})
