"""The reaper: lease expiry, execution and schedule timeouts, cancellation grace, releases.

Safe with many replicas: each step run is handled in its own transaction that takes the run lock
with SKIP LOCKED (a busy run is simply left for the next tick) and re-checks every guard on the
locked row before it writes.
"""

from __future__ import annotations

import logging
from datetime import datetime

from db import queries as Q
from db import queries_reaper as QR
from db import transitions
from db.engine import Database
from db.errors import DatabaseUnavailable
from db.pg import Conn
from db.types import Effects

log = logging.getLogger("cairn.reaper")
SCHEDULE_ERROR = {"type": "schedule_timeout", "message": "the step waited past schedule_timeout_s"}


async def _reap_one(
    conn: Conn,
    step_run_id: str,
    run_id: str,
    *,
    grace_s: float,
    effects: Effects,
    now: datetime | None,
) -> bool:
    if (await conn.execute(QR.LOCK_RUN_NOWAIT, {"run": run_id})).first() is None:
        return False
    step = (
        await conn.execute(QR.REAPER_STEP, {"id": step_run_id, "grace": grace_s, "now": now})
    ).first()
    if step is None:
        return False
    if step.cancel_due:
        await transitions.cancel_running(conn, step, effects, now)
    elif await transitions.end_overdue(conn, step, effects, now):
        pass  # its lease or its timeout ran out (a cancelled run's step is cancelled)
    elif step.schedule_due:
        await conn.execute(
            Q.FAIL_STEP,
            {"id": step.id, "error": transitions.dump_error(SCHEDULE_ERROR), "now": now},
        )
        effects.step_statuses["failed"] += 1
        await transitions.after_permanent_failure(
            conn,
            run_id,
            step.step_name,
            step.is_on_failure,
            SCHEDULE_ERROR,
            step.attempt,
            effects,
            now,
        )
    else:
        return False
    await transitions.notify(conn, effects)
    return True


async def tick(
    db: Database, *, grace_s: float, batch: int, effects: Effects, now: datetime | None = None
) -> int:
    """One pass of the reaper. Returns how many step runs it changed."""
    async with db.connect() as conn:
        candidates = (
            await conn.execute(QR.REAPER_CANDIDATES, {"grace": grace_s, "batch": batch, "now": now})
        ).all()
        await conn.rollback()
    done = 0
    for sid, rid in dict.fromkeys((str(c.id), str(c.run_id)) for c in candidates):

        async def work(conn: Conn, sid: str = sid, rid: str = rid) -> Effects | None:
            local = Effects()
            changed = await _reap_one(conn, sid, rid, grace_s=grace_s, effects=local, now=now)
            return local if changed else None

        try:
            local = await db.transaction(work)
        except DatabaseUnavailable:
            raise
        except Exception:  # one bad row must not stall every other deadline
            log.exception("reaper could not process step run %s", sid)
            continue
        if local is not None:
            done += 1
            effects.merge(local)
    return done


async def release_worker(
    db: Database, tenant: str, worker_id: str, effects: Effects, now: datetime | None = None
) -> int:
    """Deregister a worker and give back every step run it holds."""
    from db import leases

    async def mark(conn: Conn) -> list[tuple[str, str]]:
        await leases.deregister(conn, tenant, worker_id, now)
        return await leases.held_by(conn, worker_id)

    held = await db.transaction(mark)
    released = 0
    for sid, rid in held:

        async def give_back(conn: Conn, sid: str = sid, rid: str = rid) -> Effects | None:
            local = Effects()
            await conn.execute(Q.LOCK_RUN, {"tenant": tenant, "id": rid})
            step = (await conn.execute(QR.REAPER_STEP, {"id": sid, "grace": 0, "now": now})).first()
            if step is None or step.status != "running" or str(step.worker_id) != worker_id:
                return None
            await transitions.release_running(conn, step, local, now)
            await transitions.notify(conn, local)
            return local

        local = await db.transaction(give_back)
        if local is not None:
            released += 1
            effects.merge(local)
    return released
