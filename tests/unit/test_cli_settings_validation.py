"""Settings that cannot work are refused at start-up in one line naming them (exit 2), values
that work keep working, and `cairn worker --help` shows the worker's real usage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api.settings import Settings
from tests.cli import cli_env, run_cairn

ROOT = Path(__file__).resolve().parents[2]
# Where nothing listens: a command that got past its settings fails there, fast, and loudly.
NOWHERE = "postgresql://postgres@127.0.0.1:1/cli_fix_nowhere"


def _env(**extra: str) -> dict[str, str]:
    return cli_env(**extra)


def cairn(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cairn(*args, env=env, timeout=timeout)


def _refused(settings: dict[str, Any]) -> list[str]:
    """The lines ``load_settings`` refuses ``settings`` (as CAIRN_* variables) with."""
    from api.settings import SettingsError, load_settings

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CAIRN_")}
    try:
        os.environ.update({f"CAIRN_{k.upper()}": str(v) for k, v in settings.items()})
        with pytest.raises(SettingsError) as caught:
            load_settings()
        return caught.value.lines
    finally:
        for k in [k for k in os.environ if k.startswith("CAIRN_")]:
            del os.environ[k]
        os.environ.update(saved)


BAD = [
    # (settings, the setting the one line names, words of what it allows)
    ({"port": "abc"}, "CAIRN_PORT='abc'", "integer from 1 to 65535"),
    ({"port": "99999"}, "CAIRN_PORT='99999'", "integer from 1 to 65535"),
    ({"port": "0"}, "CAIRN_PORT='0'", "integer from 1 to 65535"),
    ({"auth": "maybe"}, "CAIRN_AUTH='maybe'", "true or false"),
    ({"auth_cache_s": "-1"}, "CAIRN_AUTH_CACHE_S='-1'", ">= 0"),
    ({"gc_threshold": "-5"}, "CAIRN_GC_THRESHOLD='-5'", ">= 0"),
    ({"max_steps": "0"}, "CAIRN_MAX_STEPS='0'", "from 1 to 32767"),
    ({"log_level": "loud"}, "CAIRN_LOG_LEVEL='loud'", "critical, error, warning, info, debug"),
    ({"reaper_interval_s": "0"}, "CAIRN_REAPER_INTERVAL_S='0'", "> 0"),
    ({"reaper_batch": "0"}, "CAIRN_REAPER_BATCH='0'", ">= 1"),
    ({"poll_recheck_s": "0"}, "CAIRN_POLL_RECHECK_S='0'", "> 0"),
    ({"poll_max_wait_s": "-1"}, "CAIRN_POLL_MAX_WAIT_S='-1'", ">= 0"),
    ({"poll_max_tasks": "-3"}, "CAIRN_POLL_MAX_TASKS='-3'", ">= 1"),
    ({"lease_timeout_s": "-60"}, "CAIRN_LEASE_TIMEOUT_S='-60'", "> 0"),
    ({"heartbeat_interval_s": "0"}, "CAIRN_HEARTBEAT_INTERVAL_S='0'", "> 0"),
    ({"max_batch": "0"}, "CAIRN_MAX_BATCH='0'", ">= 1"),
    ({"db_pool_size": "-1"}, "CAIRN_DB_POOL_SIZE='-1'", ">= 0"),
    (
        {"db_pool_size": "0", "db_max_overflow": "0"},
        "CAIRN_DB_POOL_SIZE + CAIRN_DB_MAX_OVERFLOW",
        "at least 1",
    ),
    (
        {"min_lease_timeout_s": "120", "max_lease_timeout_s": "60"},
        "CAIRN_MIN_LEASE_TIMEOUT_S (120) must not exceed CAIRN_MAX_LEASE_TIMEOUT_S (60)",
        "",
    ),
    ({"database_url": "mysql://u:secret@db/cairn"}, "CAIRN_DATABASE_URL=", "postgresql://"),
    ({"database_url": "postgresql://u:secret@db:5432"}, "CAIRN_DATABASE_URL=", "no database"),
    ({"database_url": "postgresql://u:secret@db:5432/"}, "CAIRN_DATABASE_URL=", "no database"),
    ({"host": "[not-v6]"}, "CAIRN_HOST='[not-v6]'", "IPv6"),
]


@pytest.mark.parametrize(("settings", "names", "allows"), BAD)
def test_an_unusable_setting_is_refused_in_one_line(
    settings: dict[str, str], names: str, allows: str
) -> None:
    [line] = _refused(settings)
    assert names in line and allows in line, line
    assert "secret" not in line  # a database URL is shown without its password


def test_every_default_is_unchanged_and_valid() -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert defaults == {
        "database_url": None,
        "data_dir": ".cairn/pgdata",
        "host": "127.0.0.1",
        "port": 8080,
        "heartbeat_interval_s": 5.0,
        "lease_timeout_s": 60.0,
        "min_lease_timeout_s": 1.0,
        "max_lease_timeout_s": 3600.0,
        "min_heartbeat_interval_s": 0.2,
        "poll_max_wait_s": 30.0,
        "poll_recheck_s": 1.0,
        "poll_max_tasks": 100,
        "claim_floor_rescan_s": 5.0,
        "reaper_interval_s": 1.0,
        "reaper_batch": 500,
        "cancel_grace_s": 10.0,
        "max_payload_bytes": 1024 * 1024,
        "max_body_bytes": 4 * 1024 * 1024,
        "request_head_timeout_s": 30.0,
        "request_body_timeout_s": 30.0,
        "max_steps": 256,
        "max_batch": 1000,
        "list_limit_max": 500,
        "auth": False,
        "auth_cache_s": 5.0,
        "rate_limit_per_s": 1000.0,
        "rate_limit_burst": 2000,
        "worker_active_window_s": 60.0,
        "db_pool_size": 10,
        "db_max_overflow": 10,
        "run_migrations": True,
        "log_level": "info",
        "gc_threshold": 10_000,
    }
    Settings.model_validate(defaults)


def test_the_small_and_edge_values_in_use_stay_valid() -> None:
    # What the suite's fixtures, the deploy files and the README use.
    Settings(
        database_url="postgresql+asyncpg://postgres:@/postgres?host=%2Ftmp&port=5432",
        reaper_interval_s=0.2,
        poll_recheck_s=0.2,
        poll_max_wait_s=0,
        auth_cache_s=0,
        rate_limit_per_s=0,
        claim_floor_rescan_s=0,
        request_head_timeout_s=0,
        request_body_timeout_s=0,
        gc_threshold=0,
        cancel_grace_s=0,
        min_heartbeat_interval_s=0,
        min_lease_timeout_s=3600,
        max_lease_timeout_s=3600,
        db_pool_size=0,
        db_max_overflow=1,
        port=1,
        host="0.0.0.0",
        max_steps=1,
    )
    Settings(database_url="", port=65535, poll_recheck_s=3600.0, reaper_interval_s=3600.0)
    for url in ("postgres://u@h/d", "postgresql+psycopg://u:p@h:5/d", "postgresql://u@h/d"):
        assert Settings(database_url=url).database_url == url
    assert Settings(database_url="").database_url is None  # empty is unset, as before


@pytest.mark.parametrize("level", ["critical", "ERROR", "Warning", "info", "debug", "trace"])
def test_log_levels_in_any_case(level: str) -> None:
    assert Settings(log_level=level).log_level == level.lower()


def test_a_kubernetes_service_link_in_cairn_port_is_not_the_port() -> None:
    for link in ("tcp://10.0.0.1:8080", "tcp://10.96.0.12:9090", "tcp://[fd00::1]:80"):
        assert Settings(port=link).port == 8080  # type: ignore[arg-type]
    assert Settings(port="9000").port == 9000  # type: ignore[arg-type]


def test_a_bracketed_ipv6_host_binds_without_its_brackets() -> None:
    assert Settings(host="[::1]").host == "::1"
    assert Settings(host="::1").host == "::1"


@pytest.mark.parametrize(
    ("env", "args", "names"),
    [
        ({"CAIRN_PORT": "abc"}, ["serve"], "CAIRN_PORT='abc'"),
        ({"CAIRN_PORT": "99999"}, ["serve"], "CAIRN_PORT='99999'"),
        ({}, ["serve", "--port", "0"], "--port=0"),
        ({}, ["serve", "--workers", "0"], "--workers=0"),
        ({"CAIRN_AUTH": "maybe"}, ["serve"], "CAIRN_AUTH='maybe'"),
        ({"CAIRN_AUTH_CACHE_S": "-1"}, ["serve"], "CAIRN_AUTH_CACHE_S"),
        ({"CAIRN_GC_THRESHOLD": "-1"}, ["serve"], "CAIRN_GC_THRESHOLD"),
        ({"CAIRN_MAX_STEPS": "0"}, ["serve"], "CAIRN_MAX_STEPS"),
        ({"CAIRN_REAPER_INTERVAL_S": "0"}, ["serve"], "CAIRN_REAPER_INTERVAL_S"),
        ({"CAIRN_DB_POOL_SIZE": "0", "CAIRN_DB_MAX_OVERFLOW": "0"}, ["serve"], "CAIRN_DB_POOL"),
        ({"CAIRN_MIN_LEASE_TIMEOUT_S": "7200"}, ["serve"], "CAIRN_MIN_LEASE_TIMEOUT_S"),
        ({"CAIRN_LOG_LEVEL": "loud"}, ["migrate"], "CAIRN_LOG_LEVEL='loud'"),
        ({"CAIRN_LOG_LEVEL": "loud"}, ["tenant", "list"], "CAIRN_LOG_LEVEL='loud'"),
        ({"CAIRN_DATABASE_URL": "mysql://u:pw@db/x"}, ["migrate"], "CAIRN_DATABASE_URL"),
        ({"CAIRN_DATABASE_URL": "postgresql://u:pw@db"}, ["check"], "CAIRN_DATABASE_URL"),
        ({"CAIRN_HOST": "[nope]"}, ["serve"], "CAIRN_HOST='[nope]'"),
    ],
)
def test_commands_refuse_bad_settings_in_one_line_with_exit_2(
    env: dict[str, str], args: list[str], names: str
) -> None:
    done = cairn(*args, env=_env(**{"CAIRN_DATABASE_URL": NOWHERE, **env}))
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("cairn: error: ") and names in line, line
    assert "pw@" not in line


def test_a_data_dir_that_is_a_file_or_under_one_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "pgdata"
    a_file.write_text("not a directory")
    for args, env, names in [
        (["serve", "--data-dir", str(a_file)], {}, "--data-dir="),
        (["migrate", "--data-dir", str(a_file / "below")], {}, "--data-dir="),
        (["tenant", "list"], {"CAIRN_DATA_DIR": str(a_file)}, "CAIRN_DATA_DIR="),
    ]:
        done = cairn(*args, env=_env(**env))
        assert done.returncode == 2, (args, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr
        [line] = done.stderr.strip().splitlines()
        assert names in line and "not a directory" in line, line
    # A missing directory is made, missing parents too (as the default .cairn/pgdata is).
    from api.settings import load_settings

    assert load_settings({"data_dir": ("--data-dir", str(tmp_path / "a" / "b"))})


def test_worker_help_shows_the_workers_real_usage() -> None:
    done = cairn("worker", "--help", env=_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: cairn worker ")
    for flag in ("target", "--url", "--slots", "--name", "--token", "--shutdown-grace"):
        assert flag in done.stdout, flag
    missing = cairn("worker", env=_env())
    assert missing.returncode == 2
    assert "usage: cairn worker" in missing.stderr and "target" in missing.stderr


def test_worker_flags_may_come_before_the_target(tmp_path: Path) -> None:
    # `cairn worker --url U mod:attr`: the flags reach the worker (here it cannot import).
    done = cairn("worker", "--url", "http://127.0.0.1:9", "cli_fix_no_such_module:w", env=_env())
    assert done.returncode == 1, done.stderr
    assert "unrecognized arguments" not in done.stderr
    assert "cannot import cli_fix_no_such_module:w" in done.stderr


def test_server_commands_on_an_sdk_only_install_say_what_is_missing_in_one_line() -> None:
    """`pip install cairn` installs the `cairn` script with the SDK only: `cairn worker` works,
    the server's commands name the missing extra instead of a traceback."""
    script = (
        "import sys; sys.modules['pydantic_settings'] = None\n"  # as if never installed
        "from api.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for args in (["serve"], ["migrate"], ["tenant", "list"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (args, done.stderr)
        [line] = done.stderr.strip().splitlines()
        assert "pip install 'cairn[server]'" in line and "pydantic_settings" in line, line
