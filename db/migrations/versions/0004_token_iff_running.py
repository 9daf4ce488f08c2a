"""step_runs: a lease token is held exactly while the step run is running

The completion finds its step runs by key and token alone; this constraint is what makes the
token that guard (a token is never left on a step run that is not running), so the statement
need not name the status, which made the planner read every running step run through a partial
index whenever its statistics said none were running.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 21:50:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_check_constraint(
        "token_iff_running", "step_runs", "(lease_token IS NOT NULL) = (status = 'running')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_step_runs_token_iff_running"), "step_runs", type_="check")
