"""Which tenant a request acts for. Until tokens arrive, every request is the default tenant."""

from __future__ import annotations

from db.models import DEFAULT_TENANT_ID


async def tenant_id() -> str:
    return DEFAULT_TENANT_ID
