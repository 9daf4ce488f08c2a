"""Packaging: import isolation from the server, public API, CLI target loading."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import worker_sdk
from worker_sdk import CairnError, Worker, Workflow
from worker_sdk.cli import build_parser, build_worker, load_target, main
from worker_sdk.client import build_headers

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_sdk_pulls_in_no_server_code() -> None:
    code = (
        "import worker_sdk, worker_sdk.cli, sys; "
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "('api','db','sqlalchemy','fastapi','asyncpg')]; assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_public_api_is_sorted_and_complete() -> None:
    assert worker_sdk.__all__ == sorted(worker_sdk.__all__)
    for name in worker_sdk.__all__:
        assert hasattr(worker_sdk, name), name
    for name in worker_sdk.__all__:
        obj = getattr(worker_sdk, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, CairnError), name


@pytest.fixture
def target_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("cairn_test_target")
    wf = Workflow("w")
    wf.step(name="s")(lambda ctx: 1)
    mod.wf = wf  # type: ignore[attr-defined]
    mod.both = [wf, Workflow("v")]  # type: ignore[attr-defined]
    mod.worker = Worker("http://x", workflows=[wf])  # type: ignore[attr-defined]
    mod.other = 42  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cairn_test_target", mod)
    return mod


def test_cli_builds_a_worker_from_a_workflow(
    target_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAIRN_TOKEN", "tok")
    monkeypatch.delenv("CAIRN_URL", raising=False)
    args = build_parser().parse_args(
        ["cairn_test_target:wf", "--slots", "7", "--shutdown-grace", "2.5"]
    )
    worker = build_worker(load_target(args.target), args)
    assert worker.slots == 7 and worker.shutdown_grace_s == 2.5
    default = build_worker(target_module.wf, build_parser().parse_args(["cairn_test_target:wf"]))
    assert default.shutdown_grace_s == 30
    assert worker.url == "http://127.0.0.1:8080"
    assert worker.actions == ["w.s"]
    assert worker._headers["authorization"] == "Bearer tok"
    ready = build_worker(load_target("cairn_test_target:worker"), args)
    assert ready is target_module.worker  # the flags win over what the file built it with
    assert ready.slots == 7 and ready.shutdown_grace_s == 2.5 and ready.url == "http://x"
    flagged = build_parser().parse_args(
        ["cairn_test_target:worker", "--url", "http://y:1/", "--token", "t2", "--name", "n"]
    )
    ready = build_worker(load_target("cairn_test_target:worker"), flagged)
    assert ready.url == "http://y:1" and ready.name == "n"
    assert ready._headers["authorization"] == "Bearer t2"
    with pytest.raises(CairnError, match="slots"):
        build_worker(ready, build_parser().parse_args(["x:y", "--slots", "0"]))


def test_the_token_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAIRN_TOKEN", "from-env")
    assert build_headers(None, None)["authorization"] == "Bearer from-env"
    assert build_headers(None, "given")["authorization"] == "Bearer given"
    own = build_headers({"Authorization": "Bearer mine"}, None)
    assert [v for k, v in own.items() if k.lower() == "authorization"] == ["Bearer mine"]
    monkeypatch.delenv("CAIRN_TOKEN")
    assert "authorization" not in build_headers(None, None)


def test_cli_rejects_bad_targets(target_module: types.ModuleType) -> None:
    args = build_parser().parse_args(["x:y"])
    with pytest.raises(CairnError, match=r"module\.path:attr"):
        load_target("no_colon")
    with pytest.raises(CairnError, match="no attribute"):
        load_target("cairn_test_target:missing")
    with pytest.raises(CairnError, match="must be a Worker"):
        build_worker(load_target("cairn_test_target:other"), args)
    # an empty workflow in the list fails validation with a clear error
    with pytest.raises(CairnError, match="has no steps"):
        build_worker(load_target("cairn_test_target:both"), args)
    assert main(["cairn_test_target:other"]) == 1
    assert main(["no_such_module_xyz:attr"]) == 1
