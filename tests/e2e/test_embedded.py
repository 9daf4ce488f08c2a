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
    try:
        _persists_and_stops(procs, pgdata)
    finally:  # a failure leaves no postgres behind
        for leftover in postgres_for(pgdata):
            leftover.kill()


def _persists_and_stops(procs: Callable[..., Proc], pgdata: Path) -> None:
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

    # Killed outright, a server cannot stop its Postgres; the next one joins it and, at its own
    # exit, stops it (the dead one no longer counts as a user of it).
    third, url = serve()
    third.signal(signal.SIGKILL)
    third.popen.wait(30)
    assert postgres_for(pgdata), "a killed server's postgres is left running until the next"
    fourth, url = serve()
    assert httpx.get(f"{url}/api/v1/runs/{run['id']}").status_code == 200
    fourth.signal(signal.SIGTERM)
    assert fourth.popen.wait(30) == 0
    wait_until(lambda: not postgres_for(pgdata), 15, "embedded postgres to stop")


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
