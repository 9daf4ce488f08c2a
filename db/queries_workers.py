"""Named statements of the workers' own rows: registration, liveness and deregistration.

Split from ``db/queries.py`` (the same conventions: ``:now`` NULL means the database clock).
"""

from __future__ import annotations

from db.queries import q

INSERT_WORKER = q("""
INSERT INTO workers (id, tenant_id, name, actions, slots, heartbeat_interval_s, lease_timeout_s,
                     registered_at, last_seen_at)
VALUES (gen_random_uuid(), :tenant, :name, :actions, :slots, :hb, :lease, {NOW}, {NOW})
RETURNING id, name, actions, slots, heartbeat_interval_s, lease_timeout_s
""")

# The heartbeat's liveness (the poll's is part of CLAIM): last_seen_at is written at most once a
# second per worker, so a heartbeat often writes nothing here.
TOUCH_WORKER = q("""
WITH w AS (
  SELECT id, lease_timeout_s FROM workers
  WHERE tenant_id = :tenant AND id = :worker AND deregistered_at IS NULL
), seen AS (
  UPDATE workers SET last_seen_at = {NOW}
  WHERE id IN (SELECT id FROM w) AND last_seen_at < {NOW} - interval '1 second'
)
SELECT lease_timeout_s FROM w
""")

# The worker's claim lock first (``cairn_free_slots``, migrations 0014 and 0015): a claim of its
# in flight commits before the leases are listed, or finds the worker deregistered.
LOCK_WORKER_CLAIMS = q(
    "SELECT pg_advisory_xact_lock(1129468465, hashtext(CAST(CAST(:worker AS uuid) AS text)))"
)

DEREGISTER_WORKER = q("""
UPDATE workers SET deregistered_at = {NOW}
WHERE tenant_id = :tenant AND id = :worker AND deregistered_at IS NULL
RETURNING id
""")

WORKER_HELD = q("""
SELECT id, run_id FROM step_runs WHERE worker_id = :worker AND status = 'running'
""")
