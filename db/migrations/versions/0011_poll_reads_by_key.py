"""cairn_poll runs with ``enable_seqscan = off``: its kept plans read rows by key

A session keeps the plans of the function's statements (generic ones, after five calls) until the
tables' statistics change, which on a growing queue is whenever autovacuum next analyzes them.
Plans made while ``step_runs`` held a few rows read it whole to find the step runs a poll
completes (a hash join, or a nested loop over a sequential scan) and the runs' rows likewise, and
kept doing so as the queue grew: 34 ms per poll behind 70,000 step runs, against about 1 ms, at
the bench's half-of-max rate. Every statement in the function reaches its rows through an index,
so none of its plans may scan a table whole. The body is unchanged.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 15:20:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

FUNCTION = "cairn_poll(uuid, uuid, text, integer, timestamptz, text)"


def upgrade() -> None:
    op.execute(f"ALTER FUNCTION {FUNCTION} SET enable_seqscan = off")


def downgrade() -> None:
    op.execute(f"ALTER FUNCTION {FUNCTION} RESET enable_seqscan")
