"""What never reaches the application, over a real socket to `cairn serve`: a request the HTTP
parser refuses, and a request whose head or body stalls, are answered in problem+json."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from tests.e2e.conftest import Proc


def exchange(url: str, data: bytes, wait: float = 10.0) -> tuple[float, int, dict[str, str], bytes]:
    """Send raw bytes; read until the server closes. (seconds taken, status, headers, body)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80)) as s:
        started = time.monotonic()
        s.sendall(data)
        s.settimeout(wait)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return time.monotonic() - started, int(lines[0].split()[1]), headers, body


def exchange_all(url: str, data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes; read until the server closes; split the answers (Content-Length framed)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80)) as s:
        s.sendall(data)
        s.settimeout(10)
        stream = b""
        while chunk := s.recv(65536):
            stream += chunk
    answers = []
    while stream:
        head, _, rest = stream.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        answers.append((int(lines[0].split()[1]), headers, rest[:size]))
        stream = rest[size:]
    return answers


def assert_problem(headers: dict[str, str], body: bytes, status: int, code: str) -> None:
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == status and problem["code"] == code and problem["detail"]


def test_unparseable_and_stalled_requests_get_problem_json(server: Callable[..., Proc]) -> None:
    srv = server(request_head_timeout_s=1, request_body_timeout_s=1)
    assert srv.url is not None
    for garbage in (
        b"FOO /api/v1/runs HTTP/1.1\r\nHost: x\r\n\r\n",  # unknown method
        b"GET /api/v1/workflows/\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",  # raw non-ASCII path
        b"POST /api/v1/workflows/w/runs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    ):
        _, status, headers, body = exchange(srv.url, garbage)
        assert status == 400, garbage
        assert_problem(headers, body, 400, "malformed_request")
    # Requests pipelined before a refused one are answered, in order, before its 400.
    trigger = json.dumps({"input": {}, "idempotency_key": "piped"}).encode()
    piped = b"PUT /api/v1/workflows/p HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    piped += b'Content-Length: 27\r\n\r\n{"steps": [{"name": "s"}]}\n'
    piped += b"POST /api/v1/workflows/p/runs HTTP/1.1\r\nHost: x\r\n"
    piped += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(trigger)
    piped += trigger + b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = exchange_all(srv.url, piped)
    assert [a[0] for a in answers] == [201, 201, 400], answers
    assert json.loads(answers[1][2])["status"] == "queued"
    assert_problem(answers[2][1], answers[2][2], 400, "malformed_request")
    bad_chunk = b"POST /api/v1/workflows/p/runs HTTP/1.1\r\nHost: x\r\n"
    bad_chunk += b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"  # refused inside its body
    answers = exchange_all(srv.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + bad_chunk)
    assert [a[0] for a in answers] == [200, 400], answers
    # A body announced and never sent in full: 408 once its deadline passes, nothing created.
    announced = (
        b"POST /api/v1/workflows/w/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"input": {}}'
    )
    took, status, headers, body = exchange(srv.url, announced)
    assert status == 408 and took >= 0.9, took
    assert_problem(headers, body, 408, "request_timeout")
    # A head that never ends, and a connection that never says anything: 408, then closed.
    for stalled in (b"POST /api/v1/workflows/w/runs HTTP/1.1\r\nHost: x\r\n", b""):
        took, status, headers, body = exchange(srv.url, stalled)
        assert status == 408 and took >= 0.9, took
        assert_problem(headers, body, 408, "request_timeout")
    # Well-formed requests are unaffected, a slow long-poll included.
    with httpx.Client(base_url=f"{srv.url}/api/v1", timeout=30) as http:
        assert http.put("/workflows/w", json={"steps": [{"name": "s"}]}).status_code == 201
        assert http.get("/runs", params={"workflow": "w"}).json()["runs"] == []
        worker = http.post("/workers", json={"name": "w", "actions": ["w.s"], "slots": 1})
        started = time.monotonic()
        poll = http.post(f"/workers/{worker.json()['id']}/poll", json={"wait_s": 2})
        assert poll.status_code == 200 and time.monotonic() - started >= 1.5


def test_sigterm_answers_the_waiting_long_polls_and_exits_promptly(
    server: Callable[..., Proc],
) -> None:
    """A shutdown does not wait out the workers' long-polls: each answers at once, empty (the
    worker polls again, elsewhere or once the server is back), and the server exits cleanly."""
    srv = server()
    with httpx.Client(base_url=f"{srv.url}/api/v1", timeout=60) as http:
        assert http.put("/workflows/d", json={"steps": [{"name": "s"}]}).status_code == 201
        worker = http.post("/workers", json={"name": "w", "actions": ["d.s"], "slots": 1}).json()
        answers: list[httpx.Response] = []

        def long_poll() -> None:
            answers.append(http.post(f"/workers/{worker['id']}/poll", json={"wait_s": 30}))

        waiting = threading.Thread(target=long_poll)
        waiting.start()
        time.sleep(1.0)  # the poll is waiting on the server
        assert not answers
        srv.signal(signal.SIGTERM)
        waiting.join(20)
        assert srv.popen.wait(20) == 0
    assert answers and answers[0].status_code == 200 and answers[0].json()["tasks"] == []
    log = srv.output()
    assert "Traceback" not in log and "ERROR" not in log, log
