"""step_attempts.tenant_id without its own foreign key

An attempt row belongs to a step run (a foreign key with ON DELETE CASCADE), which belongs to
its tenant; the second key to tenants added nothing but a lookup and a row lock on the tenants
row for every attempt the claim writes (a lock that every claim of the tenant takes).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 18:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("fk_step_attempts_tenant_id_tenants", "step_attempts", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(
        "fk_step_attempts_tenant_id_tenants", "step_attempts", "tenants", ["tenant_id"], ["id"]
    )
