"""Named SQL that creates runs: many in one statement (``CREATE_RUNS``, the bulk endpoint) or
one with everything its answer needs (``CREATE_RUN``). The queue's other statements, with the
macros, are in ``db/queries.py``.

Both read the steps from the stored definition of the workflow version (``_STEP_DEFS``), so a
run's step runs are made one way whichever endpoint made it.
"""

from __future__ import annotations

from sqlalchemy import TextClause

from db.ids import STEP_RUN_ID
from db.queries import q

# The version's steps from its stored (normalised) definition: the steps in order, then the
# on-failure handler if it has one. A root step (no parents, not the handler) starts queued.
_STEP_DEFS = """d AS (
  SELECT e.s ->> 'name' AS name, e.s ->> 'action' AS action, e.position,
    e.s -> 'parents' AS parents, e.on_failure,
    NOT e.on_failure AND jsonb_array_length(e.s -> 'parents') = 0 AS root,
    CAST(e.s ->> 'retries' AS integer) AS retries, e.s ->> 'delivery' AS delivery,
    CAST(e.s ->> 'timeout_s' AS float8) AS timeout_s,
    CAST(e.s ->> 'schedule_timeout_s' AS float8) AS schedule_timeout_s,
    e.s -> 'backoff' AS backoff
  FROM (
    SELECT t.s, CAST(t.n - 1 AS integer) AS position, false AS on_failure
    FROM wf, jsonb_array_elements(wf.definition -> 'steps') WITH ORDINALITY AS t(s, n)
    UNION ALL
    SELECT wf.definition -> 'on_failure', jsonb_array_length(wf.definition -> 'steps'), true
    FROM wf WHERE wf.definition ? 'on_failure'
  ) e
)"""

# The runs to make (``x``: id, input as {"v": input}, idem), one row per run: a JSON array
# ``:runs`` of such objects, or the one run's own parameters (so the planner expects one row).
_MANY = """x AS (
  SELECT * FROM jsonb_to_recordset(CAST(:runs AS jsonb)) AS x(id uuid, input jsonb, idem text)
)"""
_ONE = """x AS (
  SELECT CAST(:id AS uuid) AS id, CAST(:input AS jsonb) AS input, CAST(:idem AS text) AS idem
)"""

# A run whose idempotency key is taken is not created (nor are its steps).
_INSERT_RUNS = """r AS (
  INSERT INTO runs (id, tenant_id, workflow_id, workflow_name, version, status, input,
                    idempotency_key, trace_id, created_at)
  SELECT x.id, :tenant, wf.id, :name, wf.version, 'queued', x.input -> 'v', x.idem,
         gen_random_uuid(), {NOW}
  FROM x CROSS JOIN wf
  -- In key order: two requests whose keys overlap take the key index's entries in one order,
  -- never each waiting for the other (a deadlock). Runs with no key stay in the listed order.
  ORDER BY x.idem, x.id
  ON CONFLICT (tenant_id, workflow_name, idempotency_key) DO NOTHING
  RETURNING id, tenant_id, workflow_name, version, status, input, idempotency_key, error,
    created_at, started_at, finished_at
)"""

_INSERT_STEPS = """s AS (
  INSERT INTO step_runs (id, tenant_id, run_id, step_name, action, position, parents,
                         is_on_failure, status, max_attempts, delivery, timeout_s,
                         schedule_timeout_s, backoff, parent_outputs, available_at, queued_at,
                         schedule_deadline)
  SELECT {STEP_RUN_ID}, r.tenant_id, r.id, d.name, d.action, d.position,
         ARRAY(SELECT jsonb_array_elements_text(d.parents)), d.on_failure,
         CASE WHEN d.root THEN 'queued' ELSE 'pending' END,
         d.retries + 1, d.delivery, d.timeout_s, d.schedule_timeout_s, d.backoff,
         CASE WHEN d.root THEN '{}'::jsonb END,
         CASE WHEN d.root THEN r.created_at END,
         CASE WHEN d.root THEN r.created_at END,
         CASE WHEN d.root THEN r.created_at + make_interval(secs => d.schedule_timeout_s) END
  FROM r CROSS JOIN d
  RETURNING {RETURNING}
)""".replace("{STEP_RUN_ID}", STEP_RUN_ID)

# Many runs of the version ``:workflow_id`` (looked up by the caller).
CREATE_RUNS = q(f"""
WITH wf AS (
  SELECT id, version, definition FROM workflows WHERE id = :workflow_id
), {_STEP_DEFS}, {_MANY}, {_INSERT_RUNS}, {_INSERT_STEPS.replace("{RETURNING}", "1")}
SELECT r.id::text AS id, (SELECT count(*) FROM s) AS steps FROM r
""")


def _create_run(runs: str) -> TextClause:
    """Runs of the latest version (or ``:version``) made from ``runs`` (``_ONE`` or ``_MANY``),
    in one round trip: the lookup, the runs, their step runs, the wake-up of the long-polls for
    their queued steps (sent at commit), and what the answers show of the new runs (their
    columns as ``db.runs._run`` reads them), one row per step run, by run and step position.
    No row: no such workflow version. A row with a NULL ``id``: no run was created (each one's
    idempotency key was taken)."""
    steps = _INSERT_STEPS.replace(
        "{RETURNING}",
        "id, run_id, tenant_id, step_name, action, status, max_attempts, delivery,"
        " is_on_failure, parents, queued_at, position",
    )
    return q(f"""
WITH wf AS (
  SELECT id, version, definition FROM workflows
  WHERE tenant_id = :tenant AND name = :name
    AND (CAST(:version AS integer) IS NULL OR version = CAST(:version AS integer))
  ORDER BY version DESC LIMIT 1
), {_STEP_DEFS}, {runs}, {_INSERT_RUNS}, {steps}, woken AS (
  SELECT count(pg_notify('cairn_queue', a.tenant_id::text || ':' || a.action)) AS n
  FROM (SELECT DISTINCT tenant_id, action FROM s WHERE status = 'queued') a
)
SELECT r.id::text AS id, r.workflow_name, r.version, r.status, r.input, r.idempotency_key,
  r.error, r.created_at, r.started_at, r.finished_at, (SELECT n FROM woken) AS woken,
  s.id::text AS step_run_id, s.step_name, s.action, s.status AS step_status, s.max_attempts,
  s.delivery, s.is_on_failure, s.parents, s.queued_at
FROM wf LEFT JOIN r ON true LEFT JOIN s ON s.run_id = r.id
ORDER BY r.id, s.position
""")


# One run (a single trigger): its own parameters, so the planner expects one row.
CREATE_RUN = _create_run(_ONE)
# Several runs of one version at once (concurrent single triggers: ``api/triggers.py``), from
# ``:runs`` as ``CREATE_RUNS`` takes it.
CREATE_RUN_BATCH = _create_run(_MANY)

RUNS_BY_IDEMPOTENCY_KEYS = q("""
SELECT idempotency_key, id::text AS id FROM runs
WHERE tenant_id = :tenant AND workflow_name = :name AND idempotency_key = ANY(:keys)
""")
