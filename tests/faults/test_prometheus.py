"""A real Prometheus (Debian's package) scrapes every replica with deploy/'s config and rules.

After a zombie's late completion the duplicate-completion alert fires, and the queue-depth gauge
and latency histograms have series: checked through Prometheus' own HTTP API.
"""

from __future__ import annotations

import asyncio
import json
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


def render(tmp: Path, targets: list[str]) -> Path:
    conf = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    conf = conf.replace('targets: ["127.0.0.1:8080"]', f"targets: {json.dumps(targets)}")
    conf = conf.replace("scrape_interval: 5s", "scrape_interval: 1s")
    conf = conf.replace("evaluation_interval: 5s", "evaluation_interval: 1s")
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp / "alerts.yml")
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
