"""`cairn check` invariants: quiet on a consistent database, loud on a corrupted one."""

from __future__ import annotations

from sqlalchemy import text

from db.check import run_checks
from tests.integration.conftest import Api


async def busy_database(api: Api) -> str:
    await api.register(
        "chk",
        [{"name": "a", "retries": 1}, {"name": "b", "parents": ["a"]}],
        on_failure={"name": "h"},
    )
    runs = [(await api.trigger("chk"))["id"] for _ in range(4)]
    w = await api.worker(["chk.a", "chk.b", "chk.h"], lease_timeout_s=3)
    a = await api.poll(w, max_tasks=4)
    await api.complete(a[0], 1)
    await api.fail(a[1], retryable=False)
    await api.call("POST", f"/runs/{runs[2]}/cancel", 202)
    await api.reap(ahead_s=10)  # a[3]'s lease expires and is re-queued
    return runs[0]


async def test_consistent_database_has_no_violations(api: Api) -> None:
    await busy_database(api)
    async with api.svc.db.connect() as conn:
        assert await run_checks(conn) == []


async def test_corruption_is_reported(api: Api) -> None:
    run_id = await busy_database(api)
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(
            text("ALTER TABLE step_runs DROP CONSTRAINT ck_step_runs_attempt_bounds")
        )
        await conn.execute(
            text(
                "UPDATE step_runs SET attempt = 3, max_attempts = 3 WHERE run_id = :r "
                "AND step_name = 'a'"
            ),
            {"r": run_id},
        )
        await conn.execute(
            text("UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = :r"),
            {"r": run_id},
        )
    async with api.svc.db.connect() as conn:
        found = {v.check for v in await run_checks(conn)}
    assert {"attempt_gaps", "succeeded_attempts", "run_status_agrees"} <= found


async def test_a_run_left_queued_after_an_attempt_ended_is_reported(api: Api) -> None:
    await busy_database(api)
    async with api.svc.db.connect() as conn:
        assert "started_run_recorded" not in {v.check for v in await run_checks(conn)}
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(text("UPDATE runs SET status = 'queued' WHERE status = 'running'"))
    async with api.svc.db.connect() as conn:
        assert "started_run_recorded" in {v.check for v in await run_checks(conn)}


async def test_cairn_check_command_exit_status(api: Api, db_url: str) -> None:
    import asyncio
    import os
    import sys

    await busy_database(api)
    env = {**os.environ, "CAIRN_DATABASE_URL": db_url}

    async def check() -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "api.cli",
            "check",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    assert await check() == (0, "")
    async with api.svc.db.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE runs SET status = 'succeeded', finished_at = now()"
                " WHERE status IN ('queued', 'running')"
            )
        )
    code, out = await check()
    assert code == 1 and "run_status_agrees" in out
