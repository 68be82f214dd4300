"""The AWS poller against a real moto server (in-process, on loopback).

In-process so the tests can reach moto's backends for what its API cannot do
(a FAILED Glue run, a FAILED EMR step); everything the poller does goes over
HTTP through boto3 exactly as against AWS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.outbox import ListOutbox, run_collector_until
from tests.support.peers import missing_peer, wait_port
from trapline.collectors.aws import AwsCollector, build
from trapline.collectors.aws.cloudwatch import aligned_window
from trapline.collectors.aws.poller import AccountsPoller, AwsPoller
from trapline.core.config import Section
from trapline.core.model import Discovery, Item, Reading

pytestmark = pytest.mark.integration

ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-west-1"
POLICY = Path(__file__).resolve().parents[2] / "deploy" / "aws" / "iam-policy.json"
SOURCE_POLICY = POLICY.with_name("source-identity-policy.json")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 (optional test peer)
    except ImportError:
        missing_peer("moto[server] is not installed")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    if not wait_port(port, host):
        missing_peer("moto server did not start")
    yield f"http://{host}:{port}"
    server.stop()


def _post(endpoint: str, path: str, body: bytes = b"") -> None:
    # text/plain: moto reads the raw body, which a form content type would hide.
    request = urllib.request.Request(
        f"{endpoint}{path}", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request):
        pass


@pytest.fixture
def endpoint(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    _post(moto_endpoint, "/moto-api/reset")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return moto_endpoint


def client(endpoint: str, service: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def poller(endpoint: str, **values: Any) -> AwsPoller:
    data = {
        "type": "aws",
        "host": "aws-test",
        "region": REGION,
        "endpoint_url": endpoint,
        "max_attempts": 1,
        **values,
    }
    return build("aws", Section(Path("/etc/trapline/trapline.toml"), "collectors.aws", data)).poller


def values(items: list[Item], key: str, host: str = "aws-test") -> list[Any]:
    return [i.value for i in items if isinstance(i, Reading) and i.key == key and i.host == host]


def runs(items: list[Item], key: str, host: str = "aws-test") -> list[dict[str, Any]]:
    """The runs sent on ``key``: one JSON value per run and state."""
    return [json.loads(v) for v in values(items, key, host)]


def field(items: list[Item], key: str, name: str, host: str = "aws-test") -> list[Any]:
    return [run[name] for run in runs(items, key, host)]


def discovery(items: list[Item], rule: str) -> list[dict[str, str]]:
    found = [i for i in items if isinstance(i, Discovery) and i.rule == rule]
    assert len(found) == 1, f"expected one {rule} value, got {len(found)}"
    return [dict(row) for row in found[0].rows]


def make_cluster(emr: Any, name: str, tags: dict[str, str] | None = None, step: bool = False) -> str:
    response = emr.run_job_flow(
        Name=name,
        ReleaseLabel="emr-6.15.0",
        Instances={
            "MasterInstanceType": "m5.xlarge",
            "InstanceCount": 1,
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        Tags=[{"Key": k, "Value": v} for k, v in (tags or {}).items()],
        Steps=[
            {"Name": "load", "ActionOnFailure": "CONTINUE", "HadoopJarStep": {"Jar": "command-runner.jar"}}
        ]
        if step
        else [],
    )
    return str(response["JobFlowId"])


def make_job(glue: Any, name: str, tags: dict[str, str] | None = None, metrics: bool = False) -> None:
    arguments = {"--enable-metrics": "true"} if metrics else {}
    glue.create_job(
        Name=name,
        Role="arn:aws:iam::123456789012:role/glue",
        Command={"Name": "glueetl"},
        Tags=tags or {},
        DefaultArguments=arguments,
    )


def make_app(serverless: Any, name: str, tags: dict[str, str] | None = None) -> str:
    response = serverless.create_application(
        name=name, releaseLabel="emr-6.15.0", type="SPARK", tags=tags or {}
    )
    return str(response["applicationId"])


# -- discovery ------------------------------------------------------------------------


def test_clusters_apps_and_jobs_are_discovered_through_the_async_loop(endpoint: str) -> None:
    emr, glue, serverless = (client(endpoint, s) for s in ("emr", "glue", "emr-serverless"))
    wanted_cluster = make_cluster(emr, "prod-a", {"team": "data", "Owner": "ann"})
    make_cluster(emr, "prod-b", {"team": "ops"})
    make_cluster(emr, "dev-c", {"team": "data"})
    gone = make_cluster(emr, "prod-d", {"team": "data"})
    emr.terminate_job_flows(JobFlowIds=[gone])
    # Ended long before this discovery (one that ended since the last discovery is listed: see below).
    _moto_emr_cluster(gone).creation_datetime -= dt.timedelta(days=7)
    app = make_app(serverless, "app-x", {"TEAM": "spark"})
    make_app(serverless, "other")
    make_job(glue, "etl-a", {"team": "data", "owner": "bob"})
    make_job(glue, "etl-b")
    make_job(glue, "misc", {"team": "data"})

    collector = build(
        "aws",
        Section(
            Path("/etc/trapline/trapline.toml"),
            "collectors.aws",
            {
                "type": "aws",
                "host": "aws-test",
                "region": REGION,
                "endpoint_url": endpoint,
                "max_attempts": 1,
                "emr": {"name_regex": "^prod-", "tags": {"team": "data"}},
                "emr_serverless": {"name_regex": "^app-"},
                "glue": {"name_regex": "^etl-", "tags": {"team": "data"}},
            },
        ),
    )
    out = ListOutbox()

    run_collector_until(collector, out, lambda out: bool(out.readings("aws.poller.error")), limit=60)
    assert out.errors == []
    # Team and owner tags (any case, empty when not set) ride along for problem routing.
    assert discovery(out.items, "emr.cluster.discovery") == [
        {
            "{#CLUSTERID}": wanted_cluster,
            "{#CLUSTERNAME}": "prod-a",
            "{#HOST}": f"emr-{wanted_cluster}",
            "{#TEAM}": "data",
            "{#OWNER}": "ann",
        }
    ]
    assert discovery(out.items, "emr.serverless.app.discovery") == [
        {
            "{#APPID}": app,
            "{#APPNAME}": "app-x",
            "{#APPTYPE}": "Spark",
            "{#HOST}": f"emr-serverless-{app}",
            "{#TEAM}": "spark",
            "{#OWNER}": "",
        }
    ]
    (job,) = discovery(out.items, "glue.job.discovery")
    assert (job["{#JOBNAME}"], job["{#TEAM}"], job["{#OWNER}"]) == ("etl-a", "data", "bob")
    assert values(out.items, "emr.cluster.state", f"emr-{wanted_cluster}") == ["WAITING"]
    assert values(out.items, "emr.serverless.app.state", f"emr-serverless-{app}") == ["STARTED"]
    assert values(out.items, "aws.poller.error") == ["ok"]


# -- run and state health --------------------------------------------------------------


def test_failed_glue_run_then_a_successful_one(endpoint: str) -> None:
    from moto.glue.models import glue_backends  # noqa: PLC0415 (in-process backend of the peer)

    glue = client(endpoint, "glue")
    make_job(glue, "etl-a")
    aws = poller(endpoint)
    first = aws.cycle()
    assert field(first.items, "glue.job.run[etl-a]", "state") == []  # no runs yet

    failed_id = glue.start_job_run(JobName="etl-a")["JobRunId"]
    # FAILED cannot be produced through moto's API: set it in its backend.
    glue_backends[ACCOUNT][REGION].jobs["etl-a"].job_runs[-1].status = "FAILED"
    second = aws.cycle()
    assert field(second.items, "glue.job.run[etl-a]", "state") == ["FAILED"]
    assert field(second.items, "glue.job.run[etl-a]", "id") == [failed_id]
    assert field(second.items, "glue.job.run[etl-a]", "error") == [""]
    assert values(second.items, "glue.job.last_success[etl-a]") == []
    assert field(aws.cycle().items, "glue.job.run[etl-a]", "state") == []  # reported once

    ok_id = glue.start_job_run(JobName="etl-a")["JobRunId"]
    fourth = aws.cycle()
    assert field(fourth.items, "glue.job.run[etl-a]", "state") == ["SUCCEEDED"]
    assert field(fourth.items, "glue.job.run[etl-a]", "id") == [ok_id]
    assert len(values(fourth.items, "glue.job.last_success[etl-a]")) == 1
    assert values(fourth.items, "aws.poller.error") == ["ok"]


def _moto_emr_cluster(cluster_id: str) -> Any:
    from moto.emr.models import emr_backends  # noqa: PLC0415 (in-process backend of the peer)

    for region, backend in emr_backends[ACCOUNT].items():
        if cluster_id in backend.clusters:
            return emr_backends[ACCOUNT][region].clusters[cluster_id]
    raise AssertionError(f"cluster {cluster_id} not in moto")


def test_failed_emr_step_is_reported_on_the_cluster_host(endpoint: str) -> None:
    emr = client(endpoint, "emr")
    cluster_id = make_cluster(emr, "prod-a", step=True)
    host = f"emr-{cluster_id}"
    aws = poller(endpoint)
    first = aws.cycle()
    assert field(first.items, "emr.step", "state", host) == ["RUNNING"]  # newest step, first time

    step = _moto_emr_cluster(cluster_id).steps[0]
    step.state = "FAILED"
    step.end_date_time = dt.datetime.now(dt.UTC)
    step.last_state_change_reason = "Step failed: exit code 1"
    second = aws.cycle()
    assert field(second.items, "emr.step", "state", host) == ["FAILED"]
    assert field(second.items, "emr.step", "id", host) == [step.id]
    assert field(second.items, "emr.step", "name", host) == ["load"]
    assert field(second.items, "emr.step", "error", host) == ["Step failed: exit code 1"]


def test_cluster_that_failed_between_two_discoveries_still_gets_its_host_and_state(endpoint: str) -> None:
    emr = client(endpoint, "emr")
    aws = poller(endpoint)
    aws.cycle()  # discovery has run: the next one is an interval away
    failed = make_cluster(emr, "bootstrap-fails", step=True)
    old = make_cluster(emr, "ended-last-week")
    emr.terminate_job_flows(JobFlowIds=[failed, old])
    moto_failed = _moto_emr_cluster(failed)
    moto_failed.state = "TERMINATED_WITH_ERRORS"
    moto_failed.steps[0].state = "FAILED"
    moto_failed.steps[0].end_date_time = dt.datetime.now(dt.UTC)
    _moto_emr_cluster(old).creation_datetime -= dt.timedelta(days=7)

    aws._next_discovery["emr"] = 0.0  # the next discovery, without waiting for it
    result = aws.cycle()
    ids = [row["{#CLUSTERID}"] for row in discovery(result.items, "emr.cluster.discovery")]
    assert ids == [failed]  # never seen active, and not the one that ended long ago
    host = f"emr-{failed}"
    assert values(result.items, "emr.cluster.state", host) == ["TERMINATED_WITH_ERRORS"]
    assert field(result.items, "emr.step", "state", host) == ["FAILED"]
    assert field(aws.cycle().items, "emr.step", "state", host) == []  # reported once


def test_failed_emr_serverless_job_run_is_reported_on_the_application_host(endpoint: str) -> None:
    from moto.emrserverless.models import emrserverless_backends  # noqa: PLC0415

    serverless = client(endpoint, "emr-serverless")
    app = make_app(serverless, "app-x")
    aws = poller(endpoint)
    aws.cycle()
    run_id = serverless.start_job_run(
        applicationId=app,
        executionRoleArn="arn:aws:iam::123456789012:role/job",
        name="daily",
        jobDriver={"sparkSubmit": {"entryPoint": "s3://bucket/job.py"}},
    )["jobRunId"]
    run = next(r for r in emrserverless_backends[ACCOUNT][REGION].job_runs[app] if r.id == run_id)
    run.state, run.state_details = "FAILED", "Job failed, ExitCode: 1"
    result = aws.cycle()
    host = f"emr-serverless-{app}"
    assert field(result.items, "emr.serverless.job.run", "state", host) == ["FAILED"]
    assert field(result.items, "emr.serverless.job.run", "id", host) == [run_id]
    assert field(result.items, "emr.serverless.job.run", "error", host) == ["Job failed, ExitCode: 1"]


# -- CloudWatch -----------------------------------------------------------------------------


def test_idle_cluster_and_glue_task_metrics_are_read_back_and_missing_is_not_zero(endpoint: str) -> None:
    emr, glue, cloudwatch = (client(endpoint, s) for s in ("emr", "glue", "cloudwatch"))
    cluster_id = make_cluster(emr, "prod-a")
    make_job(glue, f"etl-{cluster_id}", metrics=True)  # distinct dimension values per test (moto)
    job = f"etl-{cluster_id}"
    glue.start_job_run(JobName=job)

    now = dt.datetime.now(dt.UTC).timestamp()
    emr_window = aligned_window(now, period=300, delay=300, periods=3)
    glue_window = aligned_window(now, period=60, delay=30, periods=3)
    cloudwatch.put_metric_data(
        Namespace="AWS/ElasticMapReduce",
        MetricData=[
            {
                "MetricName": "IsIdle",
                "Dimensions": [{"Name": "JobFlowId", "Value": cluster_id}],
                "Value": 1.0,
                "Timestamp": dt.datetime.fromtimestamp(emr_window.end - 150, dt.UTC),
            }
        ],
    )
    cloudwatch.put_metric_data(
        Namespace="Glue",
        MetricData=[
            {
                "MetricName": "glue.driver.aggregate.numFailedTasks",
                "Dimensions": [
                    {"Name": "JobName", "Value": job},
                    {"Name": "JobRunId", "Value": "ALL"},
                    {"Name": "Type", "Value": "count"},
                ],
                "Value": 3.0,
                "Timestamp": dt.datetime.fromtimestamp(glue_window.end - 30, dt.UTC),
            }
        ],
    )

    result = poller(endpoint, emr_serverless={"enabled": False}).cycle()
    host = f"emr-{cluster_id}"
    assert values(result.items, "emr.cluster.idle", host) == [1.0]
    # The ten other EMR metrics have no data: counted as missing, never sent as 0.
    assert values(result.items, "aws.poller.metrics.missing[emr]") == [10]
    cluster_keys = {i.key for i in result.items if isinstance(i, Reading) and i.host == host}
    assert not {"emr.yarn.apps.pending", "emr.hdfs.utilization"} & cluster_keys
    assert values(result.items, f"glue.job.tasks.failed[{job}]") == [3.0]
    assert values(result.items, "aws.poller.metrics.requested") == [11 + 7]  # 7 metrics need --enable-metrics
    cost = values(result.items, "aws.poller.cloudwatch.cost")[0]
    assert cost == pytest.approx((11 * 3600 / 300 + 7 * 3600 / 60) * 0.01 / 1000)


# -- errors ----------------------------------------------------------------------------------


def test_access_denied_and_bad_credentials_become_the_poller_error(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = client(endpoint, "iam")
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    _post(endpoint, "/moto-api/reset-auth", b"0")  # moto checks IAM from now on
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        denied = poller(endpoint).cycle()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
        unknown = poller(endpoint).cycle()
    finally:
        _post(endpoint, "/moto-api/reset-auth", b"inf")
    # moto answers JSON-protocol calls with an XML error botocore cannot parse: code "403".
    assert any(e.startswith("ListClusters: access denied (") for e in denied.errors)
    assert "access denied" in values(denied.items, "aws.poller.error")[0]
    assert values(denied.items, "aws.poller.errors")[0] >= 1
    assert not [i for i in denied.items if isinstance(i, Discovery)]  # no empty LLD on failure
    # An unknown key is refused too; moto's unreadable error body hides the
    # InvalidClientTokenId code, so the wording is checked in the unit tests.
    assert any(e.startswith("ListClusters: access denied (") for e in unknown.errors)
    assert key["SecretAccessKey"] not in json.dumps(
        [str(v) for v in values(denied.items, "aws.poller.error")]
    )


# -- least privilege -----------------------------------------------------------------------------


def _allowed(policy_file: Path, action: str) -> bool:
    policy = json.loads(policy_file.read_text())
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if statement["Effect"] == "Allow" and any(
            fnmatch.fnmatch(action.lower(), a.lower()) for a in actions
        ):
            return True
    return False


def _policy_actions(policy_file: Path) -> set[str]:
    actions: set[str] = set()
    for statement in json.loads(policy_file.read_text())["Statement"]:
        listed = statement["Action"]
        actions.update(listed if isinstance(listed, list) else [listed])
    return actions


def test_the_iam_policy_allows_exactly_the_calls_the_poller_makes(endpoint: str) -> None:
    emr, glue, serverless = (client(endpoint, s) for s in ("emr", "glue", "emr-serverless"))
    make_cluster(emr, "prod-a", {"team": "data"}, step=True)
    make_app(serverless, "app-x", {"team": "data"})
    make_job(glue, "etl-a", {"team": "data"}, metrics=True)
    glue.start_job_run(JobName="etl-a")
    glue.create_crawler(Name="raw-a", Role="r", Targets={"S3Targets": [{"Path": "s3://raw"}]})
    glue.create_workflow(Name="nightly-a")
    glue.start_workflow_run(Name="nightly-a")
    tagged = {"tags": {"team": "data"}}
    aws = poller(
        endpoint,
        role_arn="arn:aws:iam::123456789012:role/trapline-aws-reader",
        emr=tagged,
        emr_serverless=tagged,
        glue=tagged,
        glue_crawlers={"enabled": True},
        glue_workflows={"enabled": True},
    )
    aws.cycle()
    result = aws.cycle()
    assert result.errors == []

    # Every API call is counted by the collector's own botocore hook, keyed by IAM action.
    prefix = "aws.poller.api.calls["
    made = {
        i.key[len(prefix) : -1] for i in result.items if isinstance(i, Reading) and i.key.startswith(prefix)
    }
    assert "cloudwatch:GetMetricData" in made and "elasticmapreduce:DescribeCluster" in made
    # STS needs no grant: AssumeRole is the source account's, GetCallerIdentity is always allowed.
    sts = {"sts:AssumeRole", "sts:GetCallerIdentity"}
    assert "glue:GetTags" in made and "sts:GetCallerIdentity" in made
    # moto has no GetCrawlerMetrics (and no finished crawl to ask it for), and its workflow runs have
    # no Statistics, so no run asks for its graph (GetWorkflowRun): tests/test_aws_glue_pipelines.py
    # and tests/test_aws_missed.py check those calls against the policy.
    assert made - sts == _policy_actions(POLICY) - {"glue:GetCrawlerMetrics", "glue:GetWorkflowRun"}
    assert all(_allowed(POLICY, action) for action in made - sts)
    assert _allowed(SOURCE_POLICY, "sts:AssumeRole") and "sts:AssumeRole" in made
    assert not _allowed(POLICY, "glue:StartJobRun") and not _allowed(
        POLICY, "elasticmapreduce:TerminateJobFlows"
    )


# -- several accounts ------------------------------------------------------------------------------

ACCOUNTS = {"prod": "111122223333", "test": "444455556666"}


def _as_account(endpoint: str, account: str, service: str) -> Any:
    """A client acting in ``account`` through its reader role, as an operator's script would."""
    sts = client(endpoint, "sts")
    role = f"arn:aws:iam::{account}:role/trapline-aws-reader"
    creds = sts.assume_role(RoleArn=role, RoleSessionName="setup")["Credentials"]
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def make_accounts(endpoint: str, clusters: bool = False) -> None:
    """Each account of ACCOUNTS gets the reader role, a Glue job "load-orders", one of its own,
    and with ``clusters`` an EMR cluster "nightly-etl".

    Set up the way an operator would: the role made in each account from
    deploy/aws/trust-policy.json, the resources made with that account's credentials (moto
    keeps what assumed-role credentials create in the role's account).
    """
    trust = json.loads(POLICY.with_name("trust-policy.json").read_text())
    for label, account in ACCOUNTS.items():
        _as_account(endpoint, account, "iam").create_role(
            RoleName="trapline-aws-reader", AssumeRolePolicyDocument=json.dumps(trust)
        )
        glue = _as_account(endpoint, account, "glue")
        make_job(glue, "load-orders")
        make_job(glue, f"only-in-{label}")
        if clusters:
            make_cluster(_as_account(endpoint, account, "emr"), "nightly-etl")


def accounts_poller(endpoint: str, monkeypatch: pytest.MonkeyPatch, **sections: Any) -> Any:
    """A list-form poller of ACCOUNTS (an AccountsPoller): prod by label and external id, test by id."""
    monkeypatch.setenv("TRAPLINE_TEST_EXTERNAL_ID", "ext-prod-1")
    accounts = [
        {"role_arn": f"arn:aws:iam::{ACCOUNTS['prod']}:role/trapline-aws-reader", "label": "prod",
         "external_id_env": "TRAPLINE_TEST_EXTERNAL_ID"},
        {"role_arn": f"arn:aws:iam::{ACCOUNTS['test']}:role/trapline-aws-reader"},  # label: its id
    ]
    return poller(endpoint, accounts=accounts, **sections)


def accounts_world(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Both accounts have run "load-orders" once: FAILED in prod, SUCCEEDED in test."""
    from moto.glue.models import glue_backends  # noqa: PLC0415 (in-process backend of the peer)

    make_accounts(endpoint)
    for account in ACCOUNTS.values():
        _as_account(endpoint, account, "glue").start_job_run(JobName="load-orders")
    # FAILED cannot be produced through moto's API: set it in the prod account's backend.
    glue_backends[ACCOUNTS["prod"]][REGION].jobs["load-orders"].job_runs[-1].status = "FAILED"
    off = {"enabled": False}
    return accounts_poller(endpoint, monkeypatch, emr=off, emr_serverless=off)


def test_assumed_credentials_are_renewed_before_they_expire(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = accounts_world(endpoint, monkeypatch).settings
    later = [0.0]  # seconds the injected clock runs ahead of the real one
    aws = AccountsPoller(settings, lambda scoped: AwsPoller(scoped, clock=lambda: time.time() + later[0]))
    assert values(aws.cycle().items, "aws.poller.api.calls[sts:AssumeRole]") == [2]
    later[0] = 3600 - 320  # moto's credentials last an hour: 20 s before the 5-minute margin
    assert values(aws.cycle().items, "aws.poller.api.calls[sts:AssumeRole]") == [2]
    later[0] = 3600 - 280  # within the margin: both accounts assume their roles again
    renewed = aws.cycle()
    assert values(renewed.items, "aws.poller.api.calls[sts:AssumeRole]") == [4]
    assert renewed.errors == []


def test_two_accounts_with_one_job_name_give_two_item_sets_with_the_failure_on_its_own(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = accounts_world(endpoint, monkeypatch).cycle()
    assert result.errors == []
    rows = discovery(result.items, "glue.job.discovery")
    keys = sorted(row["{#JOBKEY}"] for row in rows)
    test = ACCOUNTS["test"]
    # Each account sees its own jobs only: moto answered each role in its own account.
    assert keys == sorted([
        "prod/eu-west-1/load-orders", "prod/eu-west-1/only-in-prod",
        f"{test}/eu-west-1/load-orders", f"{test}/eu-west-1/only-in-test",
    ])
    assert field(result.items, "glue.job.run[prod/eu-west-1/load-orders]", "state") == ["FAILED"]
    assert field(result.items, f"glue.job.run[{test}/eu-west-1/load-orders]", "state") == ["SUCCEEDED"]
    assert values(result.items, "glue.job.last_success[prod/eu-west-1/load-orders]") == []
    assert len(values(result.items, f"glue.job.last_success[{test}/eu-west-1/load-orders]")) == 1
    # One AssumeRole per account, counted, and each account's calls apart.
    assert values(result.items, "aws.poller.api.calls[sts:AssumeRole]") == [2]
    assert values(result.items, "aws.account.error[prod]") == ["ok"]
    assert values(result.items, f"aws.account.denied[{test}]") == [0]
    assert values(result.items, "aws.account.api.calls[prod]")[0] >= 4  # AssumeRole, GetJobs, ...
    assert [r["{#ACCOUNTID}"] for r in discovery(result.items, "aws.account.discovery")] == [
        ACCOUNTS["prod"], test
    ]


def test_check_reports_every_account_and_region(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make_accounts(endpoint, clusters=True)
    settings = accounts_poller(endpoint, monkeypatch).settings
    report = asyncio.run(AwsCollector("aws", settings).check())
    assert report == f"prod/eu-west-1, {ACCOUNTS['test']}/eu-west-1: 2 emr, 0 emr_serverless, 4 glue"
