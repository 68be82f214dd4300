"""The event path's sans-I/O core: EventBridge events -> the readings polling sends, once, forward only.

Event shapes are the ones AWS documents for each detail-type (EventBridge envelope: version, id,
detail-type, source, account, time, region, resources, detail):
- Glue Job State Change (detail: jobName, severity, state, jobRunId, message; notificationCondition
  on some): docs.aws.amazon.com/glue/latest/dg/automating-awsglue-with-cloudwatch-events.html
- EMR Step Status Change (detail: severity, actionOnFailure, stepId, name, clusterId, state,
  message) and EMR Cluster State Change (detail: severity, stateChangeReason as a JSON text,
  name, clusterId, state, message):
  docs.aws.amazon.com/emr/latest/ManagementGuide/emr-manage-cloudwatch-events.html
- EMR Serverless Job Run State Change (detail: jobRunId, jobRunName, applicationId, arn,
  releaseLabel, state, previousState, createdBy, updatedAt, createdAt):
  docs.aws.amazon.com/emr/latest/EMR-Serverless-UserGuide/using-eventbridge.html
The strategies below draw every optional field absent or present, in any order.
"""

from __future__ import annotations

import datetime as dt
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_aws_template import DOCUMENTED
from trapline.collectors.aws.events import FINAL, KINDS, NUDGES, EventMapper, PollerView, Verdict, lookup_for
from trapline.collectors.aws.poller import AccountsPoller, AwsPoller
from trapline.collectors.aws.resources import Cycle, Resource, key_param
from trapline.collectors.aws.services import EmrService, GlueService, _glue_run
from trapline.collectors.aws.settings import parse_settings
from trapline.core.config import Section
from trapline.core.model import Item, Reading

ACCOUNT = "111122223333"
REGION = "eu-west-1"
T0 = 1_700_000_000


def _settings(**values: Any) -> Any:
    data = {"type": "aws", "host": "aws-test", "region": REGION, **values}
    return parse_settings("aws", Section(Path("/etc/trapline/trapline.toml"), "collectors.aws", data))


def _stamp(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(
    detail_type: str, detail: dict[str, Any], *, time: int = T0, account: str = ACCOUNT, region: str = REGION
) -> str:
    source = next(s for s, d in KINDS | NUDGES if d == detail_type)
    return json.dumps(
        {
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": detail_type,
            "source": source,
            "account": account,
            "time": _stamp(time),
            "region": region,
            "resources": [],
            "detail": detail,
        }
    )


def glue_event(job: str, run: str, state: str, *, time: int = T0, message: str = "boom") -> str:
    return envelope(
        "Glue Job State Change",
        {
            "jobName": job,
            "severity": "ERROR" if state == "FAILED" else "INFO",
            "state": state,
            "jobRunId": run,
            "message": message,
        },
        time=time,
    )


def watching(poller: AwsPoller, glue: list[str] = (), clusters: list[str] = (), apps: list[str] = ()) -> None:
    """Resources as discovery names them (GlueService.discover, EmrService.discover...)."""
    host = poller.settings.host
    poller.resources["glue"] = [Resource("glue", j, j, host, key_param(j), {}) for j in glue]
    prefix = poller.settings.emr.host_prefix
    poller.resources["emr"] = [Resource("emr", c, c, f"{prefix}{c}", None, {}) for c in clusters]
    prefix = poller.settings.emr_serverless.host_prefix
    poller.resources["emr_serverless"] = [
        Resource("emr_serverless", a, a, f"{prefix}{a}", None, {}) for a in apps
    ]


def single(**values: Any) -> tuple[AwsPoller, EventMapper]:
    poller = AwsPoller(_settings(**values))
    return poller, EventMapper(lookup_for(poller))


def readings(items: list[Item]) -> list[Reading]:
    return [i for i in items if isinstance(i, Reading)]


# -- the same readings as polling ----------------------------------------------


def test_glue_failure_event_gives_the_reading_polling_gives() -> None:
    poller, mapper = single()
    job = 'etl, "orders" \u2013 Zürich'
    watching(poller, glue=[job])
    glue = next(s for s in poller.services if isinstance(s, GlueService))
    glue.job_runs.changes(job, [])  # primed by an earlier poll that saw no run
    outcome = mapper.apply(glue_event(job, "jr_1", "FAILED", time=T0 + 60, message="Out of memory"))
    assert outcome.verdict is Verdict.APPLIED
    [event_reading] = readings(outcome.items)

    # What a poll of the same run sends (GetJobRuns record of it; Attempt is not in the event).
    polled = Cycle()
    resource = next(r for r in poller.resources["glue"] if r.id == job)
    api_run = {
        "Id": "jr_1",
        "JobRunState": "FAILED",
        "ErrorMessage": "Out of memory",
        "CompletedOn": dt.datetime.fromtimestamp(T0 + 60, dt.UTC),
    }
    polled.runs(resource, "glue.job.run", [_glue_run(api_run)])  # type: ignore[arg-type]
    [poll_reading] = readings(polled.items)
    assert (event_reading.host, event_reading.key, event_reading.clock, event_reading.ns) == (
        poll_reading.host,
        poll_reading.key,
        poll_reading.clock,
        poll_reading.ns,
    )
    sent, expected = json.loads(str(event_reading.value)), json.loads(str(poll_reading.value))
    for field in ("title", "id", "state", "error", "ended"):
        assert sent[field] == expected[field], field
    # The poll after the event does not send the run again (a second FAILED would open a
    # second problem: the trigger is of the MULTIPLE type).
    assert glue.job_runs.changes(job, [_glue_run(api_run)]) == []  # type: ignore[arg-type]


def test_event_for_a_run_a_poll_already_sent_is_a_duplicate() -> None:
    poller, mapper = single()
    watching(poller, glue=["load"])
    glue = next(s for s in poller.services if isinstance(s, GlueService))
    api_run = {"Id": "jr_9", "JobRunState": "FAILED", "CompletedOn": dt.datetime.fromtimestamp(T0, dt.UTC)}
    assert glue.job_runs.changes("load", [_glue_run(api_run)])  # type: ignore[arg-type]
    assert mapper.apply(glue_event("load", "jr_9", "FAILED")).verdict is Verdict.DUPLICATE
    assert mapper.apply(glue_event("load", "jr_9", "RUNNING")).verdict is Verdict.STALE


def test_event_before_the_first_poll_is_not_sent_again_by_it() -> None:
    poller, mapper = single()
    watching(poller, glue=["load"])
    glue = next(s for s in poller.services if isinstance(s, GlueService))
    assert mapper.apply(glue_event("load", "jr_1", "FAILED")).verdict is Verdict.APPLIED
    api_run = {"Id": "jr_1", "JobRunState": "FAILED", "CompletedOn": dt.datetime.fromtimestamp(T0, dt.UTC)}
    assert glue.job_runs.changes("load", [_glue_run(api_run)]) == []  # type: ignore[arg-type]


def test_a_poll_that_read_the_runs_just_before_the_final_event_does_not_send_them_backwards() -> None:
    """The race of the two paths: a poll reads a run RUNNING, its FAILED event arrives and is sent,
    then the poll reports what it read.  Sent, RUNNING would stand after FAILED (the run would look
    unfinished, and later overdue).  The poll leaves the run out until it sees it FAILED too."""
    poller, mapper = single()
    watching(poller, glue=["load"])
    glue = next(s for s in poller.services if isinstance(s, GlueService))
    started = dt.datetime.fromtimestamp(T0 - 300, dt.UTC)
    earlier = {
        "Id": "jr_0",
        "JobRunState": "SUCCEEDED",
        "StartedOn": started - dt.timedelta(hours=1),
        "CompletedOn": started - dt.timedelta(minutes=50),
    }
    running = {"Id": "jr_1", "JobRunState": "RUNNING", "StartedOn": started}
    failed = running | {"JobRunState": "FAILED", "CompletedOn": dt.datetime.fromtimestamp(T0, dt.UTC)}
    assert [r.id for r in glue.job_runs.changes("load", [_glue_run(earlier)])] == ["jr_0"]  # type: ignore[arg-type]

    assert mapper.apply(glue_event("load", "jr_1", "FAILED")).verdict is Verdict.APPLIED
    late = glue.job_runs.changes("load", [_glue_run(earlier), _glue_run(running)])  # type: ignore[arg-type]
    assert late == []
    assert glue.job_runs.state("load", "jr_1") == "FAILED"
    # The next poll sees it FAILED: nothing new either, the event sent it.
    assert glue.job_runs.changes("load", [_glue_run(earlier), _glue_run(failed)]) == []  # type: ignore[arg-type]
    # An event that was not final (RUNNING) holds nothing back: the poll's FAILED goes out.
    assert mapper.apply(glue_event("load", "jr_2", "RUNNING")).verdict is Verdict.APPLIED
    second = failed | {"Id": "jr_2", "StartedOn": started + dt.timedelta(minutes=1)}
    assert [r.state for r in glue.job_runs.changes("load", [_glue_run(earlier), _glue_run(second)])] == [
        "FAILED"
    ]  # type: ignore[arg-type]


def test_glue_success_event_moves_last_success_as_polling_does() -> None:
    poller, mapper = single()
    watching(poller, glue=["load"])
    outcome = mapper.apply(glue_event("load", "jr_1", "SUCCEEDED", time=T0 + 5, message="Job run succeeded"))
    last = [r for r in readings(outcome.items) if r.key == "glue.job.last_success[load]"]
    assert [(r.value, r.clock) for r in last] == [(T0 + 5, T0 + 5)]
    run = next(r for r in readings(outcome.items) if r.key == "glue.job.run[load]")
    assert json.loads(str(run.value))["error"] == ""  # a success carries no error text, as polled


# Per detail-type, the documented example's detail: (fields always sent, optional fields).
EXAMPLES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "Glue Job State Change": (
        {"jobName": "load", "state": "FAILED", "jobRunId": "jr_1"},
        {"severity": "ERROR", "message": "Out of memory", "notificationCondition": {"NotifyDelayAfter": 1}},
    ),
    "EMR Step Status Change": (
        {"clusterId": "j-1ABC", "stepId": "s-2DEF", "state": "FAILED"},
        {
            "severity": "ERROR",
            "actionOnFailure": "CONTINUE",
            "name": 'Spark, "nightly"',
            "message": "Step failed",
        },
    ),
    "EMR Cluster State Change": (
        {"clusterId": "j-1ABC", "state": "TERMINATED_WITH_ERRORS"},
        {
            "severity": "CRITICAL",
            "stateChangeReason": json.dumps({"code": "BOOTSTRAP_FAILURE", "message": "bad script"}),
            "name": "Dev",
            "message": "terminated",
        },
    ),
    "EMR Serverless Job Run State Change": (
        {"applicationId": "00f1abc", "jobRunId": "00f1run", "state": "FAILED"},
        {
            "jobRunName": "adhoc, \u00e9t\u00e9",
            "arn": "arn:aws:emr-serverless:eu-west-1:111122223333:/applications/00f1abc/jobruns/00f1run",
            "releaseLabel": "emr-6.15.0",
            "previousState": "RUNNING",
            "createdBy": "arn:aws:iam::111122223333:user/me",
            "createdAt": "2023-11-14T22:13:20.123456Z",
            "updatedAt": "2023-11-14T22:15:00.000001Z",
        },
    ),
}


def example(detail_type: str, **changes: Any) -> str:
    required, optional = EXAMPLES[detail_type]
    return envelope(detail_type, required | optional | changes)


def test_emr_step_and_cluster_events_land_on_the_cluster_host() -> None:
    poller, mapper = single()
    watching(poller, clusters=["j-1ABC"])
    [reading] = readings(mapper.apply(example("EMR Step Status Change")).items)
    assert (reading.host, reading.key) == ("emr-j-1ABC", "emr.step")
    assert json.loads(str(reading.value))["error"] == "Step failed"
    sent = {r.key: r.value for r in readings(mapper.apply(example("EMR Cluster State Change")).items)}
    assert sent == {
        "emr.cluster.state": "TERMINATED_WITH_ERRORS",
        "emr.cluster.state.reason": "BOOTSTRAP_FAILURE: bad script",
    }
    emr = next(s for s in poller.services if isinstance(s, EmrService))
    assert emr.states["j-1ABC"] == "TERMINATED_WITH_ERRORS"  # no more metrics asked for it


def test_serverless_run_event_lands_on_the_application_host() -> None:
    poller, mapper = single()
    watching(poller, apps=["00f1abc"])
    [reading] = readings(mapper.apply(example("EMR Serverless Job Run State Change")).items)
    # Clocked at updatedAt, as polling clocks a finished run.
    assert (reading.host, reading.key, reading.clock) == (
        "emr-serverless-00f1abc",
        "emr.serverless.job.run",
        T0 + 100,
    )


def test_list_form_account_and_region_pick_the_scoped_host_and_key() -> None:
    settings = _settings(
        accounts=[
            {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/r", "label": "prod", "regions": [REGION, "us-east-1"]},
            {"role_arn": "arn:aws:iam::444455556666:role/r", "label": "test"},
        ]
    )
    accounts = AccountsPoller(settings)
    for _account, poller in accounts.pollers:
        scope = poller.settings.scope
        poller.resources["glue"] = [
            Resource("glue", "load", "load", settings.host, key_param(f"{scope}/load"), {})
        ]
    mapper = EventMapper(lookup_for(accounts))
    body = json.loads(glue_event("load", "jr_1", "FAILED"))
    out = {}
    for account, region in ((ACCOUNT, REGION), (ACCOUNT, "us-east-1"), ("444455556666", REGION)):
        outcome = mapper.apply(json.dumps(body | {"account": account, "region": region}))
        out[(account, region)] = [r.key for r in readings(outcome.items) if r.key.startswith("glue.job.run")]
    assert out == {
        (ACCOUNT, REGION): ["glue.job.run[prod/eu-west-1/load]"],
        (ACCOUNT, "us-east-1"): ["glue.job.run[prod/us-east-1/load]"],
        ("444455556666", REGION): ["glue.job.run[test/eu-west-1/load]"],
    }
    stranger = mapper.apply(json.dumps(body | {"account": "999999999999"}))
    assert stranger.verdict is Verdict.UNWATCHED


# "Glue Crawler State Change" as the EventBridge user guide's event examples show it: every detail
# value a string, the states Started, Succeeded and Failed, and no id of the crawl.
CRAWLER = 'raw, "landing" données'
CRAWLER_EVENTS = {
    "Started": {
        "accountId": ACCOUNT,
        "crawlerName": CRAWLER,
        "startTime": "2023-11-14T22:13:20Z",
        "state": "Started",
        "message": "Crawler Started",
    },
    "Succeeded": {
        "tablesCreated": "0",
        "warningMessage": "N/A",
        "partitionsUpdated": "0",
        "tablesUpdated": "0",
        "message": "Crawler Succeeded",
        "partitionsDeleted": "0",
        "accountId": ACCOUNT,
        "runningTime (sec)": "7",
        "tablesDeleted": "0",
        "crawlerName": CRAWLER,
        "completionDate": "2023-11-14T22:14:20Z",
        "state": "Succeeded",
        "partitionsCreated": "0",
        "cloudWatchLogLink": "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1",
    },
    "Failed": {
        "crawlerName": CRAWLER,
        "errorMessage": "Internal Service Exception",
        "accountId": ACCOUNT,
        "cloudWatchLogLink": "https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1",
        "state": "Failed",
        "message": "Crawler Failed",
    },
}


@pytest.mark.parametrize("state", sorted(CRAWLER_EVENTS))
def test_crawler_event_asks_for_a_poll_of_the_crawlers_not_for_a_value_of_its_own(state: str) -> None:
    """The event has no crawl id: a value made from it could not match the poll's value for the
    same crawl, and the template would page twice.  So it sends nothing itself; it asks for the
    crawler poll, whose memory sends each crawl once."""
    poller, mapper = single(glue_crawlers={"enabled": True})
    host = poller.settings.host
    poller.resources["glue_crawlers"] = [
        Resource("glue_crawlers", CRAWLER, CRAWLER, host, key_param(CRAWLER), {})
    ]
    outcome = mapper.apply(envelope("Glue Crawler State Change", CRAWLER_EVENTS[state]))
    assert (outcome.verdict, outcome.items) == (Verdict.APPLIED, [])
    assert outcome.poll is not None
    watched, service = outcome.poll
    assert isinstance(watched, PollerView) and watched.poller is poller and service == "glue_crawlers"

    other = mapper.apply(envelope("Glue Crawler State Change", CRAWLER_EVENTS[state], region="us-east-1"))
    unknown = mapper.apply(
        envelope("Glue Crawler State Change", CRAWLER_EVENTS[state] | {"crawlerName": "x"})
    )
    assert (other.verdict, unknown.verdict, other.poll, unknown.poll) == (
        Verdict.UNWATCHED,
        Verdict.UNWATCHED,
        None,
        None,
    )


def test_crawler_event_without_crawlers_enabled_or_without_a_name() -> None:
    _, mapper = single()  # glue_crawlers off: nothing is watched
    assert (
        mapper.apply(envelope("Glue Crawler State Change", CRAWLER_EVENTS["Failed"])).verdict
        is Verdict.UNWATCHED
    )
    nameless = {k: v for k, v in CRAWLER_EVENTS["Failed"].items() if k != "crawlerName"}
    outcome = mapper.apply(envelope("Glue Crawler State Change", nameless))
    assert (outcome.verdict, outcome.reason) == (Verdict.MALFORMED, "no crawlerName")
    assert set(NUDGES) == {("aws.glue", "Glue Crawler State Change")}


def test_unwatched_resource_and_region_are_counted_not_sent() -> None:
    poller, mapper = single()
    watching(poller, glue=["load"])
    assert mapper.apply(glue_event("other", "jr_1", "FAILED")).verdict is Verdict.UNWATCHED
    wrong_region = json.loads(glue_event("load", "jr_1", "FAILED")) | {"region": "us-west-2"}
    assert mapper.apply(json.dumps(wrong_region)).verdict is Verdict.UNWATCHED
    assert mapper.counts[Verdict.UNWATCHED] == 2


def test_memory_of_runs_is_bounded() -> None:
    poller = AwsPoller(_settings(glue={"enabled": True}))
    watching(poller, glue=["load"])
    mapper = EventMapper(lookup_for(poller), limit=3)
    for n in range(10):
        mapper.apply(glue_event("load", f"jr_{n}", "RUNNING"))
    assert mapper.remembered() == 3


# -- order, duplicates and bad input (hypothesis over the documented shapes) ----

JOB_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40) | st.sampled_from(
    ["a,b", 'say "hi"', "Z\u00fcrich-ETL", "\u65e5\u672c\u8a9e\u30b8\u30e7\u30d6", "x\\y", " lead"]
)
RUN_FIELD = {
    "Glue Job State Change": "jobRunId",
    "EMR Step Status Change": "stepId",
    "EMR Serverless Job Run State Change": "jobRunId",
    "EMR Cluster State Change": "clusterId",
}


@st.composite
def documented_events(draw: st.DrawFn, detail_type: str, run: str, fixed: dict[str, str]) -> str:
    """One event of ``detail_type`` about ``run``: any documented state, each optional field absent
    or present, the fields in any order, any event time within an hour."""
    required, optional = EXAMPLES[detail_type]
    kind = next(k for (_, d), k in KINDS.items() if d == detail_type)
    detail = (
        required | fixed | {"state": draw(st.sampled_from(sorted(kind.ranks))), RUN_FIELD[detail_type]: run}
    )
    detail |= {name: value for name, value in optional.items() if draw(st.booleans())}
    items = list(detail.items())
    order = draw(st.permutations(range(len(items))))
    return envelope(detail_type, dict(items[i] for i in order), time=T0 + draw(st.integers(0, 3600)))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), detail_type=st.sampled_from(sorted(EXAMPLES)), name=JOB_NAMES)
def test_runs_only_move_forward_whatever_the_order(data: st.DataObject, detail_type: str, name: str) -> None:
    poller, mapper = single()
    watching(poller, glue=[name], clusters=["j-1ABC"], apps=["00f1abc"])
    fixed = {"jobName": name} if detail_type == "Glue Job State Change" else {}  # awkward job names
    kind = next(k for (_, d), k in KINDS.items() if d == detail_type)
    runs = ["j-1ABC"] if not kind.key else ["run-a", "run-b"]
    events = data.draw(
        st.lists(
            st.sampled_from(runs).flatmap(lambda r: documented_events(detail_type, r, fixed)), max_size=12
        )
    )
    sent: dict[str, list[str]] = {}
    for body in events:
        for reading in readings(mapper.apply(body).items):
            if reading.key == "emr.cluster.state":
                sent.setdefault("j-1ABC", []).append(str(reading.value))
            elif kind.key and reading.key.startswith(kind.key):
                value = json.loads(str(reading.value))
                sent.setdefault(value["id"], []).append(value["state"])
    ranks = kind.ranks
    for states in sent.values():
        # Never the same state twice in a row (a duplicate). A state may come back after another
        # of the same rank: a cluster goes RUNNING -> WAITING -> RUNNING, by event time.
        assert all(a != b for a, b in pairwise(states)), states
        assert [ranks[s] for s in states] == sorted(ranks[s] for s in states)  # never backwards
        assert FINAL not in [ranks[s] for s in states[:-1]]  # nothing after a final state
    assert mapper.counts["received"] == len(events)
    assert mapper.counts[Verdict.APPLIED] == sum(len(states) for states in sent.values())
    assert sum(mapper.counts[v] for v in Verdict) == len(events)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=200)
    | JSON.map(json.dumps)
    | st.builds(
        lambda d, drop, extra: json.dumps(
            {k: v for k, v in json.loads(glue_event("j", "r", "FAILED")).items() if k != drop} | extra
        ),
        st.none(),
        st.sampled_from(["source", "detail-type", "region", "time", "detail", "account"]),
        st.dictionaries(st.sampled_from(["time", "detail", "region", "account"]), JSON, max_size=2),
    )
)
def test_bad_input_never_crashes_and_is_counted_by_reason(body: str | bytes) -> None:
    poller, mapper = single()
    watching(poller, glue=["j"])
    outcome = mapper.apply(body)
    if outcome.verdict is Verdict.MALFORMED:
        assert outcome.reason and mapper.malformed[outcome.reason] == 1
        assert not outcome.items


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        ("[]", "not a JSON object"),
        (
            json.dumps(
                {
                    "source": "aws.glue",
                    "detail-type": "Glue Job State Change",
                    "region": REGION,
                    "time": "yesterday",
                    "detail": {},
                }
            ),
            "bad time",
        ),
        (envelope("Glue Job State Change", {"jobName": "j", "jobRunId": "r"}), "no state"),
        (
            envelope("Glue Job State Change", {"jobName": "j", "jobRunId": "r", "state": "HAPPY"}),
            "unknown state",
        ),
        (
            envelope("Glue Job State Change", {"jobName": 7, "jobRunId": "r", "state": "FAILED"}),
            "jobName not a string",
        ),
        (
            json.dumps(
                json.loads(glue_event("j", "r", "FAILED"))
                | {"detail-type": "Glue Data Catalog Database State Change"}
            ),
            "unknown detail-type",
        ),
    ],
)
def test_malformed_reasons(body: str | bytes, reason: str) -> None:
    _, mapper = single()
    outcome = mapper.apply(body)
    assert (outcome.verdict, outcome.reason) == (Verdict.MALFORMED, reason)


@pytest.mark.parametrize(
    ("detail_type", "state_item"),
    [
        ("Glue Job State Change", "glue.job.run.state[{#JOBKEY}]"),
        ("EMR Step Status Change", "emr.step.state"),
        ("EMR Cluster State Change", "emr.cluster.state"),
        ("EMR Serverless Job Run State Change", "emr.serverless.job.run.state"),
    ],
)
def test_events_order_exactly_the_states_the_template_names(detail_type: str, state_item: str) -> None:
    """The ranks cover the documented states (as the template's value maps do): no event of a
    documented state goes to the dead-letter queue as "unknown state"."""
    kind = next(k for (_, d), k in KINDS.items() if d == detail_type)
    assert set(kind.ranks) == DOCUMENTED[state_item]


def test_cluster_going_back_and_forth_between_running_and_waiting_is_ordered_by_event_time() -> None:
    poller, mapper = single()
    watching(poller, clusters=["j-1ABC"])
    verdicts = [
        mapper.apply(
            envelope("EMR Cluster State Change", {"clusterId": "j-1ABC", "state": state}, time=T0 + at)
        ).verdict
        for state, at in (("WAITING", 10), ("RUNNING", 5), ("RUNNING", 20), ("WAITING", 30), ("STARTING", 40))
    ]
    assert verdicts == [Verdict.APPLIED, Verdict.STALE, Verdict.APPLIED, Verdict.APPLIED, Verdict.STALE]
