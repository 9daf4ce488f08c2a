"""The bench's "Cairn's SQL alone" loop (bench/cairn_sql.py) drains runs through ``cairn_poll``
with every guarantee of the API's poll: each step run completed once, under its own lease, with
its attempt row."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from bench import cairn_sql
from db.engine import asyncpg_dsn
from tests.integration.conftest import Api


async def test_the_loop_drains_every_run_once_with_its_history(
    api: Api, db_url: str, tmp_path: Path
) -> None:
    await api.register("bench_noop", [{"name": "step"}])
    ids = [(await api.trigger("bench_noop", {"i": i}))["id"] for i in range(cairn_sql.BATCH + 30)]
    out = tmp_path / "first-last-count.txt"

    await cairn_sql.work(asyncpg_dsn(db_url), str(out))

    first, last, count = out.read_text().split()
    assert int(count) == len(ids)
    assert float(first) <= float(last)
    conn = await asyncpg.connect(asyncpg_dsn(db_url))
    try:
        runs = await conn.fetch("SELECT status FROM runs WHERE id = ANY($1::uuid[])", ids)
        assert [r["status"] for r in runs] == ["succeeded"] * len(ids)
        attempts = await conn.fetch(
            "SELECT s.attempt, a.outcome, a.lease_token IS NOT NULL AS fenced"
            " FROM step_runs s JOIN step_attempts a ON a.step_run_id = s.id"
        )
        assert len(attempts) == len(ids)
        assert {(a["attempt"], a["outcome"], a["fenced"]) for a in attempts} == {
            (1, "succeeded", True)
        }
        assert (
            await conn.fetchval("SELECT count(*) FROM step_runs WHERE lease_token IS NOT NULL") == 0
        )
    finally:
        await conn.close()
