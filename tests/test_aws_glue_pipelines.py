"""Unit tests of Glue crawlers and workflows: discovery, the crawl and run values, the triggers' patterns.

Shapes: Crawler, LastCrawlInfo, CrawlerMetrics, WorkflowRun and WorkflowRunStatistics as botocore's
Glue service model defines them (the API reference's GetCrawlers, GetCrawlerMetrics, ListWorkflows
and GetWorkflowRuns); the Stubber checks every response against that model.  moto (5.x) serves
crawlers, workflows and their runs, but not GetCrawlerMetrics, a crawl's ErrorMessage or a workflow
run's Statistics: those parts are tested with Stubber responses.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from tests.test_aws_poller import GLUE_NAMES, _stubbed_clients, aws_env, section  # noqa: F401 (fixture)
from trapline.collectors.aws.glue_pipelines import (
    ACTION_COUNTS,
    METRICS_BATCH,
    CrawlerService,
    WorkflowService,
)
from trapline.collectors.aws.poller import AwsPoller
from trapline.collectors.aws.resources import ERROR_SHOWN
from trapline.collectors.aws.session import ApiCalls, Clients
from trapline.collectors.aws.settings import parse_settings
from trapline.core.config import ConfigError
from trapline.core.model import Discovery, Item, Reading
from trapline.templates import template_dir

ONLY_PIPELINES = {
    "emr": {"enabled": False},
    "emr_serverless": {"enabled": False},
    "glue": {"enabled": False},
    "glue_crawlers": {"enabled": True},
    "glue_workflows": {"enabled": True},
}
START = 1_800_000_000


def _at(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _values(items: list[Item], prefix: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in items:
        if isinstance(item, Reading) and item.key.startswith(prefix):
            out.setdefault(item.key, []).append(item.value)
    return out


def _rows(items: list[Item], rule: str) -> list[dict[str, str]]:
    (lld,) = [i for i in items if isinstance(i, Discovery) and i.rule == rule]
    return [dict(row) for row in lld.rows]


POLICY = Path(__file__).resolve().parents[1] / "deploy" / "aws" / "iam-policy.json"


def _granted(resource: str) -> set[str]:
    """The actions the shipped policy allows on exactly ``resource``."""
    statements = json.loads(POLICY.read_text())["Statement"]
    return {
        a for s in statements if s["Effect"] == "Allow" and s["Resource"] == resource for a in s["Action"]
    }


# -- configuration -----------------------------------------------------------------------


def test_crawlers_and_workflows_are_off_unless_enabled_and_refuse_tag_filters() -> None:
    default = parse_settings("aws", section())
    assert not default.glue_crawlers.enabled and not default.glue_workflows.enabled
    poller = AwsPoller(default)
    assert {s.name for s in poller.services} == {"emr", "emr_serverless", "glue"}
    on = parse_settings(
        "aws", section(**{**ONLY_PIPELINES, "glue_workflows": {"enabled": True, "name_regex": "^etl"}})
    )
    assert {s.name for s in AwsPoller(on).services} == {"glue_crawlers", "glue_workflows"}
    with pytest.raises(ConfigError, match=r"glue_crawlers.*tags: not supported"):
        parse_settings("aws", section(glue_crawlers={"enabled": True, "tags": {"team": "data"}}))
    with pytest.raises(ConfigError, match=r"glue_workflows\].name_regx"):
        parse_settings("aws", section(glue_workflows={"name_regx": "x"}))


# -- discovery against moto: any name AWS allows, more than one page -----------------------

# Names of crawlers and workflows follow the same "single-line string pattern" as job names.
SPECIAL = st.sampled_from([",", '"', "'", "[", "]", " ", "\\", "ü", "漢", "{#X}", "$"])
NAMES = st.lists(
    st.tuples(GLUE_NAMES.map(lambda n: n[:200]), SPECIAL).map("".join),
    min_size=1,
    max_size=4,
    unique=True,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crawlers=NAMES, workflows=NAMES)
def test_any_names_are_discovered_over_several_pages_with_keys_that_tell_them_apart(
    crawlers: list[str], workflows: list[str]
) -> None:
    # 30 more workflows: ListWorkflows answers 25 a page (moto as AWS), so discovery must page.
    workflows = [*workflows, *(f"bulk-{k:02d}" for k in range(30))]
    with mock_aws():
        glue = boto3.client("glue", region_name="eu-west-1")
        targets = {"S3Targets": [{"Path": "s3://bucket/raw"}]}
        for name in crawlers:
            glue.create_crawler(Name=name, Role="arn:aws:iam::123456789012:role/c", Targets=targets)
        for name in workflows:
            glue.create_workflow(Name=name)
        running = glue.start_workflow_run(Name=workflows[0])["RunId"]
        poller = AwsPoller(parse_settings("aws", section(**ONLY_PIPELINES)))
        result = poller.cycle()
    assert result.errors == []
    assert poller.calls["glue:ListWorkflows"] >= 2
    for rule, prefix, names in (
        ("glue.crawler.discovery", "CRAWLER", crawlers),
        ("glue.workflow.discovery", "WORKFLOW", workflows),
    ):
        rows = _rows(result.items, rule)
        assert sorted(r[f"{{#{prefix}NAME}}"] for r in rows) == sorted(names)
        for row in rows:
            # One unquoted key parameter that decodes to the name: two names never share items.
            assert urllib.parse.unquote(row[f"{{#{prefix}KEY}}"]) == row[f"{{#{prefix}NAME}}"]
            assert not re.search(r'[,\]\["\s]', row[f"{{#{prefix}KEY}}"])
            assert "\n" not in row[f"{{#{prefix}LABEL}}"] and len(row[f"{{#{prefix}LABEL}}"]) <= 64
    states = _values(result.items, "glue.crawler.state[")
    assert len(states) == len(crawlers) and all(v == ["READY"] for v in states.values())
    (run,) = [json.loads(v[0]) for v in _values(result.items, "glue.workflow.run[").values()]
    assert (run["id"], run["state"], run["error"]) == (running, "RUNNING", "")


# -- crawls (Stubber: GetCrawlerMetrics and ErrorMessage are not in moto) -------------------


def _crawler(
    name: str, status: str | None, prefix: str = "", error: str = "", state: str = "READY"
) -> dict[str, Any]:
    crawler: dict[str, Any] = {"Name": name, "State": state}
    if status is not None:
        last: dict[str, Any] = {"Status": status, "StartTime": _at(START), "MessagePrefix": prefix}
        if error:
            last["ErrorMessage"] = error
        crawler["LastCrawl"] = last
    return crawler


def _metrics(name: str, runtime: float = 75.5) -> dict[str, Any]:
    return {
        "CrawlerName": name,
        "LastRuntimeSeconds": runtime,
        "MedianRuntimeSeconds": 60.0,
        "TablesCreated": 2,
        "TablesUpdated": 5,
        "TablesDeleted": 1,
    }


def _pipeline_poller(prime: Any, off: str = "glue_workflows") -> tuple[AwsPoller, dict[str, Stubber]]:
    """A poller of crawlers or workflows (the other is ``off``) on Stubber-fed clients."""
    made: dict[str, Stubber] = {}

    def factory(s: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(s, calls)
        made.update(stubs)
        prime(stubs["glue"])
        for stub in stubs.values():
            stub.activate()
        return clients

    settings = parse_settings("aws", section(**{**ONLY_PIPELINES, off: {"enabled": False}}))
    return AwsPoller(settings, client_factory=factory), made


def test_a_failed_crawl_is_one_value_with_its_error_and_table_counts_and_is_sent_once() -> None:
    # 150 crawlers over two GetCrawlers pages; each has a last crawl, so the first cycle asks
    # GetCrawlerMetrics for all of them: 100 names (its limit), then 50.
    names = [f"crawler, «{k:03d}»" for k in range(150)]
    error = "Internal Service Exception: " + "x" * 400
    crawlers = [_crawler(n, "SUCCEEDED", f"p-{k}") for k, n in enumerate(names)]
    crawlers[7] = _crawler(names[7], "FAILED", "p-7", error)

    def listing(glue: Stubber, found: list[dict[str, Any]]) -> None:
        glue.add_response("get_crawlers", {"Crawlers": found[:90], "NextToken": "t"})
        glue.add_response("get_crawlers", {"Crawlers": found[90:]}, {"NextToken": "t", "MaxResults": 1000})

    def prime(glue: Stubber) -> None:
        listing(glue, crawlers)  # discovery
        listing(glue, crawlers)  # health
        for batch in (names[:METRICS_BATCH], names[METRICS_BATCH:]):
            metrics = [_metrics(n) for n in batch]
            glue.add_response(
                "get_crawler_metrics", {"CrawlerMetricsList": metrics}, {"CrawlerNameList": batch}
            )

    poller, made = _pipeline_poller(prime)
    result = poller.cycle()
    assert result.errors == []
    made["glue"].assert_no_pending_responses()
    crawls = _values(result.items, "glue.crawler.crawl[")
    assert len(crawls) == 150 and len(_rows(result.items, "glue.crawler.discovery")) == 150
    failed = json.loads(crawls["glue.crawler.crawl[crawler%2C%20«007»]"][0])
    assert failed["state"] == "FAILED" and failed["error"] == error  # the full text, in its own item
    assert failed["title"].startswith("p-7 FAILED: Internal Service Exception: xxx")
    assert len(failed["title"]) < len(error) and len(failed["title"].split(": ", 1)[1]) <= ERROR_SHOWN
    assert (failed["tables_created"], failed["tables_updated"], failed["tables_deleted"]) == (2, 5, 1)
    assert (failed["started"], failed["duration"], failed["ended"]) == (START, 75.5, START + 76)
    (reading,) = [
        i
        for i in result.items
        if isinstance(i, Reading) and i.key.startswith("glue.crawler.crawl[crawler%2C%20«007»")
    ]
    assert reading.clock == START + 76  # the problem carries the crawl's end

    # The calls it made are the ones deploy/aws/iam-policy.json grants without resource scope.
    assert set(poller.calls) == {"glue:GetCrawlers", "glue:GetCrawlerMetrics"} <= _granted("*")

    # Nothing new: no crawl value again, and no GetCrawlerMetrics call.
    listing(made["glue"], crawlers)
    again = poller.cycle()
    assert _values(again.items, "glue.crawler.crawl[") == {}
    assert poller.calls["glue:GetCrawlerMetrics"] == 2

    # The next crawl of that crawler succeeded: one value, metrics asked for it alone.
    crawlers[7] = _crawler(names[7], "SUCCEEDED", "p-7b", state="RUNNING")
    listing(made["glue"], crawlers)
    made["glue"].add_response(
        "get_crawler_metrics",
        {"CrawlerMetricsList": [_metrics(names[7], 10)]},
        {"CrawlerNameList": [names[7]]},
    )
    fixed = poller.cycle()
    made["glue"].assert_no_pending_responses()
    (value,) = _values(fixed.items, "glue.crawler.crawl[").values()
    assert json.loads(value[0])["state"] == "SUCCEEDED"
    assert _values(fixed.items, "glue.crawler.state[crawler%2C%20«007»]") == {
        "glue.crawler.state[crawler%2C%20«007»]": ["RUNNING"]
    }


def test_a_crawler_never_crawled_or_deleted_sends_no_crawl_and_metrics_failure_retries() -> None:
    def prime(glue: Stubber) -> None:
        glue.add_response(
            "get_crawlers", {"Crawlers": [_crawler("new", None), _crawler("gone", "FAILED", "g")]}
        )
        glue.add_response(
            "get_crawlers", {"Crawlers": [_crawler("new", None), _crawler("other", "FAILED", "o")]}
        )

    poller, made = _pipeline_poller(prime)
    result = poller.cycle()
    assert result.errors == [] and _values(result.items, "glue.crawler.crawl[") == {}
    assert set(_values(result.items, "glue.crawler.state[")) == {"glue.crawler.state[new]"}
    # The crawler crawled, but GetCrawlerMetrics is refused: nothing is marked as sent.
    made["glue"].add_response("get_crawlers", {"Crawlers": [_crawler("new", "FAILED", "n", "boom")]})
    made["glue"].add_client_error("get_crawler_metrics", "AccessDeniedException", "no", 400)
    denied = poller.cycle()
    assert denied.errors == ["GetCrawlerMetrics: access denied (AccessDeniedException)"]
    made["glue"].add_response("get_crawlers", {"Crawlers": [_crawler("new", "FAILED", "n", "boom")]})
    made["glue"].add_response("get_crawler_metrics", {"CrawlerMetricsList": [_metrics("new")]})
    retried = poller.cycle()
    (value,) = _values(retried.items, "glue.crawler.crawl[new]")["glue.crawler.crawl[new]"]
    assert json.loads(value)["title"] == "n FAILED: boom"


# -- workflow runs (Stubber: moto's runs have no Statistics) ---------------------------------

STATISTICS = st.fixed_dictionaries({field: st.integers(0, 40) for field in ACTION_COUNTS})
RUN_STATES = st.sampled_from(["RUNNING", "COMPLETED", "STOPPING", "STOPPED", "ERROR"])


def _workflow_run(
    run_id: str, state: str, stats: dict[str, int] | None, error: str = "", age: int = 0
) -> dict[str, Any]:
    run: dict[str, Any] = {
        "Name": "wf",
        "WorkflowRunId": run_id,
        "Status": state,
        "StartedOn": _at(START - age),
    }
    if state in ("COMPLETED", "STOPPED", "ERROR"):
        run["CompletedOn"] = _at(START - age + 600)
    if stats is not None:
        run["Statistics"] = stats
    if error:
        run["ErrorMessage"] = error
    return run


def test_workflow_runs_are_read_across_pages_and_a_completed_run_with_failed_actions_says_so() -> None:
    clean = {"TotalActions": 3, "SucceededActions": 3}
    first = [_workflow_run("wr_3", "RUNNING", {"TotalActions": 3, "RunningActions": 1, "FailedActions": 1})]

    def prime(glue: Stubber) -> None:
        glue.add_response("list_workflows", {"Workflows": ["wf"]})
        glue.add_response("get_workflow_runs", {"Runs": first, "NextToken": "more"})

    poller, made = _pipeline_poller(prime, off="glue_crawlers")
    result = poller.cycle()
    (value,) = _values(result.items, "glue.workflow.run[wf]")["glue.workflow.run[wf]"]
    running = json.loads(value)
    # A run still going carries its counts, but no error: its failed action pages on its own.
    assert (running["state"], running["error"], running["actions_failed"]) == ("RUNNING", "", 1)
    # It ended with one failed action, and a newer run started: both over two pages, oldest first.
    newer = _workflow_run("wr_4", "RUNNING", clean, age=-60)
    ended = _workflow_run("wr_3", "COMPLETED", {"TotalActions": 3, "SucceededActions": 2, "FailedActions": 1})
    made["glue"].add_response("get_workflow_runs", {"Runs": [newer], "NextToken": "p2"})
    made["glue"].add_response(
        "get_workflow_runs",
        {"Runs": [ended]},
        {"Name": "wf", "IncludeGraph": False, "MaxResults": 50, "NextToken": "p2"},
    )
    later = poller.cycle()
    made["glue"].assert_no_pending_responses()
    runs = [json.loads(v) for v in _values(later.items, "glue.workflow.run[wf]")["glue.workflow.run[wf]"]]
    # Each reported once (the older one of page 2 was known); sent in the order of their clocks.
    assert sorted((r["id"], r["state"]) for r in runs) == [("wr_3", "COMPLETED"), ("wr_4", "RUNNING")]
    done = next(r for r in runs if r["id"] == "wr_3")
    assert (
        done["error"] == "1 failed of 3 actions" and done["title"] == "wr_3 COMPLETED: 1 failed of 3 actions"
    )
    assert done["duration"] == 600 and done["actions_succeeded"] == 2
    assert "glue:ListWorkflows" in _granted("*") and set(poller.calls) <= _granted("*") | _granted(
        "arn:aws:glue:*:*:workflow/*"
    )


# -- the triggers' patterns, applied to values the collector makes ---------------------------

TEMPLATE = template_dir() / "aws_poller" / "template_aws_emr_glue.yaml"


@functools.cache
def _prototype(rule_key: str) -> dict[str, Any]:
    data = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]
    for template in data["templates"]:
        for rule in template.get("discovery_rules", []):
            if rule["key"] == rule_key:
                (trigger,) = rule["trigger_prototypes"]
                return dict(trigger)
    raise AssertionError(rule_key)


def _finds(expression: str) -> list[tuple[re.Pattern[str], int]]:
    """Each find(...,"regexp","<pattern>")=<0|1> of an expression, as a Python pattern and its wanted result.

    The patterns use nothing where PCRE and Python's re differ (alternation, classes, .*).
    """
    found = re.findall(r'find\([^)]*?,,"regexp","((?:[^"\\]|\\.)*)"\)=([01])', expression)
    assert found, expression
    return [(re.compile(pattern.replace('\\"', '"')), int(wanted)) for pattern, wanted in found]


def _holds(expression: str, value: str) -> bool:
    return all(bool(p.search(value)) == bool(wanted) for p, wanted in _finds(expression))


ERROR_TEXTS = st.one_of(
    st.text(max_size=80),
    st.sampled_from(
        ['"state":"ERROR"', '"state":"COMPLETED","actions_failed":3', "x\\", '"actions_stopped":1']
    ),
)


@settings(deadline=None)
@given(
    state=RUN_STATES,
    stats=st.one_of(st.none(), STATISTICS),
    error=ERROR_TEXTS,
    missed=st.lists(
        st.sampled_from(["load never started (trigger t: extract SUCCEEDED at ...)"]), max_size=2
    ),
)
def test_workflow_trigger_pages_for_errors_and_bad_actions_of_finished_runs_only(
    state: str, stats: dict[str, int] | None, error: str, missed: list[str]
) -> None:
    from trapline.collectors.aws.glue_pipelines import _workflow_run as convert  # noqa: PLC0415

    value = convert(_workflow_run("wr_1", state, stats, error), missed).as_json()
    trigger = _prototype("glue.workflow.discovery")
    bad = bool(missed) or (
        stats is not None
        and any(stats[f] for f in ("FailedActions", "StoppedActions", "TimeoutActions", "ErroredActions"))
    )
    assert _holds(trigger["expression"], value) == (state == "ERROR" or (state == "COMPLETED" and bad))
    assert _holds(trigger["recovery_expression"], value) == (state == "COMPLETED" and not bad)
    if state == "COMPLETED" and bad and not error.strip():
        assert "actions" in json.loads(value)["title"]  # the problem name says what went wrong


@settings(deadline=None)
@given(status=st.sampled_from(["SUCCEEDED", "CANCELLED", "FAILED"]), error=ERROR_TEXTS)
def test_crawler_trigger_pages_for_a_failed_crawl_and_resolves_on_a_successful_one(
    status: str, error: str
) -> None:
    from trapline.collectors.aws.glue_pipelines import _crawl_run  # noqa: PLC0415

    value = _crawl_run(_crawler("c", status, "p", error), _metrics("c")).as_json()
    trigger = _prototype("glue.crawler.discovery")
    assert _holds(trigger["expression"], value) == (status == "FAILED")
    assert _holds(trigger["recovery_expression"], value) == (status == "SUCCEEDED")


def test_pattern_reader_reads_the_template_as_zabbix_does() -> None:
    # The reader must find every find() of both triggers; a pattern it missed would make them pass.
    assert len(_finds(_prototype("glue.workflow.discovery")["recovery_expression"])) == 2
    assert len(_finds(_prototype("glue.crawler.discovery")["expression"])) == 1


def test_in_the_list_form_keys_and_labels_carry_the_account_and_region() -> None:
    # Two accounts may each have a crawler "raw": on the one poller host their items must differ.
    settings = parse_settings("aws", section(**ONLY_PIPELINES))
    crawlers = CrawlerService(settings.glue_crawlers, "aws-org", scope="prod/eu-west-1")
    workflows = WorkflowService(settings.glue_workflows, "aws-org", scope="prod/eu-west-1")
    clients, stubs = _stubbed_clients(settings, ApiCalls())
    stubs["glue"].add_response("get_crawlers", {"Crawlers": [_crawler("raw, x", None)]})
    stubs["glue"].add_response("list_workflows", {"Workflows": ["raw, x"]})
    stubs["glue"].activate()
    (crawler,) = crawlers.discover(clients)
    (workflow,) = workflows.discover(clients)
    assert crawler.key("glue.crawler.crawl") == "glue.crawler.crawl[prod/eu-west-1/raw%2C%20x]"
    assert crawler.lld["{#CRAWLERLABEL}"] == "prod/eu-west-1: raw, x" and crawler.id == "raw, x"
    assert workflow.key("glue.workflow.run") == "glue.workflow.run[prod/eu-west-1/raw%2C%20x]"
