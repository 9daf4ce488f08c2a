"""The shipped Prometheus rules and config are valid (checked by Debian's promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (.ci/run installs)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(PROMTOOL), "check", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@needs_promtool
def test_alert_rules_are_valid() -> None:
    assert "SUCCESS: 6 rules found" in promtool("rules", "deploy/prometheus/alerts.yml").stdout


@needs_promtool
def test_prometheus_config_is_valid() -> None:
    promtool("config", "deploy/prometheus/prometheus.yml")


def test_alerts_cover_the_documented_conditions() -> None:
    rules = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    for metric in (
        "cairn_duplicate_completions_total",
        "cairn_lease_expirations_total",
        "cairn_queue_depth",
        "cairn_workers_active",
    ):
        assert metric in rules
