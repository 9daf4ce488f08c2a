"""The `cairn` commands against real databases: `check` never migrates, an unreachable database
is one line, alembic's preamble stays quiet, `serve --workers N` heeds CAIRN_RUN_MIGRATIONS,
`--host [::1]` binds, and a Kubernetes service link in CAIRN_PORT is ignored."""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.cli import cli_env, run_cairn
from tests.conftest import _admin, _with_db
from tests.e2e.conftest import Proc, free_port, wait_until

_env = cli_env
cairn = run_cairn


@pytest.fixture
async def empty_db_url(pg_server_url: str) -> AsyncIterator[str]:
    """A database with nothing in it (never migrated)."""
    name = f"cli_fix_{uuid.uuid4().hex[:12]}"
    await _admin(pg_server_url, f'CREATE DATABASE "{name}"')
    yield _with_db(pg_server_url, name)
    await _admin(pg_server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _revisions(url: str) -> set[str] | None:
    """The database's alembic revisions, or None if it has no alembic_version table."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            if (await conn.execute(text("SELECT to_regclass('alembic_version')"))).scalar() is None:
                return None
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return {str(r[0]) for r in rows}
    finally:
        await engine.dispose()


async def test_check_does_not_migrate_an_empty_database(empty_db_url: str) -> None:
    done = cairn("check", env=_env(CAIRN_DATABASE_URL=empty_db_url))
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "no Cairn schema" in done.stderr and "cairn migrate" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert await _revisions(empty_db_url) is None  # still empty: nothing was created


async def test_check_refuses_a_schema_behind_head_and_leaves_it(db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0012'"))
    finally:
        await engine.dispose()
    done = cairn("check", env=_env(CAIRN_DATABASE_URL=db_url))
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    [line] = done.stderr.strip().splitlines()
    assert "revision 0012" in line and "cairn migrate" in line, line
    assert await _revisions(db_url) == {"0012"}


async def test_admin_commands_on_an_unreachable_database_say_so_in_one_line() -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/cli_fix_unreachable"
    env = _env(CAIRN_DATABASE_URL=url)
    for args in (
        ["migrate"],
        ["check"],
        ["tenant", "list"],
        ["tenant", "create", "acme"],
        ["token", "list"],
        ["token", "create", "--tenant", "acme", "--role", "admin"],
        ["token", "revoke", "1a2b3c4d"],
    ):
        done = cairn(*args, env=env)
        assert done.returncode == 2, (args, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith("cairn: error: cannot use the database"), line
        assert "CAIRN_DATABASE_URL" in line and "hunter2" not in line, line
    # A server that migrates at start (the default) says it the same way, one process or N.
    for args in (["serve", "--port", str(free_port())], ["serve", "--workers", "2"]):
        done = cairn(*args, env=env)
        assert done.returncode == 2, (args, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("cairn: error: cannot use"), args


async def test_admin_commands_print_no_alembic_preamble(empty_db_url: str) -> None:
    env = _env(CAIRN_DATABASE_URL=empty_db_url)
    migrated = cairn("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    lines = migrated.stderr.strip().splitlines()
    assert lines[-1] == "cairn: schema at head"
    assert all("Running upgrade" in line for line in lines[:-1]), lines  # one per migration
    assert any("-> 0001, initial schema" in line for line in lines)
    for args in (["tenant", "list"], ["migrate"], ["check"]):
        done = cairn(*args, env=env)
        assert done.returncode == 0, (args, done.stderr)
        assert "alembic" not in done.stderr, (args, done.stderr)
    assert cairn("migrate", env=env).stderr == "cairn: schema at head\n"


async def test_serve_workers_heeds_run_migrations_false(
    procs: Callable[..., Proc], empty_db_url: str
) -> None:
    port = free_port()
    env = {
        "CAIRN_DATABASE_URL": empty_db_url,
        "CAIRN_RUN_MIGRATIONS": "false",
        "CAIRN_PORT": str(port),
        "CAIRN_LOG_LEVEL": "warning",
    }
    url = f"http://127.0.0.1:{port}"
    srv = procs([sys.executable, "-m", "api.cli", "serve", "--workers", "2"], env, "server", url)

    def up() -> bool:
        assert srv.popen.poll() is None, srv.output()
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 30, "the server's /healthz")
    assert httpx.get(url + "/readyz", timeout=5).status_code == 503  # not migrated: not ready
    assert await _revisions(empty_db_url) is None
    srv.stop()


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_serve_binds_a_bracketed_ipv6_loopback(procs: Callable[..., Proc], db_url: str) -> None:
    port = free_port()
    env = {"CAIRN_DATABASE_URL": db_url, "CAIRN_LOG_LEVEL": "warning"}
    args = ["serve", "--host", "[::1]", "--port", str(port)]
    srv = procs([sys.executable, "-m", "api.cli", *args], env, "server")

    def ready() -> bool:
        assert srv.popen.poll() is None, srv.output()
        try:
            return httpx.get(f"http://[::1]:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, 30, "the server on [::1]")
    assert f"serving on http://[::1]:{port} " in srv.output()


def test_a_kubernetes_service_link_in_cairn_port_is_ignored_with_a_warning(db_url: str) -> None:
    link = "tcp://10.0.0.1:8080"  # what a Service named `cairn` injects
    refused = cairn(
        "serve", "--host", "0.0.0.0", env=_env(CAIRN_PORT=link, CAIRN_DATABASE_URL=db_url)
    )
    assert refused.returncode == 2, refused.stderr  # refused for auth off, not for the port
    assert "Traceback" not in refused.stderr
    assert (
        f"ignoring CAIRN_PORT='{link}'" in refused.stderr and "enableServiceLinks" in refused.stderr
    )
    assert "refusing to serve on 0.0.0.0" in refused.stderr
    checked = cairn("check", env=_env(CAIRN_PORT=link, CAIRN_DATABASE_URL=db_url))
    assert checked.returncode == 0, checked.stderr  # admin commands do not care about the port
