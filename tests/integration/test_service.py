"""Health, readiness, metrics, schema drift and the OpenAPI document."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, text
from sqlalchemy.engine import Connection

from api.app import create_app
from api.openapi import render
from api.settings import Settings
from db.engine import migrate
from db.models import metadata
from tests.integration.conftest import Api

ROOT = Path(__file__).resolve().parents[2]


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}


async def test_head_answers_as_get_without_the_body(api: Api) -> None:
    await api.register("hd", [{"name": "s"}])
    for path in ("/healthz", "/readyz", "/api/v1/runs", "/api/v1/workflows/hd"):
        got, head = await api.client.get(path), await api.client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-length"] == str(len(got.content))
    missing = await api.client.head("/api/v1/workflows/nope")
    assert missing.status_code == 404 and missing.content == b""
    assert (await api.client.head("/api/v1/step-runs/results")).status_code == 405


async def test_a_database_behind_the_servers_schema_is_not_ready_never_a_500(api: Api) -> None:
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0012'"))
        await conn.execute(text("ALTER TABLE workflows RENAME TO workflows_gone"))
    ready = await api.client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.json()["code"] == "not_ready"
    listed = await api.client.get("/api/v1/workflows")
    assert listed.status_code == 503 and listed.headers["retry-after"] == "1"
    assert listed.json()["code"] == "not_ready" and "cairn migrate" in listed.json()["detail"]


async def test_a_database_a_newer_release_migrated_stays_ready_and_is_not_migrated(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling upgrade: the new release's migration job runs while old replicas serve. Its
    migrations only add, so an old replica stays ready, and one that restarts (migrating at
    start, as by default) leaves the schema alone instead of failing on a revision it lacks."""
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE runs ADD COLUMN from_a_newer_release int"))
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_later'"))
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    await api.register("later", [{"name": "s"}])
    assert (await api.trigger("later"))["status"] == "queued"
    with caplog.at_level(logging.WARNING, logger="cairn.db"):
        await migrate(api.svc.db.engine)
    assert any("newer than this server" in r.getMessage() for r in caplog.records)
    async with api.svc.db.engine.connect() as conn:
        version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert version == "9999_from_later"


async def test_metrics_exposes_the_documented_series(api: Api) -> None:
    await api.register("m", [{"name": "s"}])
    await api.trigger("m")
    await api.worker(["m.s"])
    text = (await api.client.get("/metrics")).text
    for name in (
        "cairn_step_runs_total",
        "cairn_runs_total",
        "cairn_retries_total",
        "cairn_lease_expirations_total",
        "cairn_duplicate_completions_total",
        "cairn_ignored_cancellations_total",
        "cairn_queue_latency_seconds",
        "cairn_step_duration_seconds",
        "cairn_queue_depth",
        "cairn_workers_active",
        "cairn_http_requests_total",
        "cairn_http_request_duration_seconds",
    ):
        assert name in text, name
    assert 'cairn_queue_depth{action="m.s"} 1.0' in text
    assert "cairn_workers_active 1.0" in text


async def test_migrations_match_the_models(api: Api) -> None:
    def diff(sync_conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, metadata))

    async with api.svc.db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        # Storage parameters are not compared by alembic: the tables' own options must agree.
        for table in metadata.tables.values():
            want = table.dialect_options["postgresql"]["with"] or {}
            got = (
                await conn.execute(
                    text("SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                    {"t": table.name},
                )
            ).scalar_one()
            assert dict(o.split("=", 1) for o in got or []) == {
                k: str(v) for k, v in want.items()
            }, table.name
            # Nor are check constraints: the same ones, by name, on every table.
            checks = (
                await conn.execute(
                    text(
                        "SELECT conname FROM pg_constraint"
                        " WHERE conrelid = CAST(:t AS regclass) AND contype = 'c'"
                    ),
                    {"t": table.name},
                )
            ).scalars()
            prefix = f"ck_{table.name}_"
            names = [str(c.name) for c in table.constraints if isinstance(c, CheckConstraint)]
            assert set(checks) == {n if n.startswith(prefix) else prefix + n for n in names}, (
                table.name
            )


def test_openapi_json_is_up_to_date() -> None:
    committed = (ROOT / "openapi.json").read_text()
    assert json.loads(committed) == json.loads(render()), "run `make openapi`"
    assert json.loads(committed)["openapi"].startswith("3.1")


async def test_a_started_server_tunes_the_gc_unless_told_not_to(
    settings_factory: Callable[..., Settings],
) -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    seen: dict[int, Any] = {}
    try:
        for threshold in (0, 4_321):
            app = create_app(settings_factory(gc_threshold=threshold))
            async with app.router.lifespan_context(app):
                seen[threshold] = (gc.get_threshold(), gc.get_freeze_count() > frozen)
            gc.unfreeze()
            gc.set_threshold(*before)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen == {0: (before, False), 4_321: ((4_321, *before[1:]), True)}


async def test_a_replica_that_migrated_at_start_keeps_no_connection_for_it(
    settings_factory: Callable[..., Settings],
) -> None:
    """Sizing: once started, a replica holds its LISTEN connection and its request pool (opened
    on demand), not the migrations' connection too."""
    app = create_app(settings_factory(run_migrations=True))
    async with app.router.lifespan_context(app):
        migrations_pool = app.state.service.db.engine.pool
        assert migrations_pool.checkedin() + migrations_pool.checkedout() == 0
