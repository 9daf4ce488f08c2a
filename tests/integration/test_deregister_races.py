"""A poll racing its worker's deregistration never leases a step run to a worker gone.

The claim saw the worker registered in its snapshot, taken before the deregistration committed,
while the deregistration listed the worker's leases before the claim made any: the claimed step
runs stayed with a worker whose heartbeats answer 404, and expired."""

from __future__ import annotations

import asyncio

import asyncpg

from db import leases
from db.models import DEFAULT_TENANT_ID
from db.pg import Conn
from tests.integration.conftest import Api
from tests.integration.test_cancel_races import conn, someone_waits_for_a_lock

__all__ = ["conn"]  # the fixture, shared with test_cancel_races

WAIT_S = 10.0


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
    # The claim took its snapshot (the worker still registered) and waits for the worker's lock.
    await someone_waits_for_a_lock(conn)
    await deregistering.commit()
    tasks = await asyncio.wait_for(polling, WAIT_S)

    assert tasks == []
    step = (await api.run(run["id"]))["steps"][0]
    assert step["status"] == "queued" and step["attempt"] == 0
    await api.call("POST", f"/workers/{w}/poll", 404, json={"max_tasks": 1})
