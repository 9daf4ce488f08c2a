"""Named SQL off the queue's path: workflow definitions, the API's reads of runs, their steps and
attempts, and the metrics' gauges. The queue's statements (runs created, claimed, completed,
settled) are in ``db/queries.py``, with the macros, and the reaper's in ``db/queries_reaper.py``.
"""

from __future__ import annotations

from db.queries import RUN_COLUMNS, RUN_FROM, q

# --- workflows ----------------------------------------------------------------------------------

LATEST_WORKFLOW = q("""
SELECT id, name, version, definition, definition_hash, created_at FROM workflows
WHERE tenant_id = :tenant AND name = :name ORDER BY version DESC LIMIT 1
""")

WORKFLOW_VERSION = q("""
SELECT id, name, version, definition, definition_hash, created_at FROM workflows
WHERE tenant_id = :tenant AND name = :name AND version = :version
""")

WORKFLOW_VERSIONS = q("""
SELECT version FROM workflows WHERE tenant_id = :tenant AND name = :name ORDER BY version
""")

LOCK_WORKFLOW_NAME = q("SELECT pg_advisory_xact_lock(hashtextextended(:tenant || '/' || :name, 0))")

INSERT_WORKFLOW = q("""
INSERT INTO workflows (tenant_id, name, version, definition, definition_hash, created_at)
VALUES (:tenant, :name, :version, CAST(:definition AS jsonb), :hash, {NOW})
RETURNING id, name, version, definition, definition_hash, created_at
""")

LIST_WORKFLOWS = q("""
SELECT DISTINCT ON (name) id, name, version, definition, definition_hash, created_at
FROM workflows WHERE tenant_id = :tenant ORDER BY name, version DESC
""")

# --- runs ---------------------------------------------------------------------------------------

# A run with its step runs and their attempts, in one statement (so from one snapshot): one row
# per attempt of each step run (ended attempts are rows of step_attempts; the attempt in progress
# is the running step run's own lease, its row written when it ends), or one row with NULL
# attempt columns for a step run not attempted; by step position, then attempt. No row: no such
# run for the tenant.
GET_RUN = q(f"""
SELECT {RUN_COLUMNS},
  s.id::text AS step_run_id, s.step_name, s.action, s.status AS step_status,
  s.attempt AS step_attempt, s.max_attempts, s.delivery, s.is_on_failure, s.parents,
  s.output AS step_output, s.error AS step_error, s.queued_at, s.started_at AS step_started_at,
  s.finished_at AS step_finished_at, s.cancel_requested_at,
  a.attempt AS a_attempt, a.worker_id::text AS a_worker_id, a.lease_token::text AS a_lease_token,
  a.started_at AS a_started_at, a.ended_at AS a_ended_at, a.outcome AS a_outcome,
  a.error AS a_error
FROM {RUN_FROM}
LEFT JOIN step_runs s ON s.run_id = runs.id
LEFT JOIN LATERAL (
  SELECT e.attempt, e.worker_id, e.lease_token, e.started_at, e.ended_at, e.outcome, e.error
  FROM step_attempts e WHERE e.step_run_id = s.id
  UNION ALL
  SELECT s.attempt, s.worker_id, s.lease_token, s.started_at, NULL, 'running', NULL
  WHERE s.status = 'running'
) a ON true
WHERE runs.tenant_id = :tenant AND runs.id = :id
ORDER BY s.position, a.attempt
""")

# --- metrics ------------------------------------------------------------------------------------

# Queued step runs per action, plus a 0 for every action a registered worker serves, so the
# gauge has a series before anything queues.
QUEUE_DEPTH = q("""
SELECT action, sum(n)::bigint AS n FROM (
  SELECT action, count(*) AS n FROM step_runs WHERE status = 'queued' GROUP BY action
  UNION ALL
  SELECT DISTINCT unnest(actions), 0 FROM workers WHERE deregistered_at IS NULL
) d GROUP BY action
""")

ACTIVE_WORKERS = q("""
SELECT count(*) FROM workers WHERE deregistered_at IS NULL
  AND last_seen_at > {NOW} - make_interval(secs => :window)
""")
