"""Named SQL of the reaper (``db/reaper.py``): the step runs due, the run lock it skips when
busy, and the locked step run whose every deadline it re-checks. The queue's other statements,
with the macros, are in ``db/queries.py``.
"""

from __future__ import annotations

from db.queries import q

REAPER_CANDIDATES = q("""
(SELECT id, run_id, 'cancel_grace' AS kind FROM step_runs
 WHERE status = 'running' AND cancel_requested_at IS NOT NULL
   AND cancel_requested_at <= {NOW} - make_interval(secs => :grace) LIMIT :batch)
UNION ALL
(SELECT id, run_id, 'deadline' FROM step_runs
 WHERE status = 'running' AND lease_expires_at IS NOT NULL  -- the deadline index (0009)
   AND least(lease_expires_at, timeout_at) <= {NOW}
 ORDER BY least(lease_expires_at, timeout_at) LIMIT :batch)
UNION ALL
(SELECT id, run_id, 'schedule' FROM step_runs
 WHERE status = 'queued' AND schedule_deadline <= {NOW}
 ORDER BY schedule_deadline LIMIT :batch)
""")

LOCK_RUN_NOWAIT = q("SELECT id FROM runs WHERE id = :run FOR UPDATE SKIP LOCKED")

REAPER_STEP = q("""
SELECT id, run_id, tenant_id, step_name, action, status, attempt, max_attempts, delivery,
  backoff, lease_token, worker_id, is_on_failure, cancel_requested_at,
  (status = 'running' AND cancel_requested_at IS NOT NULL
   AND cancel_requested_at <= {NOW} - make_interval(secs => :grace)) AS cancel_due,
  (status = 'running' AND lease_expires_at <= {NOW}) AS lease_due,
  (status = 'running' AND timeout_at <= {NOW}) AS timeout_due,
  (status = 'queued' AND schedule_deadline <= {NOW}) AS schedule_due,
  EXTRACT(EPOCH FROM ({NOW} - started_at)) AS duration
FROM step_runs WHERE id = :id FOR UPDATE
""")
