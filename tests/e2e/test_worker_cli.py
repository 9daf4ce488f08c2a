"""`cairn worker module:worker` on a ready `Worker`, as the README's quickstart builds one: the
command line's `--url` and `$CAIRN_TOKEN` reach it, against a real server with auth on."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.cli import run_cairn
from tests.e2e.conftest import ROOT, Proc, wait_until
from worker_sdk import Client

SHOP = """
from worker_sdk import Worker, Workflow

shop = Workflow("shop")


@shop.step()
def reserve(ctx):
    return {"sku": ctx.input["sku"]}


# Like the README's shop.py: a URL written in the file, here one where nothing listens.
worker = Worker("http://127.0.0.1:9", workflows=[shop], slots=2)
"""


def cairn(*args: str, env: dict[str, str]) -> str:
    done = run_cairn(*args, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_ready_worker_takes_the_url_flag_and_the_token_from_the_environment(
    server: Callable[..., Proc], procs: Callable[..., Proc], db_url: str, tmp_path: Path
) -> None:
    srv = server("--auth")
    assert srv.url is not None
    env = {"CAIRN_DATABASE_URL": db_url, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    cairn("tenant", "create", "shopco", env=env)
    admin = cairn("token", "create", "--tenant", "shopco", "--role", "admin", env=env)
    fleet = cairn("token", "create", "--tenant", "shopco", "--role", "worker", env=env)
    (tmp_path / "shop_ready.py").write_text(SHOP)

    worker = procs(
        [sys.executable, "-m", "worker_sdk", "shop_ready:worker", "--url", srv.url],
        {"CAIRN_TOKEN": fleet, "PYTHONPATH": str(tmp_path)},
        "worker",
    )
    auth = {"Authorization": f"Bearer {admin}"}

    def registered() -> bool:  # the worker registers its workflow once it reached the server
        assert worker.popen.poll() is None, worker.output()
        return httpx.get(f"{srv.url}/api/v1/workflows/shop", headers=auth).status_code == 200

    wait_until(registered, 30, "the worker's registration")
    with Client(srv.url, token=admin) as client:
        run = client.trigger("shop", {"sku": "A1"})
        final = client.wait(run["id"], timeout=30)
    assert final["status"] == "succeeded", worker.output()
    assert final["steps"][0]["output"] == {"sku": "A1"}
