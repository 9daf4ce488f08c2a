"""Which tenant a request acts for: the ``tenant_id`` dependency of every ``/api/v1`` route.

With auth off (the loopback default) every request is the default tenant. With auth on, the
bearer token decides the tenant and must carry a role that allows the route (see
:mod:`api.auth`); otherwise 401 / 403 / 429. Routes only ever see their own tenant's rows, so
another tenant's ids answer 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Gate

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token (`cairn token create`); required when the server runs with auth.",
)


async def tenant_id(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    gate: Gate = request.app.state.gate
    return await gate.admit(request, credentials.credentials if credentials else None)
