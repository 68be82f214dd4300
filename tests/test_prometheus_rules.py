"""deploy/prometheus/rules.yml: valid, its scenarios pass, and it agrees with the Zabbix templates.

The rules are for sites that alert from Prometheus instead of Zabbix.  They must
not contradict the templates, so each rule names the trigger it mirrors
(annotation ``zabbix_trigger``) and carries that trigger's severity, and every
trigger of every shipped template is either mirrored or listed, with the reason,
in deploy/prometheus/README.md ("Not covered, and why"): a new trigger without
either fails here.  The metric names are checked against what the real exporter
serves, so a renamed key cannot leave a rule watching nothing.
"""

from __future__ import annotations

import json
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
SCENARIOS = sorted(RULES_DIR.glob("rules*_test.yml"))
NOT_COVERED_HEADING = "## Not covered, and why"
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


def template_triggers() -> dict[str, set[str]]:
    """Trigger name -> its priorities, over every shipped template (prototypes included).

    A discovery rule's override may give a prototype another severity (pending
    trouble codes are warnings): that severity is the trigger's too.
    """
    found: dict[str, set[str]] = {}

    def walk(node: Any, overrides: list[dict[str, str]]) -> None:
        if isinstance(node, dict):
            # A discovery rule's overrides reach the trigger prototypes of its item prototypes.
            operations = [op for rule in node.get("overrides", ()) for op in rule.get("operations", ())]
            overrides = overrides + [op for op in operations
                                     if op.get("operationobject") == "TRIGGER_PROTOTYPE" and "severity" in op]
            for key in ("triggers", "trigger_prototypes"):
                for trigger in node.get(key, ()):
                    name = trigger["name"]
                    severities = found.setdefault(name, set())
                    severities.add(trigger.get("priority", "NOT_CLASSIFIED").lower())
                    severities.update(op["severity"].lower() for op in overrides if _names(op, name))
            for value in node.values():
                walk(value, overrides)
        elif isinstance(node, list):
            for value in node:
                walk(value, overrides)

    for path in template_dir().glob("*/*.yaml"):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")), [])
    return found


def _names(operation: dict[str, str], name: str) -> bool:
    """Whether an override operation's condition on the trigger name holds (LIKE: contains)."""
    operator = operation.get("operator", "EQUAL")
    if operator == "LIKE":
        return operation["value"] in name
    assert operator == "EQUAL", f"override operator {operator} is not read by this test yet"
    return operation["value"] == name


def not_covered() -> dict[str, str]:
    """Trigger name -> why no rule mirrors it: the table under the README's heading."""
    text = (RULES_DIR / "README.md").read_text(encoding="utf-8")
    section = text.split(NOT_COVERED_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = (line.split("|") for line in section.splitlines() if line.startswith("| `"))
    return {cells[1].strip().strip("`"): cells[2].strip() for cells in rows}


# One reading of each key the vertical rules watch, as the collectors send them
# (key, unit and labels from collectors/obd, gps, mist, aws, mqtt_bridge); each
# key is checked below to be an item of a shipped template.
_AP = {"org": "Acme", "site": "HQ", "ap": "lobby", "mac": "5c5b35000001"}
_SWITCH = {"org": "Acme", "site": "HQ", "switch": "core", "mac": "5c5b35000011"}
_GATEWAY = {"org": "Acme", "site": "HQ", "gateway": "edge", "mac": "5c5b35000021"}
VERTICAL_READINGS = [
    Reading("van-1", "obd.state", 2, 0, 0, "", {"state": "running"}),
    Reading("van-1", "obd.voltage", 12.5, 0, 0, "V"),
    Reading("van-1", "obd.engine.running", 1, 0, 0),
    Reading("van-1", "obd.mil", 1, 0, 0),
    Reading("van-1", "obd.dtc.count[stored]", 0, 0, 0, "", {"state": "stored"}),
    Reading("van-1", "obd.dtc[P0301,stored]", 1, 0, 0, "", {"code": "P0301", "state": "stored"}),
    Reading("van-1", "obd.pid[COOLANT_TEMP]", 90, 0, 0, "°C", {"pid": "COOLANT_TEMP"}),
    Reading("van-1", "gps.fix.mode", 3, 0, 0),
    Reading("van-1", "gps.speed", 50.0, 0, 0, "km/h"),
    Reading("van-1", "vehicle.geofence.inside", 1, 0, 0),
    Reading("mist", "mist.collector.stats", json.dumps({"channels": 2, "channels_down": 0}), 0, 0),
    Reading("mist-ap-1", "mist.ap.raw", json.dumps({
        "uptime": 50, "cpu_util": 3, "mem_used_kb": 10, "mem_total_kb": 20,
        "env_stat": {"cpu_temp": 50, "ambient_temp": 25},
        "port_stat": {"eth0": {"up": True, "speed": 1000, "rx_errors": 0}},
        "radio_stat": {"band_5": {"noise_floor": -90, "disabled": False, "util_all": 5}},
    }), 0, 0, "", _AP),
    Reading("mist-ap-1", "mist.ap.raw", json.dumps({"status": "disconnected"}), 0, 0, "", _AP),
    Reading("mist-ap-1", "mist.ap.stale", 1, 0, 0, "", _AP),
    Reading("mist-switch-1", "mist.switch.raw", json.dumps({
        "status": "connected", "cpu_stat": {"usage": 5, "idle": 95}, "memory_stat": {"usage": 40},
        "ports": {"ge-0/0/0": {"up": True, "rx_errors": 0}},
        "module_temperatures": {"0/CPU": {"celsius": 45}},
        "module_fans": {"0/Fan 0": {"status": "ok"}}, "module_psus": {"0/PSU 0": {"status": "ok"}},
    }), 0, 0, "", _SWITCH),
    Reading("mist-switch-1", "mist.switch.stale", 1, 0, 0, "", _SWITCH),
    Reading("mist-gateway-1", "mist.gateway.raw", json.dumps({
        "status": "connected", "cpu_stat": {"usage": 5, "idle": 95}, "memory_stat": {"usage": 40},
        "if_stat": {"ge-0/0/0.0": {"up": True, "wan_name": "wan1"}}, "tunnels": {"hub-a": {"up": True}},
        "spu_stat": {"0": {"spu_current_session": 10, "spu_max_session": 131072}},
    }), 0, 0, "", _GATEWAY),
    Reading("mist-gateway-1", "mist.gateway.stale", 1, 0, 0, "", _GATEWAY),
    Reading("van-1", "obd.battery.guard", 0, 0, 0),
    Reading("aws", "aws.poller.errors", 0, 0, 0),
    Reading("aws", "aws.poller.cloudwatch.cost", 0.01, 0, 0, "USD"),
    Reading("aws-emr-j-1", "emr.nodes.unhealthy", 0, 0, 0),
    Reading("aws-emr-j-1", "emr.nodes.lost", 0, 0, 0),
    Reading("aws-emr-j-1", "emr.hdfs.blocks.missing", 0, 0, 0),
    Reading("aws-emr-j-1", "emr.hdfs.utilization", 10, 0, 0, "%"),
    Reading("aws-emr-j-1", "emr.yarn.memory.available.pct", 50, 0, 0, "%"),
    Reading("aws-emr-j-1", "emr.yarn.apps.pending", 0, 0, 0),
    Reading("aws-emr-j-1", "emr.cluster.idle", 0, 0, 0),
    Reading("aws-emr-j-1", "emr.cluster.state", "TERMINATED_WITH_ERRORS", 0, 0),
    Reading("aws-emr-j-1", "emr.step",
            json.dumps({"id": "s-1", "state": "FAILED", "started": 1, "ended": 2}), 0, 0),
    Reading("aws-emr-j-1", "emr.step.pending", json.dumps({"since": 1, "step": "load (s-1)"}), 0, 0),
    Reading("aws-emr-serverless-00f1", "emr.serverless.job.run",
            json.dumps({"id": "00f1", "state": "CANCELLED", "started": 1, "ended": 2}), 0, 0),
    Reading("aws", 'glue.job.run["nightly"]',
            json.dumps({"id": "jr_1", "state": "RUNNING", "started": 1}), 0, 0),
    Reading("aws", 'glue.job.run["nightly"]',
            json.dumps({"id": "jr_0", "state": "FAILED", "started": 0, "ended": 1}), 0, 0),
    Reading("aws", 'glue.job.expected["nightly"]', json.dumps({"due": 1, "why": "trigger nightly"}), 0, 0),
    Reading("aws", "glue.crawler.crawl[raw]",
            json.dumps({"id": "c-1", "state": "FAILED", "started": 0, "ended": 1}), 0, 0),
    Reading("centre", 'trapline.bridge.deadletters["fleet"]', 0, 0, 0),
    Reading("centre", 'trapline.bridge.agent.online["fleet","van-1"]', 1, 0, 0),
]


def template_item_keys() -> set[str]:
    """Item keys of every shipped template, prototypes with their LLD macros as a pattern."""
    keys: set[str] = set()
    for path in template_dir().glob("*/*.yaml"):
        keys.update(re.findall(r"^\s+key: '?(.+?)'?$", path.read_text(encoding="utf-8"), re.MULTILINE))
    return keys


def served_exposition() -> str:
    """What the exporter serves for the agent's own readings and every reading the rules watch."""
    stats = AgentStats()
    stats.destination("zabbix:127.0.0.1:10051")
    stats.collector("obd")
    exporter = PrometheusExporter("127.0.0.1", 0, stale_after=600)
    for item in [*stats.readings("agent", spool_depth=1, oldest_enqueued=0.0), *VERTICAL_READINGS]:
        exporter.observe(normalize(item) if isinstance(item, Reading) else item)
    return generate_latest(exporter.registry).decode()


def exporter_metric_names() -> set[str]:
    samples = (line for line in served_exposition().splitlines() if line and not line.startswith("#"))
    return {line.split("{")[0].split(" ")[0] for line in samples}


def test_promtool_finds_nothing_to_lint_in_the_series_the_rules_watch() -> None:
    """Prometheus' naming rules: a gauge ending in _count (a histogram's suffix) was one."""
    result = subprocess.run([need_binary("promtool"), "check", "metrics"], input=served_exposition(),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_fires_on_its_fault_and_stays_quiet_on_a_normal_day() -> None:
    result = promtool("test", "rules", *(path.name for path in SCENARIOS))
    assert result.returncode == 0, result.stdout + result.stderr
    tests = [test for path in SCENARIOS for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]]
    for rule in rules():
        checks = [check for test in tests for check in test.get("alert_rule_test", ())
                  if check["alertname"] == rule["alert"]]
        assert any(check["exp_alerts"] for check in checks), f"{rule['alert']}: no scenario where it fires"
        assert any(not check["exp_alerts"] for check in checks), f"{rule['alert']}: no quiet scenario"


def test_each_rule_mirrors_a_template_trigger_and_its_severity() -> None:
    triggers = template_triggers()
    for rule in rules():
        mirrored = rule["annotations"]["zabbix_trigger"]
        assert mirrored in triggers, f"{rule['alert']}: no template trigger named {mirrored!r}"
        severity = rule["labels"]["zabbix_severity"]
        assert severity in triggers[mirrored], rule["alert"]
        assert rule["labels"]["severity"] == ALERTMANAGER_SEVERITY[severity], rule["alert"]


def test_every_template_trigger_is_mirrored_or_listed_as_not_covered() -> None:
    triggers, listed = template_triggers(), not_covered()
    by_trigger: dict[str, set[str]] = {}
    for rule in rules():
        mirrored = rule["annotations"]["zabbix_trigger"]
        by_trigger.setdefault(mirrored, set()).add(rule["labels"]["zabbix_severity"])
    assert not set(listed) - set(triggers), f"listed, but no such trigger: {set(listed) - set(triggers)}"
    assert not set(listed) & set(by_trigger), f"listed, yet mirrored: {set(listed) & set(by_trigger)}"
    for name, severities in triggers.items():
        assert name in by_trigger or name in listed, f"template trigger {name!r}: no rule, and not listed"
        assert name in listed or by_trigger[name] == severities, f"{name!r}: rules cover {by_trigger[name]}"
    assert all(listed.values()), "each trigger not covered needs its reason"


def template_macros() -> tuple[dict[str, str], dict[str, str]]:
    """(macro -> default value, trigger name -> its name and expressions), over every shipped template."""
    defaults: dict[str, str] = {}
    texts: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for macro in node.get("macros", ()) if isinstance(node.get("macros"), list) else ():
                defaults[macro["macro"]] = str(macro.get("value", ""))
            for key in ("triggers", "trigger_prototypes"):
                for trigger in node.get(key, ()):
                    parts = (trigger["name"], trigger["expression"], trigger.get("recovery_expression", ""))
                    texts[trigger["name"]] = " ".join(parts)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in template_dir().glob("*/*.yaml"):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    return defaults, texts


# Macros of a mirrored trigger whose default a rule does not spell out, and why.
THRESHOLD_EXCEPTIONS = {
    ("TraplineAgentRestarted", "{$TRAPLINE.STOPS.EXPECTED}"): "a per-host switch, off by default",
    ("VehicleNoDataWhileMoving", "{$VEHICLE.NODATA.TIMEOUT}"): "the exporter's stale_after (600 s) is it",
    ("AwsPollerSilent", "{$AWS.POLLER.NODATA.TIMEOUT}"): "stale_after (10m) plus `for: 10m` is the 20m",
    ("MistStreamDown", "{$MIST.STATE.NODATA}"): "stale_after (10m) instead of 3m, as the README says",
}
_DURATION = re.compile(r"(\d+)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def test_thresholds_and_windows_are_the_templates_macro_defaults() -> None:
    """Each macro default of the mirrored trigger is in the rule: a number as is, a time as a
    PromQL duration (window, for, offset) or in seconds.  Counts of readings ({$...READINGS})
    have no Prometheus form: the rules ask for a value at the window's start instead."""
    defaults, texts = template_macros()
    for rule in rules():
        text = f"{rule['expr']} for: {rule.get('for', '')}"
        trigger = texts[rule["annotations"]["zabbix_trigger"]]
        # {$NAME} or {$NAME:"context"}: the default is {$NAME}'s
        for macro in sorted({f"{name}}}" for name in re.findall(r"(\{\$[A-Z0-9_.]+)[:}]", trigger)}):
            default = defaults[macro]
            if macro.endswith(".READINGS}") or (rule["alert"], macro) in THRESHOLD_EXCEPTIONS:
                continue
            duration = _DURATION.fullmatch(default)
            if duration is not None:
                seconds = int(duration.group(1)) * _SECONDS[duration.group(2)]
                spelled = rf"(\[|for: |offset ){default}\b|(?<![\d.]){seconds}(?![\d.])"
            else:
                spelled = rf"(?<![\d.]){re.escape(default)}(?![\d.])"
            assert re.search(spelled, text), f"{rule['alert']}: {macro} = {default} is not in {text!r}"


def test_the_sample_readings_are_template_items() -> None:
    """VERTICAL_READINGS must be what reaches Zabbix too, not keys made up for this test."""
    macro = re.compile(r"\\\{\\#\w+\\\}")  # an LLD macro such as {#PID}, as re.escape writes it
    patterns = [re.compile(macro.sub(".+", re.escape(key)) + "$")
                for key in template_item_keys()]
    for reading in VERTICAL_READINGS:
        assert any(p.match(reading.key) for p in patterns), reading.key


def test_rules_only_watch_series_the_exporter_serves() -> None:
    served = exporter_metric_names() | PROMETHEUS_SERIES
    for rule in rules():
        used = set(re.findall(r"\b([a-z_]+)(?=\{|\[|\s|\)|$)", rule["expr"]))
        names = {name for name in used if name.startswith("trapline_") or name in PROMETHEUS_SERIES}
        assert names, f"{rule['alert']}: watches no series"
        assert names <= served, f"{rule['alert']}: {sorted(names - served)} is not served"
