"""runs: no index on the status, so a run's own transitions are HOT updates

The index on (tenant_id, status, created_at) made every change of a run's status write a new
entry in each of the runs' indexes. It is replaced by a partial index on a stored generated
column that holds the status only for the runs an operator looks for (failed, cancelled): the
transitions every run makes (queued → running → succeeded) change no indexed value, and the
fillfactor keeps room on each page for the new row version. Listing by those two statuses stays
an index range; the others are read newest first from the creation-time index.

Adding a stored generated column rewrites the table (under an exclusive lock): plan the upgrade
of a large installation accordingly.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 21:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE runs SET (fillfactor = 70)")
    op.add_column(
        "runs",
        sa.Column(
            "attention_status",
            sa.Text(),
            sa.Computed(
                "CASE WHEN status IN ('failed', 'cancelled') THEN status END", persisted=True
            ),
        ),
    )
    op.drop_index("ix_runs_tenant_status", table_name="runs")
    op.create_index(
        "ix_runs_tenant_attention",
        "runs",
        ["tenant_id", "attention_status", "created_at", "id"],
        postgresql_where=sa.text("attention_status IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_tenant_attention", table_name="runs")
    op.create_index("ix_runs_tenant_status", "runs", ["tenant_id", "status", "created_at"])
    op.drop_column("runs", "attention_status")
    op.execute("ALTER TABLE runs RESET (fillfactor)")
