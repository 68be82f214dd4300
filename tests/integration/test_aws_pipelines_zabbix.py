"""Glue crawlers and workflows on real Zabbix 6.0 and 7.0: the template's two triggers, end to end.

The poller is the real one; its Glue client answers from botocore Stubber responses in the shapes
of the Glue API reference (GetCrawlers, GetCrawlerMetrics, ListWorkflows, GetWorkflowRuns), checked
by the Stubber against botocore's service model: moto has no GetCrawlerMetrics, no crawl
ErrorMessage and no workflow run Statistics, which these triggers are about.  Everything from the
poller's values on is real: the trapper, the template's dependent items and triggers, the problems
read back through the API.

One scenario: a normal day (a crawl that succeeded, a workflow run still RUNNING with one failed
action so far) stays quiet; a crawl that FAILED and the workflow run COMPLETED with that failed
action open one problem each, named with the error text; the next successful crawl and the next
clean run resolve both.  Then a run COMPLETED with a job that never started although its trigger's
predecessor SUCCEEDED in the run (GetWorkflowRun's graph) opens the workflow's problem naming that
job, the trigger and why; the next run resolves it.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from devtools.localzabbix import LocalZabbix
from tests.integration.test_aws_zabbix import LLD_TIMEOUT, Account, create_poller_host, items
from tests.support.zabbix_fixtures import assert_quiet_for, wait_for_problems, wait_until
from tests.test_aws_poller import _stubbed_clients
from trapline.collectors.aws.poller import AwsPoller
from trapline.collectors.aws.session import ApiCalls
from trapline.collectors.aws.settings import parse_settings
from trapline.core.config import Section

pytestmark = pytest.mark.integration

CRAWLER = 'raw, "orders" ü'  # a comma, quotes and non-ASCII: legal in a crawler name
WORKFLOW = "nightly, [eu] ü"
CRAWLER_KEY = "raw%2C%20%22orders%22%20ü"
WORKFLOW_KEY = "nightly%2C%20%5Beu%5D%20ü"
ERROR = 'Service error: table "orders" ü could not be read from s3://raw, access denied'


def _at(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


class Glue:
    """What the Glue API answers next cycle: the crawler's last crawl and the workflow's runs."""

    def __init__(self, stub: Stubber) -> None:
        self.stub = stub
        self.first = True  # the first cycle also discovers
        self.crawls = 0

    def cycle(self, crawl: tuple[str, str, str] | None, runs: list[dict[str, Any]]) -> None:
        """Queue one cycle's answers; ``crawl`` is (message prefix, status, error) of the last crawl."""
        crawler: dict[str, Any] = {"Name": CRAWLER, "State": "READY"}
        if crawl is not None:
            prefix, status, error = crawl
            # Each crawl starts 20 s after the one before (and all ended in the past): their values'
            # clocks, the crawls' ends, keep their order, as crawls minutes apart would.
            self.crawls += 1
            last: dict[str, Any] = {
                "Status": status,
                "StartTime": _at(time.time() - 200 + 20 * self.crawls),
                "MessagePrefix": prefix,
            }
            if error:
                last["ErrorMessage"] = error
            crawler["LastCrawl"] = last
        for _ in range(2 if self.first else 1):  # discovery, then health
            self.stub.add_response("get_crawlers", {"Crawlers": [crawler]})
        if crawl is not None:
            metrics = {
                "CrawlerName": CRAWLER,
                "LastRuntimeSeconds": 50.0,
                "TablesCreated": 1,
                "TablesUpdated": 3,
            }
            self.stub.add_response("get_crawler_metrics", {"CrawlerMetricsList": [metrics]})
        if self.first:
            self.stub.add_response("list_workflows", {"Workflows": [WORKFLOW]})
        # A workflow that never ran has no Runs at all: the model allows no empty list.
        self.stub.add_response("get_workflow_runs", {"Runs": runs} if runs else {})
        self.first = False


def _run(run_id: str, status: str, failed: int, started: float) -> dict[str, Any]:
    running = 1 if status == "RUNNING" else 0
    statistics = {
        "TotalActions": 3,
        "SucceededActions": 3 - failed - running,
        "FailedActions": failed,
        "RunningActions": running,
    }
    run: dict[str, Any] = {
        "Name": WORKFLOW,
        "WorkflowRunId": run_id,
        "Status": status,
        "StartedOn": _at(started),
    }
    if status != "RUNNING":
        run["CompletedOn"] = _at(time.time())
    run["Statistics"] = statistics
    return run


def test_failed_crawl_and_workflow_run_page_with_their_error_and_resolve_on_the_next_success(
    zabbix: LocalZabbix,
) -> None:
    api = zabbix.api()
    host, hostid = create_poller_host(zabbix, api, "aws-pipelines")
    # Clients made once, their Glue client fed by the Stubber; the poller's self-metrics do not matter here.
    clients, stubs = _stubbed_clients(None, ApiCalls())
    stubs["glue"].activate()
    glue = Glue(stubs["glue"])

    data = {
        "type": "aws",
        "host": host,
        "region": "eu-west-1",
        "emr": {"enabled": False},
        "emr_serverless": {"enabled": False},
        "glue": {"enabled": False},
        "glue_crawlers": {"enabled": True},
        "glue_workflows": {"enabled": True},
    }
    settings = parse_settings("aws", Section(Path("/etc/trapline/trapline.toml"), "collectors.aws", data))
    poller = AwsPoller(settings, client_factory=lambda _settings, _calls: clients)
    account = Account(zabbix, api, "", host, hostid, poller, "", "")

    def cycle(crawl: tuple[str, str, str] | None, runs: list[dict[str, Any]]) -> None:
        glue.cycle(crawl, runs)
        result = account.cycle()
        assert result.errors == []
        stubs["glue"].assert_no_pending_responses()

    # Discovery: a crawler that never crawled, a workflow that never ran.
    cycle(None, [])
    wait_until(
        lambda: (
            items(api, host, f"glue.crawler.crawl.state[{CRAWLER_KEY}]")
            and items(api, host, f"glue.workflow.run.actions.failed[{WORKFLOW_KEY}]")
            and len(api.trigger.get(hostids=[hostid], search={"description": "AWS Glue: "})) == 2
        ),
        timeout=LLD_TIMEOUT,
        what="discovered crawler and workflow items and triggers",
    )
    account.reload_with_dependents()

    # A normal day: the crawl succeeded; the workflow runs, one of its actions already failed.
    started = time.time() - 300
    cycle(("c-1", "SUCCEEDED", ""), [_run("wr_1", "RUNNING", 1, started)])
    wait_until(
        lambda: items(api, host, f"glue.workflow.run.actions.failed[{WORKFLOW_KEY}]")[0]["lastvalue"] == "1",
        timeout=30,
        what="the running workflow's counts",
    )
    assert_quiet_for(api, [hostid], 5)

    # The next crawl fails; the run completes with that failed action.
    cycle(("c-2", "FAILED", ERROR), [_run("wr_1", "COMPLETED", 1, started)])
    shown = ERROR.replace('"', "'")  # the title carries no quotes (an event name cuts it out by them)
    wait_for_problems(
        api,
        [hostid],
        {
            (f"AWS Glue: Crawler {CRAWLER}: Crawl c-2 FAILED: {shown}", "average"),
            (f"AWS Glue: Workflow {WORKFLOW}: Run wr_1 COMPLETED: 1 failed of 3 actions", "average"),
        },
        timeout=30,
    )
    (error,) = items(api, host, f"glue.crawler.crawl.error[{CRAWLER_KEY}]")
    assert error["lastvalue"] == ERROR  # the full text, quotes and all

    # The next crawl succeeds and a new run completes cleanly: both problems resolve.
    clean = _run("wr_2", "COMPLETED", 0, time.time() - 60)
    cycle(("c-3", "SUCCEEDED", ""), [clean, _run("wr_1", "COMPLETED", 1, started)])
    wait_for_problems(api, [hostid], set(), timeout=30)

    # A run completes with one action in none of its counts: the poller reads that run's graph
    # (GetWorkflowRun), where "load" never ran although "extract" SUCCEEDED as its trigger wants.
    never_ran = {"TotalActions": 2, "SucceededActions": 1}
    missed = {**_run("wr_3", "COMPLETED", 0, time.time() - 30), "Statistics": never_ran}
    glue.cycle(None, [missed, clean])
    stubs["glue"].add_response("get_workflow_run", {"Run": {**missed, "Graph": _graph()}})
    assert account.cycle().errors == []
    stubs["glue"].assert_no_pending_responses()
    why = f"load never started (trigger after-extract: extract SUCCEEDED at {EXTRACTED:%Y-%m-%d %H:%M} UTC)"
    problem = (f"AWS Glue: Workflow {WORKFLOW}: Run wr_3 COMPLETED: {why}", "average")
    wait_for_problems(api, [hostid], {problem}, timeout=30)
    # The next run completes with every action run: resolved.
    cycle(None, [_run("wr_4", "COMPLETED", 0, time.time() - 10), missed])
    wait_for_problems(api, [hostid], set(), timeout=30)


# When "extract" ended in the graph below.
EXTRACTED = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=5)


def _graph() -> dict[str, Any]:
    """The run's WorkflowGraph (GetWorkflowRun, IncludeGraph): extract, then load after it succeeded."""
    runs = [{"Id": "jr_e", "JobName": "extract", "JobRunState": "SUCCEEDED", "CompletedOn": EXTRACTED}]
    condition = {"LogicalOperator": "EQUALS", "JobName": "extract", "State": "SUCCEEDED"}
    trigger = {
        "Name": "after-extract",
        "Type": "CONDITIONAL",
        "Predicate": {"Conditions": [condition]},
        "Actions": [{"JobName": "load"}],
    }
    return {
        "Nodes": [
            {"Type": "JOB", "Name": "extract", "JobDetails": {"JobRuns": runs}},
            {"Type": "TRIGGER", "Name": "after-extract", "TriggerDetails": {"Trigger": trigger}},
            {"Type": "JOB", "Name": "load", "JobDetails": {"JobRuns": []}},
        ]
    }
