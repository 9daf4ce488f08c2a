"""A result the server refuses as sent is replaced by one it takes, never dropped (a dropped
result leaves its step running until the lease expires, and its error lost)."""

from __future__ import annotations

import json

import httpx

from tests.unit.test_sdk_context import make_task
from worker_sdk import outcome, verdicts
from worker_sdk.context import Context


async def test_a_refused_failure_is_reported_plainly() -> None:
    sent: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        if len(sent) == 1:  # as the server answers a failure it cannot store
            problem = {"status": 422, "code": "invalid_payload", "detail": "error is not storable"}
            return httpx.Response(
                422, json=problem, headers={"content-type": "application/problem+json"}
            )
        return httpx.Response(200, json={"status": "failed"})

    failure = outcome.fail("Weird", "original message", retryable=False)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handle), base_url="http://cairn"
    ) as http:
        await verdicts.send_alone(
            http, Context(make_task()), failure, deadline_s=5, give_up=lambda: False
        )
    assert len(sent) == 2
    error = sent[1]["error"]
    assert isinstance(error, dict) and error["type"] == verdicts.FAILURE_REJECTED
    assert "Weird: original message" in error["message"] and "invalid_payload" in error["message"]
    assert sent[1]["retryable"] is False and sent[1]["lease_token"] == "tok"
