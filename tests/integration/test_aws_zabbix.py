"""End to end: moto (AWS) -> the real AWS poller -> ZabbixDestination -> real Zabbix 6.0 and 7.0 with
the shipped "AWS EMR and Glue by Zabbix trapper" templates: hosts from discovery, and problems from failed
runs and an idle cluster (refused credentials: test_aws_noc.py).

One scenario per Zabbix version (module-scoped ``world``): discovery and the configuration cache
reload are paid once; each test then changes its own resource in moto, runs poll cycles and waits
for Zabbix's verdict.  The poller runs on a virtual clock so that the CloudWatch windows of the idle
test can be placed where the datapoints are; everything else is real time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devtools.localzabbix import LocalZabbix
from tests.integration.test_aws_moto import (
    ACCOUNT,
    REGION,
    _moto_emr_cluster,
    _post,
    client,
    make_app,
    make_cluster,
    make_job,
    moto_endpoint,  # noqa: F401 (fixture)
)
from tests.support.zabbix_fixtures import TEST_HOST_GROUP, unique_name, wait_until
from tests.test_aws_poller import GLUE_NAME_CHARS
from trapline.collectors.aws.poller import AwsPoller, CycleResult
from trapline.collectors.aws.resources import ERROR_SHOWN, key_param, short_id
from trapline.collectors.aws.settings import AwsSettings, parse_settings
from trapline.core.config import Section
from trapline.core.model import Reading
from trapline.core.plugin import Spooled
from trapline.exporters.zabbix.client import ClusterClient, Endpoint
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.templates import import_templates, template_dir

pytestmark = pytest.mark.integration

TEMPLATES = template_dir() / "aws_poller" / "template_aws_emr_glue.yaml"
POLLER_TEMPLATE = "AWS EMR and Glue by Zabbix trapper"
CLUSTER_TEMPLATE = "AWS EMR cluster by Zabbix trapper"
APP_TEMPLATE = "AWS EMR Serverless application by Zabbix trapper"
EMR_PERIOD = 300
LLD_TIMEOUT = 60.0  # LLD workers and template linking on a busy 2-core machine
PROBLEM_TIMEOUT = 30.0


@dataclass
class Account:
    """A poller host on a real Zabbix, the poller that feeds it from moto, and its cluster and application."""

    zabbix: LocalZabbix
    api: Any
    endpoint: str
    host: str  # the poller host
    hostid: str
    poller: AwsPoller
    cluster_id: str
    app_id: str

    def cycle(self, poller: AwsPoller | None = None) -> CycleResult:
        """One poll cycle, delivered to Zabbix; values of items that do not exist yet are refused."""
        result = (poller or self.poller).cycle()
        deliver(self.zabbix, result)
        return result

    def hostid_of(self, host: str) -> str:
        found = self.api.host.get(filter={"host": [host]}, output=["hostid"])
        assert found, f"no host {host}"
        return str(found[0]["hostid"])

    def reload_with_dependents(self) -> None:
        """Reload the configuration, then wait until values also reach new dependent items.

        Right after a reload the trapper takes values for new items, but the preprocessing
        manager can still work from its previous copy for a moment: a value sent then lands
        on its master item and on none of the dependent items (seen here on 6.0).  A probe
        master and dependent item, created just before the reload, tell when it caught up.
        """
        key = f"trapline.probe.{secrets.token_hex(4)}"
        trapper, dependent, unsigned = 2, 18, 3
        create = self.api.item.create
        made = create(hostid=self.hostid, name=key, key_=key, type=trapper, value_type=unsigned)
        master = made["itemids"][0]
        copy = create(
            hostid=self.hostid,
            name=f"{key} copy",
            key_=f"{key}.copy",
            type=dependent,
            master_itemid=master,
            value_type=unsigned,
        )["itemids"][0]

        def copied() -> bool:
            deliver(self.zabbix, CycleResult([Reading.now(self.host, key, 1)]))
            return bool(self.api.history.get(itemids=[copy], history=unsigned, limit=1))

        # Sometimes (6.0, after several reloads in a row) one reload is not enough for the
        # preprocessing to pick the new dependent items up: ask again, a few times.
        for _ in range(3):
            self.zabbix.config_cache_reload()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not copied():
                time.sleep(0.5)
            if copied():
                break
        else:
            pytest.fail("values never reached new dependent items after 3 reloads", pytrace=False)
        self.api.item.delete(copy, master)


@dataclass
class World(Account):
    clock: list[float]  # the poller's virtual "now", one cell so tests can move it
    bucket: int  # start of the newest whole EMR period at setup (real time)
    job: str


def deliver(zabbix: LocalZabbix, result: CycleResult) -> None:
    now = time.time()
    batch = [Spooled(index, item, now, 0) for index, item in enumerate(result.items)]

    async def send() -> None:
        # A destination per delivery: its semaphore belongs to the event loop it first ran in.
        node = Endpoint(zabbix.trapper_host, zabbix.trapper_port)
        destination = ZabbixDestination("aws-e2e", ClusterClient([node], timeout=10), resend_delay=0)
        try:
            delivery = await destination.deliver(batch)
        finally:
            await destination.close()
        assert delivery.unreachable is None, delivery.unreachable

    asyncio.run(send())


def items(api: Any, host: str, key: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = api.item.get(
        host=host, filter={"key_": [key]}, output=["itemid", "lastvalue"]
    )
    return found


def open_problems(api: Any, hostid: str, prefix: str = "") -> list[str]:
    return [
        p["name"] for p in api.problem.get(hostids=[hostid], output=["name"]) if p["name"].startswith(prefix)
    ]


def wait_problem(api: Any, hostid: str, start: str) -> str:
    """The name of the open problem that starts with ``start`` (waits for it)."""
    names: list[str] = wait_until(
        lambda: [n for n in open_problems(api, hostid) if n.startswith(start)],
        timeout=PROBLEM_TIMEOUT,
        what=f"a problem {start!r}",
    )
    return names[0]


def wait_resolved(api: Any, hostid: str, start: str) -> None:
    wait_until(
        lambda: not [n for n in open_problems(api, hostid) if n.startswith(start)],
        timeout=PROBLEM_TIMEOUT,
        what=f"problem {start!r} to resolve",
    )


def put_idle(cloudwatch: Any, cluster_id: str, newest_bucket: int) -> None:
    """IsIdle = 1 for the whole last hour, one datapoint at the start of each 5-minute period."""
    cloudwatch.put_metric_data(
        Namespace="AWS/ElasticMapReduce",
        MetricData=[
            {
                "MetricName": "IsIdle",
                "Dimensions": [{"Name": "JobFlowId", "Value": cluster_id}],
                "Value": 1.0,
                "Timestamp": dt.datetime.fromtimestamp(newest_bucket - k * EMR_PERIOD, dt.UTC),
            }
            for k in range(12)
        ],
    )


def poller_settings(endpoint: str, host: str, **values: Any) -> AwsSettings:
    """The settings of a poller of moto at ``endpoint`` for ``host``: ``values`` add to them."""
    data = {
        "type": "aws",
        "host": host,
        "region": REGION,
        "endpoint_url": endpoint,
        "max_attempts": 1,
        **values,
    }
    return parse_settings("aws", Section(Path("/etc/trapline/trapline.toml"), "collectors.aws", data))


def make_poller(endpoint: str, host: str, clock: list[float] | None = None) -> AwsPoller:
    """A poller for ``host``; on the virtual ``clock`` when given, else on real time."""
    # EMR windows end at the period boundary before the virtual now: the idle test
    # moves the clock to choose which datapoint each fetch returns.
    settings = poller_settings(endpoint, host, emr={"metric_delay": 0})
    if clock is None:
        return AwsPoller(settings)
    return AwsPoller(settings, clock=lambda: clock[0])


@contextmanager
def moto_credentials(folder: Path) -> Iterator[None]:
    """The test keys moto accepts, and no AWS configuration of the machine's own."""
    none = folder / "none"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_CONFIG_FILE", str(none))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(none))
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        yield


def create_poller_host(zabbix: LocalZabbix, api: Any, prefix: str) -> tuple[str, str]:
    """Import the templates and create a fresh poller host linked to the poller template: (name, id)."""
    import_templates(api, [TEMPLATES])
    host = unique_name(prefix)
    template = api.template.get(filter={"host": [POLLER_TEMPLATE]}, output=["templateid"])[0]
    groups = api.hostgroup.get(filter={"name": [TEST_HOST_GROUP]}, output=["groupid"])
    if not groups:
        groups = [{"groupid": api.hostgroup.create(name=TEST_HOST_GROUP)["groupids"][0]}]
    hostid: str = api.host.create(
        host=host,
        groups=[{"groupid": groups[0]["groupid"]}],
        templates=[{"templateid": template["templateid"]}],
    )["hostids"][0]
    zabbix.config_cache_reload()
    return host, hostid


@pytest.fixture(scope="module")
def world(
    zabbix: LocalZabbix,
    moto_endpoint: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    endpoint = moto_endpoint
    _post(endpoint, "/moto-api/reset")
    with moto_credentials(tmp_path_factory.mktemp("aws")):
        api = zabbix.api()
        host, hostid = create_poller_host(zabbix, api, "aws-e2e")
        emr, glue, serverless = (client(endpoint, s) for s in ("emr", "glue", "emr-serverless"))
        cluster_id = make_cluster(emr, "nightly-etl", step=True)
        app_id = make_app(serverless, "adhoc-spark")
        job = "load-orders"
        make_job(glue, job)
        bucket = math.floor(time.time() / EMR_PERIOD) * EMR_PERIOD
        put_idle(client(endpoint, "cloudwatch"), cluster_id, bucket)

        # Setup's virtual now: its EMR window ends 4 periods back, clear of the idle test's windows.
        clock = [bucket - 4 * EMR_PERIOD + 1.0]
        poller = make_poller(endpoint, host, clock)
        world = World(zabbix, api, endpoint, host, hostid, poller, cluster_id, app_id, clock, bucket, job)
        first = world.cycle()
        assert first.errors == []

        # Discovery creates hosts and items a moment after the LLD values arrive; the
        # trapper takes values for them only after a configuration cache reload.
        wait_until(
            lambda: (
                items(api, f"emr-{cluster_id}", "emr.step.state")
                and items(api, f"emr-serverless-{app_id}", "emr.serverless.job.run.state")
                and items(api, host, f"glue.job.run.state[{job}]")
                and api.trigger.get(
                    host=f"emr-{cluster_id}", filter={"description": ["AWS EMR: Step failed"]}
                )
                and api.trigger.get(hostids=[hostid], search={"description": "Run failed"})
            ),
            timeout=LLD_TIMEOUT,
            what="discovered hosts, items and triggers",
        )
        zabbix.config_cache_reload()
        yield world


# -- discovery ------------------------------------------------------------------------------


def test_clusters_applications_and_jobs_are_discovered(world: World) -> None:
    api = world.api
    cluster = api.host.get(
        filter={"host": [f"emr-{world.cluster_id}"]},
        output=["name"],
        selectParentTemplates=["host"],
        selectGroups=["name"],  # 6.0 name; 7.0 still accepts it
        selectTags=["tag", "value"],
    )
    assert len(cluster) == 1
    assert cluster[0]["name"] == f"EMR nightly-etl ({world.cluster_id})"
    assert [t["host"] for t in cluster[0]["parentTemplates"]] == [CLUSTER_TEMPLATE]
    assert [g["name"] for g in cluster[0]["groups"]] == ["AWS/EMR"]
    assert {"tag": "emr.cluster", "value": "nightly-etl"} in cluster[0]["tags"]

    app = api.host.get(
        filter={"host": [f"emr-serverless-{world.app_id}"]}, output=["name"], selectParentTemplates=["host"]
    )
    assert [(a["name"], [t["host"] for t in a["parentTemplates"]]) for a in app] == [
        (f"EMR Serverless adhoc-spark ({world.app_id})", [APP_TEMPLATE])
    ]

    glue_items = api.item.get(hostids=[world.hostid], search={"key_": "glue.job."}, output=["key_", "name"])
    keys = {i["key_"] for i in glue_items}
    assert {
        f"glue.job.run.state[{world.job}]",
        f"glue.job.run.error[{world.job}]",
        f"glue.job.last_success[{world.job}]",
    } <= keys
    assert all(world.job in i["name"] for i in glue_items)


# -- run health -------------------------------------------------------------------------------


def _fail_glue_run(job: str, message: str, account: str = ACCOUNT) -> None:
    from moto.glue.models import FakeJobRun, glue_backends  # noqa: PLC0415 (in-process peer)

    run = glue_backends[account][REGION].jobs[job].job_runs[-1]
    run.status = "FAILED"
    # Ended a minute ago: the next run's values must not share its second (same clock, ns 0).
    run.started_on -= dt.timedelta(seconds=120)
    run.completed_on -= dt.timedelta(seconds=60)
    # moto's job runs carry no ErrorMessage: add the one Glue sends with a failure.
    run.as_dict = lambda: {**FakeJobRun.as_dict(run), "ErrorMessage": message}


def test_failed_glue_run_is_a_problem_with_its_error_until_a_run_succeeds(world: World) -> None:
    glue = client(world.endpoint, "glue")
    failed_id = glue.start_job_run(JobName=world.job)["JobRunId"]
    message = "An error occurred while calling o103.pyWriteDynamicFrame: Access Denied (S3 403)"
    _fail_glue_run(world.job, message)
    world.cycle()

    name = wait_problem(world.api, world.hostid, f"AWS Glue: Job {world.job}: Run ")
    assert name == f"AWS Glue: Job {world.job}: Run {short_id(failed_id)} FAILED: {message}"

    glue.start_job_run(JobName=world.job)  # moto: SUCCEEDED at once
    world.cycle()
    wait_resolved(world.api, world.hostid, f"AWS Glue: Job {world.job}: Run ")
    (success,) = items(world.api, world.host, f"glue.job.last_success[{world.job}]")
    assert int(success["lastvalue"]) > 0


def test_a_failed_run_delivered_twice_opens_one_problem(world: World) -> None:
    """The same run value can arrive twice: by an event and by the reconciliation poll, or again
    from a poller that restarted and lost its memory of what it sent.  The trigger makes one
    problem per failed value (type MULTIPLE, so that every failed run is named), so the item
    must drop a value equal to the last one, or the operator gets a second page for one failure.
    """
    prefix = f"AWS Glue: Job {world.job}: Run "
    glue = client(world.endpoint, "glue")
    first_id = glue.start_job_run(JobName=world.job)["JobRunId"]
    _fail_glue_run(world.job, "first failure")
    failed = world.cycle()
    key = f"glue.job.run[{key_param(world.job)}]"
    (sent,) = [i for i in failed.items if isinstance(i, Reading) and i.key == key]
    wait_problem(world.api, world.hostid, prefix)

    deliver(world.zabbix, CycleResult([sent]))
    # A later failed run on the same item: its problem appears only after Zabbix has processed
    # the repeated value before it (values of one item are preprocessed in order).
    second_id = glue.start_job_run(JobName=world.job)["JobRunId"]
    _fail_glue_run(world.job, "second failure")
    world.cycle()
    expected = sorted(
        [
            f"{prefix}{short_id(first_id)} FAILED: first failure",
            f"{prefix}{short_id(second_id)} FAILED: second failure",
        ]
    )
    wait_until(
        lambda: len(open_problems(world.api, world.hostid, prefix)) >= 2,
        timeout=PROBLEM_TIMEOUT,
        what="the second run's problem",
    )
    assert sorted(open_problems(world.api, world.hostid, prefix)) == expected

    glue.start_job_run(JobName=world.job)  # moto: SUCCEEDED at once
    world.cycle()
    wait_resolved(world.api, world.hostid, prefix)


def test_failed_emr_step_and_serverless_job_run_are_problems_on_their_hosts(world: World) -> None:
    from moto.emrserverless.models import emrserverless_backends  # noqa: PLC0415 (in-process peer)

    step = _moto_emr_cluster(world.cluster_id).steps[0]
    step.state = "FAILED"
    step.end_date_time = dt.datetime.now(dt.UTC)
    step.last_state_change_reason = "Step failed: exit code 1"

    serverless = client(world.endpoint, "emr-serverless")
    run_id = serverless.start_job_run(
        applicationId=world.app_id,
        executionRoleArn="arn:aws:iam::123456789012:role/job",
        name="hourly",
        jobDriver={"sparkSubmit": {"entryPoint": "s3://bucket/job.py"}},
    )["jobRunId"]
    run = next(r for r in emrserverless_backends[ACCOUNT][REGION].job_runs[world.app_id] if r.id == run_id)
    run.state, run.state_details = "FAILED", "Job failed, ExitCode: 1"
    world.cycle()

    cluster_host = world.hostid_of(f"emr-{world.cluster_id}")
    name = wait_problem(world.api, cluster_host, "AWS EMR: Step ")
    assert name == f"AWS EMR: Step load ({short_id(step.id)}) FAILED: Step failed: exit code 1"
    app_host = world.hostid_of(f"emr-serverless-{world.app_id}")
    name = wait_problem(world.api, app_host, "AWS EMR Serverless: Job run ")
    assert name == f"AWS EMR Serverless: Job run hourly ({short_id(run_id)}) FAILED: Job failed, ExitCode: 1"


def _glue_runs_end(endpoint: str, job: str, outcomes: list[tuple[str, str]], ended_ago: int) -> list[str]:
    """Start one run per outcome and finish them (state, ErrorMessage) a second apart, oldest first."""
    from moto.glue.models import FakeJobRun, glue_backends  # noqa: PLC0415 (in-process peer)

    glue = client(endpoint, "glue")
    ids = [glue.start_job_run(JobName=job)["JobRunId"] for _ in outcomes]
    runs = {r.job_run_id: r for r in glue_backends[ACCOUNT][REGION].jobs[job].job_runs}
    now = dt.datetime.now(dt.UTC)
    for k, (run_id, (state, message)) in enumerate(zip(ids, outcomes, strict=True)):
        run = runs[run_id]
        run.status = state
        run.started_on = now - dt.timedelta(seconds=ended_ago + 60 - k)
        run.completed_on = now - dt.timedelta(seconds=ended_ago - k)
        extra = {"ErrorMessage": message} if message else {}
        run.as_dict = lambda run=run, extra=extra: {**FakeJobRun.as_dict(run), **extra}
    return ids


# Glue job names may hold any character but line breaks (AWS Glue API, "Single-line string pattern");
# these are the ones Zabbix item key parameters and macro contexts treat specially.
ODD_JOB = 'nightly, "orders" [eu] ü'


def test_every_failed_glue_run_is_named_in_its_own_problem_in_one_request_and_across_requests(
    world: World,
) -> None:
    api, glue = world.api, client(world.endpoint, "glue")
    make_job(glue, ODD_JOB)
    world.poller._next_discovery["glue"] = 0.0  # discover the new job now, not in an hour
    world.cycle()
    key = f"glue.job.run[{key_param(ODD_JOB)}]"
    wait_until(
        lambda: (
            items(api, world.host, key)
            and api.trigger.get(hostids=[world.hostid], search={"description": f"{ODD_JOB}: Run failed"})
        ),
        timeout=LLD_TIMEOUT,
        what="the odd job's items and trigger",
    )
    world.zabbix.config_cache_reload()
    prefix = f"AWS Glue: Job {ODD_JOB}: Run "

    def names() -> set[str]:
        return set(open_problems(api, world.hostid, prefix))

    long_error = "Py4JJavaError: " + "x" * 400
    batch = [("FAILED", 'S3 403, "AccessDenied"'), ("TIMEOUT", ""), ("FAILED", long_error)]
    ids = _glue_runs_end(world.endpoint, ODD_JOB, batch, ended_ago=120)
    result = world.cycle()  # three runs ending within seconds, in one request
    assert result.errors == []
    expected = {
        f"{prefix}{short_id(ids[0])} FAILED: S3 403, 'AccessDenied'",
        f"{prefix}{short_id(ids[1])} TIMEOUT",
        f"{prefix}{short_id(ids[2])} FAILED: {long_error[: ERROR_SHOWN - 1]}\u2026",
    }
    wait_until(
        lambda: names() == expected, timeout=PROBLEM_TIMEOUT, what=f"problems {expected}, not {names()}"
    )

    for k, message in enumerate(["first retry failed", "second retry failed"]):  # one request each
        (run_id,) = _glue_runs_end(world.endpoint, ODD_JOB, [("ERROR", message)], ended_ago=60 - k * 10)
        world.cycle()
        expected.add(f"{prefix}{short_id(run_id)} ERROR: {message}")
        wait_until(lambda: names() == expected, timeout=PROBLEM_TIMEOUT, what=f"problems {expected}")

    _glue_runs_end(world.endpoint, ODD_JOB, [("SUCCEEDED", "")], ended_ago=5)
    world.cycle()
    wait_until(lambda: not names(), timeout=PROBLEM_TIMEOUT, what="every failed run resolved by the success")


# Legal Glue names (AWS's single-line string pattern, tests/test_aws_poller.py), up to 64 characters:
# one holding each character Zabbix keys, macro contexts or JSON treat specially, plus one without
# constraint.  A single example (one discovery to wait for), whose simplest form is already the
# bare characters themselves.
SPECIAL = (",", '"', "[", "]", " ", "\t", "\\", "'", "/", "ü", "{", "}", "$", ":")
PART = st.text(GLUE_NAME_CHARS, max_size=25)
NAMES = st.tuples(
    *(st.builds(lambda a, b, c=c: a + c + b, PART, PART) for c in SPECIAL),
    st.text(GLUE_NAME_CHARS, min_size=1, max_size=64),
).filter(lambda names: len(set(names)) == len(names))


@settings(
    max_examples=1,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(names=NAMES)
def test_any_glue_name_aws_allows_gets_its_items_trigger_and_values(
    world: World, names: tuple[str, ...]
) -> None:
    api, glue = world.api, client(world.endpoint, "glue")
    for name in names:
        make_job(glue, name)
    world.poller._next_discovery["glue"] = 0.0
    world.cycle()
    keys = {name: key_param(name) for name in names}

    def discovered() -> bool:
        # The failure trigger of each job, found by the item it reads (names are shortened in titles).
        triggers = api.trigger.get(
            hostids=[world.hostid],
            search={"description": "Run failed"},
            selectItems=["key_"],
            output=["triggerid"],
        )
        watched = {item["key_"] for trigger in triggers for item in trigger["items"]}
        return all(f"glue.job.run[{key}]" in watched for key in keys.values())

    wait_until(discovered, timeout=LLD_TIMEOUT, what=f"the failure trigger of every job in {names!r}")
    world.zabbix.config_cache_reload()
    for name in names:
        glue.start_job_run(JobName=name)  # moto: SUCCEEDED at once
    assert world.cycle().errors == []

    def without_value() -> list[str]:
        waiting = []
        for name in names:
            key = f"glue.job.last_success[{keys[name]}]"
            (item,) = api.item.get(hostids=[world.hostid], filter={"key_": [key]}, output=["lastclock"])
            if item["lastclock"] == "0":
                waiting.append(name)
        return waiting

    wait_until(lambda: not without_value(), timeout=PROBLEM_TIMEOUT, what="a value on every job's items")


def test_every_failed_step_and_serverless_run_is_named_in_its_own_problem(world: World) -> None:
    from moto.emrserverless.models import emrserverless_backends  # noqa: PLC0415 (in-process peer)

    emr, serverless = client(world.endpoint, "emr"), client(world.endpoint, "emr-serverless")
    jar = {"Jar": "command-runner.jar"}
    new_steps = [{"Name": f"step {k}", "ActionOnFailure": "CONTINUE", "HadoopJarStep": jar} for k in range(3)]
    step_ids = emr.add_job_flow_steps(JobFlowId=world.cluster_id, Steps=new_steps)["StepIds"]
    steps = {s.id: s for s in _moto_emr_cluster(world.cluster_id).steps}
    now = dt.datetime.now(dt.UTC)
    # A completed step resolves the failures before it: the completed one comes first.
    outcomes = [("COMPLETED", ""), ("FAILED", "exit code 1"), ("FAILED", "exit code 2")]
    for k, (step_id, (state, reason)) in enumerate(zip(step_ids, outcomes, strict=True)):
        steps[step_id].state = state
        # Ended after the step of the previous test, as steps of one cluster do.
        steps[step_id].end_date_time = now - dt.timedelta(seconds=10 - k)
        steps[step_id].last_state_change_reason = reason
    run_ids = [
        serverless.start_job_run(
            applicationId=world.app_id,
            executionRoleArn="arn:aws:iam::123456789012:role/job",
            name=f"batch {k}",
            jobDriver={"sparkSubmit": {"entryPoint": "s3://bucket/job.py"}},
        )["jobRunId"]
        for k in range(2)
    ]
    for run in emrserverless_backends[ACCOUNT][REGION].job_runs[world.app_id]:
        if run.id in run_ids:
            run.state, run.state_details = "FAILED", f"OOM in {run.name}"
            # moto dates every run at midnight: end them now, a second apart, after the previous test's run.
            run.created_at = run.updated_at = now + dt.timedelta(seconds=run_ids.index(run.id))
    world.cycle()  # every step and run in one request

    cluster_host = world.hostid_of(f"emr-{world.cluster_id}")
    expected = {f"AWS EMR: Step step {k} ({short_id(step_ids[k])}) FAILED: exit code {k}" for k in (1, 2)}
    wait_until(
        lambda: set(open_problems(world.api, cluster_host, "AWS EMR: Step step")) == expected,
        timeout=PROBLEM_TIMEOUT,
        what=f"step problems {expected}",
    )
    app_host = world.hostid_of(f"emr-serverless-{world.app_id}")
    prefix = "AWS EMR Serverless: Job run batch"
    expected = {f"{prefix} {k} ({short_id(run_ids[k])}) FAILED: OOM in batch {k}" for k in (0, 1)}
    wait_until(
        lambda: set(open_problems(world.api, app_host, prefix)) == expected,
        timeout=PROBLEM_TIMEOUT,
        what=f"serverless problems {expected}",
    )


def test_cluster_that_starts_and_fails_between_two_discoveries_raises_its_problem(world: World) -> None:
    emr = client(world.endpoint, "emr")
    cluster_id = make_cluster(emr, "fails-in-bootstrap")
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    cluster = _moto_emr_cluster(cluster_id)
    cluster.state = "TERMINATED_WITH_ERRORS"
    cluster.last_state_change_reason = "Bootstrap action 1 returned a non-zero return code"
    world.poller._next_discovery["emr"] = 0.0  # the next discovery, never having seen it active
    result = world.cycle()
    host = f"emr-{cluster_id}"
    wait_until(
        lambda: (
            items(world.api, host, "emr.cluster.state")
            and world.api.trigger.get(
                host=host, filter={"description": ["AWS EMR: Cluster terminated with errors"]}
            )
        ),
        timeout=LLD_TIMEOUT,
        what="the failed cluster's host",
    )
    world.zabbix.config_cache_reload()
    deliver(world.zabbix, result)  # what the spool does with values refused before the host existed
    name = wait_problem(world.api, world.hostid_of(host), "AWS EMR: Cluster terminated with errors")
    assert name.endswith("Bootstrap action 1 returned a non-zero return code")


# -- CloudWatch --------------------------------------------------------------------------------


def test_idle_cluster_raises_the_idle_trigger(world: World) -> None:
    cluster_host = world.hostid_of(f"emr-{world.cluster_id}")
    # Zabbix 6.0 refuses macros on discovered hosts: shorten the template's default instead.
    api = world.api
    template = api.template.get(filter={"host": [CLUSTER_TEMPLATE]}, output=["templateid"])[0]["templateid"]
    (macro,) = api.usermacro.get(hostids=[template], filter={"macro": "{$AWS.EMR.IDLE.TIME.MAX}"})
    api.usermacro.update(hostmacroid=macro["hostmacroid"], value="10m")
    try:
        world.zabbix.config_cache_reload()
        start = "AWS EMR: Cluster has been idle"
        assert not [n for n in open_problems(api, cluster_host) if n.startswith(start)]

        # Two fetches: the first reaches the datapoint 15 minutes before the newest period,
        # the second the newest one, with every period between that was not sent yet.  Idle
        # in the last 10 minutes AND before them: the trigger fires; a single idle datapoint
        # (a new cluster) would not be enough.
        for virtual_now in (world.bucket - 2 * EMR_PERIOD + 1.0, world.bucket + EMR_PERIOD + 1.0):
            world.clock[0] = virtual_now
            world.cycle()
        idle = items(api, f"emr-{world.cluster_id}", "emr.cluster.idle")
        wanted = {world.bucket - 3 * EMR_PERIOD, world.bucket}

        def both_values() -> list[dict[str, str]]:  # the history syncer may write them in different passes
            rows: list[dict[str, str]] = api.history.get(itemids=[idle[0]["itemid"]], history=0)
            return rows if wanted <= {int(r["clock"]) for r in rows} else []

        rows = wait_until(both_values, what="both IsIdle values in history")
        clocks = sorted(int(r["clock"]) for r in rows)
        assert len(clocks) == len(set(clocks)), f"a datapoint went twice: {clocks}"
        gaps = [b - a for a, b in itertools.pairwise(clocks)]
        assert set(gaps) <= {EMR_PERIOD}, f"a period is missing: {clocks}"
        name = wait_problem(api, cluster_host, start)
        assert name == "AWS EMR: Cluster has been idle for more than 10m"
    finally:
        api.usermacro.update(hostmacroid=macro["hostmacroid"], value=macro["value"])
