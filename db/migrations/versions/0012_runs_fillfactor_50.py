"""runs: fillfactor 50, so a bulk-triggered run's one update stays on its page (a HOT update)

A run is inserted once and, for a one-step workflow, rewritten once when it settles (queued →
succeeded; a run's start is folded into that update). Triggered in bulk, runs fill their pages
up to the fillfactor back to back; with 70, a page keeps room for the new versions of only 30/70
of its rows, so the other 58 % of the settling updates moved to another page and wrote an entry in
every index of ``runs`` (a drain of 20,000 runs: 8,450 HOT updates of 20,000). With 50, every row
of a page has room for one new version (about 18,000 of 20,000 HOT), which cost 7 to 18 µs less
Postgres CPU per run and gave 7 to 16 % more drained runs a second. Freshly triggered runs take
about 40 % more pages; drained, the table is smaller than with 70 (6.9 against 7.3 MB for those
20,000 runs: the updates that left their page grew it). Fillfactor 40 made every settling update
HOT (8.0 MB) and was no faster than 50.

The setting shapes pages written from now on. Pages already full keep their layout until the
table is rewritten (``VACUUM FULL runs`` or ``pg_repack``), which a large installation may plan
for separately; nothing else needs it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 08:20:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE runs SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE runs SET (fillfactor = 70)")
