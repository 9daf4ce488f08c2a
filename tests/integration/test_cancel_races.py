"""A cancel that waits for a run's lock while its last step completes answers from what the
run became: ``409`` for a run that succeeded meanwhile, never ``202``, and the run is counted
once in ``cairn_runs_total``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from api import results
from api.schemas import ResultIn
from db.models import DEFAULT_TENANT_ID
from db.pg import Conn, Row, init_connection
from db.types import Effects
from tests.integration.conftest import Api

WAIT_S = 10.0


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    dsn = db_url.replace("postgresql+asyncpg", "postgresql")
    opened = await asyncpg.connect(dsn, record_class=Row)
    await init_connection(opened)
    yield opened
    await opened.close()


async def someone_waits_for_a_lock(conn: asyncpg.Connection) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no backend waited for a lock")


async def test_a_cancel_behind_the_last_completion_is_409(
    api: Api, conn: asyncpg.Connection
) -> None:
    await api.register("cr", [{"name": "s"}])
    run = await api.trigger("cr")
    worker = await api.worker(["cr.s"])
    [task] = await api.poll(worker)
    assert (await api.run(run["id"]))["status"] == "running"
    item = ResultIn(step_run_id=task["step_run_id"], lease_token=task["lease_token"], output=7)
    batch = results.prepare([item], max_batch=10, max_payload_bytes=1 << 20)

    completing = conn.transaction()
    await completing.start()
    answers = await results.apply(Conn(conn, []), DEFAULT_TENANT_ID, batch, Effects())
    assert [a["status"] for a in answers] == ["succeeded"]
    cancel = asyncio.create_task(api.call("POST", f"/runs/{run['id']}/cancel"))
    await someone_waits_for_a_lock(conn)  # the cancel, behind the completion's run lock
    await completing.commit()
    answer = await asyncio.wait_for(cancel, WAIT_S)

    assert answer.status_code == 409, answer.text
    assert answer.json()["code"] == "invalid_state"
    final = await api.run(run["id"])
    assert final["status"] == "succeeded" and final["steps"][0]["output"] == 7
    assert await api.metric("cairn_runs_total", status="cancelled") == 0
