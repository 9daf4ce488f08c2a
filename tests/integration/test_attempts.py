"""Attempt history: the attempt in progress is its step run's lease; its row is written once,
when it ends (migration 0006), keyed by its step run and number (migration 0007)."""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from db.check import run_checks
from db.engine import alembic_config
from tests.integration.conftest import Api
from tests.integration.test_batches import count_statements


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


async def test_deleting_a_run_deletes_its_attempts(api: Api) -> None:
    # Attempts have no foreign key since migration 0007: a trigger keeps the cascade.
    await api.register("attd", [{"name": "s"}])
    runs = [await api.trigger("attd") for _ in range(2)]
    w = await api.worker(["attd.s"])
    for t in await api.poll(w, max_tasks=2):
        await api.complete(t, "ok")
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM runs WHERE id = :r"), {"r": runs[0]["id"]})
        left = (
            await conn.execute(
                text(
                    "SELECT s.run_id::text FROM step_attempts a"
                    " JOIN step_runs s ON s.id = a.step_run_id"
                )
            )
        ).all()
        assert [r[0] for r in left] == [runs[1]["id"]]
        orphans = await conn.execute(
            text(
                "SELECT count(*) FROM step_attempts a WHERE NOT EXISTS"
                " (SELECT 1 FROM step_runs s WHERE s.id = a.step_run_id)"
            )
        )
        assert orphans.scalar_one() == 0
    async with api.svc.db.connect() as conn:
        assert await run_checks(conn) == []


async def test_an_attempt_without_its_step_run_is_reported(api: Api) -> None:
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO step_attempts (tenant_id, step_run_id, attempt, worker_id,"
                " lease_token, started_at, ended_at, outcome) VALUES (gen_random_uuid(),"
                " gen_random_uuid(), 1, gen_random_uuid(), gen_random_uuid(), now(), now(),"
                " 'failed')"
            )
        )
    async with api.svc.db.connect() as conn:
        found = {v.check for v in await run_checks(conn)}
    assert found == {"attempt_without_step_run"}


async def test_migration_0007_keeps_every_attempt_both_ways(api: Api) -> None:
    await api.register("attk", [{"name": "s", "retries": 1}])
    await api.trigger("attk")
    w = await api.worker(["attk.s"])
    [t1] = await api.poll(w)
    await api.fail(t1)
    await api.age(60)
    [t2] = await api.poll(w)
    rows = "SELECT step_run_id::text, attempt, outcome FROM step_attempts ORDER BY 1, 2"
    engine = api.svc.db.engine
    async with engine.begin() as conn:
        before = (await conn.execute(text(rows))).all()
        await conn.run_sync(_migrate, "0006", True)
    async with engine.begin() as conn:
        assert (await conn.execute(text(rows))).all() == before
        # 0006's shape is back: a surrogate key filled in, and the foreign key.
        ids = (await conn.execute(text("SELECT id FROM step_attempts"))).scalars().all()
        assert len(ids) == len(before) and None not in ids
        await conn.run_sync(_migrate, "head", False)
    await api.complete(t2, "ok")
    assert [r[1] for r in await attempt_rows(api, t1["step_run_id"])] == ["failed", "succeeded"]
    async with api.svc.db.connect() as conn:
        assert await run_checks(conn) == []


async def test_a_run_reads_in_one_statement_with_every_step_and_attempt_in_order(
    api: Api,
) -> None:
    """One statement, so one snapshot: the run, its step runs by position, each one's attempts
    by number (ended ones, then the one in progress)."""
    await api.register(
        "read1",
        [{"name": "a", "retries": 2}, {"name": "b", "parents": ["a"]}, {"name": "c"}],
        on_failure={"name": "h"},
    )
    run = await api.trigger("read1", {"x": 1})
    w = await api.worker(["read1.a", "read1.b", "read1.c"])
    tasks = {t["step"]: t for t in await api.poll(w)}
    await api.fail(tasks["a"])
    await api.age(60)  # past the retry's backoff
    [a2] = await api.poll(w)
    await api.complete(a2, "A")
    [b1] = await api.poll(w)  # b is running; c is still held from the first poll
    with count_statements(api) as seen:
        got = await api.run(run["id"])
    assert len(seen) == 1, seen
    steps = {s["name"]: s for s in got["steps"]}
    assert [s["name"] for s in got["steps"]] == ["a", "b", "c", "h"]
    assert [(x["attempt"], x["outcome"]) for x in steps["a"]["attempts"]] == [
        (1, "failed"),
        (2, "succeeded"),
    ]
    assert steps["a"]["output"] == "A" and steps["a"]["attempt"] == 2
    assert [(x["attempt"], x["outcome"], x["lease_token"]) for x in steps["b"]["attempts"]] == [
        (1, "running", b1["lease_token"])
    ]
    assert [x["outcome"] for x in steps["c"]["attempts"]] == ["running"]
    assert steps["h"]["attempts"] == [] and steps["h"]["status"] == "pending"
    assert got["status"] == "running" and got["input"] == {"x": 1}
    await api.call("GET", f"/runs/{w}", 404)  # not a run
