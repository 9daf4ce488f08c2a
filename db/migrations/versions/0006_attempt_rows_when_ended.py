"""step_attempts: an attempt's row is written when the attempt ends

The attempt in progress is the running step run's own lease (attempt, worker, token, start); its
history row is inserted once, when it ends, with how it ended. A claim writes no attempt row and a
completion inserts one instead of updating one: a heap tuple and its index entries fewer per step.
The lease token's unique index goes (no statement looks an attempt up by token alone; tokens are
random UUIDs). Attempts in progress at upgrade time lose their 'running' rows (their step runs
hold the same facts); a 'running' row whose step run no longer holds that attempt is closed as
lease_expired. Replicas still on the previous code are not ready once this has run (their
``/readyz`` compares migration heads): upgrade the replicas together.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 00:10:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        DELETE FROM step_attempts a USING step_runs s
        WHERE a.outcome = 'running' AND s.id = a.step_run_id AND s.status = 'running'
          AND s.attempt = a.attempt AND s.lease_token = a.lease_token
    """)
    op.execute("""
        UPDATE step_attempts SET outcome = 'lease_expired', ended_at = now()
        WHERE outcome = 'running'
    """)
    op.drop_constraint("uq_step_attempts_lease_token", "step_attempts", type_="unique")
    op.create_check_constraint("attempt_ended", "step_attempts", "ended_at IS NOT NULL")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_step_attempts_attempt_ended"), "step_attempts", type_="check")
    op.create_unique_constraint("uq_step_attempts_lease_token", "step_attempts", ["lease_token"])
    op.execute("""
        INSERT INTO step_attempts (tenant_id, step_run_id, attempt, worker_id, lease_token,
                                   started_at, outcome)
        SELECT tenant_id, id, attempt, worker_id, lease_token, started_at, 'running'
        FROM step_runs WHERE status = 'running'
    """)
