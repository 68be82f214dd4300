"""Missed-run detection of Glue jobs: the triggers' promises (collectors/aws/missed.py) and the
``glue.job.expected`` values the poller sends (collectors/aws/services.py).

Trigger shapes (Name, Type, State, Schedule, Predicate, Actions, WorkflowName) and the trigger
states are those of botocore's Glue service model (GetTriggers in the API reference).  moto (5.x)
keeps triggers and their states (CreateTrigger, StartTrigger, StopTrigger, GetTriggers) and never
fires a schedule, which is the job that did not start; a refused GetTriggers is a Stubber response.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.emr.models import emr_backends

from tests.test_aws_glue_pipelines import _granted
from tests.test_aws_poller import CALLER, _stubbed_clients, aws_env, readings, section  # noqa: F401 (fixture)
from trapline.collectors.aws.missed import NOTHING_DUE, Due, JobTriggers, Seen, never_started
from trapline.collectors.aws.poller import AwsPoller
from trapline.collectors.aws.schedule import Outcome
from trapline.collectors.aws.session import ApiCalls, Clients
from trapline.collectors.aws.settings import parse_settings

pytestmark = pytest.mark.usefixtures("aws_env")
ACCOUNT = "123456789012"  # moto's account for any credentials  # no test here may reach a real AWS

# Monday 2026-12-07 01:30 UTC: the poller starts half an hour before a 02:00 schedule.
START = int(dt.datetime(2026, 12, 7, 1, 30, tzinfo=dt.UTC).timestamp())
TICK = START + 30 * 60
NIGHTLY = "cron(0 2 * * ? *)"


def _trigger(name: str, kind: str = "SCHEDULED", state: str = "ACTIVATED", **more: Any) -> dict[str, Any]:
    shape: dict[str, Any] = {"Name": name, "Type": kind, "State": state, "Actions": [{"JobName": "load"}]}
    if kind == "SCHEDULED":
        shape["Schedule"] = NIGHTLY
    return {**shape, **more}


def _seen(now: int, load_active: int, jobs: dict[str, Outcome] | None = None) -> Seen:
    """What the poller saw by ``now``: job "load" last active at ``load_active``, runs ended as ``jobs``."""
    return Seen(now, {"load": load_active}, jobs or {})


def _watching(*triggers: dict[str, Any], at: int = START) -> JobTriggers:
    watched = JobTriggers()
    watched.update(triggers, at)  # type: ignore[arg-type]
    return watched


def test_a_schedule_makes_the_job_due_once_its_time_passed_without_a_run() -> None:
    watched = _watching(_trigger("nightly"))
    assert watched.due("load", _seen(TICK - 1, 0)) is None
    assert watched.due("load", _seen(TICK, 0)) == Due(
        TICK, f"trigger nightly: {NIGHTLY} at 2026-12-07 02:00 UTC"
    )
    assert watched.due("load", _seen(TICK + 60, TICK + 20)) is None  # the run started 20 s after
    assert watched.due("other", _seen(TICK + 60, 0)) is None  # not one of the trigger's actions
    # The run of the day before does not count for today.
    assert watched.due("load", _seen(TICK + 60, TICK - 86_400 + 30)) is not None


def test_the_earliest_missed_time_stays_due_until_the_job_runs() -> None:
    """An hourly schedule missed at 02:00 stays due at 02:00 at 03:15: the problem does not move."""
    watched = _watching(_trigger("hourly", Schedule="cron(0 * * * ? *)"))
    assert watched.due("load", _seen(TICK + 75 * 60, 0)) == Due(
        TICK, "trigger hourly: cron(0 * * * ? *) at 2026-12-07 02:00 UTC"
    )


@pytest.mark.parametrize(
    "trigger",
    [
        _trigger("off", state="DEACTIVATED"),
        _trigger("never-started", state="CREATED"),  # created without StartOnCreation: it never fires
        _trigger("by-hand", kind="ON_DEMAND"),
        _trigger("in-flow", kind="CONDITIONAL", WorkflowName="etl", Predicate={"Conditions": []}),
        _trigger("rate", Schedule="rate(1 hour)"),  # not a Glue schedule: not judged, not paged
        _trigger("crawl-only", Actions=[{"CrawlerName": "raw"}]),
    ],
)
def test_triggers_that_promise_no_start_of_the_job_are_quiet(trigger: dict[str, Any]) -> None:
    assert _watching(trigger).due("load", _seen(TICK + 86_400, 0)) is None


def test_times_before_the_trigger_was_seen_activated_or_changed_are_not_judged() -> None:
    watched = _watching(_trigger("nightly"), at=TICK + 60)  # first seen after today's time
    assert watched.due("load", _seen(TICK + 3600, 0)) is None
    # The same definition seen again keeps its first sighting; a new schedule starts anew.
    watched.update([_trigger("nightly")], TICK + 86_400)  # type: ignore[list-item]
    assert watched.due("load", _seen(TICK + 86_400, 0)) is not None
    changed = TICK + 86_400 + 40 * 60  # 02:40, after the new 02:30 of that day
    watched.update([_trigger("nightly", Schedule="cron(30 2 * * ? *)")], changed)  # type: ignore[list-item]
    assert watched.due("load", _seen(changed + 60, 0)) is None


def test_a_conditional_job_is_due_once_its_predecessors_ended_as_required() -> None:
    predicate = {
        "Logical": "AND",
        "Conditions": [{"LogicalOperator": "EQUALS", "JobName": "extract", "State": "SUCCEEDED"}],
    }
    watched = _watching(_trigger("after-extract", kind="CONDITIONAL", Predicate=predicate))
    done = {"extract": Outcome("SUCCEEDED", TICK)}
    assert watched.due("load", _seen(TICK + 60, 0, done)) == Due(
        TICK, "trigger after-extract: extract SUCCEEDED at 2026-12-07 02:00 UTC"
    )
    assert watched.due("load", _seen(TICK + 60, TICK + 5, done)) is None  # it started 5 s later
    assert watched.due("load", _seen(TICK + 60, 0, {"extract": Outcome("FAILED", TICK)})) is None
    # An outcome from before the poller watched the trigger is history, not a promise.
    assert watched.due("load", _seen(TICK, 0, {"extract": Outcome("SUCCEEDED", START - 60)})) is None


# -- the poller against moto --------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def glue() -> Iterator[Any]:
    with mock_aws():
        client: Any = boto3.client("glue", region_name="eu-west-1")
        command = {"Name": "glueetl", "ScriptLocation": "s3://bucket/load.py"}
        for job in ("load", "adhoc"):
            client.create_job(Name=job, Role="arn:aws:iam::123456789012:role/glue", Command=command)
        yield client


def _nightly(glue: Any) -> None:
    schedule = {"Type": "SCHEDULED", "Schedule": NIGHTLY, "StartOnCreation": True}
    glue.create_trigger(Name="nightly", Actions=[{"JobName": "load"}], **schedule)


def _poller(clock: Clock) -> AwsPoller:
    # Discovery once a week: what the tests see between discoveries is the triggers read again.
    only_glue = section(emr={"enabled": False}, emr_serverless={"enabled": False}, discovery_interval=604_800)
    return AwsPoller(parse_settings("aws", only_glue), clock=clock)


def _expected(poller: AwsPoller, job: str) -> list[dict[str, Any]]:
    return [json.loads(str(r.value)) for r in readings(poller.cycle().items, f"glue.job.expected[{job}]")]


def test_the_poller_says_a_scheduled_job_did_not_start_and_clears_it_when_it_runs(glue: Any) -> None:
    _nightly(glue)
    glue.create_trigger(Name="by-hand", Type="ON_DEMAND", Actions=[{"JobName": "adhoc"}])
    clock = Clock()
    poller = _poller(clock)
    first = poller.cycle().items
    # Every job says once that nothing is due, so a problem left from before a restart resolves.
    assert [r.value for r in readings(first, "glue.job.expected[load]")] == [NOTHING_DUE]
    assert [r.value for r in readings(first, "glue.job.expected[adhoc]")] == [NOTHING_DUE]
    clock.now = TICK + 120
    assert _expected(poller, "load") == [
        {"due": TICK, "why": f"trigger nightly: {NIGHTLY} at 2026-12-07 02:00 UTC"}
    ]
    assert _expected(poller, "load") == []  # unchanged: not sent again
    assert poller.calls["glue:GetTriggers"] == 2  # discovery, and again before saying it is due
    glue.start_job_run(JobName="load")
    assert _expected(poller, "load") == [{"due": 0, "why": ""}]


def test_a_schedule_deactivated_since_discovery_makes_no_job_due(glue: Any) -> None:
    _nightly(glue)
    clock = Clock()
    poller = _poller(clock)
    poller.cycle()
    glue.stop_trigger(Name="nightly")
    clock.now = TICK + 120
    assert _expected(poller, "load") == []
    clock.now = TICK + 86_400 + 120
    assert _expected(poller, "load") == []


def test_a_policy_without_get_triggers_still_watches_the_jobs() -> None:
    made: dict[str, Any] = {}

    def factory(settings: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(settings, calls)
        made.update(stubs)
        stubs["glue"].add_response("get_jobs", {"Jobs": [{"Name": "load"}]})
        stubs["sts"].add_response(
            "get_caller_identity",
            {"Account": "123456789012", "Arn": "arn:aws:iam::123456789012:user/t", "UserId": "u"},
        )
        stubs["glue"].add_response("get_tags", {"Tags": {}})
        stubs["glue"].add_client_error("get_triggers", "AccessDeniedException", "not granted", 400)
        stubs["glue"].add_response("get_job_runs", {"JobRuns": []})
        for stub in stubs.values():
            stub.activate()
        return clients

    only_glue = section(emr={"enabled": False}, emr_serverless={"enabled": False})
    poller = AwsPoller(parse_settings("aws", only_glue), client_factory=factory, clock=Clock())
    result = poller.cycle()
    assert result.errors == []
    assert [r.value for r in readings(result.items, "glue.job.expected[load]")] == [NOTHING_DUE]
    made["glue"].assert_no_pending_responses()


# -- EMR steps that do not start ------------------------------------------------------------


def test_the_oldest_pending_step_is_sent_when_it_changes_and_cleared_when_none_waits() -> None:
    """moto (5.x) answers ListSteps with the first step RUNNING and the later ones PENDING; StepSummary
    (Status.State, Status.Timeline.CreationDateTime) as in botocore's EMR service model."""
    step = {"ActionOnFailure": "CONTINUE", "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}
    with mock_aws():
        emr: Any = boto3.client("emr", region_name="eu-west-1")
        instances = {
            "MasterInstanceType": "m5.xlarge",
            "InstanceCount": 1,
            "KeepJobFlowAliveWhenNoSteps": True,
        }
        cluster = emr.run_job_flow(
            Name="nightly-etl",
            ReleaseLabel="emr-6.15.0",
            Instances=instances,
            JobFlowRole="EMR_EC2_DefaultRole",
            ServiceRole="EMR_DefaultRole",
            Steps=[{**step, "Name": "load"}, {**step, "Name": "report"}],
        )["JobFlowId"]
        waiting = emr.list_steps(ClusterId=cluster, StepStates=["PENDING"])["Steps"][0]
        created = int(waiting["Status"]["Timeline"]["CreationDateTime"].timestamp())
        only_emr = section(emr_serverless={"enabled": False}, glue={"enabled": False}, emr={"metrics": False})
        poller = AwsPoller(parse_settings("aws", only_emr))
        host = f"emr-{cluster}"
        sent = [json.loads(str(r.value)) for r in readings(poller.cycle().items, "emr.step.pending")]
        assert [r.host for r in readings(poller.cycle().items, "emr.step.pending")] == []  # unchanged
        # moto has no CancelSteps and never moves a step on: the waiting step starts in its backend.
        emr_backends[ACCOUNT]["eu-west-1"].clusters[cluster].steps[1].state = "RUNNING"
        cleared = [(r.host, r.value) for r in readings(poller.cycle().items, "emr.step.pending")]
    assert sent == [{"since": created, "step": f"report ({waiting['Id']})"}]
    assert cleared == [(host, '{"since":0,"step":""}')]


# -- workflow runs that ended with jobs never started ----------------------------------------

# A WorkflowGraph as GetWorkflowRun(IncludeGraph=True) returns it (botocore's Glue model: Node with
# Type, Name, UniqueId, TriggerDetails.Trigger, JobDetails.JobRuns, CrawlerDetails.Crawls).
ENDED = dt.datetime(2026, 12, 7, 2, 10, tzinfo=dt.UTC)


def _job_node(name: str, *states: str) -> dict[str, Any]:
    runs = [{"Id": f"jr_{name}", "JobName": name, "JobRunState": s, "CompletedOn": ENDED} for s in states]
    return {"Type": "JOB", "Name": name, "UniqueId": f"j-{name}", "JobDetails": {"JobRuns": runs}}


def _conditional(name: str, after: str, state: str, action: str) -> dict[str, Any]:
    condition = {"LogicalOperator": "EQUALS", "JobName": after, "State": state}
    trigger = {
        "Name": name,
        "WorkflowName": "etl",
        "Type": "CONDITIONAL",
        "State": "ACTIVATED",
        "Predicate": {"Logical": "ANY", "Conditions": [condition]},
        "Actions": [{"JobName": action}],
    }
    return {"Type": "TRIGGER", "Name": name, "UniqueId": f"t-{name}", "TriggerDetails": {"Trigger": trigger}}


GRAPH = {
    "Nodes": [
        _job_node("extract", "SUCCEEDED"),
        _conditional("after-extract", "extract", "SUCCEEDED", "load"),
        _job_node("load"),  # never ran
        _conditional("on-failure", "extract", "FAILED", "alert"),
        _job_node("alert"),  # the on-failure branch: rightly never ran
    ]
}
MISSED = "load never started (trigger after-extract: extract SUCCEEDED at 2026-12-07 02:10 UTC)"


def test_a_workflow_run_names_the_jobs_whose_trigger_held_and_that_never_ran() -> None:
    assert never_started(GRAPH) == [MISSED]
    ran = {"Nodes": [*GRAPH["Nodes"][:2], _job_node("load", "SUCCEEDED"), *GRAPH["Nodes"][3:]]}
    assert never_started(ran) == []


def test_the_poller_asks_for_the_graph_once_for_a_run_that_ended_with_actions_not_run() -> None:
    made: dict[str, Any] = {}
    done = {"TotalActions": 3, "SucceededActions": 1}  # two actions in no count: never started

    def run(run_id: str, state: str, statistics: dict[str, int]) -> dict[str, Any]:
        shape = {
            "Name": "etl",
            "WorkflowRunId": run_id,
            "Status": state,
            "StartedOn": ENDED,
            "Statistics": statistics,
        }
        return {**shape, "CompletedOn": ENDED} if state != "RUNNING" else shape

    def factory(settings: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(settings, calls)
        made.update(stubs)
        stubs["glue"].add_response("list_workflows", {"Workflows": ["etl"]})
        stubs["glue"].add_response(
            "get_workflow_runs", {"Runs": [run("wr_1", "RUNNING", {"TotalActions": 3})]}
        )
        stubs["glue"].add_response("get_workflow_runs", {"Runs": [run("wr_1", "COMPLETED", done)]})
        graph_call = {"Name": "etl", "RunId": "wr_1", "IncludeGraph": True}
        stubs["glue"].add_response(
            "get_workflow_run", {"Run": {**run("wr_1", "COMPLETED", done), "Graph": GRAPH}}, graph_call
        )
        stubs["glue"].add_response("get_workflow_runs", {"Runs": [run("wr_1", "COMPLETED", done)]})
        for stub in stubs.values():
            stub.activate()
        return clients

    pipelines = {"emr": {"enabled": False}, "emr_serverless": {"enabled": False}, "glue": {"enabled": False}}
    poller = AwsPoller(
        parse_settings("aws", section(**pipelines, glue_workflows={"enabled": True})), client_factory=factory
    )
    key = "glue.workflow.run[etl]"
    assert [json.loads(str(r.value))["state"] for r in readings(poller.cycle().items, key)] == ["RUNNING"]
    (ended,) = [json.loads(str(r.value)) for r in readings(poller.cycle().items, key)]
    assert (ended["actions_missed"], ended["error"]) == (1, MISSED)
    assert ended["title"] == f"wr_1 COMPLETED: {MISSED}"
    assert readings(poller.cycle().items, key) == []  # known: no second GetWorkflowRun
    made["glue"].assert_no_pending_responses()
    assert poller.calls["glue:GetWorkflowRun"] == 1 and "glue:GetWorkflowRun" in _granted(
        "arn:aws:glue:*:*:workflow/*"
    )


def test_a_trigger_conditional_on_a_crawl_reads_the_crawler_service() -> None:
    """Crawler shapes (Crawler.LastCrawl, CrawlerMetrics) from botocore's Glue model, via Stubber:
    moto has no GetCrawlerMetrics, whose run time gives the crawl's end."""
    condition = {"LogicalOperator": "EQUALS", "CrawlerName": "raw", "CrawlState": "SUCCEEDED"}
    trigger = _trigger("after-raw", kind="CONDITIONAL", Predicate={"Conditions": [condition]})
    crawler = {
        "Name": "raw",
        "State": "READY",
        "LastCrawl": {"Status": "SUCCEEDED", "StartTime": _at(START + 60)},
    }
    made: dict[str, Any] = {}

    def factory(settings: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(settings, calls)
        made.update(stubs)
        glue = stubs["glue"]
        glue.add_response("get_jobs", {"Jobs": [{"Name": "load"}]})  # cycle 1: discovery, health
        stubs["sts"].add_response("get_caller_identity", CALLER)
        glue.add_response("get_tags", {"Tags": {}})
        glue.add_response("get_triggers", {"Triggers": [trigger]})
        glue.add_response("get_job_runs", {"JobRuns": []})
        for _ in range(2):  # crawler discovery, health
            glue.add_response("get_crawlers", {"Crawlers": [crawler]})
        glue.add_response(
            "get_crawler_metrics",
            {"CrawlerMetricsList": [{"CrawlerName": "raw", "LastRuntimeSeconds": 60.0}]},
        )
        glue.add_response("get_job_runs", {"JobRuns": []})  # cycle 2: the job is due, triggers read again
        glue.add_response("get_triggers", {"Triggers": [trigger]})
        glue.add_response("get_crawlers", {"Crawlers": [crawler]})
        for stub in stubs.values():
            stub.activate()
        return clients

    data = section(
        emr={"enabled": False},
        emr_serverless={"enabled": False},
        glue_crawlers={"enabled": True},
        discovery_interval=604_800,
    )
    clock = Clock()
    poller = AwsPoller(parse_settings("aws", data), client_factory=factory, clock=clock)
    first = poller.cycle()
    assert first.errors == [] and [r.value for r in readings(first.items, "glue.job.expected[load]")] == [
        NOTHING_DUE
    ]
    clock.now = START + 600
    assert _expected(poller, "load") == [
        {"due": START + 120, "why": "trigger after-raw: crawler raw SUCCEEDED at 2026-12-07 01:32 UTC"}
    ]
    made["glue"].assert_no_pending_responses()


def _at(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)
