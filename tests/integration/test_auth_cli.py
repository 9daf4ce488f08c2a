"""``cairn tenant`` / ``cairn token`` as real processes, and ``cairn serve``'s secure default."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.app import create_app
from api.settings import Settings
from tests.cli import cli_env, run_cairn

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    return cli_env(**extra)


async def cairn(*args: str, env: dict[str, str], expect: int = 0) -> str:
    proc = await asyncio.to_thread(run_cairn, *args, env=env)
    assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


async def test_tenant_and_token_commands_against_a_database(db_url: str, tmp_path: Path) -> None:
    env = _env(CAIRN_DATABASE_URL=db_url, CAIRN_DATA_DIR=str(tmp_path / "unused"))
    tenant_id = (await cairn("tenant", "create", "acme", env=env)).strip()
    assert len(tenant_id) == 36
    await cairn("tenant", "create", "acme", env=env, expect=1)  # names are unique
    assert "acme" in await cairn("tenant", "list", env=env)

    admin = (await cairn("token", "create", "--tenant", "acme", "--role", "admin", env=env)).strip()
    viewer = (
        await cairn(
            "token", "create", "--tenant", tenant_id, "--role", "viewer", "--name", "ci", env=env
        )
    ).strip()
    await cairn("token", "create", "--tenant", "nope", "--role", "admin", env=env, expect=1)
    await cairn("token", "create", "--tenant", "acme", "--role", "root", env=env, expect=2)
    assert admin.startswith("cairn_") and viewer.startswith("cairn_") and admin != viewer
    admin_prefix, viewer_prefix = admin.split("_")[1], viewer.split("_")[1]

    listing = await cairn("token", "list", "--tenant", "acme", env=env)
    assert admin_prefix in listing and viewer_prefix in listing and "ci" in listing
    assert admin not in listing and admin.split("_")[2] not in listing  # never the secret
    assert "viewer" in listing and "admin" in listing

    app = create_app(Settings(database_url=db_url, auth=True, auth_cache_s=0, run_migrations=False))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cairn") as client:
            auth = {"Authorization": f"Bearer {admin}"}
            r = await client.put(
                "/api/v1/workflows/w", json={"steps": [{"name": "s"}]}, headers=auth
            )
            assert r.status_code == 201, r.text
            r = await client.post("/api/v1/workflows/w/runs", json={"input": {}}, headers=auth)
            assert r.status_code == 201, r.text
            viewing = {"Authorization": f"Bearer {viewer}"}
            r = await client.get("/api/v1/runs", headers=viewing)
            assert r.status_code == 200 and len(r.json()["runs"]) == 1
            r = await client.post("/api/v1/workflows/w/runs", json={"input": {}}, headers=viewing)
            assert r.status_code == 403

            await cairn("token", "revoke", admin_prefix, env=env)
            await cairn("token", "revoke", "ffffffff", env=env, expect=1)
            r = await client.get("/api/v1/runs", headers=auth)
            assert r.status_code == 401
            assert (await client.get("/api/v1/runs", headers=viewing)).status_code == 200

    listing = await cairn("token", "list", env=env)
    admin_line = next(line for line in listing.splitlines() if line.startswith(admin_prefix))
    assert admin_line.split()[-1] != "-"  # revoked_at shown
    assert admin_line.split()[-2] != "-"  # it was used


async def test_serve_refuses_a_public_address_without_auth(tmp_path: Path) -> None:
    env = _env(CAIRN_DATA_DIR=str(tmp_path / "pg"))
    start = time.monotonic()

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    proc = await asyncio.to_thread(go)
    assert proc.returncode != 0
    assert "refusing to serve on 0.0.0.0" in proc.stderr and "--auth" in proc.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "pg").exists()  # it did not even start the database
