"""SQLAlchemy table definitions: the schema Alembic migrations must match.

Queue-critical SQL lives in :mod:`db.queries`; these tables exist so that migrations can be
checked against one declared schema and so the invariants read as CHECK constraints.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

DEFAULT_TENANT_ID = "00000000-0000-0000-0000-000000000001"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
RUN_TERMINAL = ("succeeded", "failed", "cancelled")
RUN_ATTENTION = ("failed", "cancelled")  # listed through their own index
STEP_STATUSES = ("pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped")
STEP_TERMINAL = ("succeeded", "failed", "cancelled", "skipped")
ATTEMPT_OUTCOMES = (
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "lease_expired",
    "cancelled",
    "released",
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> TextClause:
    return text("now()")


tenants = Table(
    "tenants",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", UUID(as_uuid=False), ForeignKey("tenants.id"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", JSONB, nullable=False),
    Column("definition_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    UniqueConstraint("tenant_id", "name", "version", name="uq_workflows_tenant_name_version"),
    CheckConstraint("version >= 1", name="version_positive"),
)

workers = Table(
    "workers",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), ForeignKey("tenants.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("actions", ARRAY(Text), nullable=False),
    Column("slots", Integer, nullable=False),
    Column("heartbeat_interval_s", Float, nullable=False),
    Column("lease_timeout_s", Float, nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("deregistered_at", DateTime(timezone=True)),
    CheckConstraint("slots >= 1", name="slots_positive"),
    CheckConstraint("heartbeat_interval_s * 3 <= lease_timeout_s", name="heartbeat_within_lease"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), ForeignKey("tenants.id"), nullable=False),
    Column("workflow_id", BigInteger, ForeignKey("workflows.id"), nullable=False),
    Column("workflow_name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("input", JSONB, nullable=False),
    Column("idempotency_key", Text),
    Column("error", JSONB),
    # Room for the next issue: child runs, fan-out, tracing.
    Column("parent_step_run_id", UUID(as_uuid=False)),
    Column("trace_id", UUID(as_uuid=False)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    # The status of the runs an operator looks for (failed, cancelled), NULL for the others.
    # It is indexed instead of the status: a run's other transitions (queued → running →
    # succeeded) change no indexed value, so they are HOT updates (no index entries, the new row
    # version on the same page). Fillfactor 50 leaves room on each page for one new version of
    # every row, also when runs are triggered in bulk and fill their pages back to back (migration
    # 0012: with 70, 58 % of those settling updates left the page).
    Column(
        "attention_status",
        Text,
        Computed(f"CASE WHEN {_in('status', RUN_ATTENTION)} THEN status END", persisted=True),
    ),
    CheckConstraint(_in("status", RUN_STATUSES), name="status_valid"),
    CheckConstraint(
        f"(finished_at IS NOT NULL) = ({_in('status', RUN_TERMINAL)})", name="finished_iff_terminal"
    ),
    UniqueConstraint(
        "tenant_id", "workflow_name", "idempotency_key", name="uq_runs_tenant_workflow_idem"
    ),
    Index("ix_runs_tenant_created", "tenant_id", "created_at", "id"),
    Index(
        "ix_runs_tenant_attention",
        "tenant_id",
        "attention_status",
        "created_at",
        "id",
        postgresql_where=text("attention_status IS NOT NULL"),
    ),
    postgresql_with={"fillfactor": 50},
)

step_runs = Table(
    "step_runs",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), ForeignKey("tenants.id"), nullable=False),
    Column(
        "run_id", UUID(as_uuid=False), ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
    ),
    Column("step_name", String(64), nullable=False),
    Column("action", String(200), nullable=False),
    Column("position", Integer, nullable=False),
    Column("parents", ARRAY(Text), nullable=False),
    Column("is_on_failure", Boolean, nullable=False, server_default=text("false")),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("delivery", Text, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Column("schedule_timeout_s", Float, nullable=False),
    Column("backoff", JSONB, nullable=False),
    Column("parent_outputs", JSONB),
    Column("output", JSONB),
    Column("error", JSONB),
    Column("worker_id", UUID(as_uuid=False)),
    Column("lease_token", UUID(as_uuid=False)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("available_at", DateTime(timezone=True)),
    Column("queued_at", DateTime(timezone=True)),
    Column("schedule_deadline", DateTime(timezone=True)),
    Column("timeout_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("cancel_requested_at", DateTime(timezone=True)),
    # Room for the next issue: fan-out items and child runs.
    Column("fanout_index", Integer),
    Column("child_run_id", UUID(as_uuid=False)),
    CheckConstraint(_in("status", STEP_STATUSES), name="status_valid"),
    CheckConstraint(_in("delivery", ("at_least_once", "at_most_once")), name="delivery_valid"),
    CheckConstraint(
        f"(finished_at IS NOT NULL) = ({_in('status', STEP_TERMINAL)})",
        name="finished_iff_terminal",
    ),
    CheckConstraint(
        "(status = 'running') = (lease_token IS NOT NULL AND worker_id IS NOT NULL"
        " AND lease_expires_at IS NOT NULL AND timeout_at IS NOT NULL)",
        name="lease_iff_running",
    ),
    # The completion's guard is the token alone (db/queries.py COMPLETE_MANY): it relies on this.
    CheckConstraint("(lease_token IS NOT NULL) = (status = 'running')", name="token_iff_running"),
    CheckConstraint("status <> 'queued' OR available_at IS NOT NULL", name="queued_available"),
    CheckConstraint("attempt >= 0 AND attempt <= max_attempts", name="attempt_bounds"),
    CheckConstraint("started_at IS NULL OR attempt >= 1", name="started_attempted"),
    CheckConstraint("status <> 'succeeded' OR output IS NOT NULL", name="succeeded_has_output"),
    UniqueConstraint("run_id", "step_name", name="uq_step_runs_run_step"),
    Index(
        "ix_step_runs_claim",
        "tenant_id",
        "action",
        "available_at",
        "id",
        postgresql_where=text("status = 'queued'"),
    ),
    # The reaper's: running step runs by their first deadline (lease expiry or timeout).
    Index(
        "ix_step_runs_deadline",
        text("least(lease_expires_at, timeout_at)"),
        # Named by the reaper alone (migration 0009): no other query may pick this index.
        postgresql_where=text("status = 'running' AND lease_expires_at IS NOT NULL"),
    ),
    Index(
        "ix_step_runs_schedule",
        "schedule_deadline",
        postgresql_where=text("status = 'queued'"),
    ),
    Index(
        "ix_step_runs_worker",
        "worker_id",
        # Only queries naming a worker may pick this index (migration 0009).
        postgresql_where=text("status = 'running' AND worker_id IS NOT NULL"),
    ),
    Index(
        "ix_step_runs_cancel",
        "cancel_requested_at",
        postgresql_where=text("status = 'running' AND cancel_requested_at IS NOT NULL"),
    ),
)

step_attempts = Table(
    "step_attempts",
    metadata,
    # The tenant of the step run (kept for tenant-scoped reads); no key of its own: the step
    # run's key covers it, and a key to tenants would lock the tenant's row on every claim.
    Column("tenant_id", UUID(as_uuid=False), nullable=False),
    # No foreign key (a key lookup and row lock per attempt written): every statement writing an
    # attempt reads it from its locked step run, a trigger deletes a step run's attempts with it
    # (migration 0007), and ``cairn check`` reports an attempt without its step run.
    Column("step_run_id", UUID(as_uuid=False), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("worker_id", UUID(as_uuid=False), nullable=False),
    Column("lease_token", UUID(as_uuid=False), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("outcome", Text, nullable=False),
    Column("error", JSONB),
    CheckConstraint(_in("outcome", ATTEMPT_OUTCOMES), name="outcome_valid"),
    CheckConstraint("(ended_at IS NULL) = (outcome = 'running')", name="ended_iff_done"),
    # A row is written when its attempt ends (db/queries.py CLOSE_ATTEMPT); the attempt in
    # progress is its running step run's lease.
    CheckConstraint("ended_at IS NOT NULL", name="attempt_ended"),
    CheckConstraint("attempt >= 1", name="attempt_positive"),
)

TOKEN_ROLES = ("admin", "worker", "viewer")

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("tenant_id", UUID(as_uuid=False), ForeignKey("tenants.id"), nullable=False),
    Column("name", Text, nullable=False, server_default=text("''")),
    Column("role", Text, nullable=False),
    # The public part of the token (``cairn_<prefix>_<secret>``): shown in listings, used to revoke.
    Column("prefix", Text, nullable=False, unique=True),
    # sha256 (hex) of the whole token; the token itself is never stored.
    Column("token_hash", Text, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
    CheckConstraint(_in("role", TOKEN_ROLES), name="role_valid"),
    Index("ix_api_tokens_tenant", "tenant_id"),
)
