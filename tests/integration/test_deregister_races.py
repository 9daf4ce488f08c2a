"""A poll racing its worker's deregistration never leases a step run to a worker gone.

The claim saw the worker registered in its snapshot, taken before the deregistration committed,
while the deregistration listed the worker's leases before the claim made any: the claimed step
runs stayed with a worker whose heartbeats answer 404, and expired."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from db import leases
from db.models import DEFAULT_TENANT_ID
from db.pg import Conn, Row, init_connection
from tests.integration.conftest import Api

WAIT_S = 10.0


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    opened = await asyncpg.connect(
        db_url.replace("postgresql+asyncpg", "postgresql"), record_class=Row
    )
    await init_connection(opened)
    yield opened
    await opened.close()


async def test_a_poll_behind_its_workers_deregistration_claims_nothing(
    api: Api, conn: asyncpg.Connection
) -> None:
    await api.register("dr", [{"name": "s"}])
    w = await api.worker(["dr.s"], slots=1)
    assert await api.poll(w) == []  # the replica knows the worker
    run = await api.trigger("dr")
    deregistering = conn.transaction()
    await deregistering.start()
    await leases.deregister(Conn(conn, []), DEFAULT_TENANT_ID, w)
    assert await leases.held_by(Conn(conn, []), w) == []
    polling = asyncio.create_task(api.poll(w))
    await asyncio.sleep(0.3)  # the claim has taken its snapshot (the worker still registered)
    await deregistering.commit()
    tasks = await asyncio.wait_for(polling, WAIT_S)

    assert tasks == []
    step = (await api.run(run["id"]))["steps"][0]
    assert step["status"] == "queued" and step["attempt"] == 0
    await api.call("POST", f"/workers/{w}/poll", 404, json={"max_tasks": 1})
