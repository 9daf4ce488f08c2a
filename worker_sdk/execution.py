"""Running one step: dispatch table, sync steps in threads, async steps on the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from worker_sdk import outcome
from worker_sdk.context import Context
from worker_sdk.errors import DefinitionError, NonRetryableError, RetryAfter
from worker_sdk.outcome import Outcome
from worker_sdk.workflow import StepSpec, Workflow


def call_sync(spec: StepSpec, ctx: Context) -> Outcome:
    """Run a sync step in an executor thread; never raises."""
    try:
        value = spec.fn(ctx)
    except BaseException as exc:  # SystemExit in a step must not kill the worker
        log_raised(ctx, exc)
        return outcome.from_exception(exc)
    return outcome.from_result(value)


def log_raised(ctx: Context, exc: BaseException) -> None:
    """A step's own verdict (``NonRetryableError``, ``RetryAfter``) in one line; anything else
    it raised with its traceback."""
    if isinstance(exc, NonRetryableError | RetryAfter):
        ctx.log.warning("step raised %s: %s", type(exc).__name__, exc)
    else:
        ctx.log.warning("step raised %s", type(exc).__name__, exc_info=exc)


def action_table(workflows: Iterable[Workflow]) -> dict[str, tuple[Workflow, StepSpec]]:
    """Map every action to its workflow and step; reject one action with two functions."""
    table: dict[str, tuple[Workflow, StepSpec]] = {}
    names: set[str] = set()
    for wf in workflows:
        if wf.name in names:
            raise DefinitionError(f"workflow {wf.name!r} is given twice")
        names.add(wf.name)
        wf.validate()
        for spec in wf.all_steps():
            known = table.setdefault(spec.action, (wf, spec))
            if known[1].fn is not spec.fn:
                raise DefinitionError(
                    f"action {spec.action!r} is bound to two functions "
                    f"({known[0].name}.{known[1].name} and {wf.name}.{spec.name})"
                )
    if not table:
        raise DefinitionError("a worker needs at least one workflow with steps")
    return table


def unregistered(action: str) -> Outcome:
    """The outcome of a task whose action this worker has no step for."""
    return outcome.fail(
        "ActionNotRegistered", f"this worker has no step for action {action!r}", retryable=True
    )


async def run_async_step(
    spec: StepSpec, ctx: Context, *, dropped: Callable[[], bool] = lambda: False
) -> Outcome:
    """Run an async step on the loop and classify how it ended (sync steps: ``call_sync`` on
    the step threads). Re-raises only our own cancellation."""
    try:
        value = await spec.fn(ctx)
    except asyncio.CancelledError as exc:
        current = asyncio.current_task()
        if dropped() or (current is not None and current.cancelling()):
            raise
        return outcome.from_exception(exc)  # raised by the step's own code
    except BaseException as exc:  # SystemExit in a step must not stop the worker (as call_sync)
        log_raised(ctx, exc)
        return outcome.from_exception(exc)
    return outcome.from_result(value)
