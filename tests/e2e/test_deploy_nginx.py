"""deploy/nginx/nginx.conf under a real nginx: what clients see when the database or a replica
is down, and which requests nginx resends to another replica.

- Database down: every replica answers Cairn's `503 database_unavailable` (problem+json,
  Retry-After). nginx passes that through and keeps both replicas in rotation: /healthz stays 200.
- A replica that refuses connections is failed over, for GETs and POSTs alike (nothing was sent).
- A POST that reached a replica which then dropped the connection is not resent to another one
  (a resent poll could lease work twice); a GET is. nginx's own 502 is problem+json with
  Retry-After.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Proc, free_port, render_nginx, wait_until

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (.ci/run installs it)"
)

_FIXED: list[int] = []


@pytest.fixture(autouse=True)
def _fixed_ports() -> None:
    """CAIRN_TEST_PORTS (comma-separated) pins the ports each test uses; else free ones."""
    _FIXED[:] = [int(p) for p in os.environ.get("CAIRN_TEST_PORTS", "").split(",") if p.strip()]


def port() -> int:
    return _FIXED.pop(0) if _FIXED else free_port()


def start_nginx(procs: Callable[..., Proc], tmp: Path, upstreams: list[int]) -> str:
    listen = port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", listen)) != 0, f"port {listen} is already in use"
    conf = render_nginx(tmp, listen, upstreams)
    nginx = procs([str(NGINX), "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"], {}, "nginx")

    def listening() -> bool:
        if nginx.popen.poll() is not None:
            raise AssertionError(f"nginx exited:\n{nginx.output()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", listen)) == 0

    wait_until(listening, 10, "nginx listening")
    return f"http://127.0.0.1:{listen}"


def replica_without_database(procs: Callable[..., Proc]) -> int:
    """A real `cairn serve` whose database URL points at a port where nothing listens."""
    p, dead = port(), port()
    env = {
        "CAIRN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{dead}/cairn",
        "CAIRN_RUN_MIGRATIONS": "false",
        "CAIRN_PORT": str(p),
        "CAIRN_LOG_LEVEL": "error",
    }
    proc = procs([sys.executable, "-m", "api.cli", "serve"], env, "server")

    def alive() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"server exited:\n{proc.output()}")
        try:
            return httpx.get(f"http://127.0.0.1:{p}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(alive, 30, "replica /healthz")
    return p


def assert_nginx_problem(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert r.headers.get("retry-after") == "1", r.headers
    body = r.json()
    assert body["status"] == status and body["code"] and body["type"].startswith("urn:cairn:")


def test_database_down_passes_cairns_503_through(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    replicas = [replica_without_database(procs), replica_without_database(procs)]
    url = start_nginx(procs, tmp_path, replicas)
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(10):
            r = http.get("/api/v1/workflows")
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.headers.get("retry-after") == "1"
            assert r.json()["code"] == "database_unavailable"
            r = http.post("/api/v1/workflows/w/runs", json={"input": {}})
            assert r.status_code == 503 and r.json()["code"] == "database_unavailable", r.text
            assert http.get("/readyz").status_code == 503
            # both replicas stay in rotation: liveness still answers through nginx
            assert http.get("/healthz").status_code == 200


def test_refused_replica_is_failed_over_and_nginx_errors_are_problem_json(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    live = replica_without_database(procs)
    dead = port()  # nothing listens here: connection refused
    url = start_nginx(procs, tmp_path, [dead, live])
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(6):
            assert http.get("/healthz").status_code == 200
            # nothing reached the dead replica, so even a POST goes on to the live one
            r = http.post("/api/v1/workflows/w/runs", json={"input": {}})
            assert r.status_code == 503 and r.json()["code"] == "database_unavailable", r.text


def test_no_replica_reachable_is_a_problem_json_502(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    url = start_nginx(procs, tmp_path, [port(), port()])  # nothing listens on either
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(3):
            assert_nginx_problem(http.get("/healthz"), 502)
            assert_nginx_problem(http.post("/api/v1/workers/poll", json={}), 502)


class _Dropper(socketserver.ThreadingTCPServer):
    """Reads one request, records its method, then closes the connection without answering
    (a replica that dies after receiving a request)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.methods: list[str] = []
        super().__init__(("127.0.0.1", port), _DropHandler)


class _DropHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        want = int(length.group(1)) if length else 0
        while len(body) < want:
            chunk = self.request.recv(65536)
            if not chunk:
                break
            body += chunk
        assert isinstance(self.server, _Dropper)
        self.server.methods.append(head.split(b" ", 1)[0].decode())
        self.request.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def droppers() -> Iterator[list[_Dropper]]:
    servers = [_Dropper(port()), _Dropper(port())]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def test_a_sent_post_is_not_resent_a_get_is(
    procs: Callable[..., Proc], tmp_path: Path, droppers: list[_Dropper]
) -> None:
    url = start_nginx(procs, tmp_path, [d.server_address[1] for d in droppers])
    with httpx.Client(base_url=url, timeout=10) as http:
        r = http.post("/api/v1/workers/poll", json={"worker_id": "w", "max_tasks": 1})
        assert_nginx_problem(r, 502)
        wait_until(lambda: sum(len(d.methods) for d in droppers) >= 1, 5, "the POST to arrive")
        assert sorted(m for d in droppers for m in d.methods) == ["POST"], "a sent POST was resent"

        # the failed replica is out for fail_timeout (2 s); once both are back, a GET is tried
        # on one, then resent to the other
        time.sleep(3.5)  # nginx counts fail_timeout in whole seconds
        assert_nginx_problem(http.get("/api/v1/workflows"), 502)
        wait_until(lambda: sum(len(d.methods) for d in droppers) >= 3, 5, "the GET on both")
        assert sorted(m for d in droppers for m in d.methods) == ["GET", "GET", "POST"]
