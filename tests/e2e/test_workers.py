"""SDK workers in their own processes against a real server: crashes, zombies, cancellation."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import flows
from tests.e2e.conftest import Proc, wait_until
from worker_sdk import Client


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def start_worker(procs: Callable[..., Proc], ledger: Path) -> Callable[..., Proc]:
    def start(server: Proc, **env: str) -> Proc:
        full = {"CAIRN_URL": server.url or "", "E2E_LEDGER": str(ledger), **env}
        return procs(
            [sys.executable, "-m", "api.cli", "worker", "tests.e2e.flows:worker"], full, "worker"
        )

    return start


def register(client: Client) -> None:
    for wf in (flows.pipeline, flows.outcomes, flows.async_flow, flows.hog):
        client.register(wf)


def trigger_and_wait_for_work(
    srv: Proc, ledger: Path, input: dict[str, Any]
) -> tuple[Client, dict[str, Any]]:
    """Trigger a pipeline run and return once its `work` step has started on a worker."""
    client = Client(srv.url)
    register(client)
    run = client.trigger("pipeline", input)
    wait_until(lambda: any(e["step"] == "work" for e in read_ledger(ledger)), 20, "work started")
    return client, run


def step(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["name"] == name)


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")):
            got = line[len(name) :].split(" ")[0].strip("{}")
            if sorted(got.split(",")) == sorted(want.split(",")) or (not labels and not got):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_dag_runs_end_to_end(
    server: Callable[..., Proc], start_worker: Callable[..., Proc]
) -> None:
    srv = server()
    start_worker(srv)
    client = Client(srv.url)
    register(client)
    run = client.trigger("pipeline", {"n": 20})
    final = client.wait(run["id"], timeout=30)
    assert final["status"] == "succeeded"
    assert step(final, "publish")["output"] == {"result": 41}


def test_sigkill_mid_step_finishes_on_another_worker(
    server: Callable[..., Proc], start_worker: Callable[..., Proc], ledger: Path
) -> None:
    srv = server()
    doomed = start_worker(srv)
    client, run = trigger_and_wait_for_work(srv, ledger, {"n": 1, "sleep": 3})
    doomed.signal(signal.SIGKILL)
    survivor = start_worker(srv)
    final = client.wait(run["id"], timeout=40)
    assert final["status"] == "succeeded"
    work = step(final, "work")
    assert work["output"]["pid"] == survivor.pid
    assert [a["outcome"] for a in work["attempts"]] == ["lease_expired", "succeeded"]
    starts = [e for e in read_ledger(ledger) if e["step"] == "work" and e["event"] == "start"]
    assert [e["pid"] for e in starts] == [doomed.pid, survivor.pid]
    assert metric(srv.url or "", "cairn_lease_expirations_total") >= 1


def test_zombie_completion_is_refused_and_counted(
    server: Callable[..., Proc], procs: Callable[..., Proc], start_worker: Callable[..., Proc]
) -> None:
    srv = server()
    url = srv.url or ""
    client = Client(url)
    register(client)
    zombie = procs([sys.executable, "-m", "tests.e2e.zombie", url, "pipeline.fetch"], {}, "zombie")
    run = client.trigger("pipeline", {"n": 5})
    wait_until(lambda: "claimed" in zombie.output(), 20, "zombie claimed")
    zombie.signal(signal.SIGSTOP)
    before = metric(
        url, "cairn_duplicate_completions_total", reason="lease_lost", conflicting="true"
    )
    start_worker(srv)
    final = client.wait(run["id"], timeout=40)  # the lease passed to the SDK worker
    assert final["status"] == "succeeded"
    zombie.signal(signal.SIGCONT)
    line = wait_until(
        lambda: [ln for ln in zombie.output().splitlines() if '"status"' in ln],
        20,
        "zombie reported",
    )[0]
    reply = json.loads(line)
    assert reply["status"] == 409 and reply["body"]["code"] == "lease_lost"
    after = metric(
        url, "cairn_duplicate_completions_total", reason="lease_lost", conflicting="true"
    )
    assert after == before + 1
    again = client.get_run(run["id"])
    assert step(again, "fetch")["output"] == {"n": 5}  # the new holder's result stands
    assert step(again, "fetch")["attempts"][0]["outcome"] == "lease_expired"


def test_cancellation_reaches_a_running_step(
    server: Callable[..., Proc], start_worker: Callable[..., Proc], ledger: Path
) -> None:
    srv = server()
    start_worker(srv)
    client = Client(srv.url)
    register(client)
    run = client.trigger("pipeline", {"n": 1, "sleep": 30})
    wait_until(lambda: any(e["step"] == "work" for e in read_ledger(ledger)), 20, "work started")
    client.cancel(run["id"])
    wait_until(
        lambda: any(e["event"] == "cancel_seen" for e in read_ledger(ledger)),
        10,
        "the step saw ctx.cancelled",
    )
    final = wait_until(
        lambda: (r := client.get_run(run["id"])) and step(r, "work")["status"] == "cancelled" and r,
        10,
        "step cancelled",
    )
    assert final["status"] == "cancelled"
    assert step(final, "publish")["status"] == "cancelled"


def test_async_step_is_cancelled(
    server: Callable[..., Proc], start_worker: Callable[..., Proc], ledger: Path
) -> None:
    srv = server()
    start_worker(srv)
    client = Client(srv.url)
    register(client)
    run = client.trigger("asyncflow", {"sleep": 60})
    wait_until(lambda: read_ledger(ledger), 20, "step started")
    client.cancel(run["id"])
    wait_until(
        lambda: any(e["event"] == "cancel_seen" for e in read_ledger(ledger)),
        10,
        "asyncio cancellation",
    )


def test_retry_after_and_non_retryable(
    server: Callable[..., Proc], start_worker: Callable[..., Proc], ledger: Path
) -> None:
    srv = server()
    start_worker(srv)
    client = Client(srv.url)
    register(client)
    run = client.trigger("outcomes", {})
    final = client.wait(run["id"], timeout=30)
    assert final["status"] == "failed"
    flaky, doomed = step(final, "flaky"), step(final, "doomed")
    assert flaky["status"] == "succeeded" and flaky["attempt"] == 3
    assert [a["outcome"] for a in flaky["attempts"]] == ["failed", "failed", "succeeded"]
    assert doomed["status"] == "failed" and doomed["attempt"] == 1
    assert doomed["error"]["type"] == "NonRetryableError"


def test_sigterm_lets_running_steps_finish(
    server: Callable[..., Proc], start_worker: Callable[..., Proc], ledger: Path
) -> None:
    srv = server()
    w = start_worker(srv)
    client, run = trigger_and_wait_for_work(srv, ledger, {"n": 3, "sleep": 1.5})
    w.signal(signal.SIGTERM)
    assert w.popen.wait(20) == 0
    done = [e for e in read_ledger(ledger) if e["event"] == "done"]
    assert len(done) == 1
    r = client.get_run(run["id"])
    assert step(r, "work")["status"] == "succeeded"  # reported before exit
    start_worker(srv)
    assert client.wait(run["id"], timeout=30)["status"] == "succeeded"


def test_a_step_blocking_the_event_loop_keeps_its_lease(
    server: Callable[..., Proc], start_worker: Callable[..., Proc]
) -> None:
    srv = server()
    start_worker(srv, E2E_LEASE_S="1.5", E2E_HEARTBEAT_S="0.3")
    client = Client(srv.url)
    register(client)
    run = client.trigger("hog", {"block": 4.5})  # three lease periods without yielding
    final = client.wait(run["id"], timeout=30)
    assert final["status"] == "succeeded"
    attempts = step(final, "block_the_loop")["attempts"]
    assert [a["outcome"] for a in attempts] == ["succeeded"]
