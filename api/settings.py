"""Server settings, read from ``CAIRN_*`` environment variables (pydantic-settings).

:func:`load_settings` is how the ``cairn`` command reads them: a value that cannot work raises
:class:`SettingsError`, one line per problem naming the setting and what it allows.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Any

import annotated_types
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.ids import MAX_POSITION

DEFAULT_PORT = 8080
# uvicorn's levels (``trace`` is below ``debug``); any case is accepted, stored lower-case.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# The schemes ``db.engine.async_url`` turns into SQLAlchemy's asyncpg dialect.
DATABASE_SCHEMES = (
    "postgresql",
    "postgres",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
)
DATABASE_URL_FORM = "postgresql://user:password@host:port/database"
# Kubernetes gives every pod of a namespace, for a Service named `cairn`, CAIRN_PORT set to
# the Service's address (`tcp://10.0.0.1:8080`) unless the pod sets `enableServiceLinks: false`.
SERVICE_LINK = re.compile(r"^(tcp|udp|sctp)://\S+:\d+$")


def is_service_link(value: object) -> bool:
    """Whether ``value`` is the address Kubernetes puts in ``<SERVICE>_PORT`` (not a port)."""
    return isinstance(value, str) and SERVICE_LINK.match(value.strip()) is not None


def port_env_is_service_link() -> bool:
    """``CAIRN_PORT`` holds a Kubernetes service link, which the port setting ignores."""
    return is_service_link(os.environ.get("CAIRN_PORT"))


class Settings(BaseSettings):
    """Every knob of a Cairn API replica. All are documented in README.md."""

    model_config = SettingsConfigDict(env_prefix="CAIRN_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="Postgres URL; unset → embedded Postgres in data_dir"
    )
    data_dir: str = Field(default=".cairn/pgdata", description="embedded Postgres data directory")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if not value:
            return None  # empty is unset
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            raise ValueError(f"not a database URL; expected {DATABASE_URL_FORM}") from None
        if url.drivername not in DATABASE_SCHEMES:
            raise ValueError(
                f"scheme {url.drivername!r} is not PostgreSQL's; expected {DATABASE_URL_FORM}"
            )
        if not url.database:
            raise ValueError(f"names no database; expected {DATABASE_URL_FORM}")
        return value

    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)

    @field_validator("host", mode="before")
    @classmethod
    def _unbracket(cls, value: Any) -> Any:
        """``[::1]``, the form an IPv6 address takes in a URL, binds as ``::1``."""
        if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
            try:
                return str(ipaddress.IPv6Address(value[1:-1]))
            except ValueError:
                raise ValueError("only an IPv6 address goes in brackets, as in [::1]") from None
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _not_a_service_link(cls, value: Any) -> Any:
        # Not a port the operator chose: Kubernetes' address of a Service named `cairn`.
        return DEFAULT_PORT if is_service_link(value) else value

    # Leases and heartbeats (seconds). Workers may ask for values within the bounds.
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    lease_timeout_s: float = Field(default=60.0, gt=0)
    min_lease_timeout_s: float = Field(default=1.0, gt=0)
    max_lease_timeout_s: float = Field(default=3600.0, gt=0)
    min_heartbeat_interval_s: float = Field(default=0.2, ge=0)

    # Long-poll.
    poll_max_wait_s: float = Field(default=30.0, ge=0)
    poll_recheck_s: float = Field(default=1.0, gt=0)
    poll_max_tasks: int = Field(default=100, ge=1)
    claim_floor_rescan_s: float = Field(
        default=5.0,
        ge=0,
        description="a claim reads each action's queue from where the previous claims left it "
        "(not over the dead entries of every step run claimed since the last VACUUM), and from "
        "the start once every this many seconds, which finds a step run left below (a claim that "
        "rolled back); 0: always from the start",
    )

    # Reaper (lease expiry, timeouts, cancellation grace) and cancellation.
    reaper_interval_s: float = Field(default=1.0, gt=0)
    reaper_batch: int = Field(default=500, ge=1)
    cancel_grace_s: float = Field(default=10.0, ge=0)

    # Limits.
    max_payload_bytes: int = Field(default=1024 * 1024, ge=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
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
    max_batch: int = Field(default=1000, ge=1)
    list_limit_max: int = Field(default=500, ge=1)

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
    worker_active_window_s: float = Field(default=60.0, gt=0)

    # The replica's connections: at most their sum, so at least one between them.
    db_pool_size: int = Field(default=10, ge=0)
    db_max_overflow: int = Field(default=10, ge=0)
    run_migrations: bool = Field(
        default=True, description="run migrations at start-up (off when a migration job does it)"
    )
    log_level: str = Field(default="info", description="one of " + ", ".join(LOG_LEVELS))

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().lower() not in LOG_LEVELS:
                raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
            return value.strip().lower()
        return value

    gc_threshold: int = Field(
        default=10_000,
        ge=0,
        description="after start-up the objects alive are frozen out of the cyclic GC's scans and "
        "its youngest generation is collected every this many allocations (Python's default is "
        "700: a busy server paid for collections on every request); 0 leaves the GC alone",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.min_lease_timeout_s > self.max_lease_timeout_s:
            raise ValueError(
                f"CAIRN_MIN_LEASE_TIMEOUT_S ({self.min_lease_timeout_s:g}) must not exceed"
                f" CAIRN_MAX_LEASE_TIMEOUT_S ({self.max_lease_timeout_s:g})"
            )
        if self.db_pool_size + self.db_max_overflow < 1:
            raise ValueError(
                "CAIRN_DB_POOL_SIZE + CAIRN_DB_MAX_OVERFLOW must be at least 1 (the replica's"
                " database connections at most; with none every request fails)"
            )
        return self


class SettingsError(ValueError):
    """Settings that cannot work: :attr:`lines`, one per problem, name each and what it allows."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def load_settings(overrides: Mapping[str, tuple[str, object]] | None = None) -> Settings:
    """The settings from the environment, with ``overrides`` (field: (flag, value)) on top, as
    given on the command line. Raises :class:`SettingsError` if any value is unusable."""
    overrides = overrides or {}
    try:
        values: dict[str, Any] = {field: value for field, (_, value) in overrides.items()}
        return Settings(**values)
    except ValidationError as err:
        raise SettingsError([_describe(e, overrides) for e in err.errors()]) from None


def allowed(field: str) -> str:
    """What ``field`` accepts, in words (from its type and bounds)."""
    info = Settings.model_fields[field]
    if info.annotation is bool:
        return "true or false (also 1/0, yes/no, on/off)"
    kind = {int: "an integer", float: "a number"}.get(info.annotation)  # type: ignore[arg-type]
    if kind is None:
        return "a string"
    low = high = ""
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Gt):
            low = f"> {bound.gt}"
        elif isinstance(bound, annotated_types.Ge):
            low = f">= {bound.ge}"
        elif isinstance(bound, annotated_types.Le):
            high = f"{bound.le}"
    if low.startswith(">=") and high:
        return f"{kind} from {low[3:]} to {high}"
    if high:
        return f"{kind} <= {high}"
    return f"{kind} {low}" if low else kind


def _describe(error: Mapping[str, Any], overrides: Mapping[str, tuple[str, object]]) -> str:
    loc = error.get("loc") or ()
    reason = str(error.get("msg", "invalid"))
    if error.get("type") == "value_error":
        reason = str(error.get("ctx", {}).get("error", reason))
    if not loc:  # a model validator: its message names the settings
        return reason
    field = str(loc[0])
    name = overrides[field][0] if field in overrides else f"CAIRN_{field.upper()}"
    shown = _shown(field, error.get("input"))
    if error.get("type") != "value_error":
        reason = f"must be {allowed(field)}"
    return f"{name}={shown} is not allowed: {reason}"


def _shown(field: str, value: object) -> str:
    """The value as the operator gave it, without a password."""
    if field == "database_url" and isinstance(value, str):
        try:
            from sqlalchemy.engine import make_url

            return repr(make_url(value).render_as_string(hide_password=True))
        except Exception:
            return "(unparseable URL, not shown)"
    return repr(value) if isinstance(value, str) else str(value)
