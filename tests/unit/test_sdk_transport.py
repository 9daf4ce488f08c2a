"""The shared retry helper, driven by httpx.MockTransport and a fake clock (no real sleeps)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from worker_sdk import APIError, HTTPError, RetryPolicy
from worker_sdk.calls import Call
from worker_sdk.transport import asend, parse_retry_after, send


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def problem(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": "about:blank", "title": "t", "status": status, "detail": "d", "code": code}
    return httpx.Response(status, json=body, headers=headers)


POLICY = RetryPolicy(deadline_s=60, initial_s=1, factor=2, max_delay_s=8, jitter=0)
CALL = Call("POST", "/api/v1/step-runs/1/complete", b"{}")


def run(
    transport: httpx.MockTransport, clock: FakeClock, call: Call = CALL, **kw: object
) -> httpx.Response:
    with httpx.Client(base_url="http://cairn", transport=transport) as client:
        return send(client, call, policy=POLICY, sleep=clock.sleep, clock=clock, **kw)  # type: ignore[arg-type]


def test_5xx_is_retried_with_exponential_backoff() -> None:
    transport, seen = scripted(
        httpx.Response(500), httpx.Response(502), problem(503, "db_down"), httpx.Response(200)
    )
    clock = FakeClock()
    assert run(transport, clock).status_code == 200
    assert len(seen) == 4
    assert clock.sleeps == [1, 2, 4]


def test_transport_errors_are_retried() -> None:
    transport, seen = scripted(
        httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, json={})
    )
    clock = FakeClock()
    assert run(transport, clock).json() == {}
    assert len(seen) == 3
    assert clock.sleeps == [1, 2]


def test_retries_are_logged_at_the_level_asked(caplog: pytest.LogCaptureFixture) -> None:
    """Quiet by default; a worker starting against a server not up yet asks for warnings."""
    for level, expected in ((logging.DEBUG, []), (logging.WARNING, [logging.WARNING] * 2)):
        transport, _ = scripted(
            httpx.ConnectError("refused"), httpx.Response(503), httpx.Response(200, json={})
        )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="cairn"):
            assert run(transport, FakeClock(), retry_log_level=level).json() == {}
        assert [r.levelno for r in caplog.records if "retrying" in r.message] == expected


@pytest.mark.parametrize("code", ["lease_lost", "cancelled", "already_finished"])
def test_409_is_never_retried(code: str) -> None:
    transport, seen = scripted(problem(409, code), httpx.Response(200))
    clock = FakeClock()
    with pytest.raises(APIError) as info:
        run(transport, clock)
    assert info.value.status == 409
    assert info.value.code == code
    assert info.value.problem["detail"] == "d"
    assert len(seen) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize("status", [400, 404, 413, 422])
def test_other_4xx_are_not_retried(status: int) -> None:
    transport, seen = scripted(problem(status, "x"))
    with pytest.raises(APIError, match=f"HTTP {status} \\[x\\] d"):
        run(transport, FakeClock())
    assert len(seen) == 1


def test_retry_after_seconds_is_honoured() -> None:
    transport, _ = scripted(
        problem(429, "rate_limited", {"Retry-After": "7"}),
        problem(503, "db_down", {"Retry-After": "0.5"}),
        httpx.Response(204),
    )
    clock = FakeClock()
    assert run(transport, clock).status_code == 204
    assert clock.sleeps == [7.0, 0.5]


def test_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_gives_up_at_the_deadline_and_returns_the_last_error() -> None:
    transport, seen = scripted(*[httpx.Response(503) for _ in range(10)])
    clock = FakeClock()
    policy = RetryPolicy(deadline_s=10, initial_s=1, factor=2, max_delay_s=100, jitter=0)
    with (
        httpx.Client(base_url="http://cairn", transport=transport) as client,
        pytest.raises(APIError) as info,
    ):
        send(client, CALL, policy=policy, sleep=clock.sleep, clock=clock)
    assert info.value.status == 503
    assert clock.sleeps == [1, 2, 4]  # a 4th wait of 8 s would end past the 10 s budget
    assert len(seen) == 4


def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    transport, seen = scripted(problem(429, "rate_limited", {"Retry-After": "3600"}))
    clock = FakeClock()
    with pytest.raises(APIError, match="429"):
        run(transport, clock)
    assert clock.sleeps == []
    assert len(seen) == 1


def test_exhausted_transport_errors_raise_http_error() -> None:
    transport, _ = scripted(*[httpx.ConnectError("refused") for _ in range(3)])
    policy = RetryPolicy(max_attempts=3, initial_s=0.1, jitter=0)
    clock = FakeClock()
    with (
        httpx.Client(base_url="http://cairn", transport=transport) as client,
        pytest.raises(HTTPError, match="ConnectError") as info,
    ):
        send(client, CALL, policy=policy, sleep=clock.sleep, clock=clock)
    assert not isinstance(info.value, APIError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_non_idempotent_call_only_retries_what_was_surely_not_processed() -> None:
    call = Call("POST", "/api/v1/workflows/w/runs", b"{}", idempotent=False)
    transport, seen = scripted(
        httpx.ConnectError("refused"), problem(503, "db_down"), httpx.Response(201)
    )
    assert run(transport, FakeClock(), call).status_code == 201
    for ambiguous in (httpx.ReadTimeout("slow"), httpx.Response(500), httpx.Response(502)):
        transport, seen = scripted(ambiguous, httpx.Response(201))
        with pytest.raises(HTTPError):
            run(transport, FakeClock(), call)
        assert len(seen) == 1


def test_give_up_callback_stops_retrying() -> None:
    transport, seen = scripted(httpx.Response(503), httpx.Response(503), httpx.Response(200))

    def give_up() -> bool:
        return len(seen) >= 2

    with pytest.raises(APIError, match="503"):
        run(transport, FakeClock(), give_up=give_up)
    assert len(seen) == 2


def test_jitter_only_shortens_delays() -> None:
    policy = RetryPolicy(initial_s=1, factor=2, max_delay_s=5, jitter=0.5)
    rng: Callable[[], float] = lambda: 1.0  # noqa: E731
    assert policy.backoff(0, rng) == 0.5
    assert policy.backoff(10, rng) == 2.5
    assert policy.backoff(10, lambda: 0.0) == 5


async def test_async_twin_retries_and_honours_retry_after() -> None:
    transport, seen = scripted(
        httpx.ConnectError("refused"), problem(429, "rate_limited", {"Retry-After": "2"}),
        problem(409, "lease_lost"),
    )  # fmt: skip
    clock = FakeClock()
    async with httpx.AsyncClient(base_url="http://cairn", transport=transport) as client:
        with pytest.raises(APIError) as info:
            await asend(client, CALL, policy=POLICY, sleep=clock.asleep, clock=clock)
    assert info.value.code == "lease_lost"
    assert clock.sleeps == [1, 2.0]
    assert len(seen) == 3


def test_non_json_error_body_still_gives_a_problem() -> None:
    transport, _ = scripted(httpx.Response(404, text="<html>nope</html>"))
    with pytest.raises(APIError) as info:
        run(transport, FakeClock())
    assert info.value.status == 404
    assert info.value.problem["detail"] == "<html>nope</html>"
