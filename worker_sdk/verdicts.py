"""What a worker does with the server's verdict on a result it reported: log it, or, when a batch
was refused as a whole, send that result alone on the one-result endpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx

from worker_sdk import calls, outcome
from worker_sdk.context import Context, step_log_enabled
from worker_sdk.errors import APIError, HTTPError
from worker_sdk.outcome import Outcome
from worker_sdk.reporter import SEND_ONE_BY_ONE
from worker_sdk.transport import RetryPolicy, asend

FAILURE_REJECTED = "FailureRejected"


def settled(verdict: dict[str, Any] | Exception, kind: str, ctx: Context, dropped: bool) -> bool:
    """Log the verdict on a batched result; False when it must be sent alone (``send_alone``)."""
    if isinstance(verdict, APIError):
        ctx.log.error("could not report %s: %s", kind, verdict)
        return True
    if isinstance(verdict, Exception):
        if not dropped:
            ctx.log.error("could not report %s, the lease will expire: %s", kind, verdict)
        return True
    status = verdict.get("status")
    if status == SEND_ONE_BY_ONE:
        return False
    if (
        status == "rejected"
        and verdict.get("code") == "already_finished"
        and (verdict.get("conflicting") is False)
    ):
        ctx.log.info("%s was already reported", kind)  # a resend after a cut
    elif status == "rejected":
        ctx.log.warning(
            "%s not accepted, dropped: %s (%s)", kind, verdict.get("code"), verdict.get("detail")
        )
    elif status != "dropped" and step_log_enabled(logging.DEBUG):
        # DEBUG: at INFO (``Worker.run()``'s default) a line per step costs a busy worker
        # more CPU than the step's whole trip through the SDK.
        ctx.log.debug("%s reported", "success" if kind == "complete" else "failure")
    return True


async def send_alone(
    http: httpx.AsyncClient,
    ctx: Context,
    result: Outcome,
    *,
    deadline_s: float,
    give_up: Callable[[], bool],
) -> None:
    """The one-result endpoints, for when a batch was refused as a whole."""
    try:
        await asend(
            http,
            calls.report(ctx.step_run_id, ctx.task.lease_token, result),
            timeout=30.0,
            policy=RetryPolicy(deadline_s=deadline_s, max_delay_s=5.0),
            give_up=give_up,
        )
    except APIError as exc:
        if exc.status == 409:
            ctx.log.warning("%s not accepted, dropped: %s", result.kind, exc)
        elif exc.status in (413, 422) and result.kind == "complete":
            ctx.log.error("server rejected the step output: %s", exc)
            rejected = outcome.fail("OutputRejected", str(exc), retryable=False)
            await send_alone(http, ctx, rejected, deadline_s=deadline_s, give_up=give_up)
        elif exc.status in (413, 422) and result.body["error"]["type"] != FAILURE_REJECTED:
            # The failure itself is refused: report one the server takes, not nothing (which
            # would leave the step running until its lease expires, its error lost).
            ctx.log.error("server rejected the step's failure: %s", exc)
            error = result.body["error"]
            plain = outcome.fail(
                FAILURE_REJECTED,
                f"{str(error.get('type'))[:200]}: {str(error.get('message'))[:2000]}"
                f" (refused by the server as sent: {exc})",
                retryable=result.retryable,
            )
            await send_alone(http, ctx, plain, deadline_s=deadline_s, give_up=give_up)
        else:
            ctx.log.error("could not report %s: %s", result.kind, exc)
        return
    except HTTPError as exc:
        ctx.log.error("could not report %s, the lease will expire: %s", result.kind, exc)
        return
    ctx.log.info("%s reported", "success" if result.kind == "complete" else "failure")
