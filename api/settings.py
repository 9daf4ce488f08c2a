"""Server settings, read from ``CAIRN_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.ids import MAX_POSITION


class Settings(BaseSettings):
    """Every knob of a Cairn API replica. All are documented in README.md."""

    model_config = SettingsConfigDict(env_prefix="CAIRN_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="Postgres URL; unset → embedded Postgres in data_dir"
    )
    data_dir: str = Field(default=".cairn/pgdata", description="embedded Postgres data directory")

    @field_validator("database_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    host: str = "127.0.0.1"
    port: int = 8080

    # Leases and heartbeats (seconds). Workers may ask for values within the bounds.
    heartbeat_interval_s: float = 5.0
    lease_timeout_s: float = 60.0
    min_lease_timeout_s: float = 1.0
    max_lease_timeout_s: float = 3600.0
    min_heartbeat_interval_s: float = 0.2

    # Long-poll.
    poll_max_wait_s: float = 30.0
    poll_recheck_s: float = 1.0
    poll_max_tasks: int = 100
    claim_floor_rescan_s: float = Field(
        default=5.0,
        ge=0,
        description="a claim reads each action's queue from where the previous claims left it "
        "(not over the dead entries of every step run claimed since the last VACUUM), and from "
        "the start once every this many seconds, which finds a step run left below (a claim that "
        "rolled back); 0: always from the start",
    )

    # Reaper (lease expiry, timeouts, cancellation grace) and cancellation.
    reaper_interval_s: float = 1.0
    reaper_batch: int = 500
    cancel_grace_s: float = 10.0

    # Limits.
    max_payload_bytes: int = 1024 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    request_head_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="a request's line and headers must arrive within this many seconds of its "
        "first byte (or of the connection's opening), else 408 and the connection closes; 0: off",
    )
    request_body_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="a request's body must arrive within this many seconds of its head, else "
        "408; 0: off",
    )
    # A step's position fills the last 16 bits of its step run's id (db/ids.py): a smallint.
    max_steps: int = Field(default=256, ge=1, le=MAX_POSITION)
    max_batch: int = 1000
    list_limit_max: int = 500

    # Authentication and request limits (see README "Authentication").
    auth: bool = Field(
        default=False, description="require a bearer token on /api/v1 (cairn serve --auth)"
    )
    auth_cache_s: float = Field(
        default=5.0, ge=0, description="verified tokens are cached this long (revocation delay)"
    )
    rate_limit_per_s: float = Field(
        default=1000.0, ge=0, description="requests per second per token per replica; 0: off"
    )
    rate_limit_burst: int = Field(default=2000, ge=1, description="token-bucket burst size")

    # Worker liveness for the cairn_workers_active gauge.
    worker_active_window_s: float = 60.0

    db_pool_size: int = 10
    db_max_overflow: int = 10
    run_migrations: bool = Field(
        default=True, description="run migrations at start-up (off when a migration job does it)"
    )
    log_level: str = "info"
    gc_threshold: int = Field(
        default=10_000,
        ge=0,
        description="after start-up the objects alive are frozen out of the cyclic GC's scans and "
        "its youngest generation is collected every this many allocations (Python's default is "
        "700: a busy server paid for collections on every request); 0 leaves the GC alone",
    )
