"""Context: what a step function sees."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from worker_sdk import Context, LeaseLostError, ParentNotFoundError, Task, Workflow


def make_task(**over: Any) -> Task:
    raw: dict[str, Any] = {
        "step_run_id": "sr-1",
        "run_id": "run-1",
        "workflow": "orders",
        "version": 2,
        "step": "ship",
        "action": "orders.ship",
        "attempt": 3,
        "lease_token": "tok",
        "input": {"order": 7},
        "parents": {"fetch": {"n": 1}, "charge": None},
        "timeout_at": "2030-01-01T00:00:00Z",
        "lease_expires_at": "2030-01-01T00:00:00Z",
        "delivery": "at_least_once",
        "something_new": "ignored",
    }
    raw.update(over)
    return Task.model_validate(raw)


def test_fields_are_exposed() -> None:
    ctx = Context(make_task())
    assert ctx.input == {"order": 7}
    assert ctx.attempt == 3
    assert ctx.step_run_id == "sr-1"
    assert ctx.run_id == "run-1"
    assert ctx.workflow == "orders"
    assert ctx.version == 2
    assert ctx.step == "ship"
    assert ctx.action == "orders.ship"
    assert dict(ctx.parents) == {"fetch": {"n": 1}, "charge": None}
    with pytest.raises(TypeError):
        ctx.parents["x"] = 1  # type: ignore[index]


def test_parent_output_by_name_and_by_function() -> None:
    wf = Workflow("orders")

    @wf.step
    def fetch(ctx: Context) -> None: ...

    @wf.step(name="charge")
    def charge_card(ctx: Context) -> None: ...

    ctx = Context(make_task(), resolve_step=wf.step_name)
    assert ctx.parent_output("fetch") == {"n": 1}
    assert ctx.parent_output(fetch) == {"n": 1}
    assert ctx.parent_output(charge_card) is None  # a parent whose output is null
    with pytest.raises(ParentNotFoundError, match="'nope' is not a parent of step 'ship'"):
        ctx.parent_output("nope")


def test_cancellation_is_thread_safe_and_first_reason_wins() -> None:
    ctx = Context(make_task())
    assert ctx.cancelled is False
    ctx.raise_if_cancelled()
    assert ctx.wait_cancelled(0.001) is False

    t = threading.Thread(target=ctx.mark_cancelled, args=("lost",))
    t.start()
    assert ctx.wait_cancelled(5) is True
    t.join()
    assert ctx.cancelled is True
    assert ctx.cancel_reason == "lost"
    assert ctx.mark_cancelled("cancelled") is False
    assert ctx.cancel_reason == "lost"
    with pytest.raises(LeaseLostError, match="sr-1 stopped: lost"):
        ctx.raise_if_cancelled()


def test_log_prefixes_step_identity(caplog: pytest.LogCaptureFixture) -> None:
    ctx = Context(make_task())
    with caplog.at_level(logging.INFO, logger="cairn.worker.step"):
        ctx.log.info("hello %s", "world")
    (record,) = caplog.records
    assert record.name == "cairn.worker.step"
    assert record.getMessage() == "[orders.ship run=run-1 attempt=3] hello world"
    assert getattr(record, "cairn_step_run_id") == "sr-1"  # noqa: B009


def test_task_requires_lease_fields() -> None:
    with pytest.raises(ValueError, match="lease_token"):
        Task.model_validate({"step_run_id": "x", "run_id": "r", "workflow": "w", "version": 1,
                             "step": "s", "action": "a", "attempt": 1})  # fmt: skip
