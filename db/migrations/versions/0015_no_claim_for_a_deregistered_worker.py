"""No claim for a worker deregistered while its poll ran

A poll whose claim took its snapshot before a concurrent ``DELETE /workers/{id}`` committed saw
the worker registered and leased step runs to it; the deregistration had listed the worker's
leases before those existed, so they stayed with a worker that could no longer heartbeat
(``404``) and expired, failing ``retries: 0`` steps with ``lease_lost``. Deregistration now takes
the worker's claim lock (the advisory lock of ``cairn_free_slots``, migration 0014) before it
marks the worker, and ``cairn_free_slots`` answers no free slot for a deregistered worker, read
after the lock in a statement of its own (its own snapshot). So a claim either commits before the
deregistration lists the leases (and they are released), or finds the worker gone and claims
nothing.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 06:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

FREE_SLOTS = """
CREATE OR REPLACE FUNCTION cairn_free_slots(p_worker uuid, p_slots integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
  PERFORM pg_advisory_xact_lock(1129468465, hashtext(p_worker::text));
  IF EXISTS (SELECT 1 FROM workers w WHERE w.id = p_worker AND w.deregistered_at IS NOT NULL) THEN
    RETURN 0;
  END IF;
  RETURN p_slots - (SELECT count(*) FROM step_runs s
                    WHERE s.worker_id = p_worker AND s.status = 'running');
END
$f$
"""

PREVIOUS = """
CREATE OR REPLACE FUNCTION cairn_free_slots(p_worker uuid, p_slots integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $f$
BEGIN
  PERFORM pg_advisory_xact_lock(1129468465, hashtext(p_worker::text));
  RETURN p_slots - (SELECT count(*) FROM step_runs s
                    WHERE s.worker_id = p_worker AND s.status = 'running');
END
$f$
"""


def upgrade() -> None:
    op.execute(FREE_SLOTS)


def downgrade() -> None:
    op.execute(PREVIOUS)
