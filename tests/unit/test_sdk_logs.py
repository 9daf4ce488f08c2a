"""What a worker logs: a step's own verdict in one line, anything else with its traceback."""

from __future__ import annotations

import logging

import pytest

from tests.unit.sdk_fakes import FakeServer, echo_workflow, make_worker, work_until_reported
from worker_sdk import Context, NonRetryableError, RetryAfter
from worker_sdk.context import STEP_LOGGER, Task
from worker_sdk.execution import log_raised
from worker_sdk.logs import configure_default_logging


def _ctx() -> Context:
    task = Task.model_validate(
        {"step_run_id": "s", "run_id": "r", "workflow": "w", "version": 1, "step": "a",
         "action": "w.a", "attempt": 1, "lease_token": "t", "input": {}, "parents": {}}
    )  # fmt: skip
    return Context(task)


@pytest.mark.parametrize(
    ("exc", "traceback"),
    [(NonRetryableError("card refused"), False), (RetryAfter(5), False), (KeyError("x"), True)],
)
def test_a_steps_verdict_is_one_line_and_a_crash_has_its_traceback(
    caplog: pytest.LogCaptureFixture, exc: BaseException, traceback: bool
) -> None:
    with caplog.at_level(logging.INFO):
        log_raised(_ctx(), exc)
    [record] = caplog.records
    assert type(exc).__name__ in record.getMessage()
    assert (record.exc_info is not None) is traceback


def test_default_logging_leaves_a_configured_program_alone() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    assert before  # pytest's capture handler
    configure_default_logging()
    assert root.handlers == before


async def test_succeeded_steps_write_no_line_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """INFO is ``Worker.run()``'s default: a line per step would cost a busy worker more CPU
    than the step's whole trip through the SDK. The outcomes are logged at DEBUG."""
    server = FakeServer()
    for i in range(5):
        server.add_task(str(i), "w.quick")
    worker = make_worker(server, [echo_workflow()])
    with caplog.at_level(logging.INFO):
        await work_until_reported(worker, server, 5)
    assert len(server.reports) == 5
    per_step = [r for r in caplog.records if r.name == STEP_LOGGER]
    assert per_step == []
    caplog.clear()
    server = FakeServer()
    server.add_task("x", "w.quick")
    worker = make_worker(server, [echo_workflow()])
    with caplog.at_level(logging.DEBUG):
        await work_until_reported(worker, server, 1)
    assert any("success reported" in r.getMessage() for r in caplog.records), caplog.records
