"""Static checks of the AWS templates' state items: every state AWS documents has a number and a name.

The state lists come from the AWS API references (Glue JobRun.JobRunState, EMR ClusterState and
StepState, EMR Serverless ApplicationState and JobRunState, as in /work/shared/reference/FACTS.md
and the EMR Serverless "Job run states" page, which adds QUEUED); the template turns them into
numbers with a JavaScript step and names them with a value map.  Both must agree, and 0 must stay
free for a state AWS adds later.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from trapline.collectors.aws.glue_pipelines import CRAWL_OUTCOMES, WORKFLOW_FINAL_STATES
from trapline.collectors.aws.services import EMR_ACTIVE_STATES, EMR_ENDED_STATES, GLUE_FINAL_STATES
from trapline.templates import template_dir

TEMPLATE = template_dir() / "aws_poller" / "template_aws_emr_glue.yaml"
DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "aws"

DOCUMENTED = {
    "glue.job.run.state[{#JOBKEY}]": {
        "STARTING", "RUNNING", "STOPPING", "STOPPED", "SUCCEEDED", "FAILED", "TIMEOUT", "ERROR", "WAITING",
        "EXPIRED",
    },
    "emr.cluster.state": {*EMR_ACTIVE_STATES, *EMR_ENDED_STATES},
    # Glue Crawler.State, LastCrawlInfo.Status and WorkflowRun.Status (botocore's glue service model).
    "glue.crawler.state[{#CRAWLERKEY}]": {"READY", "RUNNING", "STOPPING"},
    "glue.crawler.crawl.state[{#CRAWLERKEY}]": {"SUCCEEDED", "CANCELLED", "FAILED"},
    "glue.workflow.run.state[{#WORKFLOWKEY}]": {"RUNNING", "COMPLETED", "STOPPING", "STOPPED", "ERROR"},
    "emr.step.state": {
        "PENDING", "CANCEL_PENDING", "RUNNING", "COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED",
    },
    "emr.serverless.app.state": {
        "CREATING", "CREATED", "STARTING", "STARTED", "STOPPING", "STOPPED", "TERMINATED",
    },
    "emr.serverless.job.run.state": {
        "SUBMITTED", "QUEUED", "PENDING", "SCHEDULED", "RUNNING", "SUCCESS", "FAILED", "CANCELLING",
        "CANCELLED",
    },
}


def _templates() -> list[dict[str, Any]]:
    data = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    return list(data["zabbix_export"]["templates"])


def _state_items() -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Each state item with the value map of its template, as number -> name."""
    found = {}
    for template in _templates():
        valuemaps = template.get("valuemaps", [])
        maps = {m["name"]: {e["value"]: e["newvalue"] for e in m["mappings"]} for m in valuemaps}
        items = list(template.get("items", []))
        for rule in template.get("discovery_rules", []):
            items += rule.get("item_prototypes", [])
        for item in items:
            if item["key"] in DOCUMENTED:
                found[item["key"]] = (item, maps[item["valuemap"]["name"]])
    return found


def _codes(item: dict[str, Any]) -> dict[str, int]:
    """The string -> number table of the item's JavaScript step."""
    (script,) = [s["parameters"][0] for s in item["preprocessing"] if s["type"] == "JAVASCRIPT"]
    table = re.search(r"var codes = \{(.*?)\};", script)
    assert table, script
    pairs = (p.split(":") for p in table.group(1).split(","))
    return {name.strip(): int(code) for name, code in pairs}


def test_every_state_item_is_found() -> None:
    assert set(_state_items()) == set(DOCUMENTED)


@pytest.mark.parametrize("key", sorted(DOCUMENTED))
def test_state_item_maps_every_documented_state_to_its_own_named_number(key: str) -> None:
    item, valuemap = _state_items()[key]
    codes = _codes(item)
    assert set(codes) == DOCUMENTED[key]
    assert len(set(codes.values())) == len(codes) and 0 not in codes.values()
    assert valuemap == {"0": "Unknown", **{str(code): name for name, code in codes.items()}}
    assert item.get("value_type", "UNSIGNED") == "UNSIGNED"  # numbers, so the map applies and graphs work
    # Anything else becomes 0 (Unknown), not an unsupported item.
    (script,) = [s["parameters"][0] for s in item["preprocessing"] if s["type"] == "JAVASCRIPT"]
    assert "codes.hasOwnProperty(value) ? codes[value] : 0" in script


def test_the_collector_knows_no_glue_final_state_the_template_does_not() -> None:
    item, _ = _state_items()["glue.job.run.state[{#JOBKEY}]"]
    assert set(GLUE_FINAL_STATES) <= set(_codes(item))


def test_the_collector_knows_no_crawl_outcome_or_final_workflow_state_the_template_does_not() -> None:
    crawl, _ = _state_items()["glue.crawler.crawl.state[{#CRAWLERKEY}]"]
    workflow, _ = _state_items()["glue.workflow.run.state[{#WORKFLOWKEY}]"]
    assert set(CRAWL_OUTCOMES) <= set(_codes(crawl)) and set(WORKFLOW_FINAL_STATES) <= set(_codes(workflow))


def _expressions() -> list[str]:
    """Every trigger and trigger prototype expression of the file."""
    data = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]
    found = [t["expression"] for t in data["triggers"]]
    for template in data["templates"]:
        items = list(template.get("items", []))
        for rule in template.get("discovery_rules", []):
            items += rule.get("item_prototypes", [])
            found += [t["expression"] for t in rule.get("trigger_prototypes", [])]
        found += [t["expression"] for item in items for t in item.get("triggers", [])]
        found += [t["expression"] for item in items for t in item.get("trigger_prototypes", [])]
    return found


# Which states each trigger on a state item means, in AWS's words (template README, "Triggers").
STATE_TRIGGERS = {
    "glue.job.run.state[{#JOBKEY}]": {"STARTING", "RUNNING", "STOPPING", "WAITING"},  # still running
    "emr.serverless.job.run.state": {"SUBMITTED", "QUEUED", "PENDING", "SCHEDULED"},  # not started yet
    "emr.cluster.state": {"TERMINATED_WITH_ERRORS"},
}


@pytest.mark.parametrize("key", sorted(STATE_TRIGGERS))
def test_state_triggers_compare_with_the_numbers_of_the_states_they_mean(key: str) -> None:
    names = {code: name for name, code in _codes(_state_items()[key][0]).items()}
    reference = re.escape(f"/{key})")
    meant: set[str] = set()
    for expression in _expressions():
        for listed in re.findall(rf"in\(last\([^)]*{reference},([\d,]+)\)", expression):
            meant |= {names[int(code)] for code in listed.split(",")}
        for code in re.findall(rf"last\([^)]*{reference}=(\d+)", expression):
            meant.add(names[int(code)])
    assert meant == STATE_TRIGGERS[key]


def _all_items() -> dict[str, dict[str, Any]]:
    """Every item and item prototype of the file, by key."""
    found: dict[str, dict[str, Any]] = {}
    for template in _templates():
        items = list(template.get("items", []))
        for rule in template.get("discovery_rules", []):
            items += rule.get("item_prototypes", [])
        found |= {item["key"]: item for item in items}
    return found


def _multiple_triggers() -> list[str]:
    """The expressions of the triggers that open one problem per matching value (type MULTIPLE)."""
    data = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]
    triggers = list(data.get("triggers", []))
    for template in data["templates"]:
        for rule in template.get("discovery_rules", []):
            triggers += rule.get("trigger_prototypes", [])
    return [t["expression"] for t in triggers if t.get("type") == "MULTIPLE"]


def test_items_read_by_one_problem_per_value_triggers_drop_a_repeated_value() -> None:
    """A run's value can arrive twice (event and reconciliation poll, or a restarted poller): a
    MULTIPLE trigger would page again for it unless the item discards a value equal to the last.
    The scenario on a real Zabbix: tests/integration/test_aws_zabbix.py."""
    items = _all_items()
    read = {
        key for expression in _multiple_triggers() for key in re.findall(r"\(/[^/]+/([^,)]+\]?)", expression)
    }
    assert read, "no MULTIPLE trigger found"
    for key in sorted(read):
        steps = [step["type"] for step in items[key].get("preprocessing", [])]
        assert steps[:1] == ["DISCARD_UNCHANGED"], (key, steps)


def test_every_api_action_the_poller_may_count_has_an_item() -> None:
    """The poller sends aws.poller.api.calls[ACTION] for each action it called; an action without an
    item is refused by Zabbix.  The actions: every one the deployed policies grant (the moto test
    checks that the poller calls nothing else), STS's own two, and the event queue's calls."""
    policy = json.loads((DEPLOY / "iam-policy.json").read_text(encoding="utf-8"))
    granted = {a for statement in policy["Statement"] for a in statement["Action"]}
    expected = granted | {
        "sts:AssumeRole",
        "sts:GetCallerIdentity",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessageBatch",
    }
    counted = {
        key[len("aws.poller.api.calls[") : -1]
        for key in _all_items()
        if key.startswith("aws.poller.api.calls[")
    }
    assert counted == expected
