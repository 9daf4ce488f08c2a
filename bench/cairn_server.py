"""``cairn serve`` as a child process on its own database, ready when ``/readyz`` is 200."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from bench import procs
from bench.pg import Pg


class ServerError(RuntimeError):
    pass


def serve_supports_workers() -> bool:
    """Whether this ``cairn serve`` takes ``--workers N`` (a multi-process server)."""
    out = subprocess.run(
        [procs.PYTHON, "-m", "api.cli", "serve", "--help"],
        cwd=procs.ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return "--workers" in out.stdout


class CairnServer:
    """One Cairn API (``server_workers`` processes when the CLI supports it) on ``database``."""

    def __init__(self, pg: Pg, database: str, logdir: Path, *, server_workers: int = 1) -> None:
        self.pg = pg
        self.database = database
        self.log = logdir / f"cairn-serve-{database}.log"
        self.server_workers = server_workers
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # more CAIRN_* settings for the next start
        if server_workers > 1 and not serve_supports_workers():
            raise ServerError(
                f"--server-workers {server_workers}: this `cairn serve` has no --workers option"
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []

    def start(self, timeout: float = 90.0) -> None:
        self.port = procs.free_port()
        args = ["-m", "api.cli", "serve"]
        if self.server_workers > 1:
            args += ["--workers", str(self.server_workers)]
        env = {
            "CAIRN_DATABASE_URL": self.pg.sa_url(self.database),
            "CAIRN_PORT": str(self.port),
            "CAIRN_LOG_LEVEL": "warning",
            **self.env,
        }
        self.proc = procs.spawn(args, env=env, log=self.log)
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(f"cairn serve exited {self.proc.returncode}; see {self.log}")
                try:
                    if http.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise ServerError(f"cairn serve not ready after {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop([self.proc], timeout=20)
            self.proc = None
