"""Fewer index entries and checks per step: one deadline index, attempts keyed by their step run

Every claim and heartbeat writes a new version of the step run, so each index on step_runs gets
an entry. The lease-expiry and timeout indexes (both on running step runs, both read only by the
reaper) become one index on ``least(lease_expires_at, timeout_at)``: the reaper reads the step
runs whose first deadline has passed and decides per row which one it was (as it did already).

An attempt row is keyed by ``(step_run_id, attempt)``, which was already unique: the surrogate
``id`` (a sequence call and a second index entry per attempt) goes. Its foreign key to step_runs
goes too: it ran a key lookup with a row lock for every attempt written, and every statement that
writes an attempt reads it from its step run in the same statement, which the step run's row lock
holds. Deleting a step run still deletes its attempts (a statement-level trigger), and
``cairn check`` reports an attempt without its step run (``attempt_without_step_run``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 02:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

RUNNING = sa.text("status = 'running'")


def upgrade() -> None:
    op.drop_index("ix_step_runs_lease_expiry", table_name="step_runs")
    op.drop_index("ix_step_runs_timeout", table_name="step_runs")
    op.create_index(
        "ix_step_runs_deadline",
        "step_runs",
        [sa.text("least(lease_expires_at, timeout_at)")],
        postgresql_where=RUNNING,
    )
    op.drop_constraint(
        "fk_step_attempts_step_run_id_step_runs", "step_attempts", type_="foreignkey"
    )
    op.drop_constraint("pk_step_attempts", "step_attempts", type_="primary")
    op.drop_column("step_attempts", "id")
    op.drop_constraint("uq_step_attempts_step_attempt", "step_attempts", type_="unique")
    op.create_primary_key("pk_step_attempts", "step_attempts", ["step_run_id", "attempt"])
    op.execute("""
        CREATE FUNCTION cairn_delete_step_attempts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          DELETE FROM step_attempts WHERE step_run_id IN (SELECT id FROM gone);
          RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER step_runs_delete_attempts AFTER DELETE ON step_runs
        REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
        EXECUTE FUNCTION cairn_delete_step_attempts()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER step_runs_delete_attempts ON step_runs")
    op.execute("DROP FUNCTION cairn_delete_step_attempts()")
    op.execute(
        "DELETE FROM step_attempts a WHERE NOT EXISTS (SELECT 1 FROM step_runs s"
        " WHERE s.id = a.step_run_id)"
    )
    op.drop_constraint("pk_step_attempts", "step_attempts", type_="primary")
    op.create_unique_constraint(
        "uq_step_attempts_step_attempt", "step_attempts", ["step_run_id", "attempt"]
    )
    op.add_column("step_attempts", sa.Column("id", sa.BigInteger(), autoincrement=True))
    op.execute("CREATE SEQUENCE step_attempts_id_seq OWNED BY step_attempts.id")
    op.execute("UPDATE step_attempts SET id = nextval('step_attempts_id_seq')")
    op.execute(
        "ALTER TABLE step_attempts ALTER COLUMN id SET DEFAULT nextval('step_attempts_id_seq'),"
        " ALTER COLUMN id SET NOT NULL"
    )
    op.create_primary_key("pk_step_attempts", "step_attempts", ["id"])
    op.create_foreign_key(
        "fk_step_attempts_step_run_id_step_runs",
        "step_attempts",
        "step_runs",
        ["step_run_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_index("ix_step_runs_deadline", table_name="step_runs")
    op.create_index("ix_step_runs_timeout", "step_runs", ["timeout_at"], postgresql_where=RUNNING)
    op.create_index(
        "ix_step_runs_lease_expiry", "step_runs", ["lease_expires_at"], postgresql_where=RUNNING
    )
