"""Attempt history: the attempt in progress is its step run's lease; its row is written once,
when it ends (migration 0006)."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from db.check import run_checks
from db.engine import alembic_config
from tests.integration.conftest import Api


async def attempt_rows(api: Api, step_run_id: str) -> list[tuple[Any, ...]]:
    async with api.svc.db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT attempt, outcome, lease_token::text, worker_id::text, ended_at IS NOT NULL"
                " FROM step_attempts WHERE step_run_id = :s ORDER BY attempt"
            ),
            {"s": step_run_id},
        )
        return [tuple(r) for r in rows]


async def test_an_attempt_row_is_written_when_the_attempt_ends(api: Api) -> None:
    await api.register("att", [{"name": "s", "retries": 1}])
    run = await api.trigger("att")
    w = await api.worker(["att.s"])
    [t1] = await api.poll(w)
    assert await attempt_rows(api, t1["step_run_id"]) == []  # the claim wrote none
    [listed] = (await api.run(run["id"]))["steps"][0]["attempts"]
    assert listed["outcome"] == "running" and listed["ended_at"] is None
    assert (listed["attempt"], listed["lease_token"], listed["worker_id"]) == (
        1,
        t1["lease_token"],
        w,
    )
    await api.fail(t1)
    assert await attempt_rows(api, t1["step_run_id"]) == [(1, "failed", t1["lease_token"], w, True)]
    await api.age(60)  # past the retry's backoff
    [t2] = await api.poll(w)
    attempts = (await api.run(run["id"]))["steps"][0]["attempts"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "failed"), (2, "running")]
    await api.complete(t2, "ok")
    assert await attempt_rows(api, t1["step_run_id"]) == [
        (1, "failed", t1["lease_token"], w, True),
        (2, "succeeded", t2["lease_token"], w, True),
    ]
    async with api.svc.db.connect() as conn:
        assert await run_checks(conn) == []


async def test_an_ended_row_for_the_attempt_in_progress_is_reported(api: Api) -> None:
    await api.register("attx", [{"name": "s"}])
    await api.trigger("attx")
    w = await api.worker(["attx.s"])
    [t] = await api.poll(w)
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO step_attempts (tenant_id, step_run_id, attempt, worker_id,"
                " lease_token, started_at, ended_at, outcome)"
                " SELECT tenant_id, id, attempt, worker_id, lease_token, started_at, now(),"
                " 'succeeded' FROM step_runs WHERE id = :s"
            ),
            {"s": t["step_run_id"]},
        )
    async with api.svc.db.connect() as conn:
        found = {v.check for v in await run_checks(conn)}
    assert {"running_attempt_already_ended", "attempt_gaps"} <= found


def _migrate(sync_conn: Connection, target: str, down: bool) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    (command.downgrade if down else command.upgrade)(cfg, target)


async def test_migration_0006_keeps_the_attempts_in_progress_both_ways(api: Api) -> None:
    await api.register("attm", [{"name": "s"}])
    for _ in range(2):
        await api.trigger("attm")
    w = await api.worker(["attm.s"])
    held = await api.poll(w, max_tasks=2)
    engine = api.svc.db.engine
    async with engine.begin() as conn:
        await conn.run_sync(_migrate, "0003", True)  # every later downgrade runs too
    count = "SELECT outcome, count(*) FROM step_attempts GROUP BY outcome"
    async with engine.begin() as conn:
        # Before 0006 an attempt in progress had a 'running' row: the downgrade wrote them back.
        assert dict((await conn.execute(text(count))).all()) == {"running": 2}
        # One of them as a step run that has moved on would leave: it is closed as expired.
        await conn.execute(
            text(
                "UPDATE step_runs SET status = 'queued', lease_token = NULL,"
                " lease_expires_at = NULL, timeout_at = NULL WHERE id = :s"
            ),
            {"s": held[1]["step_run_id"]},
        )
    async with engine.begin() as conn:
        await conn.run_sync(_migrate, "head", False)
    async with engine.begin() as conn:
        assert dict((await conn.execute(text(count))).all()) == {"lease_expired": 1}
    await api.complete(held[0], "ok")
    assert [r[1] for r in await attempt_rows(api, held[0]["step_run_id"])] == ["succeeded"]
