"""Client / AsyncClient against a MockTransport: paths, bodies, headers, wait()."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from worker_sdk import (
    APIError,
    AsyncClient,
    Client,
    Context,
    HTTPError,
    InvalidArgument,
    RetryPolicy,
    RunWaitTimeout,
    Workflow,
)


class Recorder:
    def __init__(self, *answers: Any) -> None:
        self.requests: list[httpx.Request] = []
        self.answers = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def make_client(rec: Recorder, **kw: Any) -> Client:
    return Client("http://cairn:8080/", transport=httpx.MockTransport(rec), **kw)


def test_register_workflow_puts_its_definition_with_token() -> None:
    wf = Workflow("orders")

    @wf.step
    def fetch(ctx: Context) -> None: ...

    rec = Recorder({"name": "orders", "version": 1, "definition": {}, "created_at": "x"})
    with make_client(rec, token="s3cret", headers={"x-extra": "1"}) as client:
        assert client.register(wf)["version"] == 1
        client.register({"steps": [{"name": "a"}]}, name="raw")
        # Raised before anything is sent: InvalidArgument, a ValueError too.
        with pytest.raises(InvalidArgument, match="needs name"):
            client.register({"steps": []})
        with pytest.raises(ValueError, match="differs from the workflow's"):
            client.register(wf, name="other")
    first = rec.requests[0]
    assert (first.method, first.url.path) == ("PUT", "/api/v1/workflows/orders")
    assert first.headers["authorization"] == "Bearer s3cret"
    assert first.headers["x-extra"] == "1"
    assert first.headers["content-type"] == "application/json"
    assert rec.body(0) == {"steps": [{"name": "fetch"}]}
    assert rec.requests[1].url.path == "/api/v1/workflows/raw"


def test_trigger_list_cancel_replay() -> None:
    rec = Recorder(
        {"id": "r1"}, {"id": "r2"}, {"id": "r3"}, {"runs": [], "next_cursor": None}, {}, {}
    )
    with make_client(rec) as client:
        client.trigger("orders", {"n": 1}, idempotency_key="k", version=2)
        client.trigger("orders")
        client.trigger("orders", None)  # JSON null, as trigger_many sends it
        client.list_runs(workflow="orders", status="failed", limit=10)
        client.cancel("r1")
        client.replay("r1")
    assert rec.body(0) == {"input": {"n": 1}, "idempotency_key": "k", "version": 2}
    assert rec.body(1) == {}
    assert rec.body(2) == {"input": None}
    listing = rec.requests[3].url
    assert listing.path == "/api/v1/runs"
    assert dict(listing.params) == {"workflow": "orders", "status": "failed", "limit": "10"}
    assert [r.url.path for r in rec.requests[4:]] == [
        "/api/v1/runs/r1/cancel",
        "/api/v1/runs/r1/replay",
    ]


def test_iter_runs_follows_the_cursor() -> None:
    rec = Recorder(
        {"runs": [{"id": "a"}, {"id": "b"}], "next_cursor": "c1"},
        {"runs": [{"id": "c"}], "next_cursor": None},
    )
    with make_client(rec) as client:
        assert [r["id"] for r in client.iter_runs(limit=2)] == ["a", "b", "c"]
    assert rec.requests[1].url.params["cursor"] == "c1"


def test_wait_returns_the_terminal_run() -> None:
    rec = Recorder({"status": "queued"}, {"status": "running"}, {"status": "succeeded", "id": "r"})
    slept: list[float] = []
    with make_client(rec, sleep=slept.append) as client:
        assert client.wait("r", timeout=5, poll_interval=0.25)["status"] == "succeeded"
    assert slept == [0.25, 0.25]


def test_wait_times_out() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    rec = Recorder(*[{"status": "running"}] * 10)
    with (
        make_client(rec, sleep=sleep, clock=lambda: now[0]) as client,
        pytest.raises(RunWaitTimeout) as info,
    ):
        client.wait("r", timeout=1, poll_interval=0.4)
    assert isinstance(info.value, TimeoutError)
    assert info.value.last == {"status": "running"}
    assert len(rec.requests) == 4  # at t=0, 0.4, 0.8, 1.0


async def test_async_client_mirrors_the_sync_one() -> None:
    rec = Recorder({"id": "r1", "status": "queued"}, {"id": "r1", "status": "failed"})
    transport = httpx.MockTransport(rec)
    async with AsyncClient("http://cairn", transport=transport, token="t") as client:
        run = await client.trigger("orders", [1, 2])
        done = await client.wait(run["id"], timeout=1, poll_interval=0.01)
    assert done["status"] == "failed"
    assert rec.body(0) == {"input": [1, 2]}
    assert rec.requests[1].url.path == "/api/v1/runs/r1"
    assert rec.requests[0].headers["authorization"] == "Bearer t"


def test_url_defaults_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_URL", "http://elsewhere:9000/")
    with Client() as client:
        assert client.url == "http://elsewhere:9000"
    monkeypatch.delenv("CAIRN_URL")
    with Client() as client:
        assert client.url == "http://127.0.0.1:8080"


def test_arguments_that_cannot_make_a_request_raise_invalid_argument() -> None:
    from worker_sdk import CairnError
    from worker_sdk import calls as c

    for bad in ({1, 2}, b"bytes", float("nan")):
        with pytest.raises(InvalidArgument):
            c.trigger("w", bad)
    with pytest.raises(InvalidArgument, match="empty"):
        c.get_run("")
    with pytest.raises(InvalidArgument):
        c.trigger_many("w", [1, 2], idempotency_keys=["a"])
    assert issubclass(InvalidArgument, CairnError) and issubclass(InvalidArgument, ValueError)


def test_wait_keeps_its_timeout_when_the_server_is_down() -> None:
    """Each request and its retries are cut to what is left of the wait: a server that does
    not answer is a ``RunWaitTimeout`` at the deadline, not an ``HTTPError`` 30 s later."""
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    def refuse(request: httpx.Request) -> httpx.Response:
        now[0] += 0.01
        raise httpx.ConnectError("refused", request=request)

    client = Client("http://cairn", transport=httpx.MockTransport(refuse), sleep=sleep,
                    clock=lambda: now[0])  # fmt: skip
    with client, pytest.raises(RunWaitTimeout) as info:
        client.wait("r", timeout=1, poll_interval=0.2)
    assert 1.0 <= now[0] < 1.5
    assert info.value.last is None and isinstance(info.value.__cause__, HTTPError)


def test_wait_rides_out_a_busy_server_and_returns_once_it_answers() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    answers = iter([503, 503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 503:
            return httpx.Response(503, json={"code": "database_unavailable"})
        return httpx.Response(200, json={"id": "r", "status": "succeeded"})

    client = Client("http://cairn", transport=httpx.MockTransport(handler), sleep=sleep,
                    clock=lambda: now[0], retry=RetryPolicy(max_attempts=1))  # fmt: skip
    with client:
        assert client.wait("r", timeout=30, poll_interval=0.2)["status"] == "succeeded"
    with client, pytest.raises(APIError):  # not a failure to ride out: at once
        Client(
            "http://cairn",
            transport=httpx.MockTransport(
                lambda r: httpx.Response(404, json={"code": "not_found"})
            ),
        ).wait("r", timeout=30)
