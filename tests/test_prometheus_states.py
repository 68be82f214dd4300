"""States and runs as Prometheus series (prometheus/expand.toml: [codes], label_path, [params]).

The templates turn a state's text into a number with JavaScript and show it with a
value map; the exporter does the same from its [codes] tables, checked here against
both, so a state added to a template without the exporter (or the other way round)
fails.  Runs come from the AWS collector's own ``Run.as_json`` over states and texts
hypothesis makes up (AWS documents the state enums; names and errors are free text).
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib import resources
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trapline.collectors.aws.resources import Run, key_param
from trapline.core.model import Reading
from trapline.exporters.prometheus.expand import Expander, ExpansionError
from trapline.exporters.prometheus.exporter import PrometheusExporter
from trapline.middleware.normalize import normalize
from trapline.templates import template_dir

# The templates' state preprocessing: `var codes = {A: 1, ...}; return ... ? codes[value] : <other>;`,
# the text lower-cased first in some (`value.toLowerCase()`).
_JS_CODES = re.compile(
    r"var codes = \{(.*?)\};\s*return codes\.hasOwnProperty\((value(?:\.toLowerCase\(\))?)\)"
    r" \? codes\[\2\] : (\d+);"
)


def shipped_data() -> dict[str, Any]:
    text = resources.files("trapline.exporters.prometheus").joinpath("expand.toml").read_text("utf-8")
    return tomllib.loads(text)


def shipped_codes() -> dict[str, dict[str, int]]:
    return dict(shipped_data()["codes"])


def shipped_expand() -> dict[str, list[dict[str, Any]]]:
    return dict(shipped_data()["expand"])


def template_state_items() -> dict[str, tuple[dict[str, int], int, set[int], bool]]:
    """Value map name -> (the JavaScript's text -> code, its code for other text, the value map's codes,
    whether the script lower-cases the text first)."""
    found: dict[str, tuple[dict[str, int], int, set[int], bool]] = {}
    for path in template_dir().glob("*/*.yaml"):
        templates = yaml.safe_load(path.read_text(encoding="utf-8"))["zabbix_export"]["templates"]
        for template in templates:
            maps = {vm["name"]: {int(m["value"]) for m in vm["mappings"]}
                    for vm in template.get("valuemaps", ())}
            rules = template.get("discovery_rules", ())
            prototypes = [p for rule in rules for p in rule.get("item_prototypes", ())]
            items = [*template.get("items", ()), *prototypes]
            for item in items:
                name = item.get("valuemap", {}).get("name")
                scripts = [step["parameters"][0] for step in item.get("preprocessing", ())
                           if step["type"] == "JAVASCRIPT"]
                match = _JS_CODES.search(scripts[0]) if name and scripts else None
                if match is not None:
                    pairs = (pair.split(":") for pair in match.group(1).split(","))
                    codes = {text.strip(): int(code) for text, code in pairs}
                    found[name] = (codes, int(match.group(3)), maps[name], match.group(2) != "value")
    return found


def test_code_tables_match_the_templates_javascript_and_value_maps() -> None:
    templates = template_state_items()
    expected = {"Mist AP status", "Mist hardware status", "AWS EMR cluster state", "AWS Glue job run state"}
    assert expected <= set(templates)
    rows = [row for rows in shipped_expand().values() for row in rows if "codes" in row]
    for name, table in shipped_codes().items():
        assert name in templates, f"[codes.{name!r}] is no value map of a template item"
        codes, other, value_map, folded = templates[name]
        assert {text: code for text, code in table.items() if text != "*"} == codes, name
        assert table.get("*") == other, name
        assert set(table.values()) <= value_map, name
        # Where the template lower-cases the text, the exporter must too, and only there.
        assert all(row.get("fold_case", False) == folded for row in rows if row["codes"] == name), name


def series(readings: list[Reading]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    exporter = PrometheusExporter("127.0.0.1", 0, 600)
    for reading in readings:
        exporter.observe(normalize(reading))
    text = generate_latest(exporter.registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_states_become_their_codes() -> None:
    got = series([
        Reading("aws-emr-j-1", "emr.cluster.state", "TERMINATED_WITH_ERRORS", 0, 0),
        Reading("aws-emr-j-2", "emr.cluster.state", "SOME_NEW_STATE", 0, 0),
        Reading("mist-ap-1", "mist.ap.raw", json.dumps({"status": "connected"}), 0, 0, "", {"mac": "m1"}),
        Reading("mist-ap-2", "mist.ap.raw", json.dumps({"status": "rebooting?"}), 0, 0, "", {"mac": "m2"}),
        Reading("mist-ap-3", "mist.ap.raw", json.dumps({"status": 1}), 0, 0, "", {"mac": "m3"}),
        # A switch's fans: the template lower-cases the status, so "OK" is ok; other text is a failure.
        Reading("mist-switch-1", "mist.switch.raw", json.dumps({"module_fans": {
            "0/Fan 0": {"status": "OK"}, "0/Fan 1": {"status": "Absent"}, "0/Fan 2": {"status": "failed"},
        }}), 0, 0, "", {"mac": "m4"}),
    ])
    fan = {("host", "mist-switch-1"), ("mac", "m4")}
    assert [got[("trapline_mist_switch_fan_status", frozenset({*fan, ("fan", f"0/Fan {i}")}))]
            for i in range(3)] == [1, 2, 0]
    assert got[("trapline_emr_cluster_state", frozenset({("host", "aws-emr-j-1")}))] == 7
    assert got[("trapline_emr_cluster_state", frozenset({("host", "aws-emr-j-2")}))] == 0  # "Unknown"
    assert got[("trapline_mist_ap_status", frozenset({("host", "mist-ap-1"), ("mac", "m1")}))] == 1
    assert got[("trapline_mist_ap_status", frozenset({("host", "mist-ap-2"), ("mac", "m2")}))] == 9
    # A number where the stream sends text is no state: no sample, as for any other wrong type.
    assert not any(name == "trapline_mist_ap_status" and ("host", "mist-ap-3") in labels
                   for name, labels in got)


def test_a_failed_attempt_and_its_retry_in_one_poll_both_stay() -> None:
    """The newest value of one series would hide the failure; one series per state keeps it."""
    key = f"glue.job.run[{key_param('nightly')}]"
    failed = Run("jr_1", "FAILED", 100.0, 200, (("started", 100), ("ended", 200)), error="OOM")
    retry = Run("jr_2", "RUNNING", 210.0, 210, (("started", 210),))
    got = series([Reading("aws", key, run.as_json(), run.clock, 0) for run in (failed, retry)])
    job = {("host", "aws"), ("job", "nightly")}
    ended = "trapline_glue_job_run_ended_timestamp_seconds"
    started = "trapline_glue_job_run_started_timestamp_seconds"
    assert got[(ended, frozenset({*job, ("state", "FAILED")}))] == 200
    assert got[(started, frozenset({*job, ("state", "RUNNING")}))] == 210
    assert not any(name.endswith("_ended_timestamp_seconds") and ("state", "RUNNING") in labels
                   for name, labels in got)


# Glue's JobRunState enum (AWS Glue API reference), plus text AWS may add later.
glue_states = st.sampled_from([
    "STARTING", "RUNNING", "STOPPING", "STOPPED", "SUCCEEDED",
    "FAILED", "TIMEOUT", "ERROR", "WAITING", "EXPIRED",
]) | st.text(max_size=20)
epochs = st.integers(min_value=0, max_value=2**40)


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=60), state=glue_states, error=st.text(max_size=80),
       started=epochs, ended=st.none() | epochs)
def test_any_run_of_any_job_expands_with_its_job_and_state(
    name: str, state: str, error: str, started: int, ended: int | None
) -> None:
    end: tuple[tuple[str, Any], ...] = () if ended is None else (("ended", ended),)
    values = (("started", started), *end)
    run = Run("jr_1", state, float(started), ended or started, values, name=name, error=error)
    reading = Reading("aws", f"glue.job.run[{key_param(name)}]", run.as_json(), run.clock, 0)
    samples = Expander.shipped().expand(reading)
    assert samples is not None
    if not state:
        assert samples == []  # no state, no series to file the times under
        return
    expected = {"glue.job.run.started", *(["glue.job.run.ended"] if ended is not None else [])}
    assert {s.metric.name for s in samples} == expected
    assert all(dict(s.labels) == {"job": key_param(name), "state": state} for s in samples)


GOOD = {"metric": {"m": {"help": "h"}}, "codes": {"C": {"a": 1}}}


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ({"expand": {"k": [{"path": "$.a", "metric": "m", "codes": "D"}]}}, "not defined under"),
        ({"expand": {"k": [{"path": "$.a", "metric": "m"}]}, "codes": {"C": {"a": "1"}}}, "integer"),
        ({"expand": {"k": [{"path": "$.a", "metric": "m"}]}, "codes": {"C": {}}}, "table of text"),
        ({"expand": {"k": [{"path": "$.a", "metric": "m", "label_path": "$.s"}]}}, "label_path needs"),
        ({"expand": {"k": [{"path": "$.a.*", "metric": "m", "label": "x", "label_path": "$.s"}]}},
         "paths without"),
        ({"expand": {"k": [{"path": "$.a", "metric": "m"}]}, "params": {"j": ["job"]}}, "no such key"),
        ({"expand": {"k": [{"path": "$.a", "metric": "m"}]}, "params": {"k": ["host"]}}, "label names"),
        ({"expand": {"k": [{"path": "$.a", "metric": "m"}]}, "plain_text": ["j"]}, "not under"),
    ],
)
def test_data_file_mistakes_are_named(extra: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ExpansionError, match=complaint):
        Expander.from_data({**GOOD, **extra})
