"""In-process API fixtures: the real app and a real database, over an ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.service import Service
from api.settings import Settings
from db import reaper
from db.types import Effects


class Api:
    """A client for one in-process app, plus handles to its service for clock-driven tests."""

    def __init__(self, client: httpx.AsyncClient, app: FastAPI) -> None:
        self.client = client
        self.app = app

    @property
    def svc(self) -> Service:
        svc: Service = self.app.state.service
        return svc

    async def call(self, method: str, path: str, expect: int | None = None, **kw: Any) -> Any:
        r = await self.client.request(method, "/api/v1" + path, **kw)
        if expect is not None:
            assert r.status_code == expect, (r.status_code, r.text)
        return r

    async def json(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        return (await self.call(method, path, expect, **kw)).json()

    async def register(self, name: str, steps: list[dict[str, Any]], **extra: Any) -> Any:
        r = await self.call("PUT", f"/workflows/{name}", json={"steps": steps, **extra})
        assert r.status_code in (200, 201), r.text
        return r.json()

    async def trigger(self, name: str, input: Any = None, **kw: Any) -> Any:
        body = {"input": input if input is not None else {}, **kw}
        return await self.json("POST", f"/workflows/{name}/runs", 201, json=body)

    async def worker(self, actions: list[str], slots: int = 10, **kw: Any) -> str:
        body = {"name": "t", "actions": actions, "slots": slots, **kw}
        return str((await self.json("POST", "/workers", 201, json=body))["id"])

    async def poll(self, worker: str, max_tasks: int = 10, wait_s: float = 0) -> list[Any]:
        body = {"max_tasks": max_tasks, "wait_s": wait_s}
        tasks: list[Any] = (await self.json("POST", f"/workers/{worker}/poll", json=body))["tasks"]
        return tasks

    async def complete(self, task: dict[str, Any], output: Any, expect: int = 200) -> Any:
        body = {"lease_token": task["lease_token"], "output": output}
        return await self.call(
            "POST", f"/step-runs/{task['step_run_id']}/complete", expect, json=body
        )

    async def fail(self, task: dict[str, Any], expect: int = 200, **kw: Any) -> Any:
        body = {"lease_token": task["lease_token"], "error": {"type": "E", "message": "m"}, **kw}
        return await self.call("POST", f"/step-runs/{task['step_run_id']}/fail", expect, json=body)

    async def run(self, run_id: str) -> Any:
        return await self.json("GET", f"/runs/{run_id}")

    async def reap(self, *, ahead_s: float = 0.0) -> int:
        """One reaper pass after ``ahead_s`` seconds have passed for every deadline.

        Time travel is done by moving the stored deadlines back (the claim, heartbeat and
        complete statements then see the same shifted world as the reaper).
        """
        if ahead_s:
            await self.age(ahead_s)
        effects = Effects()
        n = await reaper.tick(
            self.svc.db, grace_s=self.svc.settings.cancel_grace_s, batch=500, effects=effects
        )
        self.svc.metrics.record(effects)
        return n

    async def age(self, seconds: float) -> None:
        from sqlalchemy import text

        cols = [
            "lease_expires_at",
            "timeout_at",
            "schedule_deadline",
            "available_at",
            "cancel_requested_at",
            "finished_at",
            "started_at",
            "queued_at",
        ]
        sets = ", ".join(f"{c} = {c} - make_interval(secs => :s)" for c in cols)
        async with self.svc.db.engine.begin() as conn:
            await conn.execute(text(f"UPDATE step_runs SET {sets}"), {"s": seconds})
        # The claim floors the app learnt are times too: moving the data back moves them.
        self.svc.claim_floors.clear()

    async def db_now(self) -> datetime:
        from sqlalchemy import text

        async with self.svc.db.connect() as conn:
            value: datetime = (await conn.execute(text("SELECT now()"))).scalar_one()
        return value

    async def metric(self, name: str, **labels: str) -> float:
        value = self.svc.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
def settings_factory(db_url: str) -> Callable[..., Settings]:
    def make(**kw: Any) -> Settings:
        # The background reaper is parked: tests drive it with an injected clock.
        base: dict[str, Any] = {
            "database_url": db_url,
            "reaper_interval_s": 3600.0,
            "run_migrations": False,
            "poll_recheck_s": 0.2,
            "gc_threshold": 0,  # the test process's GC is left alone (tested on its own)
        }
        return Settings(**{**base, **kw})

    return make


@pytest.fixture
async def api(settings_factory: Callable[..., Settings]) -> AsyncIterator[Api]:
    app = create_app(settings_factory())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cairn") as client:
            yield Api(client, app)


AsyncFn = Callable[..., Awaitable[Any]]


@pytest.fixture
async def slow_recheck_api(settings_factory: Callable[..., Settings]) -> AsyncIterator[Api]:
    """An API whose long-polls re-check only hourly: only a NOTIFY can wake them in time."""
    app = create_app(settings_factory(poll_recheck_s=3600.0))
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.service.notifier.connected.wait(), 10)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cairn") as client:
            yield Api(client, app)
