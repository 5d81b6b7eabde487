"""promtool accepts the scrape config and alert rules, and the rules fire on
the failures they name (``promtool test rules``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROM_DIR = Path(__file__).parents[2] / "deploy" / "prometheus"
RULE_TESTS = Path(__file__).parent / "promtool" / "alerts_test.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool missing (Debian package prometheus)"
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_promtool_check_config() -> None:
    proc = _promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", str(PROM_DIR / "alerts.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alert_rules_fire_on_their_failures() -> None:
    proc = _promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_rule_test() -> None:
    rules = (PROM_DIR / "alerts.yml").read_text()
    tests = RULE_TESTS.read_text()
    names = [line.split(":", 1)[1].strip() for line in rules.splitlines()
             if line.strip().startswith("- alert:")]
    assert names
    missing = [n for n in names if f"alertname: {n}" not in tests]
    assert missing == []
