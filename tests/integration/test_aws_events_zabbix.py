"""End to end, event path: put_events on moto's EventBridge (rules and queue from
deploy/aws/eventbridge.yaml) -> SQS -> the collector's consumer -> real Zabbix 6.0 and 7.0 with the
shipped template: a Glue job FAILED event opens the run-failed problem within 10 s of put_events.

The event is the documented "Glue Job State Change" shape (jobName, severity, state, jobRunId,
message; docs.aws.amazon.com/glue/latest/dg/automating-awsglue-with-cloudwatch-events.html).
The outbox's commit is the delivery to Zabbix: the consumer deletes the message only after it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_aws_moto import (
    REGION,
    _post,
    client,
    make_job,
    moto_endpoint,  # noqa: F401 (fixture)
)
from tests.integration.test_aws_zabbix import (
    create_poller_host,
    deliver,
    items,
    moto_credentials,
    open_problems,
)
from tests.support.outbox import ListOutbox
from tests.support.zabbix_fixtures import wait_until
from trapline.collectors.aws.events import EventMapper, Verdict, lookup_for
from trapline.collectors.aws.poller import AwsPoller, CycleResult
from trapline.collectors.aws.queue import EventQueue, make_sqs_client
from trapline.collectors.aws.resources import key_param
from trapline.collectors.aws.session import ApiCalls
from trapline.collectors.aws.settings import parse_settings
from trapline.core.config import Section
from trapline.core.model import Item

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Tried to parse AWS..SQS..QueuePolicy:UserWarning"),
]
STACK = Path(__file__).resolve().parents[2] / "deploy" / "aws" / "eventbridge.yaml"
JOB = 'load, "orders" Zürich'
EVENT_BOUND = 10.0  # s from put_events to the open problem (issue 23)
LLD_TIMEOUT = 60.0


class ZabbixOutbox(ListOutbox):
    """The spool stand-in: what was put is delivered to Zabbix when the consumer asks for the commit."""

    def __init__(self, zabbix: Any) -> None:
        super().__init__()
        self.zabbix = zabbix
        self.pending: list[Item] = []

    def put(self, item: Item) -> None:
        super().put(item)
        self.pending.append(item)

    async def committed(self, soon: bool = False) -> None:
        batch, self.pending = self.pending, []
        await asyncio.to_thread(deliver, self.zabbix, CycleResult(batch))


def test_glue_failure_event_opens_the_problem_within_seconds(
    zabbix: Any,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _post(moto_endpoint, "/moto-api/reset")
    with moto_credentials(tmp_path):
        api = zabbix.api()
        host, hostid = create_poller_host(zabbix, api, "aws-events")
        cloudformation = client(moto_endpoint, "cloudformation")
        cloudformation.create_stack(
            StackName="trapline-events",
            TemplateBody=STACK.read_text(encoding="utf-8"),
            Capabilities=["CAPABILITY_IAM"],
        )
        [stack] = cloudformation.describe_stacks(StackName="trapline-events")["Stacks"]
        queue = next(o["OutputValue"] for o in stack["Outputs"] if o["OutputKey"] == "EventsQueueUrl")
        make_job(client(moto_endpoint, "glue"), JOB)
        data = {
            "type": "aws",
            "host": host,
            "region": REGION,
            "endpoint_url": moto_endpoint,
            "max_attempts": 1,
            "events_queue_url": queue,
            "emr": {"enabled": False},
            "emr_serverless": {"enabled": False},
            "glue": {"metrics": False},
        }
        settings = parse_settings("aws", Section(Path("/etc/trapline/trapline.toml"), "collectors.aws", data))
        poller = AwsPoller(settings)
        first = poller.cycle()  # discovery (and the reconciliation poll, which finds no run)
        assert first.errors == []
        deliver(zabbix, first)
        run_item = f"glue.job.run[{key_param(JOB)}]"
        wait_until(
            lambda: (
                items(api, host, run_item)
                and api.trigger.get(hostids=[hostid], search={"description": "Run failed"})
            ),
            timeout=LLD_TIMEOUT,
            what="the discovered job's run item and failure trigger",
        )
        zabbix.config_cache_reload()

        events = EventQueue(
            queue, lambda: make_sqs_client(settings, ApiCalls()), EventMapper(lookup_for(poller)), wait=1
        )
        out = ZabbixOutbox(zabbix)
        detail = {
            "jobName": JOB,
            "severity": "ERROR",
            "state": "FAILED",
            "jobRunId": "jr_7f3a",
            "message": "OOM",
        }
        entry = {"Source": "aws.glue", "DetailType": "Glue Job State Change", "Detail": json.dumps(detail)}
        client(moto_endpoint, "events").put_events(Entries=[entry])
        put_at = time.monotonic()
        while not out.items and time.monotonic() - put_at < EVENT_BOUND:
            asyncio.run(events.take(out))
        assert events.mapper.counts[Verdict.APPLIED] == 1
        # The whole path, put_events to the problem, within the bound: what is left of it here.
        names = wait_until(
            lambda: [n for n in open_problems(api, hostid) if "jr_7f3a FAILED: OOM" in n],
            timeout=max(0.1, EVENT_BOUND - (time.monotonic() - put_at)),
            what="the Glue run-failed problem",
        )
        assert names == [f"AWS Glue: Job {JOB}: Run jr_7f3a FAILED: OOM"]
        # Deleted once delivered: nothing left in the queue, visible or in flight.
        attributes = client(moto_endpoint, "sqs").get_queue_attributes(
            QueueUrl=queue,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        assert attributes == {
            "ApproximateNumberOfMessages": "0",
            "ApproximateNumberOfMessagesNotVisible": "0",
        }
