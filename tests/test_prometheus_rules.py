"""deploy/prometheus/rules.yml: valid, its scenarios pass, and it agrees with the Zabbix templates.

The rules are for sites that alert from Prometheus instead of Zabbix.  They must
not contradict the templates, so each rule names the trigger it mirrors
(annotation ``zabbix_trigger``) and carries that trigger's severity; the
metric names are checked against what the real exporter serves for the
agent's self-metrics, so a renamed key cannot leave a rule watching nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest

from tests.support.peers import need_binary
from trapline.core.model import Reading
from trapline.exporters.prometheus.exporter import PrometheusExporter
from trapline.middleware.normalize import normalize
from trapline.middleware.stats import AgentStats
from trapline.templates import template_dir

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = RULES_DIR / "rules.yml"
# Alertmanager's usual names for Zabbix's severities, as rules.yml's header says.
ALERTMANAGER_SEVERITY = {
    "disaster": "critical", "high": "critical", "average": "warning", "warning": "warning", "info": "info",
}
# Series Prometheus itself makes, not trapline's exporter.
PROMETHEUS_SERIES = {"up"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_binary("promtool"), *args], cwd=RULES_DIR, capture_output=True,
                          text=True, timeout=120, check=False)


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def template_triggers() -> dict[str, str]:
    """Trigger name -> priority, over every shipped template (prototypes included)."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("triggers", "trigger_prototypes"):
                for trigger in node.get(key, ()):
                    found[trigger["name"]] = trigger.get("priority", "NOT_CLASSIFIED").lower()
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in template_dir().glob("*/*.yaml"):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    return found


def exporter_metric_names() -> set[str]:
    stats = AgentStats()
    stats.destination("zabbix:127.0.0.1:10051")
    stats.collector("obd")
    exporter = PrometheusExporter("127.0.0.1", 0, stale_after=600)
    for item in stats.readings("agent", spool_depth=1, oldest_enqueued=0.0):
        exporter.observe(normalize(item) if isinstance(item, Reading) else item)
    text = generate_latest(exporter.registry).decode()
    samples = (line for line in text.splitlines() if line and not line.startswith("#"))
    return {line.split("{")[0].split(" ")[0] for line in samples}


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_fires_on_its_fault_and_stays_quiet_on_a_normal_day() -> None:
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    scenarios = yaml.safe_load((RULES_DIR / "rules_test.yml").read_text(encoding="utf-8"))
    for rule in rules():
        checks = [check for test in scenarios["tests"] for check in test.get("alert_rule_test", ())
                  if check["alertname"] == rule["alert"]]
        assert any(check["exp_alerts"] for check in checks), f"{rule['alert']}: no scenario where it fires"
        assert any(not check["exp_alerts"] for check in checks), f"{rule['alert']}: no quiet scenario"


def test_each_rule_mirrors_a_template_trigger_and_its_severity() -> None:
    triggers = template_triggers()
    for rule in rules():
        mirrored = rule["annotations"]["zabbix_trigger"]
        assert mirrored in triggers, f"{rule['alert']}: no template trigger named {mirrored!r}"
        assert rule["labels"]["zabbix_severity"] == triggers[mirrored], rule["alert"]
        assert rule["labels"]["severity"] == ALERTMANAGER_SEVERITY[triggers[mirrored]], rule["alert"]


def test_rules_only_watch_series_the_exporter_serves() -> None:
    served = exporter_metric_names() | PROMETHEUS_SERIES
    for rule in rules():
        used = set(re.findall(r"\b([a-z_]+)(?=\{|\[|\s|\)|$)", rule["expr"]))
        names = {name for name in used if name.startswith("trapline_") or name in PROMETHEUS_SERIES}
        assert names, f"{rule['alert']}: watches no series"
        assert names <= served, f"{rule['alert']}: {sorted(names - served)} is not served"
