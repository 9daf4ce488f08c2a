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

GET_RUN = q(
    f"SELECT {RUN_COLUMNS} FROM {RUN_FROM} WHERE runs.tenant_id = :tenant AND runs.id = :id"
)

RUN_STEPS = q("""
SELECT id, step_name, action, status, attempt, max_attempts, delivery, is_on_failure, parents,
       output, error, queued_at, started_at, finished_at, cancel_requested_at
FROM step_runs WHERE run_id = :run ORDER BY position
""")

# Ended attempts are rows of step_attempts; the attempt in progress is the running step run's own
# lease (its row is written when it ends).
RUN_ATTEMPTS = q("""
SELECT a.step_run_id, a.attempt, a.worker_id, a.lease_token, a.started_at, a.ended_at, a.outcome,
       a.error
FROM step_attempts a JOIN step_runs s ON s.id = a.step_run_id
WHERE s.run_id = :run
UNION ALL
SELECT id, attempt, worker_id, lease_token, started_at, NULL, 'running', NULL
FROM step_runs WHERE run_id = :run AND status = 'running'
ORDER BY 1, 2
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
