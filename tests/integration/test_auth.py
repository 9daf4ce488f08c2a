"""Tokens, roles and tenant isolation, in-process against a real database with auth on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from api.app import create_app
from api.auth import WORKER_ROUTES, permits, required_role
from api.cli import is_loopback
from api.settings import Settings
from db import tokens

STEPS = [{"name": "s"}]


class Tenant:
    """One tenant with an admin, a worker and a viewer client."""

    def __init__(self, app: FastAPI, name: str) -> None:
        self.app = app
        self.name = name
        self.id = ""
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.tokens: dict[str, str] = {}

    def __getattr__(self, role: str) -> httpx.AsyncClient:
        if role in ("admin", "worker", "viewer"):
            return self.clients[role]
        raise AttributeError(role)


class World:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.transport = httpx.ASGITransport(app=app)
        self.anon = httpx.AsyncClient(transport=self.transport, base_url="http://cairn/api/v1")

    async def sql(self, fn: Callable[..., Any]) -> Any:
        return await self.app.state.service.db.transaction(fn)

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=self.transport,
            base_url="http://cairn/api/v1",
            headers={"Authorization": f"Bearer {token}"},
        )

    async def token(self, tenant: str, role: str) -> str:
        token, _ = await self.sql(lambda c: tokens.create_token(c, tenant, role, f"{role}-t"))
        return str(token)

    async def tenant(self, name: str) -> Tenant:
        t = Tenant(self.app, name)
        t.id = await self.sql(lambda c: tokens.create_tenant(c, name))
        for role in ("admin", "worker", "viewer"):
            t.tokens[role] = await self.token(name, role)
            t.clients[role] = self.client(t.tokens[role])
        return t


@pytest.fixture
async def world(settings_factory: Callable[..., Settings]) -> AsyncIterator[World]:
    app = create_app(settings_factory(auth=True, auth_cache_s=0))
    async with app.router.lifespan_context(app):
        yield World(app)


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json() if r.content else None


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["code"] == code and body["status"] == status
    return body


def unauthorized(r: httpx.Response) -> None:
    problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"


async def test_missing_malformed_unknown_and_revoked_tokens_are_401(world: World) -> None:
    a = await world.tenant("a")
    ok(await a.viewer.get("/runs"))
    unauthorized(await world.anon.get("/runs"))
    for header in (
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token " + a.tokens["admin"],
        "Bearer not-a-token",
        "Bearer cairn_0000000_abc",
        "Bearer " + a.tokens["admin"] + "x",
        "Bearer cairn_00000000_" + "0" * 48,  # well formed, never issued
    ):
        unauthorized(await world.anon.get("/runs", headers={"Authorization": header}))
    unauthorized(await world.anon.post("/workflows/w/runs", json={"input": {}}))

    prefix = a.tokens["admin"].split("_")[1]
    assert await world.sql(lambda c: tokens.revoke(c, prefix))
    unauthorized(await a.admin.get("/runs"))
    ok(await a.viewer.get("/runs"))  # the other tokens live on


async def test_the_token_is_checked_before_a_malformed_body(world: World) -> None:
    """FastAPI parses a JSON body before it runs dependencies: without care a stranger would be
    told 400 about the body instead of 401, and a viewer 400 instead of 403."""
    a = await world.tenant("a")
    json_type = {"Content-Type": "application/json"}

    async def post_bad(client: httpx.AsyncClient, path: str, **headers: str) -> httpx.Response:
        return await client.post(path, content=b"{", headers={**json_type, **headers})

    unauthorized(await post_bad(world.anon, "/workflows/w/runs"))
    unauthorized(await post_bad(world.anon, "/workers", Authorization="Bearer nope"))
    problem(await post_bad(a.viewer, "/workflows/w/runs"), 403, "forbidden")
    problem(await post_bad(a.admin, "/workflows/w/runs"), 400, "malformed_json")


async def test_open_endpoints_need_no_token(world: World) -> None:
    client = httpx.AsyncClient(transport=world.transport, base_url="http://cairn")
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path


async def test_roles_are_enforced(world: World) -> None:
    a = await world.tenant("a")
    # viewer: reads only
    problem(await a.viewer.put("/workflows/w", json={"steps": STEPS}), 403, "forbidden")
    # worker: registers its definitions and does worker things, but cannot trigger or cancel
    ok(await a.worker.put("/workflows/w", json={"steps": STEPS}), 201)
    problem(await a.worker.post("/workflows/w/runs", json={"input": {}}), 403, "forbidden")
    problem(await a.viewer.post("/workflows/w/runs", json={"input": {}}), 403, "forbidden")
    run = ok(await a.admin.post("/workflows/w/runs", json={"input": {"x": 1}}), 201)
    ok(await a.viewer.get(f"/runs/{run['id']}"))
    ok(await a.worker.get(f"/runs/{run['id']}"))

    problem(
        await a.viewer.post("/workers", json={"name": "w", "actions": ["w.s"]}), 403, "forbidden"
    )
    wid = ok(await a.worker.post("/workers", json={"name": "w", "actions": ["w.s"]}), 201)["id"]
    problem(await a.viewer.post(f"/workers/{wid}/poll", json={"max_tasks": 1}), 403, "forbidden")
    tasks = ok(await a.worker.post(f"/workers/{wid}/poll", json={"max_tasks": 1}))["tasks"]
    assert len(tasks) == 1
    sid = tasks[0]["step_run_id"]
    beat = {"step_run_ids": [sid]}
    ok(await a.worker.post(f"/workers/{wid}/heartbeat", json=beat))
    problem(await a.worker.post(f"/runs/{run['id']}/cancel"), 403, "forbidden")
    problem(await a.viewer.post(f"/runs/{run['id']}/cancel"), 403, "forbidden")
    body = {"lease_token": tasks[0]["lease_token"], "output": 1}
    problem(await a.viewer.post(f"/step-runs/{sid}/complete", json=body), 403, "forbidden")
    ok(await a.worker.post(f"/step-runs/{sid}/complete", json=body))
    problem(await a.viewer.delete(f"/workers/{wid}"), 403, "forbidden")
    ok(await a.worker.delete(f"/workers/{wid}"), 204)
    assert ok(await a.viewer.get(f"/runs/{run['id']}"))["status"] == "succeeded"

    # admin: everything
    run2 = ok(await a.admin.post("/workflows/w/runs", json={"input": {}}), 201)
    assert ok(await a.admin.post(f"/runs/{run2['id']}/cancel"), 202)["status"] == "cancelled"
    ok(await a.admin.post(f"/runs/{run2['id']}/replay"), 202)
    wid2 = ok(await a.admin.post("/workers", json={"name": "a", "actions": ["w.s"]}), 201)["id"]
    assert len(ok(await a.admin.post(f"/workers/{wid2}/poll", json={"max_tasks": 5}))["tasks"])


async def test_tenants_are_isolated(world: World) -> None:
    a, b = await world.tenant("a"), await world.tenant("b")
    ok(await a.worker.put("/workflows/w", json={"steps": STEPS}), 201)
    run = ok(await a.admin.post("/workflows/w/runs", json={"input": {"secret": 1}}), 201)
    rid = run["id"]

    # B sees nothing of A: not the run, not the workflow, not in lists.
    problem(await b.admin.get(f"/runs/{rid}"), 404, "not_found")
    problem(await b.admin.get("/workflows/w"), 404, "not_found")
    assert ok(await b.admin.get("/workflows"))["workflows"] == []
    assert ok(await b.admin.get("/runs"))["runs"] == []
    problem(await b.admin.post(f"/runs/{rid}/cancel"), 404, "not_found")
    problem(await b.admin.post("/workflows/w/runs", json={"input": {}}), 404, "not_found")

    # B's worker subscribed to the same action never gets A's work.
    bw = ok(await b.worker.post("/workers", json={"name": "b", "actions": ["w.s"]}), 201)["id"]
    assert ok(await b.worker.post(f"/workers/{bw}/poll", json={"max_tasks": 10}))["tasks"] == []

    aw = ok(await a.worker.post("/workers", json={"name": "a", "actions": ["w.s"]}), 201)["id"]
    # B cannot use A's worker id for anything.
    problem(await b.worker.post(f"/workers/{aw}/poll", json={"max_tasks": 10}), 404, "not_found")
    problem(
        await b.worker.post(f"/workers/{aw}/heartbeat", json={"step_run_ids": []}), 404, "not_found"
    )
    problem(await b.worker.delete(f"/workers/{aw}"), 404, "not_found")

    [task] = ok(await a.worker.post(f"/workers/{aw}/poll", json={"max_tasks": 10}))["tasks"]
    sid, lease = task["step_run_id"], task["lease_token"]
    # B cannot complete, fail or heartbeat A's step, even holding its lease token.
    done = {"lease_token": lease, "output": "stolen"}
    problem(await b.worker.post(f"/step-runs/{sid}/complete", json=done), 404, "not_found")
    fail = {"lease_token": lease, "error": {"type": "E", "message": "m"}, "retryable": False}
    problem(await b.worker.post(f"/step-runs/{sid}/fail", json=fail), 404, "not_found")
    batch = ok(
        await b.worker.post(
            "/step-runs/results",
            json={"results": [{"step_run_id": sid, "lease_token": lease, "output": 1}]},
        )
    )
    assert batch["results"][0]["status"] != "succeeded"
    beat = ok(await b.worker.post(f"/workers/{bw}/heartbeat", json={"step_run_ids": [sid]}))
    assert beat["step_runs"][sid] != "held"

    # A's run is untouched and A finishes it.
    ok(await a.worker.post(f"/step-runs/{sid}/complete", json={"lease_token": lease, "output": 7}))
    finished = ok(await a.viewer.get(f"/runs/{rid}"))
    assert finished["status"] == "succeeded"
    assert finished["steps"][0]["output"] == 7

    # Replay and cancel of A's finished run from B: still 404, never 409.
    problem(await b.admin.post(f"/runs/{rid}/replay"), 404, "not_found")
    problem(await b.admin.post(f"/runs/{rid}/cancel"), 404, "not_found")
    # Same workflow name in B is B's own, version 1, and does not disturb A.
    assert ok(await b.worker.put("/workflows/w", json={"steps": STEPS * 1}), 201)["version"] == 1
    assert ok(await a.viewer.get("/workflows/w"))["version"] == 1


async def test_rate_limit_per_token(settings_factory: Callable[..., Settings]) -> None:
    app = create_app(
        settings_factory(auth=True, rate_limit_per_s=0.5, rate_limit_burst=2, auth_cache_s=5)
    )
    async with app.router.lifespan_context(app):
        world = World(app)
        a = await world.tenant("a")
        ok(await a.viewer.get("/runs"))
        ok(await a.viewer.get("/runs"))
        r = await a.viewer.get("/runs")
        problem(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        ok(await a.admin.get("/runs"))  # other tokens have their own bucket
        # last_used_at is written once per cache period, not per request
        used = await world.sql(
            lambda c: c.execute(
                text("SELECT count(*) FROM api_tokens WHERE last_used_at IS NOT NULL")
            )
        )
        assert used.scalar_one() == 2


async def test_auth_off_is_the_default_tenant_and_unlimited(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(rate_limit_per_s=0.5, rate_limit_burst=1))
    async with app.router.lifespan_context(app):
        client = World(app).anon
        for _ in range(5):
            ok(await client.get("/runs"))
        ok(await client.get("/runs", headers={"Authorization": "Bearer junk"}))


def test_every_api_route_goes_through_the_tenant_dependency() -> None:
    # The bearer scheme is declared only by the tenant_id dependency: an /api/v1 operation
    # without it in the OpenAPI document would be open to anyone.
    doc = create_app(Settings(database_url="postgresql://unused/x")).openapi()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    seen: set[tuple[str, str]] = set()
    for path, operations in doc["paths"].items():
        if not path.startswith("/api/v1"):
            assert "security" not in str(operations), path
            continue
        for method, op in operations.items():
            assert op.get("security") == [{"bearer": []}], (method, path)
            seen.add((method.upper(), path))
            if method == "get":
                assert required_role("GET", path) == "viewer"
    assert seen >= WORKER_ROUTES, WORKER_ROUTES - seen


def test_role_matrix() -> None:
    assert required_role("GET", "/api/v1/runs/{run_id}") == "viewer"
    assert required_role("PUT", "/api/v1/workflows/{name}") == "worker"
    assert required_role("POST", "/api/v1/step-runs/results") == "worker"
    assert required_role("POST", "/api/v1/workflows/{name}/runs") == "admin"
    assert required_role("POST", "/api/v1/runs/{run_id}/cancel") == "admin"
    assert required_role("POST", "/api/v1/some/new/endpoint") == "admin"  # closed by default
    assert permits("admin", "worker") and permits("worker", "viewer")
    assert not permits("viewer", "worker") and not permits("worker", "admin")
    assert not permits("root", "viewer")


def test_loopback_detection() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host


async def test_revocation_takes_effect_within_the_cache_period(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory(auth=True, auth_cache_s=0.5))
    async with app.router.lifespan_context(app):
        world = World(app)
        a = await world.tenant("a")
        ok(await a.viewer.get("/runs"))
        prefix = a.tokens["viewer"].split("_")[1]
        assert await world.sql(lambda c: tokens.revoke(c, prefix))
        ok(await a.viewer.get("/runs"))  # still cached
        await asyncio.sleep(0.6)
        unauthorized(await a.viewer.get("/runs"))
