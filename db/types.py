"""Frozen result models returned by the data layer, and the effects a transaction had."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    version: int
    definition: dict[str, Any]
    created_at: datetime
    versions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    worker_id: str
    lease_token: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str
    error: Any


@dataclass(frozen=True, slots=True)
class StepRun:
    step_run_id: str
    name: str
    action: str
    status: str
    attempt: int
    max_attempts: int
    delivery: str
    is_on_failure: bool
    parents: tuple[str, ...]
    output: Any
    error: Any
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    attempts: tuple[Attempt, ...] = ()


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    workflow: str
    version: int
    status: str
    input: Any
    idempotency_key: str | None
    error: Any
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    steps: tuple[StepRun, ...] | None = None


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: tuple[Run, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    name: str
    actions: tuple[str, ...]
    slots: int
    heartbeat_interval_s: float
    lease_timeout_s: float


@dataclass(frozen=True, slots=True)
class PollResult:
    # Each claimed step run as a JSON object, rendered by Postgres (the poll answer's ``tasks``
    # items, passed through as they are: no decoding and re-encoding of inputs in the API).
    tasks: tuple[str, ...]
    cancelled: tuple[str, ...]
    actions: tuple[str, ...]
    full: bool = False  # the claim took all it could (or had no room): work may remain
    floors: str | None = None  # where the next claim of each action may start (db.claim_floors)
    lease_timeout_s: float | None = None  # the worker's (from CLAIM; not from cairn_poll)


@dataclass
class Effects:
    """What a transaction changed, for metrics and wake-ups; filled in by the data layer."""

    step_statuses: Counter[str] = field(default_factory=Counter)
    run_statuses: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    lease_expirations: int = 0
    ignored_cancellations: int = 0
    step_durations: list[float] = field(default_factory=list)
    queue_latencies: list[float] = field(default_factory=list)
    notify: set[tuple[str, str]] = field(default_factory=set)

    def merge(self, other: Effects) -> None:
        self.step_statuses.update(other.step_statuses)
        self.run_statuses.update(other.run_statuses)
        self.retries += other.retries
        self.lease_expirations += other.lease_expirations
        self.ignored_cancellations += other.ignored_cancellations
        self.step_durations.extend(other.step_durations)
        self.queue_latencies.extend(other.queue_latencies)
        self.notify |= other.notify
