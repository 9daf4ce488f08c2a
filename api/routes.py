"""Workflow and run endpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response

from api.convert import run_out, workflow_out
from api.problems import TITLES
from api.schemas import (
    BulkRunOut,
    BulkTriggerIn,
    BulkTriggerOut,
    RunList,
    RunOut,
    TriggerIn,
    WorkflowIn,
    WorkflowList,
    WorkflowOut,
)
from api.service import Service, service
from api.tenancy import tenant_id
from db import payloads
from db import runs as run_db
from db import workflows as wf_db
from db.errors import InvalidPayload
from db.pg import Conn
from db.types import Effects

router = APIRouter(prefix="/api/v1")
Svc = Annotated[Service, Depends(service)]
Tenant = Annotated[str, Depends(tenant_id)]
PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before trying again.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": TITLES[code], "content": PROBLEM_CONTENT}
    | ({"headers": RETRY_AFTER} if code in (429, 503) else {})
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
WorkflowName = Annotated[str, Query(pattern=r"^[a-z0-9_.-]{1,64}$")]


@router.put(
    "/workflows/{name}",
    response_model=WorkflowOut,
    status_code=201,
    responses={200: {"model": WorkflowOut, "description": "identical definition: no-op"}, **ERRORS},
)
async def register_workflow(
    name: str, body: WorkflowIn, response: Response, svc: Svc, tenant: Tenant
) -> WorkflowOut:
    """Register a definition: a changed one is the next version; an identical one is a no-op."""
    raw = body.model_dump(exclude_unset=True, exclude_none=True)

    async def work(conn: Conn, _: Effects) -> tuple[Any, bool]:
        return await wf_db.register(conn, tenant, name, raw, max_steps=svc.settings.max_steps)

    workflow, created = await svc.tx(work)
    response.status_code = 201 if created else 200
    return workflow_out(workflow)


@router.get("/workflows", response_model=WorkflowList, responses=ERRORS)
async def list_workflows(svc: Svc, tenant: Tenant) -> WorkflowList:
    async with svc.db.connect() as conn:
        items = await wf_db.list_latest(conn, tenant)
    return WorkflowList(workflows=[workflow_out(w) for w in items])


@router.get("/workflows/{name}", response_model=WorkflowOut, responses=ERRORS)
async def get_workflow(
    name: str,
    svc: Svc,
    tenant: Tenant,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> WorkflowOut:
    async with svc.db.connect() as conn:
        workflow, _ = await wf_db.get(conn, tenant, name, version)
    return workflow_out(workflow)


@router.post(
    "/workflows/{name}/runs",
    response_model=RunOut,
    status_code=201,
    responses={
        200: {"model": RunOut, "description": "idempotency key seen: the same run"},
        **ERRORS,
    },
)
async def trigger_run(
    name: str, body: TriggerIn, response: Response, svc: Svc, tenant: Tenant
) -> RunOut:
    """Start a run. The same idempotency key again returns the same run (200), never a second."""
    input_json = payloads.dump(body.input, field="input", limit=svc.settings.max_payload_bytes)
    # One statement (db/runs.py trigger_batch), shared with the triggers of the same version
    # that arrive meanwhile (api/triggers.py); no transaction block around it.
    run, created = await svc.triggers.trigger(
        tenant, name, input_json, idempotency_key=body.idempotency_key, version=body.version
    )
    response.status_code = 201 if created else 200
    return run_out(run)


@router.post(
    "/workflows/{name}/runs/bulk",
    response_model=BulkTriggerOut,
    status_code=201,
    responses=ERRORS,
)
async def trigger_runs(name: str, body: BulkTriggerIn, svc: Svc, tenant: Tenant) -> BulkTriggerOut:
    """Start many runs in one request and one statement (up to ``CAIRN_MAX_BATCH``).

    Each item may carry its own idempotency key; an item whose key was already used gets the
    existing run with ``created: false``.
    """
    limit = svc.settings.max_payload_bytes
    if len(body.runs) > svc.settings.max_batch:
        raise InvalidPayload(
            f"{len(body.runs)} runs is over the batch limit {svc.settings.max_batch}"
        )
    items = [
        (payloads.dump(r.input, field=f"runs[{i}].input", limit=limit), r.idempotency_key)
        for i, r in enumerate(body.runs)
    ]

    async def work(conn: Conn, effects: Effects) -> tuple[int, list[tuple[str, bool]]]:
        return await run_db.trigger_many(
            conn, tenant, name, items, version=body.version, effects=effects
        )

    version, created = await svc.tx(work)
    return BulkTriggerOut(
        workflow=name,
        version=version,
        runs=[
            BulkRunOut(id=rid, idempotency_key=r.idempotency_key, created=new)
            for (rid, new), r in zip(created, body.runs, strict=True)
        ],
    )


@router.get("/runs/{run_id}", response_model=RunOut, responses=ERRORS)
async def get_run(run_id: UUID, svc: Svc, tenant: Tenant) -> RunOut:
    async with svc.db.connect() as conn:
        run = await run_db.get(conn, tenant, str(run_id))
    return run_out(run)


@router.get("/runs", response_model=RunList, responses=ERRORS)
async def list_runs(
    svc: Svc,
    tenant: Tenant,
    workflow: WorkflowName | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 50,  # then clamped: list_limit_max
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RunList:
    """Newest first. Pass ``next_cursor`` back as ``cursor`` for the next page."""
    async with svc.db.connect() as conn:
        page = await run_db.list_runs(
            conn,
            tenant,
            workflow=workflow,
            status=status,
            limit=min(limit, svc.settings.list_limit_max),
            cursor=cursor or None,
        )
    return RunList(runs=[run_out(r) for r in page.runs], next_cursor=page.next_cursor)


@router.post("/runs/{run_id}/cancel", response_model=RunOut, status_code=202, responses=ERRORS)
async def cancel_run(run_id: UUID, svc: Svc, tenant: Tenant) -> RunOut:
    """Cancel queued and pending steps now; running ones learn it on their next heartbeat/poll."""

    async def work(conn: Conn, effects: Effects) -> Any:
        return await run_db.cancel(conn, tenant, str(run_id), effects)

    return run_out(await svc.tx(work))


@router.post("/runs/{run_id}/replay", response_model=RunOut, status_code=202, responses=ERRORS)
async def replay_run(run_id: UUID, svc: Svc, tenant: Tenant) -> RunOut:
    """Re-queue failed/cancelled steps and their dependants; succeeded steps keep their output."""

    async def work(conn: Conn, effects: Effects) -> Any:
        return await run_db.replay(conn, tenant, str(run_id), effects)

    return run_out(await svc.tx(work))
