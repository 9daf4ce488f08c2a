"""A poll carrying completions, in one round trip: the ``cairn_poll`` database function.

A busy worker's poll carries the results of its last batch and claims the next one. Run as
statements that is BEGIN, the completion, the promotion and settling of the runs, the claim and
COMMIT: five round trips between the API and Postgres, each waiting on both. ``cairn_poll`` runs
the same named statements (``COMPLETE_CTES``, ``SUCCEED_CTES``, ``CLAIM_CTES`` of
``db/queries.py``, built into its body here) inside one function call, which is one statement
and so one transaction: the guarantees are the statements' own, and the poll's atomicity is the
call's.

The function takes the common case only. When anything needs more than those statements (a
result refused or repeated, a cancellation waiting for the worker, a worker not registered) it
raises ``FALLBACK``, which rolls the whole call back (its NOTIFYs too), and the caller runs the
statements one by one (``db.leases`` and ``api.results``), which answer every such case as
before.

The function is created by a migration, from the body this module builds when the migration was
written; ``tests/integration/test_poll_function.py`` fails when the body built from today's named
statements differs from the one installed, so a change to those statements comes with a
migration that re-creates the function.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from db import queries as Q
from db.pg import BIND, Conn
from db.types import Effects, PollResult

FALLBACK = "CRN01"  # SQLSTATE raised by cairn_poll: run the statements one by one instead
NAME = "cairn_poll"


def _plpgsql(sql: str) -> str:
    """A named statement's text with ``:name`` parameters as the function's ``p_name``."""
    return BIND.sub(lambda m: f"p_{m.group(1)}", Q.expand(sql))


def body() -> str:
    """The function's body, from the named statements."""
    complete = _plpgsql(
        Q.COMPLETE_CTES
        + "SELECT count(*), array_agg(DISTINCT run_id), array_agg(duration),\n"
        + "  (SELECT count(*) FROM items) INTO n_done, p_runs, d_seconds, n_items FROM done"
    )
    succeed = _plpgsql(
        Q.SUCCEED_CTES
        + """
SELECT array_agg(status::text),
  (SELECT array_agg(tenant_id::text) FROM promoted), (SELECT array_agg(action::text) FROM promoted)
  INTO s_statuses, q_tenants, q_actions FROM settled"""
    )
    claim = _plpgsql(
        Q.CLAIM_CTES
        + f"""SELECT 'claim'::text, lim.n::integer,
  EXTRACT(EPOCH FROM (t.started_at - t.available_at))::double precision,
  NULL::double precision[], NULL::text[],
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN w.actions END,
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN w.cancelled END,
  CASE WHEN row_number() OVER (ORDER BY t.available_at, t.id) = 1 THEN (SELECT floors FROM floors)
  END,
  CASE WHEN t.id IS NOT NULL THEN {Q.CLAIM_TASK} END
FROM w CROSS JOIN lim LEFT JOIN tasks t ON true
ORDER BY t.available_at, t.id"""
    )
    return f"""
#variable_conflict use_column
DECLARE
  n_done bigint; n_items bigint; p_runs uuid[]; d_seconds double precision[];
  s_statuses text[]; q_tenants text[]; q_actions text[]; n_claim_rows bigint;
BEGIN
  {complete};
  -- Every result applied (a refused or repeated one: one by one).
  IF n_done <> n_items THEN
    RAISE EXCEPTION 'cairn_poll: a result was refused' USING ERRCODE = '{FALLBACK}';
  END IF;
  {succeed};
  PERFORM pg_notify('cairn_queue', x)
  FROM (SELECT DISTINCT t || ':' || a AS x FROM unnest(q_tenants, q_actions) AS u(t, a)
        ORDER BY 1) d;
  -- One row for the results: how many applied, their durations, the runs settled, the steps
  -- queued (their NOTIFYs are sent above).
  RETURN QUERY SELECT 'applied'::text, coalesce(cardinality(q_actions), 0), NULL::double precision,
    d_seconds, s_statuses, NULL::text[], NULL::text[], NULL::text, NULL::text;
  RETURN QUERY {claim};
  -- The claim answered for a registered worker (a row at least) with no cancellation waiting
  -- for it, even one requested meanwhile (else: one by one, which delivers it).
  GET DIAGNOSTICS n_claim_rows = ROW_COUNT;
  IF n_claim_rows = 0 OR EXISTS (
      SELECT 1 FROM step_runs WHERE worker_id = p_worker AND status = 'running'
        AND cancel_requested_at IS NOT NULL) THEN
    RAISE EXCEPTION 'cairn_poll: not the common case' USING ERRCODE = '{FALLBACK}';
  END IF;
END
"""


# The function's parameters and columns (migrations create it with these and ``body()``).
SIGNATURE = (
    f"{NAME}(p_tenant uuid, p_worker uuid, p_items text, p_max_tasks integer, p_now timestamptz,"
    " p_floors text)"
)
COLUMNS = (
    "kind text, n integer, seconds double precision, durations double precision[],"
    " statuses text[], actions text[], cancelled text[], floors text, task text"
)
CALL = Q.q(f"SELECT * FROM {NAME}(:tenant, :worker, :items, :max_tasks, :now, :floors)")


async def poll_completing(
    conn: Conn,
    tenant: str,
    worker_id: str,
    items: str,
    *,
    max_tasks: int,
    effects: Effects,
    now: datetime | None = None,
    floors: str | None = None,
) -> PollResult | None:
    """Apply completions (``items``: ``COMPLETE_MANY``'s JSON array) and claim (each action
    from its floor: ``db.claim_floors``), in one call; ``None`` when the caller must run the
    statements one by one (nothing was applied)."""
    try:
        rows = await conn.execute(
            CALL,
            {
                "tenant": tenant,
                "worker": worker_id,
                "items": items,
                "max_tasks": max_tasks,
                "now": now,
                "floors": floors,
            },
        )
    except asyncpg.PostgresError as err:
        if getattr(err, "sqlstate", None) == FALLBACK:
            return None
        raise
    tasks: list[str] = []
    head = None
    for row in rows:
        if row["kind"] == "claim":
            if head is None:
                head = row
            if row["task"] is not None:
                tasks.append(row["task"])
                effects.queue_latencies.append(max(float(row["seconds"] or 0.0), 0.0))
        else:  # applied
            durations = row["durations"] or []
            effects.step_statuses["succeeded"] += len(durations)
            effects.step_durations.extend(float(d or 0.0) for d in durations)
            for status in row["statuses"] or []:
                if status in ("succeeded", "failed"):
                    effects.run_statuses[status] += 1
            effects.step_statuses["queued"] += row["n"]
    assert head is not None  # else the function fell back: the claim returns a row at least
    effects.step_statuses["running"] += len(tasks)
    return PollResult(
        tasks=tuple(tasks),
        cancelled=(),
        actions=tuple(head["actions"]),
        full=len(tasks) >= head["n"],
        floors=head["floors"],
    )
