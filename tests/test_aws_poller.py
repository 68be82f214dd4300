"""Unit tests of the AWS poller: config, filters, state mapping, errors, backoff, the async loop."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from botocore.stub import ANY, Stubber
from hypothesis import given
from hypothesis import strategies as st

from tests.support.outbox import ListOutbox, run_collector_until
from tests.support.peers import free_port
from trapline.collectors.aws import AwsCollector, build
from trapline.collectors.aws.poller import AwsPoller
from trapline.collectors.aws.resources import ERROR_SHOWN, Run, RunTracker, key_param
from trapline.collectors.aws.services import _glue_run, _serverless_run, _step_run
from trapline.collectors.aws.session import ApiCalls, Clients, describe_failure
from trapline.collectors.aws.settings import ResourceFilter, parse_settings
from trapline.core.config import ConfigError, Section
from trapline.core.model import Discovery, Item, Reading


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake static credentials; no shared files, no instance metadata lookups."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


def section(**values: Any) -> Section:
    data = {"type": "aws", "host": "aws-test", "region": "eu-west-1", **values}
    return Section(Path("/etc/trapline/trapline.toml"), "collectors.aws", data)


def readings(items: list[Item], key: str) -> list[Reading]:
    return [i for i in items if isinstance(i, Reading) and i.key == key]


def _at(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


# -- configuration and filters --------------------------------------------------


def test_section_is_validated_and_typos_rejected() -> None:
    settings = parse_settings(
        "aws",
        section(
            glue={"name_regex": "^etl-", "tags": {"team": "data"}, "metric_delay": 45},
            emr_serverless={"enabled": False},
        ),
    )
    assert settings.glue.filter.tags == {"team": "data"}
    assert settings.glue.metrics is not None and settings.glue.metrics.delay == 45
    assert settings.emr.metrics is not None and settings.emr.metrics.delay == 300
    assert not settings.emr_serverless.enabled
    with pytest.raises(ConfigError, match=r"\[collectors.aws.glue\].name_regx"):
        parse_settings("aws", section(glue={"name_regx": "x"}))
    with pytest.raises(ConfigError, match="name_regex: not a valid regular expression"):
        parse_settings("aws", section(emr={"name_regex": "(unclosed"}))
    with pytest.raises(ConfigError, match="region"):
        parse_settings("aws", Section(Path("t.toml"), "collectors.aws", {"type": "aws", "host": "h"}))


def test_build_does_not_talk_to_aws() -> None:
    collector = build("aws", section(endpoint_url="http://127.0.0.1:1"))
    assert collector.name == "aws" and collector.poller.calls == {}


def test_filter_by_name_regex_and_tags() -> None:
    wanted = ResourceFilter(re.compile(r"^prod-"), {"team": "data", "owner": "*"})
    assert wanted.matches_name("prod-etl") and not wanted.matches_name("dev-prod-etl")
    assert wanted.matches_tags({"team": "data", "owner": "ann", "x": "y"})
    assert not wanted.matches_tags({"team": "data"})  # owner missing
    assert not wanted.matches_tags({"team": "ops", "owner": "ann"})
    everything = ResourceFilter()
    assert everything.matches_name("anything") and everything.matches_tags({})


# Glue job names: 1-255 characters matching AWS's "single-line string pattern" (CreateJob, Name):
# tab, U+0020-U+D7FF, U+E000-U+FFFD and the supplementary planes.
GLUE_NAME_CHARS = st.one_of(
    st.just("\t"),
    st.characters(min_codepoint=0x20, blacklist_categories=("Cs",), blacklist_characters="\ufffe\uffff"),
)
GLUE_NAMES = st.text(GLUE_NAME_CHARS, min_size=1, max_size=255)
UNQUOTED_PARAM = re.compile(r'^[^,\]\["\s][^,\]]*$')  # what Zabbix takes as one unquoted key parameter


@given(GLUE_NAMES)
def test_key_param_is_one_unquoted_parameter_and_tells_names_apart(name: str) -> None:
    param = key_param(name)
    assert UNQUOTED_PARAM.match(param), param
    assert not any(c.isspace() or not c.isprintable() for c in param)
    assert urllib.parse.unquote(param) == name  # nothing lost: two names never share a key


def test_key_param_leaves_plain_names_alone() -> None:
    assert key_param("nightly-load_v2.1") == "nightly-load_v2.1"
    assert key_param("a,b") == "a%2Cb"


# -- state mapping ----------------------------------------------------------------


def fields(run: Run) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(run.as_json())
    return decoded


def test_failed_glue_run_is_one_value_with_state_error_duration_and_dpu_seconds() -> None:
    run = _glue_run(
        {
            "Id": "jr_" + "0123456789abcdef" * 4,
            "Attempt": 1,
            "JobName": "etl",
            "JobRunState": "FAILED",
            "StartedOn": _at(1000),
            "CompletedOn": _at(1600),
            "ExecutionTime": 600,
            "MaxCapacity": 10.0,
            "ErrorMessage": "OutOfMemoryError: Java heap space",
        }
    )
    assert fields(run) == {
        "title": "jr_01234567\u2026cdef FAILED: OutOfMemoryError: Java heap space",
        "id": "jr_" + "0123456789abcdef" * 4,
        "state": "FAILED",
        "error": "OutOfMemoryError: Java heap space",
        "attempt": 1,
        "started": 1000,
        "ended": 1600,
        "duration": 600,
        "dpu_seconds": 6000.0,
    }
    assert run.clock == 1600  # the failure time


def test_running_glue_run_has_no_end_and_is_clocked_when_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trapline.collectors.aws.services.now_epoch", lambda: 5000)
    run = _glue_run(
        {"Id": "jr_2", "JobName": "etl", "JobRunState": "RUNNING", "StartedOn": _at(2000), "DPUSeconds": 5.0}
    )
    assert "ended" not in fields(run) and "dpu_seconds" not in fields(run)
    assert (fields(run)["started"], run.clock) == (2000, 5000)


def test_timeout_without_message_has_no_dangling_colon() -> None:
    run = _glue_run({"Id": "jr_3", "JobRunState": "TIMEOUT", "CompletedOn": _at(10)})
    assert fields(run)["title"] == "jr_3 TIMEOUT"


@given(st.text(max_size=3000))
def test_title_is_one_short_line_that_regsub_can_cut_out_of_the_json(error: str) -> None:
    run = _glue_run({"Id": "jr_4", "JobRunState": "FAILED", "CompletedOn": _at(10), "ErrorMessage": error})
    text = run.as_json()
    # The template's event name takes the title with regsub("\"title\":\"([^\"]*)\"", \1).
    found = re.search(r'"title":"([^"]*)"', text)
    assert found is not None and found.group(1) == fields(run)["title"]
    assert len(found.group(1)) <= len("jr_4 FAILED: ") + ERROR_SHOWN
    assert fields(run)["error"] == error[:2048]  # the full text stays in the value
    # The trigger finds the state with "\"state\":\"(FAILED|...)\"": an error can never fake one.
    assert [m.group(1) for m in re.finditer(r'"state":"(\w+)"', text)] == ["FAILED"]


def test_failed_emr_step_carries_the_failure_reason() -> None:
    run = _step_run(
        {
            "Id": "s-1",
            "Name": "load",
            "Status": {
                "State": "FAILED",
                "FailureDetails": {"Reason": "Unknown error.", "Message": "Exception in thread main"},
                "Timeline": {"CreationDateTime": _at(10), "StartDateTime": _at(20), "EndDateTime": _at(90)},
            },
        }
    )
    assert fields(run) == {
        "title": "load (s-1) FAILED: Unknown error.: Exception in thread main",
        "id": "s-1",
        "state": "FAILED",
        "name": "load",
        "error": "Unknown error.: Exception in thread main",
        "started": 20,
        "ended": 90,
    }
    assert (run.started, run.clock) == (20, 90)


def test_cancelled_emr_step_falls_back_to_the_state_change_reason() -> None:
    run = _step_run(
        {"Id": "s-2", "Status": {"State": "CANCELLED", "StateChangeReason": {"Message": "Cancelled by user"}}}
    )
    assert fields(run)["error"] == "Cancelled by user"


def test_serverless_run_state_and_details() -> None:
    run = _serverless_run(
        {
            "id": "r1",
            "name": "daily",
            "state": "FAILED",
            "stateDetails": "Job failed",
            "createdAt": _at(5),
            "updatedAt": _at(50),
        }
    )
    assert fields(run)["title"] == "daily (r1) FAILED: Job failed"
    assert (fields(run)["state"], fields(run)["error"], run.clock) == ("FAILED", "Job failed", 50)


def _run(run_id: str, state: str, started: int) -> Run:
    return Run(run_id, state, float(started), started, ())


def test_tracker_reports_only_the_newest_run_the_first_time_then_every_change_oldest_first() -> None:
    tracker = RunTracker()
    first = tracker.changes("job", [_run("a", "SUCCEEDED", 1), _run("b", "FAILED", 2)])
    assert [r.id for r in first] == ["b"]
    assert tracker.changes("job", [_run("a", "SUCCEEDED", 1), _run("b", "FAILED", 2)]) == []
    later = tracker.changes(
        "job", [_run("d", "RUNNING", 4), _run("c", "SUCCEEDED", 3), _run("b", "FAILED", 2)]
    )
    assert [(r.id, r.state) for r in later] == [("c", "SUCCEEDED"), ("d", "RUNNING")]
    assert [r.state for r in tracker.changes("job", [_run("d", "FAILED", 4)])] == ["FAILED"]


# -- errors -------------------------------------------------------------------------


def _client_error(code: str, status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "User: arn:aws:iam::123456789012:user/x is not authorized"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "ListClusters")


@pytest.mark.parametrize(
    ("exc", "reason", "throttled"),
    [
        (
            _client_error("AccessDeniedException"),
            "ListClusters: access denied (AccessDeniedException)",
            False,
        ),
        (_client_error("ThrottlingException"), "ListClusters: throttled (ThrottlingException)", True),
        (
            _client_error("InvalidClientTokenId", 403),
            "ListClusters: bad credentials (InvalidClientTokenId)",
            False,
        ),
        (_client_error("InternalFailure", 500), "ListClusters: API error (InternalFailure, HTTP 500)", False),
        (
            EndpointConnectionError(endpoint_url="http://x"),
            "endpoint unreachable (EndpointConnectionError)",
            False,
        ),
        (NoCredentialsError(), "no usable credentials (NoCredentialsError)", False),
        (KeyError("x"), "unexpected error (KeyError)", False),
        (_client_error("403", 403), "ListClusters: access denied (403)", False),
    ],
)
def test_failures_are_worded_without_the_aws_message(exc: Exception, reason: str, throttled: bool) -> None:
    failure = describe_failure(exc)
    assert (failure.reason, failure.throttled) == (reason, throttled)
    assert "arn:aws" not in failure.reason


def _stubbed_clients(settings: Any, calls: ApiCalls) -> tuple[Clients, dict[str, Stubber]]:
    def client(service: str) -> Any:
        made = boto3.client(
            service, region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s"
        )
        calls.watch(made)
        return made

    clients = Clients(
        client("emr"), client("emr-serverless"), client("glue"), client("cloudwatch"), client("sts")
    )
    stubs = {
        name: Stubber(getattr(clients, name))
        for name in ("emr", "emr_serverless", "glue", "cloudwatch", "sts")
    }
    return clients, stubs


CALLER = {"UserId": "AIDA", "Account": "123456789012", "Arn": "arn:aws-cn:iam::123456789012:user/reader"}


def test_glue_jobs_carry_their_team_and_owner_tags_and_work_without_get_tags() -> None:
    settings = parse_settings("aws", section(emr={"enabled": False}, emr_serverless={"enabled": False}))
    made: dict[str, Any] = {}

    def factory(s: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(s, calls)
        made.update(stubs)
        stubs["glue"].add_response("get_jobs", {"Jobs": [{"Name": "load, orders"}, {"Name": "adhoc"}]})
        stubs["sts"].add_response("get_caller_identity", CALLER)
        arn = "arn:aws-cn:glue:eu-west-1:123456789012:job/"  # the caller's partition and account
        tags = {"Team": "data", "OWNER": "ann", "cost": "x"}  # AWS keys in any case
        stubs["glue"].add_response("get_tags", {"Tags": tags}, {"ResourceArn": arn + "load, orders"})
        stubs["glue"].add_client_error("get_tags", "AccessDeniedException", "not granted", 400)
        stubs["glue"].add_response("get_triggers", {"Triggers": []})
        stubs["glue"].add_response("get_job_runs", {"JobRuns": []})
        stubs["glue"].add_response("get_job_runs", {"JobRuns": []})
        for stub in stubs.values():
            stub.activate()
        return clients

    poller = AwsPoller(settings, client_factory=factory)
    result = poller.cycle()
    (lld,) = [i for i in result.items if isinstance(i, Discovery)]
    rows = {row["{#JOBNAME}"]: row for row in lld.rows}
    assert (rows["load, orders"]["{#TEAM}"], rows["load, orders"]["{#OWNER}"]) == ("data", "ann")
    # A policy without glue:GetTags: the job is still discovered and watched, its tags are empty.
    assert (rows["adhoc"]["{#TEAM}"], rows["adhoc"]["{#OWNER}"]) == ("", "")
    assert result.errors == []
    made["glue"].assert_no_pending_responses()
    made["sts"].assert_no_pending_responses()


def test_throttled_get_metric_data_is_reported_and_backs_off_without_crashing() -> None:
    settings = parse_settings(
        "aws", section(emr_serverless={"enabled": False}, glue={"enabled": False}, poll_interval=60)
    )
    made: dict[str, Any] = {}

    def factory(s: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(s, calls)
        made.update(stubs)
        cluster = {"Id": "j-1", "Name": "c", "Status": {"State": "WAITING"}}
        stubs["emr"].add_response("list_clusters", {"Clusters": []})  # discovery: recently ended
        stubs["emr"].add_response("list_clusters", {"Clusters": [cluster]})  # discovery: active
        stubs["emr"].add_response("describe_cluster", {"Cluster": {**cluster, "Tags": []}})  # its tags
        stubs["emr"].add_response("list_clusters", {"Clusters": [cluster]})  # health
        stubs["emr"].add_response("list_steps", {"Steps": []})
        stubs["cloudwatch"].add_client_error("get_metric_data", "ThrottlingException", "Rate exceeded", 400)
        for stub in stubs.values():
            stub.activate()
        return clients

    poller = AwsPoller(settings, client_factory=factory, clock=lambda: 1_800_000_000.0)
    collector = AwsCollector("aws", settings, poller)
    result = poller.cycle()
    assert result.throttled
    assert result.errors == ["GetMetricData: throttled (ThrottlingException)"]
    error = readings(result.items, "aws.poller.error")
    assert error[0].value == "GetMetricData: throttled (ThrottlingException)"
    assert readings(result.items, "aws.poller.errors")[0].value == 1
    assert readings(result.items, "aws.poller.error.streak")[0].value == 1
    assert readings(result.items, "emr.cluster.state")[0].value == "WAITING"  # health still reported
    made["cloudwatch"].assert_no_pending_responses()

    # Next cycle, same window: it was not marked done, so it is asked for again and its datapoint sent.
    stamp = _at(1_800_000_000 - 900)
    made["emr"].add_response(
        "list_clusters", {"Clusters": [{"Id": "j-1", "Name": "c", "Status": {"State": "WAITING"}}]}
    )
    made["emr"].add_response("list_steps", {"Steps": []})
    point = {"Id": "q0", "Timestamps": [stamp], "Values": [1.0], "StatusCode": "Complete"}
    made["cloudwatch"].add_response("get_metric_data", {"MetricDataResults": [point]})
    retried = poller.cycle()
    assert retried.errors == []
    assert readings(retried.items, "aws.poller.error.streak")[0].value == 0  # a clean cycle ends the streak
    sent = [
        r
        for r in retried.items
        if isinstance(r, Reading) and r.host == "emr-j-1" and r.clock == 1_800_000_000 - 900
    ]
    assert len(sent) == 1
    made["cloudwatch"].assert_no_pending_responses()
    # Throttled cycles wait 2x the interval and then longer; a clean cycle goes back to the interval.
    first = collector.next_delay(True, 0.0)
    second = collector.next_delay(True, 0.0)
    assert 60 <= first <= 120 and 120 <= second <= 240
    assert collector.next_delay(False, 10.0) == 50.0


def test_once_throttled_the_cycle_stops_calling_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    settings = parse_settings("aws", section(emr={"enabled": False}, emr_serverless={"enabled": False}))
    made: dict[str, Any] = {}

    def factory(s: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(s, calls)
        made.update(stubs)
        jobs = [{"Name": f"job-{k}"} for k in range(300)]
        stubs["glue"].add_response("get_jobs", {"Jobs": jobs})
        stubs["sts"].add_response("get_caller_identity", CALLER)
        for _ in jobs:
            stubs["glue"].add_response("get_tags", {"Tags": {}})
        stubs["glue"].add_response("get_triggers", {"Triggers": []})
        stubs["glue"].add_client_error("get_job_runs", "ThrottlingException", "Rate exceeded", 400)
        for stub in stubs.values():
            stub.activate()
        return clients

    poller = AwsPoller(settings, client_factory=factory)
    result = poller.cycle()
    # A second GetJobRuns would hit the stubber's empty queue and show up as another error.
    assert result.errors == ["GetJobRuns: throttled (ThrottlingException)"]
    assert dict(poller.calls)["glue:GetJobRuns"] == 1
    assert len([r for r in caplog.records if "throttled" in r.getMessage()]) == 1
    made["glue"].assert_no_pending_responses()


def test_unreachable_endpoint_is_an_error_reading_and_the_loop_keeps_running() -> None:
    port = free_port()  # nothing listens there
    collector = build(
        "aws", section(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, poll_interval=1, timeout=2)
    )
    out = ListOutbox()

    run_collector_until(collector, out, lambda out: len(readings(out.items, "aws.poller.errors")) >= 2, 30)
    assert out.errors and all("endpoint unreachable (EndpointConnectionError)" in e for e in out.errors)
    assert "endpoint unreachable" in str(readings(out.items, "aws.poller.error")[-1].value)
    counts = [r.value for r in readings(out.items, "aws.poller.errors")]
    assert counts[1] > counts[0] > 0
    # Every cycle failed: the streak the error triggers wait for counts them one by one.
    streak = [r.value for r in readings(out.items, "aws.poller.error.streak")]
    assert streak == list(range(1, len(streak) + 1))
    assert not [i for i in out.items if not isinstance(i, Reading)]  # no LLD from a failed discovery


def test_missing_credentials_are_one_error_per_cycle_and_no_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    poller = AwsPoller(parse_settings("aws", section(endpoint_url="http://127.0.0.1:1")))
    result = poller.cycle()
    assert result.errors == ["no usable credentials (NoCredentialsError)"]
    assert readings(result.items, "aws.poller.errors")[0].value == 1
    assert poller.calls == {}  # nothing was sent without credentials


def test_after_throttled_cycles_the_missed_periods_are_fetched_and_each_datapoint_goes_once() -> None:
    settings = parse_settings("aws", section(
        emr_serverless={"enabled": False}, glue={"enabled": False}, poll_interval=60,
        discovery_interval=86_400,
    ))
    t0 = 1_800_000_000  # a period boundary; EMR metrics: period 300 s, delay 300 s, 3 periods
    now = [float(t0)]
    made: dict[str, Any] = {}
    cluster = {"Id": "j-1", "Name": "c", "Status": {"State": "WAITING"}}

    def health() -> None:
        made["emr"].add_response("list_clusters", {"Clusters": [cluster]})
        made["emr"].add_response("list_steps", {"Steps": []})

    def answer(*offsets: int, start: int) -> None:
        point = {"Id": "q0", "Timestamps": [_at(t0 + o) for o in offsets],
                 "Values": [float(o) for o in offsets], "StatusCode": "Complete"}
        asked = {"MetricDataQueries": ANY, "StartTime": _at(start), "EndTime": ANY,
                 "ScanBy": "TimestampDescending"}
        made["cloudwatch"].add_response("get_metric_data", {"MetricDataResults": [point]},
                                        expected_params=asked)

    def factory(s: Any, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(s, calls)
        made.update(stubs)
        stubs["emr"].add_response("list_clusters", {"Clusters": []})  # discovery: recently ended
        stubs["emr"].add_response("list_clusters", {"Clusters": [cluster]})  # discovery: active
        stubs["emr"].add_response("describe_cluster", {"Cluster": {**cluster, "Tags": []}})
        health()
        answer(-900, -600, start=t0 - 1200)
        for stub in stubs.values():
            stub.activate()
        return clients

    poller = AwsPoller(settings, client_factory=factory, clock=lambda: now[0])

    def sent_values() -> list[float]:
        result = poller.cycle()
        return sorted(r.value for r in result.items
                      if isinstance(r, Reading) and r.host == "emr-j-1" and isinstance(r.value, float))

    assert sent_values() == [-600.0]  # first contact: the newest datapoint only

    now[0] = t0 + 900
    health()
    made["cloudwatch"].add_client_error("get_metric_data", "ThrottlingException", "Rate exceeded", 400)
    assert sent_values() == []

    # The next window would start at t0+600: it reaches back to where the last fetch ended.
    now[0] = t0 + 1800
    health()
    answer(-600, -300, 0, 300, 600, 900, 1200, start=t0 - 300)
    assert sent_values() == [-300.0, 0.0, 300.0, 600.0, 900.0, 1200.0]

    # An overlapping window sends only what is new.
    now[0] = t0 + 2100
    health()
    answer(900, 1200, 1500, start=t0 + 900)
    assert sent_values() == [1500.0]
    for stub in made.values():
        stub.assert_no_pending_responses()
