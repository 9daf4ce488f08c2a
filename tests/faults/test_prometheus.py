"""A real Prometheus (Debian's package) scrapes every replica with deploy/'s config and rules.

After a zombie's late completion the duplicate-completion alert fires, and the queue-depth gauge
and latency histograms have series: checked through Prometheus' own HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e import flows
from tests.e2e.conftest import ROOT, Proc, free_port, wait_until
from worker_sdk import AsyncClient

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing (.ci/run installs)")


def render(tmp: Path, targets: list[str], *, fast_for: bool = False) -> Path:
    """deploy/'s config at a 1 s pace; ``fast_for`` shortens every rule's `for:` to 2 s."""
    conf = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    conf = conf.replace('targets: ["127.0.0.1:8080"]', f"targets: {json.dumps(targets)}")
    for key in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
        conf, n = re.subn(rf"{key}: \d+s", f"{key}: 1s", conf)
        assert n == 1, f"{key} not found in deploy/prometheus/prometheus.yml"
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    if fast_for:
        rules = re.sub(r"for: \d+m", "for: 2s", rules)
    (tmp / "alerts.yml").write_text(rules)
    path = tmp / "prometheus.yml"
    path.write_text(conf)
    return path


def query(prom: str, expr: str) -> list[Any]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5).json()
    result: list[Any] = r["data"]["result"]
    return result


def firing(prom: str, name: str) -> bool:
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return any(a["labels"]["alertname"] == name and a["state"] == "firing" for a in alerts)


async def test_duplicate_completion_alert_fires(
    server: Callable[..., Proc], procs: Callable[..., Proc], tmp_path: Path
) -> None:
    replicas = [server(), server()]
    targets = [(r.url or "").removeprefix("http://") for r in replicas]
    port = free_port()
    prom = f"http://127.0.0.1:{port}"
    procs(
        [
            str(PROMETHEUS),
            f"--config.file={render(tmp_path, targets)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {},
        "prometheus",
    )

    def scraping() -> bool:
        try:
            up = query(prom, "up")
        except (httpx.HTTPError, KeyError, ValueError):
            return False
        return len(up) == 2 and all(s["value"][1] == "1" for s in up)

    await asyncio.to_thread(wait_until, scraping, 60, "prometheus scraping both replicas")
    assert not firing(prom, "CairnDuplicateCompletions")

    url = replicas[0].url or ""
    async with AsyncClient(url) as client:
        await client.register(flows.pipeline)
        run = await client.trigger("pipeline", {"n": 1})
        zombie = procs(
            [sys.executable, "-m", "tests.e2e.zombie", url, "pipeline.fetch"], {}, "zombie"
        )
        await asyncio.to_thread(wait_until, lambda: "claimed" in zombie.output(), 20, "claim")
        zombie.signal(signal.SIGSTOP)
        procs(
            [sys.executable, "-m", "api.cli", "worker", "tests.e2e.flows:worker"],
            {"CAIRN_URL": replicas[1].url or ""},
            "worker",
        )
        assert (await client.wait(run["id"], timeout=60))["status"] == "succeeded"
        zombie.signal(signal.SIGCONT)
        await asyncio.to_thread(wait_until, lambda: '"status": 409' in zombie.output(), 20, "409")

    await asyncio.to_thread(
        wait_until,
        lambda: firing(prom, "CairnDuplicateCompletions"),
        60,
        "the duplicate-completion alert to fire",
    )
    assert query(prom, "cairn_queue_depth"), "no queue depth series"
    assert query(prom, "sum(cairn_queue_latency_seconds_bucket)"), "no queue latency histogram"
    assert query(prom, "sum(cairn_step_duration_seconds_bucket)"), "no step duration histogram"
    total = query(prom, 'sum(cairn_duplicate_completions_total{conflicting="true"})')
    assert float(total[0]["value"][1]) == 1.0


def start_prometheus(
    procs: Callable[..., Proc], tmp: Path, targets: list[str], *, fast_for: bool = False
) -> str:
    port = free_port()
    procs(
        [
            str(PROMETHEUS),
            f"--config.file={render(tmp, targets, fast_for=fast_for)}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {},
        "prometheus",
    )
    return f"http://127.0.0.1:{port}"


def firing_on(prom: str, name: str) -> list[dict[str, str]]:
    alerts = httpx.get(f"{prom}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [
        a["labels"] for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"
    ]


async def test_queue_without_workers_and_target_down_fire(
    server: Callable[..., Proc], procs: Callable[..., Proc], tmp_path: Path
) -> None:
    """deploy/'s rules (their `for:` cut to 2 s) on a real replica's metrics: work queued with no
    worker ever seen fires CairnQueueWithoutWorkers, although the depth never changes; a target
    where nothing listens fires CairnTargetDown for that instance only."""
    replica = server()
    live = (replica.url or "").removeprefix("http://")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here: up == 0
    prom = start_prometheus(procs, tmp_path, [live, dead], fast_for=True)

    def scraped() -> bool:
        try:
            up = {s["metric"]["instance"]: s["value"][1] for s in query(prom, "up")}
            depth = query(prom, "cairn_workers_active")
        except (httpx.HTTPError, KeyError, ValueError):
            return False
        return up == {live: "1", dead: "0"} and bool(depth)

    await asyncio.to_thread(wait_until, scraped, 60, "prometheus scraping both targets")
    await asyncio.sleep(4)  # several evaluations with an empty queue
    assert not firing_on(prom, "CairnQueueWithoutWorkers"), "fired on an empty queue"

    async with AsyncClient(replica.url or "") as client:
        await client.register(flows.pipeline)
        await client.trigger("pipeline", {"n": 1})  # one queued step, constant; no worker

    fired = await asyncio.to_thread(
        wait_until,
        lambda: firing_on(prom, "CairnQueueWithoutWorkers"),
        60,
        "the queue-without-workers alert to fire",
    )
    assert fired[0]["severity"] == "critical"
    down = await asyncio.to_thread(
        wait_until, lambda: firing_on(prom, "CairnTargetDown"), 60, "the target-down alert"
    )
    assert [a["instance"] for a in down] == [dead]
