"""Property-based fuzzing of the live API against the committed openapi.json (schemathesis).

No generated request, valid or not, may produce a 5xx; every response must match the spec; every
error is problem+json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.e2e.conftest import ROOT, free_port, wait_until

EXAMPLES = int(os.environ.get("CAIRN_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def fuzz_server(pg_server_url: str, template_db: str) -> Iterator[str]:
    import asyncio

    from tests.conftest import _admin

    name = f"cairn_fuzz_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(pg_server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    db_url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    port = free_port()
    env = {
        **os.environ,
        "CAIRN_DATABASE_URL": db_url,
        "CAIRN_PORT": str(port),
        "CAIRN_LOG_LEVEL": "warning",
        "CAIRN_POLL_MAX_WAIT_S": "0.5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 30, "fuzz server")
        # Some state to hit: a workflow, runs, a worker.
        httpx.put(f"{url}/api/v1/workflows/w", json={"steps": [{"name": "a"}]})
        httpx.post(f"{url}/api/v1/workflows/w/runs", json={"input": {}})
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


# A CPython 3.11 bug hypothesis can hit while describing a strategy; seen in schemathesis' own
# "Runtime Error" section, never as a check failure.
TOOL_CRASH = "AST constructor recursion depth mismatch"
CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"


def test_api_conforms_and_never_5xx(fuzz_server: str, tmp_path: Path) -> None:
    """Every operation of openapi.json, generated inputs valid and invalid: no 5xx, responses
    as documented (errors as problem+json), via the schemathesis CLI."""
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        str(ROOT / "openapi.json"),
        "--url",
        fuzz_server,
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        "1302",
        "--request-timeout",
        "10",
        "--workers",
        "1",  # ast.parse in concurrent threads trips a CPython 3.11 bug inside hypothesis
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    if out.returncode != 0 and TOOL_CRASH in out.stdout and "FAILURES" not in out.stdout:
        # The fuzzer itself crashed (not a finding about the API): run it once more.
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "passed" in out.stdout.lower(), out.stdout[-2000:]
    print(out.stdout[-1500:])
