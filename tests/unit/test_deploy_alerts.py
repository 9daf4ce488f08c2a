"""deploy/prometheus: the alert rules' unit tests (promtool test rules) and the scrape timing."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
METRICS_BOUND_S = 2.0  # /metrics answers within ~2 s while the database hangs (README, Metrics)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (.ci/run installs)")
def test_alert_rules_pass_their_unit_tests() -> None:
    """Queue non-empty (growing or constant) with no worker fires, empty queue or live workers
    do not; an unscrapable replica fires CairnTargetDown (deploy/prometheus/alerts_test.yml)."""
    out = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"],
        cwd=PROM,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert {"CairnQueueWithoutWorkers", "CairnTargetDown"} <= tested <= names


def test_queue_alert_does_not_need_a_growing_queue() -> None:
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    (rule,) = [
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "CairnQueueWithoutWorkers"
    ]
    assert "cairn_queue_depth" in rule["expr"] and "cairn_workers_active" in rule["expr"]
    assert not re.search(r"\b(delta|deriv|rate|increase)\(", rule["expr"]), rule["expr"]


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)", value)
    assert m, value
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus.compose.yml"])
def test_scrape_timeout_is_explicit_and_fits(name: str) -> None:
    """Set explicitly (the default is the interval), above /metrics' bound with margin, and at
    most the interval (Prometheus refuses more)."""
    config = yaml.safe_load((PROM / name).read_text())
    for job in config["scrape_configs"]:
        interval = _seconds(job.get("scrape_interval", config["global"]["scrape_interval"]))
        timeout = job.get("scrape_timeout", config["global"].get("scrape_timeout"))
        assert timeout is not None, f"{name}: no explicit scrape_timeout"
        assert 1.5 * METRICS_BOUND_S <= _seconds(timeout) <= interval, (name, timeout, interval)
