"""Tenants and API tokens: creation, listing, revocation and verification.

A token is ``cairn_<prefix>_<secret>``: ``prefix`` (8 hex characters) is public and names the
token in listings and on revocation; only the sha256 of the whole token is stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text

from db.models import TOKEN_ROLES
from db.pg import Conn

TOKEN_PREFIX = "cairn_"
TOKEN_RE = re.compile(r"^cairn_([0-9a-f]{8})_([0-9a-f]{48})$")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class TokenAdminError(Exception):
    """A tenant or token command that cannot be done (unknown tenant, duplicate name, ...)."""


@dataclass(frozen=True)
class Principal:
    """Who a verified token acts as."""

    token_id: str
    tenant_id: str
    role: str
    prefix: str


@dataclass(frozen=True)
class TokenInfo:
    prefix: str
    tenant_id: str
    tenant_name: str
    role: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def well_formed(token: str) -> bool:
    return TOKEN_RE.match(token) is not None


def generate() -> tuple[str, str]:
    """A fresh ``(token, prefix)``: 32 bits of public prefix, 192 bits of secret."""
    prefix = secrets.token_hex(4)
    return f"{TOKEN_PREFIX}{prefix}_{secrets.token_hex(24)}", prefix


def prefix_of(value: str) -> str:
    """Accept ``abcd1234``, ``cairn_abcd1234`` or a whole token; return the bare prefix."""
    value = value.strip()
    if value.startswith(TOKEN_PREFIX):
        value = value[len(TOKEN_PREFIX) :]
    return value.split("_", 1)[0].lower()


async def create_tenant(conn: Conn, name: str) -> str:
    name = name.strip()
    if not name:
        raise TokenAdminError("a tenant needs a name")
    tid = str(uuid.uuid4())
    row = (
        await conn.execute(
            text(
                "INSERT INTO tenants (id, name) VALUES (:id, :name)"
                " ON CONFLICT (name) DO NOTHING RETURNING id"
            ),
            {"id": tid, "name": name},
        )
    ).first()
    if row is None:
        raise TokenAdminError(f"tenant {name!r} already exists")
    return str(row.id)


async def list_tenants(conn: Conn) -> list[Any]:
    rows = await conn.execute(text("SELECT id, name, created_at FROM tenants ORDER BY created_at"))
    return list(rows)


async def resolve_tenant(conn: Conn, name_or_id: str) -> tuple[str, str]:
    """``(id, name)`` of a tenant given by name or by id."""
    params = {"name": name_or_id, "id": name_or_id if UUID_RE.match(name_or_id) else None}
    sql = (
        "SELECT id, name FROM tenants WHERE name = :name OR id = CAST(:id AS uuid)"
        " ORDER BY name = :name DESC LIMIT 1"
    )
    row = (await conn.execute(text(sql), params)).first()
    if row is None:
        raise TokenAdminError(f"no tenant {name_or_id!r}")
    return str(row.id), str(row.name)


async def create_token(conn: Conn, tenant: str, role: str, name: str = "") -> tuple[str, str]:
    """Create a token for tenant ``tenant`` (name or id); return ``(token, prefix)``."""
    if role not in TOKEN_ROLES:
        raise TokenAdminError(f"role must be one of {', '.join(TOKEN_ROLES)}")
    tenant_id, _ = await resolve_tenant(conn, tenant)
    for _ in range(5):
        token, prefix = generate()
        try:
            async with conn.begin_nested():
                await conn.execute(
                    text(
                        "INSERT INTO api_tokens (id, tenant_id, name, role, prefix, token_hash)"
                        " VALUES (:id, :tenant, :name, :role, :prefix, :hash)"
                    ),
                    {
                        "id": str(uuid.uuid4()),
                        "tenant": tenant_id,
                        "name": name,
                        "role": role,
                        "prefix": prefix,
                        "hash": hash_token(token),
                    },
                )
        except asyncpg.UniqueViolationError:  # a prefix collision (1 in 4 billion): draw again
            continue
        return token, prefix
    raise TokenAdminError("could not draw a unique token prefix")


async def list_tokens(conn: Conn, tenant: str | None = None) -> list[TokenInfo]:
    params: dict[str, Any] = {}
    where = ""
    if tenant is not None:
        params["tenant"], _ = await resolve_tenant(conn, tenant)
        where = "WHERE t.tenant_id = :tenant"
    rows = await conn.execute(
        text(
            "SELECT t.prefix, t.tenant_id, n.name AS tenant_name, t.role, t.name, t.created_at,"
            " t.last_used_at, t.revoked_at FROM api_tokens t JOIN tenants n ON n.id = t.tenant_id"
            f" {where} ORDER BY t.created_at, t.prefix"
        ),
        params,
    )
    return [
        TokenInfo(
            prefix=r.prefix,
            tenant_id=str(r.tenant_id),
            tenant_name=r.tenant_name,
            role=r.role,
            name=r.name,
            created_at=r.created_at,
            last_used_at=r.last_used_at,
            revoked_at=r.revoked_at,
        )
        for r in rows
    ]


async def revoke(conn: Conn, prefix: str) -> bool:
    """Revoke the token with this prefix; False if there is none. Revoking twice is a no-op."""
    row = (
        await conn.execute(
            text(
                "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())"
                " WHERE prefix = :prefix RETURNING id"
            ),
            {"prefix": prefix_of(prefix)},
        )
    ).first()
    return row is not None


VERIFY = text(
    "SELECT id, tenant_id, role, prefix,"
    " (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => :touch)) AS stale"
    " FROM api_tokens"
    " WHERE token_hash = :hash AND revoked_at IS NULL"
)
# Best effort: a row another request is touching right now is skipped, never waited for.
TOUCH = text(
    "UPDATE api_tokens SET last_used_at = now()"
    " WHERE id = (SELECT id FROM api_tokens WHERE id = :id FOR UPDATE SKIP LOCKED)"
)


async def verify(conn: Conn, token: str, *, touch_after_s: float) -> Principal | None:
    """The principal of a live token, or None. Updates ``last_used_at`` when older than
    ``touch_after_s`` (the caller caches answers for that long, so it is written rarely)."""
    if not well_formed(token):
        return None
    row = (await conn.execute(VERIFY, {"hash": hash_token(token), "touch": touch_after_s})).first()
    if row is None:
        return None
    if row.stale:
        await conn.execute(TOUCH, {"id": row.id})
    return Principal(
        token_id=str(row.id), tenant_id=str(row.tenant_id), role=row.role, prefix=row.prefix
    )
