"""Cairn worker SDK: declare workflows, run workers, and drive runs over the REST API."""

from worker_sdk.client import AsyncClient, Client
from worker_sdk.context import Context, Task
from worker_sdk.errors import (
    APIError,
    CairnError,
    DefinitionError,
    HTTPError,
    InvalidArgument,
    LeaseLostError,
    NonRetryableError,
    ParentNotFoundError,
    RetryAfter,
    RunWaitTimeout,
)
from worker_sdk.transport import RetryPolicy
from worker_sdk.worker import Worker
from worker_sdk.workflow import Backoff, StepSpec, Workflow

__all__ = [
    "APIError",
    "AsyncClient",
    "Backoff",
    "CairnError",
    "Client",
    "Context",
    "DefinitionError",
    "HTTPError",
    "InvalidArgument",
    "LeaseLostError",
    "NonRetryableError",
    "ParentNotFoundError",
    "RetryAfter",
    "RetryPolicy",
    "RunWaitTimeout",
    "StepSpec",
    "Task",
    "Worker",
    "Workflow",
]
