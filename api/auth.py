"""Bearer-token authentication, role checks and request limits for ``/api/v1``.

Everything happens in :class:`Gate.admit`, called by the ``tenant_id`` dependency that every
``/api/v1`` route already has (:mod:`api.tenancy`): it verifies the token, applies the token's
rate limit, checks the token's role against the route, and answers the token's tenant.

Roles (``admin`` ⊇ ``worker`` ⊇ ``viewer``):

- ``viewer``: reads only (``GET``).
- ``worker``: reads, plus what a worker process does: register/deregister, poll, heartbeat,
  complete/fail/results, and ``PUT /workflows/{name}`` (SDK workers register their workflow
  definitions at start-up).
- ``admin``: everything in its tenant (trigger, cancel, replay, ...).

A route not listed below needs ``admin``, so a new endpoint is closed until it is classified.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from fastapi import HTTPException, Request

from api.ratelimit import RateLimiter
from api.settings import Settings
from db import tokens
from db.engine import Database
from db.models import DEFAULT_TENANT_ID
from db.pg import Conn
from db.tokens import Principal

ROLE_RANK = {"viewer": 0, "worker": 1, "admin": 2}
READ_METHODS = frozenset({"GET", "HEAD"})
WORKER_ROUTES = frozenset(
    {
        ("PUT", "/api/v1/workflows/{name}"),
        ("POST", "/api/v1/workers"),
        ("POST", "/api/v1/workers/{worker_id}/poll"),
        ("POST", "/api/v1/workers/{worker_id}/heartbeat"),
        ("DELETE", "/api/v1/workers/{worker_id}"),
        ("POST", "/api/v1/step-runs/{step_run_id}/complete"),
        ("POST", "/api/v1/step-runs/{step_run_id}/fail"),
        ("POST", "/api/v1/step-runs/results"),
    }
)
CHALLENGE = {"WWW-Authenticate": "Bearer"}
CACHE_MAX = 10_000


def required_role(method: str, template: str) -> str:
    """The least role allowed to call ``method template`` (a route path template)."""
    if method.upper() in READ_METHODS:
        return "viewer"
    if (method.upper(), template) in WORKER_ROUTES:
        return "worker"
    return "admin"


def permits(role: str, required: str) -> bool:
    return ROLE_RANK.get(role, -1) >= ROLE_RANK[required]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers=CHALLENGE)


class Gate:
    """Per-app authenticator: a short-lived cache of verified tokens and the rate limiter."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth
        self.cache_s = max(settings.auth_cache_s, 0.0)
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self._cache: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()

    async def admit(self, request: Request, token: str | None) -> str:
        """The tenant this request acts for, or raise 401 / 403 / 429."""
        if not self.enabled:
            return DEFAULT_TENANT_ID
        if not token:
            raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
        principal = await self.principal(request.app.state.service.db, token)
        if principal is None:
            raise _unauthorized("invalid or revoked token")
        wait = self.limiter.acquire(principal.token_id)
        if wait is not None:
            raise HTTPException(
                429,
                f"rate limit of {self.limiter.rate:g} requests/s for this token exceeded",
                headers={"Retry-After": RateLimiter.retry_after_header(wait)},
            )
        route = request.scope.get("route")
        template = str(getattr(route, "path", request.url.path))
        need = required_role(request.method, template)
        if not permits(principal.role, need):
            raise HTTPException(
                403, f"role {principal.role!r} may not {request.method} {template}: needs {need!r}"
            )
        request.state.principal = principal
        return principal.tenant_id

    async def principal(self, db: Database, token: str) -> Principal | None:
        """Verify ``token``; answers (also negative ones) are cached for ``auth_cache_s``."""
        key = tokens.hash_token(token)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        if not tokens.well_formed(token):
            return None
        touch_after = max(self.cache_s, 1.0)

        async def look_up(conn: Conn) -> Principal | None:
            return await tokens.verify(conn, token, touch_after_s=touch_after)

        found = await db.transaction(look_up)
        if self.cache_s > 0:
            self._cache[key] = (now + self.cache_s, found)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_MAX:
                self._cache.popitem(last=False)
        return found
