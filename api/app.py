"""``create_app(settings)``: the FastAPI application of one stateless Cairn replica."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.auth import Gate
from api.httpproto import DRAIN_STATE_KEY
from api.metrics import HTTPMetricsMiddleware, Metrics
from api.notifier import Notifier
from api.routes import PROBLEM_CONTENT, RETRY_AFTER
from api.routes import router as runs_router
from api.routes_workers import router as workers_router
from api.schemas import Problem
from api.service import Service
from api.settings import Settings
from db import queries_reads as R
from db import reaper
from db.embedded import EmbeddedPostgres
from db.engine import Database, at_head, create_engine, migrate
from db.types import Effects
from worker_sdk.gc_tuning import tune_gc  # the SDK is the base install: one tuning for both

log = logging.getLogger("cairn.api")


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413 before any handler reads them, and
    bodies not all arrived within ``timeout_s`` of the request's head with 408 (0: no deadline):
    a client that announces a body and never sends it would otherwise hold its request, and its
    socket, for ever."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float = 0.0) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s if self.timeout_s else None
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # None: no deadline
                    message = await receive()
            except TimeoutError:
                response = problems.problem(
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {self.timeout_s:g} s",
                    instance=scope.get("path"),
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problems.problem(
            413,
            "payload_too_large",
            f"request body is over the limit of {self.limit} bytes",
            instance=scope.get("path"),
        )
        await response(scope, receive, send)


class HeadAsGetMiddleware:
    """``HEAD`` answered as ``GET`` without the body (RFC 9110: every resource that answers GET
    answers HEAD), which FastAPI's routes do not do by themselves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class TrailingSlashMiddleware:
    """``/api/v1/runs/`` answered as ``/api/v1/runs``. Without it the router would redirect
    (307) to a ``Location`` built from the request's ``Host``, which behind a proxy may name an
    address the client cannot reach, and a client that does not follow redirects gets no answer.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or len(path) < 2 or not path.endswith("/"):
            await self.app(scope, receive, send)
            return
        trimmed = path.rstrip("/") or "/"
        raw = scope.get("raw_path")
        scope = {**scope, "path": trimmed}
        if raw is not None:
            scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)


async def _reaper_loop(svc: Service) -> None:
    s = svc.settings
    while not svc.draining.is_set():
        try:
            effects = Effects()
            changed = await reaper.tick(
                svc.db, grace_s=s.cancel_grace_s, batch=s.reaper_batch, effects=effects
            )
            svc.metrics.record(effects)
            if changed:
                log.info("reaper changed %d step runs", changed)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("reaper tick failed: %s", err)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(svc.draining.wait(), s.reaper_interval_s)


def _lenient_content_type() -> dict[str, Any]:
    """A JSON body sent without a ``Content-Type`` is read as JSON (a declared non-JSON type is
    answered 415 by ``api.problems``). FastAPI before 0.12x has no such option and is lenient."""
    if "strict_content_type" in inspect.signature(FastAPI.__init__).parameters:
        return {"strict_content_type": False}
    return {}


GAUGES_TIMEOUT_S = 2.0  # /metrics reads its gauges from the database for at most this long
READY_TIMEOUT_S = 4.0  # /readyz answers within this (the shipped probes wait 6 s)


def _document_problems(app: FastAPI) -> None:
    """Every error answer refers to the ``Problem`` schema: make it a component."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate().setdefault("components", {}).setdefault("schemas", {})
            problem = Problem.model_json_schema(
                mode="serialization", ref_template="#/components/schemas/{model}"
            )
            schemas.update(problem.pop("$defs", {}))
            schemas["Problem"] = problem
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        embedded = None
        url = settings.database_url
        if url is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            url = await asyncio.to_thread(embedded.start)
        # The SQLAlchemy engine only runs migrations; requests and readiness use the asyncpg pool.
        db = Database(
            create_engine(url, pool_size=1, max_overflow=2),
            pool_size=settings.db_pool_size + settings.db_max_overflow,
        )
        if settings.run_migrations:
            await migrate(db.engine)
            await db.engine.dispose()  # its connection is not kept for the process's life
        notifier = Notifier(url)
        svc = Service(settings, db, notifier, metrics)
        app.state.service = svc
        notifier.start()
        reaper_task = asyncio.create_task(_reaper_loop(svc), name="cairn-reaper")
        if settings.gc_threshold:
            tune_gc(settings.gc_threshold)
        try:
            # Lifespan state: the HTTP protocol reaches it at the start of a graceful shutdown.
            yield {DRAIN_STATE_KEY: svc.drain}
        finally:
            reaper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper_task
            await svc.triggers.close()
            await notifier.stop()
            await db.dispose()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    app = FastAPI(
        title="Cairn",
        version="0.1.0",
        summary="Durable DAG workflows on PostgreSQL, over plain HTTP/JSON.",
        lifespan=lifespan,
        **_lenient_content_type(),
    )
    _document_problems(app)
    app.state.gate = Gate(settings)
    problems.install(app, on_conflict=metrics.conflict)
    app.include_router(runs_router)
    app.include_router(workers_router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={
            503: {
                "description": "Not ready",
                "content": PROBLEM_CONTENT,
                "headers": RETRY_AFTER,
            }
        },
    )
    async def readyz(request: Request) -> Any:
        """The database is reachable and the schema is at the newest migration."""
        svc: Service = request.app.state.service
        try:
            async with asyncio.timeout(READY_TIMEOUT_S), svc.db.connect() as conn:
                ready = await at_head(conn)
        except Exception as err:
            detail = f"database unreachable: {str(err) or type(err).__name__}"[:300]
        else:
            if ready:
                return JSONResponse({"status": "ready"})
            detail = "migrations are not at head"
        return problems.problem(
            503, "not_ready", detail, instance="/readyz", headers={"Retry-After": "1"}
        )

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}}}},
    )
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus text format; queue depth and active workers are read from the database."""
        svc: Service = request.app.state.service
        try:
            # Bounded well inside a scrape's timeout: a database that hangs must not cost the
            # scrape, and with it this process's counters, while they matter most.
            async with asyncio.timeout(GAUGES_TIMEOUT_S), svc.db.connect() as conn:
                depth = {r.action: int(r.n) for r in await conn.execute(R.QUEUE_DEPTH)}
                workers = (
                    await conn.execute(
                        R.ACTIVE_WORKERS,
                        {"window": svc.settings.worker_active_window_s, "now": None},
                    )
                ).scalar_one()
            svc.metrics.set_gauges(depth, int(workers))
        except Exception as err:
            svc.metrics.gauges_unknown()
            log.warning("metrics gauges not refreshed: %s", str(err) or type(err).__name__)
        return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")

    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(TrailingSlashMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        timeout_s=settings.request_body_timeout_s,
    )
    routes = [*runs_router.routes, *workers_router.routes]
    routes += [r for r in app.router.routes if isinstance(r, APIRoute)]
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics, routes=routes)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``cairn serve --workers N``: every process reads the same environment."""
    die_with_parent()
    return create_app(Settings())


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SUPERVISOR_PID_ENV = "CAIRN_SUPERVISOR_PID"  # set by `cairn serve --workers N` for its children


def die_with_parent() -> None:
    """Have the kernel send this process SIGTERM when the process that started it dies.

    A ``cairn serve --workers N`` supervisor killed with SIGKILL cannot stop its server
    processes; without this they would go on serving on the shared port, unsupervised and
    outliving the embedded Postgres' owner. With it each stops as on any SIGTERM (requests in
    flight finish within the graceful-shutdown timeout). Linux only; elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = int(os.environ.get(SUPERVISOR_PID_ENV) or os.getppid())
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return
    if os.getppid() != parent:  # the supervisor died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
