"""What a step sees: the leased ``Task`` and the ``Context`` passed to the step function."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from worker_sdk.errors import LeaseLostError, ParentNotFoundError

STEP_LOGGER = "cairn.worker.step"
_step_log = logging.getLogger(STEP_LOGGER)
# Guards every Context's cancel state: cancellations are rare, and a lock per step is not free.
_CANCEL_LOCK = threading.Lock()


def step_log_enabled(level: int) -> bool:
    """Whether step records at ``level`` go anywhere (building a step's log adapter is not free)."""
    return _step_log.isEnabledFor(level)


class Task(BaseModel):
    """A leased step run, as returned by ``POST /workers/{id}/poll``."""

    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    step_run_id: str
    run_id: str
    workflow: str
    version: int
    step: str
    action: str
    attempt: int
    lease_token: str
    input: Any = None
    parents: dict[str, Any] = Field(default_factory=dict)
    timeout_at: str | None = None
    lease_expires_at: str | None = None
    delivery: str = "at_least_once"


_TASKS: TypeAdapter[list[Task]] = TypeAdapter(list[Task])


def parse_tasks(raw: list[Any], log: logging.Logger) -> list[Task]:
    """The well-formed tasks of a poll answer (all at once; one by one when any is not)."""
    try:
        return _TASKS.validate_python(raw)
    except ValidationError:
        pass
    tasks: list[Task] = []
    for item in raw:
        try:
            tasks.append(Task.model_validate(item))
        except ValidationError as exc:
            log.error("ignoring malformed task %r: %s", item, exc)
    return tasks


class _StepLogAdapter(logging.LoggerAdapter[logging.Logger]):
    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        prefix = f"[{extra['cairn_workflow']}.{extra['cairn_step']} run={extra['cairn_run_id']}"
        return f"{prefix} attempt={extra['cairn_attempt']}] {msg}", kwargs


class Context:
    """The argument of every step function.

    ``cancelled`` turns True (from another thread) when the server says the run was cancelled
    or the lease was lost; a long step should check it and return early. Its result is dropped.
    """

    def __init__(
        self,
        task: Task,
        *,
        resolve_step: Callable[[Any], str] | None = None,
    ) -> None:
        self._task = task
        self._resolve = resolve_step
        self._flag = False  # cancelled; the Event below exists only once a step waits on it
        self._cancelled: threading.Event | None = None
        self._reason: str | None = None
        self._parents: Mapping[str, Any] = MappingProxyType(dict(task.parents))

    @functools.cached_property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry the workflow, step, run, step run and attempt."""
        task = self._task
        return _StepLogAdapter(
            _step_log,
            {
                "cairn_workflow": task.workflow,
                "cairn_step": task.step,
                "cairn_run_id": task.run_id,
                "cairn_step_run_id": task.step_run_id,
                "cairn_attempt": task.attempt,
            },
        )

    def __repr__(self) -> str:
        return (
            f"Context({self.workflow}.{self.step}, run_id={self.run_id!r}, "
            f"attempt={self.attempt}, cancelled={self.cancelled})"
        )

    @property
    def task(self) -> Task:
        return self._task

    @property
    def input(self) -> Any:
        return self._task.input

    @property
    def parents(self) -> Mapping[str, Any]:
        """Outputs of the parent steps, by step name (read-only)."""
        return self._parents

    @property
    def attempt(self) -> int:
        return self._task.attempt

    @property
    def step_run_id(self) -> str:
        """Stable across attempts of this step: use it as an idempotency key for side effects."""
        return self._task.step_run_id

    @property
    def run_id(self) -> str:
        return self._task.run_id

    @property
    def workflow(self) -> str:
        return self._task.workflow

    @property
    def version(self) -> int:
        return self._task.version

    @property
    def step(self) -> str:
        return self._task.step

    @property
    def action(self) -> str:
        return self._task.action

    @property
    def cancelled(self) -> bool:
        return self._flag

    @property
    def cancel_reason(self) -> str | None:
        """``"cancelled"``, ``"lost"``, ``"shutdown"`` or None."""
        with _CANCEL_LOCK:
            return self._reason

    def parent_output(self, step: str | Callable[..., Any]) -> Any:
        """Output of a parent step, given by name or by its decorated function."""
        if isinstance(step, str):
            name = step
        elif self._resolve is not None:
            name = self._resolve(step)
        else:
            name = getattr(step, "__name__", repr(step))
        try:
            return self._parents[name]
        except KeyError:
            known = sorted(self._parents)
            raise ParentNotFoundError(
                f"{name!r} is not a parent of step {self.step!r} (parents: {known})"
            ) from None

    def raise_if_cancelled(self) -> None:
        """Raise ``LeaseLostError`` if the step should stop."""
        if self.cancelled:
            raise LeaseLostError(f"step run {self.step_run_id} stopped: {self.cancel_reason}")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block (sync steps) up to ``timeout`` s; True as soon as the step is cancelled.

        A cancellable ``time.sleep``: ``if ctx.wait_cancelled(5): return``.
        """
        with _CANCEL_LOCK:
            if self._cancelled is None:
                self._cancelled = threading.Event()
                if self._flag:
                    self._cancelled.set()
            event = self._cancelled
        return event.wait(timeout)

    def mark_cancelled(self, reason: str) -> bool:
        """Flag the step as cancelled (thread-safe). False if it already was."""
        with _CANCEL_LOCK:
            if self._flag:
                return False
            self._reason = reason
            self._flag = True
            if self._cancelled is not None:
                self._cancelled.set()
            return True
