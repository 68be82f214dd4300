"""The SQS consumer of the event path against moto (in-process, mock_aws): EventBridge rule -> queue.

moto 5.2 delivers put_events to a rule's SQS target with the EventBridge envelope, except the
``account`` field, which it leaves out; the single-account form places events without it.
The DLQ is a real redrive policy (maxReceiveCount) that moto applies on receive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tests.support.outbox import ListOutbox, run_collector_until
from tests.test_aws_events import CRAWLER, CRAWLER_EVENTS
from tests.test_aws_glue_pipelines import ONLY_PIPELINES, _crawler, _metrics
from tests.test_aws_poller import _stubbed_clients
from trapline.collectors.aws import AwsCollector
from trapline.collectors.aws.events import EventMapper, Verdict, lookup_for
from trapline.collectors.aws.poller import AwsPoller
from trapline.collectors.aws.queue import EventQueue, make_sqs_client
from trapline.collectors.aws.resources import Resource, key_param
from trapline.collectors.aws.session import ApiCalls, Clients
from trapline.collectors.aws.settings import AwsSettings, parse_settings
from trapline.core.config import Section
from trapline.core.model import Reading

REGION = "eu-west-1"
# moto warns that it skips the queue policy, in every test that deploys the stack.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..SQS..QueuePolicy:UserWarning")
STACK = Path(__file__).resolve().parents[1] / "deploy" / "aws" / "eventbridge.yaml"
JOB = 'nightly, "orders" Zürich'


class CommittingOutbox(ListOutbox):
    """A ListOutbox whose commit the test sees: every put before ``committed()`` is 'in the spool'."""

    def __init__(self, queue: str = "") -> None:
        super().__init__()
        self.queue = queue
        self.commits: list[tuple[int, int]] = []  # (items put, messages still in the queue) at each commit

    def committed(self, soon: bool = False) -> asyncio.Future[None]:
        self.commits.append((len(self.items), depth(self.queue) if self.queue else -1))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield


def wire_bus(visibility: int = 1, max_receives: int = 2) -> tuple[str, str]:
    """deploy/aws/eventbridge.yaml on moto's CloudFormation (rules, queue, DLQ with redrive),
    with the visibility timeout and maxReceiveCount shortened so that the test need not wait.
    moto does not model the queue policy (AWS::SQS::QueuePolicy): delivery needs none there."""
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    cloudformation.create_stack(
        StackName="trapline-events",
        TemplateBody=STACK.read_text(encoding="utf-8"),
        Capabilities=["CAPABILITY_IAM"],
    )
    [stack] = cloudformation.describe_stacks(StackName="trapline-events")["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    queue, dlq = outputs["EventsQueueUrl"], outputs["DeadLetterQueueUrl"]
    sqs = boto3.client("sqs", region_name=REGION)
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    redrive["maxReceiveCount"] = max_receives
    sqs.set_queue_attributes(
        QueueUrl=queue,
        Attributes={"VisibilityTimeout": str(visibility), "RedrivePolicy": json.dumps(redrive)},
    )
    return queue, dlq


def glue_failed(run: str = "jr_1") -> dict[str, Any]:
    detail = {"jobName": JOB, "severity": "ERROR", "state": "FAILED", "jobRunId": run, "message": "OOM"}
    return {"Source": "aws.glue", "DetailType": "Glue Job State Change", "Detail": json.dumps(detail)}


def settings(queue: str, **values: Any) -> AwsSettings:
    data = {"type": "aws", "host": "aws-test", "region": REGION, "events_queue_url": queue, **values}
    return parse_settings("aws", Section(Path("/etc/trapline/trapline.toml"), "collectors.aws", data))


def consumer(queue: str) -> tuple[EventQueue, AwsPoller]:
    poller = AwsPoller(settings(queue))
    poller.resources["glue"] = [
        Resource("glue", JOB, JOB, "aws-test", "nightly%2C%20%22orders%22%20Zürich", {})
    ]
    mapper = EventMapper(lookup_for(poller))
    return EventQueue(queue, lambda: make_sqs_client(poller.settings, ApiCalls()), mapper, wait=1), poller


def depth(queue: str) -> int:
    attributes = boto3.client("sqs", region_name=REGION).get_queue_attributes(
        QueueUrl=queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def run_keys(out: ListOutbox) -> list[str]:
    return [r.key for r in out.readings("glue.job.run[nightly%2C%20%22orders%22%20Zürich]")]


def test_put_events_reach_the_outbox_and_the_message_is_deleted_after_the_commit(aws: None) -> None:
    queue, _ = wire_bus()
    boto3.client("events", region_name=REGION).put_events(Entries=[glue_failed()])
    events, _ = consumer(queue)
    out = CommittingOutbox(queue)
    assert asyncio.run(events.take(out)) == 1
    [reading] = out.readings("glue.job.run[nightly%2C%20%22orders%22%20Zürich]")
    assert json.loads(str(reading.value))["state"] == "FAILED"
    assert out.commits == [(len(out.items), 1)]  # committed after the put, before the delete
    assert depth(queue) == 0


class Killed(Exception):
    """The consumer dies here."""


def test_consumer_killed_between_commit_and_delete_gets_it_again_and_sends_nothing_twice(aws: None) -> None:
    queue, _ = wire_bus(visibility=1)
    boto3.client("events", region_name=REGION).put_events(Entries=[glue_failed()])
    first, poller = consumer(queue)

    def die(handles: Any) -> None:
        raise Killed

    first.delete = die  # type: ignore[method-assign]
    out = CommittingOutbox()
    with pytest.raises(Killed):
        asyncio.run(first.take(out))
    assert out.commits and len(run_keys(out)) == 1
    # A new consumer with the collector's mapper (the agent lived on): the message comes back
    # once its visibility timeout ends, is recognised and deleted.
    second = EventQueue(queue, lambda: make_sqs_client(poller.settings, ApiCalls()), first.mapper, wait=1)
    received = 0
    for _ in range(10):
        received += asyncio.run(second.take(out))
        if received:
            break
    assert received == 1
    assert len(run_keys(out)) == 1
    assert first.mapper.counts[Verdict.DUPLICATE] == 1
    assert depth(queue) == 0


def test_malformed_event_is_counted_once_and_reaches_the_dlq(aws: None) -> None:
    queue, dlq = wire_bus(visibility=1, max_receives=2)
    sqs = boto3.client("sqs", region_name=REGION)
    sqs.send_message(QueueUrl=queue, MessageBody='{"detail-type": "Glue Job State Change"')  # cut short
    events, _ = consumer(queue)
    out = CommittingOutbox()
    for _ in range(10):
        asyncio.run(events.take(out))
        if depth(queue) == 0:
            break
    assert events.mapper.malformed == {"not JSON": 2}  # handed out twice, then redriven
    assert len(out.errors) == 1 and "not JSON" in out.errors[0]  # logged once, without the body
    assert "Glue" not in out.errors[0]
    moved = sqs.receive_message(QueueUrl=dlq).get("Messages", [])
    assert [m["Body"] for m in moved] == ['{"detail-type": "Glue Job State Change"']


def test_collector_with_events_sends_the_failure_and_its_counters(aws: None) -> None:
    queue, _ = wire_bus()
    glue = boto3.client("glue", region_name=REGION)
    glue.create_job(Name=JOB, Role="arn:aws:iam::123456789012:role/glue", Command={"Name": "glueetl"})
    collector = AwsCollector(
        "aws",
        settings(queue, emr={"enabled": False}, emr_serverless={"enabled": False}, glue={"metrics": False}),
    )
    assert collector.events is not None
    collector.events.wait = 1  # the agent waits 20 s; the test's last receive must end soon
    out = CommittingOutbox()

    def failure_arrived(out: ListOutbox) -> bool:
        # The first poll discovered the job: only then is its event placed.
        if out.discoveries("glue.job.discovery") and not getattr(out, "sent", False):
            boto3.client("events", region_name=REGION).put_events(Entries=[glue_failed()])
            out.sent = True  # type: ignore[attr-defined]
        return bool(run_keys(out))

    run_collector_until(collector, out, failure_arrived, limit=60)
    assert collector.events.mapper.counts[Verdict.APPLIED] == 1
    assert {r.key for r in out.readings("aws.events[received]")} == {"aws.events[received]"}


def test_with_events_on_run_polls_only_reconcile(aws: None) -> None:
    """GetJobRuns every cycle when polling only; every reconcile_interval with the event path."""
    glue = boto3.client("glue", region_name=REGION)
    glue.create_job(Name=JOB, Role="arn:aws:iam::123456789012:role/glue", Command={"Name": "glueetl"})
    now = [1_700_000_000.0]
    counted = {}
    for events in (False, True):
        values: dict[str, Any] = {"emr": {"enabled": False}, "emr_serverless": {"enabled": False}}
        values["glue"] = {"metrics": False}
        base = settings("https://sqs.eu-west-1.amazonaws.com/1/q", reconcile_interval=300, **values)
        if not events:
            base = dataclasses.replace(base, events_queue_url=None)
        poller = AwsPoller(base, clock=lambda: now[0])
        for _ in range(10):  # 10 minutes of 60-s cycles
            poller.cycle()
            now[0] += 60
        counted[events] = poller.calls["glue:GetJobRuns"]
    assert counted == {False: 10, True: 2}


def test_event_path_needs_an_outbox_that_confirms_commits(aws: None) -> None:
    collector = AwsCollector("aws", settings("https://sqs.eu-west-1.amazonaws.com/1/q"))
    with pytest.raises(TypeError, match="spool commits"):
        asyncio.run(collector.run(ListOutbox()))


def test_check_reads_the_queue_too(aws: None) -> None:
    queue, _ = wire_bus()
    boto3.client("events", region_name=REGION).put_events(Entries=[glue_failed()])
    collector = AwsCollector(
        "aws", settings(queue, emr={"enabled": False}, emr_serverless={"enabled": False})
    )
    assert asyncio.run(collector.check()).endswith("; event queue: 1 messages waiting")
    refused = AwsCollector(
        "aws", settings(queue + "-gone", emr={"enabled": False}, emr_serverless={"enabled": False})
    )
    with pytest.raises(RuntimeError, match="event queue: "):
        asyncio.run(refused.check())


def test_list_form_counts_the_queue_calls_on_the_poller_host(aws: None) -> None:
    queue, _ = wire_bus()
    section = settings(
        queue,
        emr={"enabled": False},
        emr_serverless={"enabled": False},
        glue={"metrics": False},
        accounts=[{"role_arn": "arn:aws:iam::123456789012:role/reader", "label": "prod"}],
    )
    collector = AwsCollector("aws", section)
    assert collector.events is not None
    collector.events.wait = 1
    asyncio.run(collector.events.take(CommittingOutbox()))  # one (empty) receive, made as the section
    result = collector.poller.cycle()
    calls = [
        i
        for i in result.items
        if isinstance(i, Reading) and i.key == "aws.poller.api.calls[sqs:ReceiveMessage]"
    ]
    assert [r.value for r in calls] == [1]


def crawler_event(state: str) -> dict[str, Any]:
    """An entry for put_events of the EventBridge user guide's crawler example (tests/test_aws_events.py)."""
    detail = CRAWLER_EVENTS[state] | {"crawlerName": CRAWLER}
    return {"Source": "aws.glue", "DetailType": "Glue Crawler State Change", "Detail": json.dumps(detail)}


def test_crawler_event_polls_the_crawl_and_is_deleted_only_once_it_is_in_the_spool(aws: None) -> None:
    """The crawl value comes from the crawler poll (Stubber: moto has no crawl outcomes nor
    GetCrawlerMetrics), asked for by the event: sent once however many events name the crawl,
    and a poll that fails leaves the event in the queue for its next delivery."""
    queue, _ = wire_bus(visibility=1)
    stubs: dict[str, Stubber] = {}

    def factory(s: Any, calls: ApiCalls) -> Clients:
        clients, made = _stubbed_clients(s, calls)
        stubs.update(made)
        listing = {"Crawlers": [_crawler(CRAWLER, None)]}
        made["glue"].add_response("get_crawlers", listing)  # discovery
        made["glue"].add_response("get_crawlers", listing)  # health: no crawl has ended yet
        made["glue"].activate()
        return clients

    only_crawlers = {name: {"enabled": name == "glue_crawlers"} for name in ONLY_PIPELINES}
    poller = AwsPoller(settings(queue, **only_crawlers), client_factory=factory)
    events = EventQueue(
        queue, lambda: make_sqs_client(poller.settings, ApiCalls()), EventMapper(lookup_for(poller)), wait=1
    )
    assert poller.cycle().errors == []
    put = boto3.client("events", region_name=REGION).put_events

    failed = {"Crawlers": [_crawler(CRAWLER, "FAILED", "p-1", "Internal Service Exception")]}
    put(Entries=[crawler_event("Failed")])
    stubs["glue"].add_response("get_crawlers", failed)
    stubs["glue"].add_response("get_crawler_metrics", {"CrawlerMetricsList": [_metrics(CRAWLER)]})
    out = CommittingOutbox(queue)
    assert asyncio.run(events.take(out)) == 1
    [crawl] = out.readings(f"glue.crawler.crawl[{key_param(CRAWLER)}]")
    value = json.loads(str(crawl.value))
    assert (value["state"], value["error"], value["id"]) == ("FAILED", "Internal Service Exception", "p-1")
    assert out.commits == [(len(out.items), 1)] and depth(queue) == 0

    # The same crawl again (a redelivered or repeated event): a poll, no second value.
    put(Entries=[crawler_event("Failed")])
    stubs["glue"].add_response("get_crawlers", failed)
    assert asyncio.run(events.take(out)) == 1
    assert len(out.readings(f"glue.crawler.crawl[{key_param(CRAWLER)}]")) == 1 and depth(queue) == 0

    # A poll that fails: the event stays in the queue, and its next delivery polls again.
    put(Entries=[crawler_event("Started")])
    stubs["glue"].add_client_error("get_crawlers", "ThrottlingException", http_status_code=400)
    assert asyncio.run(events.take(out)) == 1
    assert depth(queue) == 1
    running = {"Crawlers": [_crawler(CRAWLER, "FAILED", "p-1", state="RUNNING")]}
    stubs["glue"].add_response("get_crawlers", running)
    received = 0
    for _ in range(10):
        received += asyncio.run(events.take(out))
        if received:
            break
    assert received == 1 and depth(queue) == 0
    assert [r.value for r in out.readings(f"glue.crawler.state[{key_param(CRAWLER)}]")][-1] == "RUNNING"
    stubs["glue"].assert_no_pending_responses()
    assert events.mapper.counts[Verdict.APPLIED] == 4
