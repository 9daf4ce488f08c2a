"""Request and response bodies of the REST API (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic import Strict as StrictInput

# Request bodies take JSON types as they are: no bool → int, no "2" → 2.
SInt = Annotated[int, StrictInput()]
SFloat = Annotated[float, StrictInput()]  # an integer is a fine float
SBool = Annotated[bool, StrictInput()]
NAME_PATTERN = r"^[a-z0-9_.-]{1,64}$"
ACTION_PATTERN = r"^[^\x00-\x1f\x7f]{1,200}$"


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000), which Postgres cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "must not contain an unpaired UTF-16 surrogate (such as \\ud800)"
        ) from None
    return value


# Free text stored in a text column: any string Postgres can store (no NUL, valid Unicode).
Text = Annotated[str, AfterValidator(_storable)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- workflows ----------------------------------------------------------------------------------


class BackoffIn(Strict):
    initial_s: SFloat | None = Field(default=None, ge=0, le=86400)
    factor: SFloat | None = Field(default=None, ge=1, le=100)
    max_s: SFloat | None = Field(default=None, ge=0, le=86400)
    jitter: SFloat | None = Field(default=None, ge=0, le=1)


class StepIn(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    action: str | None = Field(default=None, pattern=ACTION_PATTERN)
    parents: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, max_length=256
    )
    retries: SInt = Field(default=0, ge=0, le=1000)
    backoff: BackoffIn | None = None
    timeout_s: SFloat = Field(default=60.0, ge=0.1, le=7 * 86400)
    schedule_timeout_s: SFloat = Field(default=300.0, ge=0.1, le=7 * 86400)
    delivery: Literal["at_least_once", "at_most_once"] = "at_least_once"


class WorkflowIn(Strict):
    steps: list[StepIn] = Field(min_length=1, max_length=10_000)
    on_failure: StepIn | None = None
    description: Text | None = Field(default=None, max_length=2000)


class WorkflowOut(BaseModel):
    name: str
    version: int
    definition: dict[str, Any]
    created_at: datetime
    versions: list[int] | None = None


class WorkflowList(BaseModel):
    workflows: list[WorkflowOut]


# --- runs ---------------------------------------------------------------------------------------


class TriggerIn(Strict):
    input: Any = Field(default_factory=dict)
    idempotency_key: Text | None = Field(default=None, min_length=1, max_length=255)
    version: SInt | None = Field(default=None, ge=1, le=2**31 - 1)


class BulkRunIn(Strict):
    input: Any = Field(default_factory=dict)
    idempotency_key: Text | None = Field(default=None, min_length=1, max_length=255)


class BulkTriggerIn(Strict):
    runs: list[BulkRunIn] = Field(min_length=1, max_length=10_000)
    version: SInt | None = Field(default=None, ge=1, le=2**31 - 1)


class BulkRunOut(BaseModel):
    id: str
    idempotency_key: str | None
    created: bool


class BulkTriggerOut(BaseModel):
    workflow: str
    version: int
    runs: list[BulkRunOut]


class AttemptOut(BaseModel):
    attempt: int
    worker_id: str
    lease_token: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str
    error: Any


class StepRunOut(BaseModel):
    step_run_id: str
    name: str
    action: str
    status: str
    attempt: int
    max_attempts: int
    delivery: str
    on_failure: bool
    parents: list[str]
    output: Any
    error: Any
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested: bool
    attempts: list[AttemptOut]


class RunOut(BaseModel):
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
    steps: list[StepRunOut] | None = None


class RunList(BaseModel):
    runs: list[RunOut]
    next_cursor: str | None


# --- workers ------------------------------------------------------------------------------------


class WorkerIn(Strict):
    name: Text = Field(min_length=1, max_length=200)
    actions: list[Annotated[str, Field(pattern=ACTION_PATTERN)]] = Field(
        min_length=1, max_length=1000
    )
    slots: SInt = Field(default=1, ge=1, le=10_000)
    heartbeat_interval_s: SFloat | None = Field(default=None, gt=0, le=86400)
    lease_timeout_s: SFloat | None = Field(default=None, gt=0, le=86400)


class WorkerOut(BaseModel):
    id: str
    name: str
    actions: list[str]
    slots: int
    heartbeat_interval_s: float
    lease_timeout_s: float
    poll_accepts_results: bool = Field(
        default=True, description="Polls may carry results (``PollIn.results``)."
    )


class TaskOut(BaseModel):
    step_run_id: str
    run_id: str
    workflow: str
    version: int
    step: str
    action: str
    attempt: int = Field(
        description="Numbered from 1. A released attempt (its worker deregistered) is numbered "
        "too, though it does not use up a retry."
    )
    lease_token: str = Field(description="Fences every report and heartbeat of this attempt.")
    input: Any = Field(description="The run's input.")
    parents: dict[str, Any] = Field(
        description="Each parent step's name mapped to its output ({} for a root step). "
        "For an on_failure step: {failed_step, error, attempt} of the step that failed."
    )
    timeout_at: datetime = Field(description="The attempt fails as timed out after this.")
    lease_expires_at: datetime = Field(description="Heartbeat before this to keep the lease.")
    delivery: Literal["at_least_once", "at_most_once"]


class HeartbeatIn(Strict):
    step_run_ids: list[UUID] = Field(default_factory=list, max_length=10_000)


LeaseState = Literal["held", "cancelled", "lost"]


class HeartbeatOut(BaseModel):
    step_runs: dict[str, LeaseState]


# --- step runs ----------------------------------------------------------------------------------


class CompleteIn(Strict):
    lease_token: UUID
    output: Any = None


class ErrorIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Text = Field(default="Error", max_length=200)
    message: Text = Field(default="", max_length=65536)


class FailIn(Strict):
    lease_token: UUID
    error: ErrorIn = Field(default_factory=ErrorIn)
    retryable: SBool = True
    retry_after_s: SFloat | None = Field(default=None, ge=0, le=86400)


class OutcomeOut(BaseModel):
    status: str


class ResultIn(Strict):
    """One step run's result: a completion, or a failure when ``error`` is present."""

    step_run_id: UUID
    lease_token: UUID
    output: Any = None
    error: ErrorIn | None = None
    retryable: SBool = True
    retry_after_s: SFloat | None = Field(default=None, ge=0, le=86400)


class ResultsIn(Strict):
    results: list[ResultIn] = Field(min_length=1, max_length=10_000)


class ResultOut(BaseModel):
    step_run_id: str
    status: Literal["succeeded", "queued", "failed", "rejected"]
    code: str | None = None
    detail: str | None = None
    conflicting: bool | None = None


class PollIn(Strict):
    max_tasks: SInt = Field(default=1, ge=1, le=100_000)
    wait_s: SFloat = Field(default=30.0, ge=0, le=86400)
    results: list[ResultIn] = Field(
        default_factory=list,
        max_length=10_000,
        description="Finished step runs, applied before the claim; a poll carrying any does "
        "not wait.",
    )


class PollOut(BaseModel):
    tasks: list[TaskOut]
    cancelled: list[str]
    results: list[ResultOut] = Field(
        description="One answer per carried result, in order ([] when it carried none)."
    )


class ResultsOut(BaseModel):
    results: list[ResultOut]


class ProblemItem(BaseModel):
    loc: list[str] = Field(description='Where in the request: ["body", "results", "3", "output"].')
    msg: str
    type: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    errors: list[ProblemItem] | None = Field(
        default=None,
        description="What in the request was refused, when it can be pointed at (422 "
        "validation errors; a results item the server cannot store, 413 or 422).",
    )
