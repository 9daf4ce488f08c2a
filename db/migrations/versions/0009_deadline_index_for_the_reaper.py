"""Each partial index on running step runs serves only the queries that name its key

A poll counts its worker's running step runs (its free slots): ``worker_id = :worker AND status =
'running'``; the reaper reads the running step runs by deadline. Both ``ix_step_runs_worker`` and
``ix_step_runs_deadline`` covered every running step run, and with statistics taken while few or
none were running (an idle queue at ``ANALYZE`` time, or a large table autovacuum re-analyzes
rarely) the planner costed both as empty and took either for either query: every running step run
of every worker read, filtered and dropped, on every poll or every reaper pass (10,000 running:
5.9 ms and 1,280 buffers for a poll's slot count instead of 0.5 ms; 13.3 ms for the reaper's
deadline scan instead of 0.2 ms). Each index's predicate now also names its own key as not null
(true of every running step run: CHECK lease_iff_running): a query can use it only when it names
that column, so the slot count takes the worker index and the reaper (which says
``lease_expires_at IS NOT NULL``) the deadline index, whatever the statistics.

Both indexes cover only the running step runs: rebuilding them is quick on any installation.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DEADLINE = [sa.text("least(lease_expires_at, timeout_at)")]


def _recreate(deadline_where: str, worker_where: str) -> None:
    op.drop_index("ix_step_runs_deadline", table_name="step_runs")
    op.create_index(
        "ix_step_runs_deadline", "step_runs", DEADLINE, postgresql_where=sa.text(deadline_where)
    )
    op.drop_index("ix_step_runs_worker", table_name="step_runs")
    op.create_index(
        "ix_step_runs_worker", "step_runs", ["worker_id"], postgresql_where=sa.text(worker_where)
    )


def upgrade() -> None:
    _recreate(
        "status = 'running' AND lease_expires_at IS NOT NULL",
        "status = 'running' AND worker_id IS NOT NULL",
    )


def downgrade() -> None:
    _recreate("status = 'running'", "status = 'running'")
