"""`cairn serve` with no database URL: embedded Postgres that survives restarts, stopped on exit."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from tests.e2e.conftest import Proc, free_port, wait_until


def postgres_for(pgdata: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if p.info.get("name") == "postgres" and str(pgdata) in " ".join(cmd):
            found.append(p)
    return found


def test_embedded_database_persists_and_stops_on_sigterm(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    pgdata = tmp_path / "pgdata"
    env = {"CAIRN_DATA_DIR": str(pgdata), "CAIRN_DATABASE_URL": ""}

    def serve() -> tuple[Proc, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = procs(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            {**env},
            "embedded",
            url,
        )
        wait_until(lambda: _ready(url), 60, "embedded server ready")
        return proc, url

    first, url = serve()
    r = httpx.put(f"{url}/api/v1/workflows/keep", json={"steps": [{"name": "s"}]})
    assert r.status_code == 201
    run = httpx.post(f"{url}/api/v1/workflows/keep/runs", json={"input": {"x": 1}}).json()
    first.signal(signal.SIGTERM)
    assert first.popen.wait(30) == 0
    wait_until(lambda: not postgres_for(pgdata), 15, "embedded postgres to stop")

    second, url = serve()
    again = httpx.get(f"{url}/api/v1/runs/{run['id']}")
    assert again.status_code == 200 and again.json()["input"] == {"x": 1}
    second.signal(signal.SIGTERM)
    assert second.popen.wait(30) == 0
    wait_until(lambda: not postgres_for(pgdata), 15, "embedded postgres to stop")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
