"""The list form of the AWS poller: several accounts and regions from one section.

Config parsing, the names that keep two accounts' resources apart, AssumeRole refresh timing with
an injected clock, and one refused account among working ones.  AWS answers come from botocore's
Stubber (validated against the service models); the moto round trip is in
tests/integration/test_aws_moto.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from tests.support.outbox import ListOutbox, run_collector_until
from tests.test_aws_poller import CALLER, _stubbed_clients, aws_env, section  # noqa: F401 (fixture)
from trapline.collectors.aws import AwsCollector, build
from trapline.collectors.aws.poller import (
    ACCOUNT_DISCOVERY,
    AccountsPoller,
    AwsPoller,
    ClientFactory,
    PollerMaker,
)
from trapline.collectors.aws.session import ApiCalls, Clients
from trapline.collectors.aws.settings import AwsSettings, parse_settings
from trapline.core.config import ConfigError, Section
from trapline.core.model import Discovery, Item, Reading
from trapline.exporters.prometheus.exporter import PrometheusExporter
from trapline.middleware.normalize import normalize

PROD = "arn:aws:iam::111122223333:role/trapline-aws-reader"
TEST = "arn:aws:iam::444455556666:role/trapline-aws-reader"
NO_SERVICES = {"emr": {"enabled": False}, "emr_serverless": {"enabled": False}, "glue": {"enabled": False}}
GLUE_ONLY = {"emr": {"enabled": False}, "emr_serverless": {"enabled": False}}


def readings(items: list[Item], key: str) -> list[Reading]:
    return [i for i in items if isinstance(i, Reading) and i.key == key]


def stubbed(factory: ClientFactory, clock: Callable[[], float] = time.time) -> PollerMaker:
    """A maker of per-account pollers whose clients come from ``factory``."""
    return lambda scoped: AwsPoller(scoped, client_factory=factory, clock=clock)


def discovery(items: list[Item], rule: str) -> list[dict[str, str]]:
    (found,) = [i for i in items if isinstance(i, Discovery) and i.rule == rule]
    return [dict(row) for row in found.rows]


# -- configuration ------------------------------------------------------------------------


def test_the_list_form_parses_with_defaults_and_secrets_from_file_or_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "external-id"
    secret.write_text("ext-prod\n")
    secret.chmod(0o600)
    monkeypatch.setenv("EXT_TEST", "ext-test")
    parsed = parse_settings("org", section(accounts=[
        {"role_arn": PROD, "label": "prod", "regions": ["eu-west-1", "us-east-1"],
         "external_id_file": str(secret)},
        {"role_arn": TEST, "external_id_env": "EXT_TEST"},
    ]))
    prod, test = parsed.accounts
    assert (prod.label, prod.account_id, prod.regions) == ("prod", "111122223333", ("eu-west-1", "us-east-1"))
    assert prod.external_id is not None and prod.external_id.reveal() == "ext-prod"
    # No label: the account id; no regions: the section's region.
    assert (test.label, test.regions) == ("444455556666", ("eu-west-1",))
    assert test.role_session_name == "trapline-org"
    assert test.external_id is not None and test.external_id.reveal() == "ext-test"
    assert "ext-" not in repr(parsed)  # a Secret never shows itself


def test_the_single_account_form_is_unchanged() -> None:
    parsed = parse_settings("aws", section(role_arn=PROD))
    assert parsed.accounts == () and parsed.scope == ""
    assert isinstance(build("aws", section()).poller, AwsPoller)
    assert isinstance(build("aws", section(accounts=[{"role_arn": PROD}])).poller, AccountsPoller)


@pytest.mark.parametrize(
    ("accounts", "extra", "key"),
    [
        ([{"role_arn": "arn:aws:iam::1234:role/x"}], {}, "role_arn"),  # not a 12-digit account
        ([{"role_arn": "arn:aws:iam::111122223333:user/x"}], {}, "role_arn"),  # not a role
        ([{"role_arn": PROD, "label": "a b"}], {}, "label"),  # would not be a host name
        ([{"role_arn": PROD, "regions": []}], {}, "regions"),
        ([{"role_arn": PROD, "regions": ["eu-west-1", "eu-west-1"]}], {}, "regions"),
        ([{"role_arn": PROD, "regions": ["Europe"]}], {}, "regions"),
        ([{"role_arn": PROD}, {"role_arn": PROD}], {}, "label"),  # two labels "111122223333"
        ([{"role_arn": PROD, "regon": ["eu-west-1"]}], {}, "regon"),  # typo
        ([{"role_arn": PROD, "external_id_env": "TRAPLINE_UNSET_VARIABLE"}], {}, "external_id_env"),
        ([{"role_arn": PROD}], {"role_arn": TEST}, "role_arn"),  # chained roles: not supported
        ([{"role_arn": PROD, "label": "p-aa", "regions": ["bb-cc-1"]},
          {"role_arn": TEST, "label": "p", "regions": ["aa-bb-cc-1"]}], {}, "accounts"),  # same host names
    ],
)
def test_bad_accounts_are_refused_naming_the_key(
    accounts: list[Any], extra: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        parse_settings("org", section(accounts=accounts, **extra))


# -- names --------------------------------------------------------------------------------


def _glue_account(failing: set[str], cycles: int = 1) -> Any:
    """Stubbed clients for every account and region: one job "load, orders" each, FAILED in ``failing``.

    Its run is answered for ``cycles`` cycles.
    """
    made: list[Any] = []

    def factory(s: AwsSettings, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(s, calls)
        account = s.role_arn.split(":")[4] if s.role_arn else "123456789012"
        stubs["glue"].add_response("get_jobs", {"Jobs": [{"Name": "load, orders"}]})
        stubs["sts"].add_response("get_caller_identity", {**CALLER, "Account": account})
        stubs["glue"].add_response("get_tags", {"Tags": {}})
        stubs["glue"].add_response("get_triggers", {"Triggers": []})
        state = "FAILED" if s.scope in failing else "SUCCEEDED"
        run = {
            "Id": f"jr_{account}", "JobName": "load, orders", "JobRunState": state,
            "StartedOn": dt.datetime(2026, 12, 6, tzinfo=dt.UTC),
            "CompletedOn": dt.datetime(2026, 12, 6, 1, tzinfo=dt.UTC),
            "ErrorMessage": "boom" if state == "FAILED" else "",
        }
        for _ in range(cycles):
            stubs["glue"].add_response("get_job_runs", {"JobRuns": [run]})
        for stub in stubs.values():
            stub.activate()
        made.append(stubs)
        return clients

    return factory


def test_one_job_name_in_two_accounts_is_two_item_sets_and_the_failure_stays_on_its_own() -> None:
    parsed = parse_settings("org", section(**GLUE_ONLY, accounts=[
        {"role_arn": PROD, "label": "prod"}, {"role_arn": TEST, "label": "test"},
    ]))
    result = AccountsPoller(parsed, stubbed(_glue_account({"prod/eu-west-1"}))).cycle()
    rows = discovery(result.items, "glue.job.discovery")
    assert [(r["{#JOBKEY}"], r["{#JOBLABEL}"], r["{#ACCOUNT}"], r["{#REGION}"]) for r in rows] == [
        ("prod/eu-west-1/load%2C%20orders", "prod/eu-west-1: load, orders", "prod", "eu-west-1"),
        ("test/eu-west-1/load%2C%20orders", "test/eu-west-1: load, orders", "test", "eu-west-1"),
    ]
    states = {r.key: json.loads(str(r.value))["state"] for r in result.items
              if isinstance(r, Reading) and r.key.startswith("glue.job.run[")}
    assert states == {
        "glue.job.run[prod/eu-west-1/load%2C%20orders]": "FAILED",
        "glue.job.run[test/eu-west-1/load%2C%20orders]": "SUCCEEDED",
    }
    assert {r.host for r in result.items} == {"aws-test"}  # one poller host for all of them
    accounts = discovery(result.items, ACCOUNT_DISCOVERY)
    assert [(a["{#ACCOUNT}"], a["{#ACCOUNTID}"]) for a in accounts] == [
        ("prod", "111122223333"), ("test", "444455556666")
    ]
    assert [r.value for r in readings(result.items, "aws.account.api.calls[prod]")] == [5]
    assert result.errors == []


def test_the_single_account_form_keeps_todays_names() -> None:
    poller = AwsPoller(parse_settings("aws", section(**GLUE_ONLY)), client_factory=_glue_account(set()))
    result = poller.cycle()
    (row,) = discovery(result.items, "glue.job.discovery")
    assert (row["{#JOBKEY}"], row["{#JOBLABEL}"]) == ("load%2C%20orders", "load, orders")
    assert "{#ACCOUNT}" not in row
    assert readings(result.items, "glue.job.run[load%2C%20orders]")
    assert not [i for i in result.items if isinstance(i, Discovery) and i.rule == ACCOUNT_DISCOVERY]


def test_emr_hosts_carry_label_and_region_only_in_the_list_form() -> None:
    single = parse_settings("aws", section())
    org = AccountsPoller(parse_settings("org", section(accounts=[
        {"role_arn": PROD, "label": "prod", "regions": ["eu-west-1", "us-east-1"]}
    ])))
    assert (single.emr.host_prefix, single.emr_serverless.host_prefix) == ("emr-", "emr-serverless-")
    assert [(p.settings.emr.host_prefix, p.settings.emr_serverless.host_prefix) for _, p in org.pollers] == [
        ("emr-prod-eu-west-1-", "emr-serverless-prod-eu-west-1-"),
        ("emr-prod-us-east-1-", "emr-serverless-prod-us-east-1-"),
    ]


# Labels: the characters the sample documents; regions: botocore's own list (not ours);
# job names: any single-line string AWS's Glue API documents for a name (1-255 characters).
LABELS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
REGIONS = st.sampled_from(boto3.Session().get_available_regions("glue"))
JOB_NAMES = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), include_characters="\t"), min_size=1, max_size=255
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.lists(LABELS, min_size=2, max_size=3, unique=True), region=REGIONS, name=JOB_NAMES)
def test_jobs_of_one_name_never_share_a_key_whatever_the_labels_and_regions(
    labels: list[str], region: str, name: str
) -> None:
    arns = [f"arn:aws:iam::{k:012d}:role/r" for k in range(len(labels))]
    try:
        parsed = parse_settings("org", section(**GLUE_ONLY, region=region, accounts=[
            {"role_arn": arn, "label": label} for arn, label in zip(arns, labels, strict=True)
        ]))
    except ConfigError as exc:
        assert "spell the same host names" in str(exc)  # the one refusal legal labels can meet
        return

    def factory(s: AwsSettings, calls: ApiCalls) -> Clients:
        clients, stubs = _stubbed_clients(s, calls)
        stubs["glue"].add_response("get_jobs", {"Jobs": [{"Name": name}]})
        stubs["sts"].add_response("get_caller_identity", CALLER)
        stubs["glue"].add_response("get_tags", {"Tags": {}})
        stubs["glue"].add_response("get_triggers", {"Triggers": []})
        stubs["glue"].add_response("get_job_runs", {"JobRuns": []})
        for stub in stubs.values():
            stub.activate()
        return clients

    rows = discovery(AccountsPoller(parsed, stubbed(factory)).cycle().items, "glue.job.discovery")
    keys = [r["{#JOBKEY}"] for r in rows]
    assert len(keys) == len(labels) == len(set(keys))
    assert all(r["{#JOBNAME}"] == name for r in rows)


# -- credentials --------------------------------------------------------------------------


def _counting_factory(expiry: dict[str, float], made: list[str]) -> Any:
    def factory(s: AwsSettings, calls: ApiCalls) -> Clients:
        made.append(s.scope)
        clients, _ = _stubbed_clients(s, calls)
        clients.expires = expiry[s.scope]
        return clients

    return factory


def test_each_account_reassumes_its_role_five_minutes_before_its_credentials_expire() -> None:
    parsed = parse_settings("org", section(**NO_SERVICES, accounts=[
        {"role_arn": PROD, "label": "prod"}, {"role_arn": TEST, "label": "test"},
    ]))
    expiry = {"prod/eu-west-1": 10_000.0, "test/eu-west-1": 20_000.0}
    made: list[str] = []
    now = [5_000.0]
    poller = AccountsPoller(parsed, stubbed(_counting_factory(expiry, made), lambda: now[0]))
    poller.cycle()
    assert made == ["prod/eu-west-1", "test/eu-west-1"]  # each account assumes its own role
    made.clear()
    now[0] = 9_699.0  # 301 s before prod's credentials expire: still good
    poller.cycle()
    assert made == []
    expiry["prod/eu-west-1"] = 13_600.0  # the next credentials of prod last another hour
    now[0] = 9_700.0  # 300 s before: prod re-assumes, test does not
    poller.cycle()
    assert made == ["prod/eu-west-1"]
    made.clear()
    now[0] = 13_299.0
    poller.cycle()
    assert made == []
    now[0] = 19_700.0  # both now within their margins
    poller.cycle()
    assert made == ["prod/eu-west-1", "test/eu-west-1"]


def _refusing(refused: str, then: Any) -> Any:
    def factory(s: AwsSettings, calls: ApiCalls) -> Clients:
        if s.role_arn == refused:
            # As STS words it: the message names principals, which must not travel further.
            message = f"User arn:aws:iam::1:user/x is not authorized to perform sts:AssumeRole on {refused}"
            error = {"Error": {"Code": "AccessDenied", "Message": message}}
            raise ClientError(error, "AssumeRole")  # type: ignore[arg-type]
        clients: Clients = then(s, calls)
        return clients

    return factory


def test_a_refused_role_is_one_condition_and_self_metric_of_its_account_and_the_others_keep_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parsed = parse_settings("org", section(**GLUE_ONLY, accounts=[
        {"role_arn": PROD, "label": "prod"}, {"role_arn": TEST, "label": "test"},
    ]))
    poller = AccountsPoller(parsed, stubbed(_refusing(PROD, _glue_account(set(), cycles=2))))
    result = poller.cycle()
    reason = "prod/eu-west-1: AssumeRole: access denied (AccessDenied)"
    assert result.errors == [reason]
    assert result.conditions == {"polling prod": [reason], "polling test": []}
    assert [r.value for r in readings(result.items, "aws.account.error[prod]")] == [reason]
    assert [r.value for r in readings(result.items, "aws.account.error[test]")] == ["ok"]
    assert [r.value for r in readings(result.items, "aws.account.denied[prod]")] == [1]
    assert [r.value for r in readings(result.items, "aws.account.denied[test]")] == [0]
    assert [r.value for r in readings(result.items, "aws.account.throttles[prod]")] == [0]
    assert [r.value for r in readings(result.items, "aws.poller.error")] == [reason]
    # The other account is polled: its job is discovered and its run reported.
    assert [r["{#ACCOUNT}"] for r in discovery(result.items, "glue.job.discovery")] == ["test"]
    assert readings(result.items, "glue.job.run[test/eu-west-1/load%2C%20orders]")
    assert "user/x" not in repr(result)
    # The log names the account; it carries no principal either.
    (logged,) = [r.getMessage() for r in caplog.records if "AssumeRole" in r.getMessage()]
    assert logged == "prod/eu-west-1: credentials: AssumeRole: access denied (AccessDenied)"
    # Refused again next cycle: the counter grows, the test account stays clean.
    again = poller.cycle()
    assert [r.value for r in readings(again.items, "aws.account.denied[prod]")] == [2]
    assert again.conditions["polling test"] == []


def test_the_collector_logs_a_refused_account_as_its_own_condition() -> None:
    parsed = parse_settings("org", section(**GLUE_ONLY, poll_interval=1, accounts=[
        {"role_arn": PROD, "label": "prod"}, {"role_arn": TEST, "label": "test"},
    ]))
    poller = AccountsPoller(parsed, stubbed(_refusing(PROD, _glue_account(set()))))
    out = ListOutbox()
    run_collector_until(AwsCollector("org", parsed, poller), out, lambda o: bool(o.errors), limit=30)
    reason = "org: prod/eu-west-1: AssumeRole: access denied (AccessDenied)"
    assert out.errors == [reason]
    assert out.conditions == {"polling prod": reason}  # test's condition was never raised


def test_a_cycle_in_the_list_form_is_checked_across_accounts() -> None:
    collector = build("org", Section(Path("t.toml"), "collectors.org", {
        "type": "aws", "host": "h", "region": "eu-west-1", **NO_SERVICES,
        "accounts": [{"role_arn": PROD, "label": "prod", "regions": ["eu-west-1", "us-east-1"]}],
    }))
    assert collector.poller.where == "prod/eu-west-1, prod/us-east-1"


def test_the_prometheus_exporter_labels_the_account_counters_by_account() -> None:
    parsed = parse_settings("org", section(**GLUE_ONLY, accounts=[
        {"role_arn": PROD, "label": "prod"}, {"role_arn": TEST, "label": "test"},
    ]))
    result = AccountsPoller(parsed, stubbed(_refusing(PROD, _glue_account(set())))).cycle()
    exporter = PrometheusExporter("127.0.0.1", 0, stale_after=600)
    for item in result.items:
        if isinstance(item, Reading):
            exporter.observe(normalize(item))
    text = generate_latest(exporter.registry).decode()
    assert 'trapline_aws_account_denied_total{account="prod",host="aws-test"} 1.0' in text
    assert 'trapline_aws_account_denied_total{account="test",host="aws-test"} 0.0' in text
    assert 'trapline_aws_account_throttles_total{account="test",host="aws-test"} 0.0' in text
    assert 'trapline_aws_account_api_calls_total{account="test",host="aws-test"} 5.0' in text
