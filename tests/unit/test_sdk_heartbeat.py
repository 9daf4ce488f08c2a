"""The heartbeat's log levels: a transient server answer is a warning, a refusal an error."""

from __future__ import annotations

import logging

import httpx
import pytest

from worker_sdk.heartbeat import Heartbeater, Registration


def _beater(status: int) -> tuple[Heartbeater, list[str]]:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        problem = {"status": status, "code": "x", "detail": "answered"}
        return httpx.Response(status, json=problem, headers={"retry-after": "0"})

    http = httpx.Client(transport=httpx.MockTransport(handle), base_url="http://cairn")
    reg = Registration(http, name="w", actions=["a.b"], slots=1, heartbeat_interval_s=0.05)
    reg.worker_id = "w1"
    beater = Heartbeater(http, reg, held_ids=lambda: ["s1"], on_revoked=lambda *_: None)
    return beater, seen


@pytest.mark.parametrize(("status", "level"), [(503, logging.WARNING), (429, logging.WARNING),
                                               (422, logging.ERROR)])  # fmt: skip
def test_a_transient_heartbeat_failure_is_a_warning_and_a_refusal_an_error(
    caplog: pytest.LogCaptureFixture, status: int, level: int
) -> None:
    beater, seen = _beater(status)
    with caplog.at_level(logging.DEBUG, logger="cairn.worker"):
        assert beater.beat() == {}
    assert seen and all(p.endswith("/workers/w1/heartbeat") for p in seen)
    mine = [r for r in caplog.records if r.name == "cairn.worker"]  # not the retries
    assert mine and {r.levelno for r in mine} == {level}, [r.getMessage() for r in mine]
