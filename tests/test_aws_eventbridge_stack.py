"""deploy/aws/eventbridge.yaml agrees with the code: a rule for every detail-type the event path
reads and none for one it does not, deliveries only from those rules, and a consumer policy of
exactly the three SQS actions.  (moto deploys the stack in tests/test_aws_events_queue.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trapline.collectors.aws.events import KINDS, NUDGES

STACK = Path(__file__).resolve().parents[1] / "deploy" / "aws" / "eventbridge.yaml"


def resources(kind: str) -> dict[str, Any]:
    template = yaml.safe_load(STACK.read_text(encoding="utf-8"))
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def test_every_handled_detail_type_has_a_rule_and_every_rule_a_handled_detail_type() -> None:
    patterns = {
        (source, detail_type)
        for rule in resources("AWS::Events::Rule").values()
        for source in rule["Properties"]["EventPattern"]["source"]
        for detail_type in rule["Properties"]["EventPattern"]["detail-type"]
    }
    assert patterns == set(KINDS) | set(NUDGES)


def test_every_rule_targets_the_queue_with_the_dlq_for_failed_deliveries() -> None:
    for rule in resources("AWS::Events::Rule").values():
        [target] = rule["Properties"]["Targets"]
        assert target["Arn"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}
        assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_queue_redrives_to_the_dlq_and_long_polls() -> None:
    queue = resources("AWS::SQS::Queue")["EventQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert queue["ReceiveMessageWaitTimeSeconds"] == 20


def test_only_the_rules_may_send_and_the_consumer_may_only_read_and_delete() -> None:
    [queue_policy] = resources("AWS::SQS::QueuePolicy").values()
    [send] = queue_policy["Properties"]["PolicyDocument"]["Statement"]
    assert send["Principal"] == {"Service": "events.amazonaws.com"} and send["Action"] == "sqs:SendMessage"
    sources = {arn["Fn::GetAtt"][0] for arn in send["Condition"]["ArnEquals"]["aws:SourceArn"]}
    assert sources == set(resources("AWS::Events::Rule"))
    [consumer] = resources("AWS::IAM::ManagedPolicy").values()
    [read] = consumer["Properties"]["PolicyDocument"]["Statement"]
    assert sorted(read["Action"]) == ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
    assert read["Resource"] == {"Fn::GetAtt": ["EventQueue", "Arn"]}
