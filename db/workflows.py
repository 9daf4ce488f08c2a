"""Workflow registration and lookup."""

from __future__ import annotations

import json
from typing import Any

from db import queries_reads as R
from db.definitions import normalize
from db.errors import NotFound
from db.payloads import canonical_hash
from db.pg import Conn
from db.types import Workflow


def _workflow(row: Any, versions: tuple[int, ...] = ()) -> Workflow:
    return Workflow(
        name=row.name,
        version=row.version,
        definition=row.definition,
        created_at=row.created_at,
        versions=versions,
    )


async def register(
    conn: Conn, tenant: str, name: str, raw: Any, *, max_steps: int
) -> tuple[Workflow, bool]:
    """Register a definition. Returns (workflow, created); identical to the latest → not created."""
    definition = normalize(name, raw, max_steps=max_steps)
    digest = canonical_hash(definition)
    await conn.execute(R.LOCK_WORKFLOW_NAME, {"tenant": tenant, "name": name})
    latest = (await conn.execute(R.LATEST_WORKFLOW, {"tenant": tenant, "name": name})).first()
    if latest is not None and latest.definition_hash == digest:
        return _workflow(latest), False
    version = 1 if latest is None else latest.version + 1
    row = (
        await conn.execute(
            R.INSERT_WORKFLOW,
            {
                "tenant": tenant,
                "name": name,
                "version": version,
                "definition": json.dumps(definition),
                "hash": digest,
                "now": None,
            },
        )
    ).one()
    return _workflow(row), True


async def get(
    conn: Conn,
    tenant: str,
    name: str,
    version: int | None = None,
    *,
    with_versions: bool = True,
) -> tuple[Workflow, int]:
    """The latest (or given) version and its row id."""
    if version is None:
        row = (await conn.execute(R.LATEST_WORKFLOW, {"tenant": tenant, "name": name})).first()
    else:
        row = (
            await conn.execute(
                R.WORKFLOW_VERSION, {"tenant": tenant, "name": name, "version": version}
            )
        ).first()
    if row is None:
        raise not_registered(name, version)
    versions: tuple[int, ...] = ()
    if with_versions:
        rows = await conn.execute(R.WORKFLOW_VERSIONS, {"tenant": tenant, "name": name})
        versions = tuple(v for (v,) in rows)
    return _workflow(row, versions), int(row.id)


def not_registered(name: str, version: int | None) -> NotFound:
    """The 404 of a workflow (or one version of it) that is not registered."""
    what = f"workflow {name!r}" + ("" if version is None else f" version {version}")
    return NotFound(f"{what} is not registered")


async def list_latest(conn: Conn, tenant: str) -> list[Workflow]:
    rows = await conn.execute(R.LIST_WORKFLOWS, {"tenant": tenant})
    return [_workflow(r) for r in rows]
