"""Real processes: `cairn serve` replicas and SDK workers, on loopback, killed with real signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path, url: str | None = None) -> None:
        self.popen = popen
        self.log = log
        self.url = url

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def spawn(args: list[str], env: dict[str, str], name: str, url: str | None = None) -> Proc:
        log = tmp_path / f"{name}-{len(started)}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                args, stdout=fh, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT
            )
        proc = Proc(popen, log, url)
        started.append(proc)
        return proc

    yield spawn
    for p in started:
        p.stop()


@pytest.fixture
def server(procs: Callable[..., Proc], db_url: str) -> Callable[..., Proc]:
    """Start a `cairn serve` replica on the test database; returns once /readyz is green."""

    def start(*args: str, port: int | None = None, **settings: Any) -> Proc:
        port = port or free_port()
        env = {
            "CAIRN_DATABASE_URL": db_url,
            "CAIRN_PORT": str(port),
            "CAIRN_REAPER_INTERVAL_S": "0.2",
            "CAIRN_LOG_LEVEL": "warning",
            "CAIRN_POLL_RECHECK_S": "0.5",
        }
        env.update({f"CAIRN_{k.upper()}": str(v) for k, v in settings.items()})
        url = f"http://127.0.0.1:{port}"
        proc = procs([sys.executable, "-m", "api.cli", "serve", *args], env, "server", url)

        def ready() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"server exited:\n{proc.output()}")
            try:
                return httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, "server readiness")
        return proc

    return start


def render_nginx(tmp: Path, listen: int, upstreams: list[int]) -> Path:
    """The shipped config, its `server apiN:8080 ...` lines pointed at local ports (keeping
    their max_fails/fail_timeout), listening on 127.0.0.1:`listen`."""
    conf = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    shipped = re.findall(r"^        server api\d+:8080( [^\n]*)?;\n", conf, re.M)
    assert shipped, "no `server apiN:8080` lines in deploy/nginx/nginx.conf"
    params = shipped[0]
    servers = "".join(f"        server 127.0.0.1:{p}{params};\n" for p in upstreams)
    conf = re.sub(r"(        server api\d+:8080[^\n]*\n)+", servers, conf)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    conf = conf.replace("pid /tmp/cairn-nginx.pid;", f"pid {tmp}/nginx.pid;")
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    path = tmp / "nginx.conf"
    path.write_text(conf)
    (tmp / "logs").mkdir(exist_ok=True)
    return path
