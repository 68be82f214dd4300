"""Glue jobs that did not start, on real Zabbix 6.0 and 7.0: moto's triggers -> the real poller ->
the template's "Did not start" trigger, end to end.

moto keeps Glue triggers in the shapes of the Glue API reference (CreateTrigger, StopTrigger,
GetTriggers) and never fires a schedule: a scheduled job in moto is the job that did not start.
The poller runs on a virtual clock only so that it first sees the triggers ten minutes back and the
schedule's time lies between that and now; runs, values and Zabbix's now() are real time.

One scenario: a scheduled job whose time passed without a run, and a conditional job whose
predecessor SUCCEEDED without it starting, open one problem each, named with the trigger and why;
beside them a normal day stays quiet (a scheduled job that ran on time, a deactivated schedule of
the same time, an on-demand job); the two jobs run and both problems resolve.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.integration.test_aws_moto import (
    REGION,
    _moto_emr_cluster,
    client,
    make_cluster,
    make_job,
    moto_endpoint,  # noqa: F401 (fixture)
)
from tests.integration.test_aws_zabbix import (
    LLD_TIMEOUT,
    Account,
    create_poller_host,
    items,
    moto_credentials,
)
from tests.support.zabbix_fixtures import unique_name, wait_for_problems, wait_until
from tests.test_aws_poller import section
from trapline.collectors.aws.poller import AwsPoller
from trapline.collectors.aws.settings import parse_settings

pytestmark = pytest.mark.integration

GRACE = 20  # seconds, the host's {$AWS.GLUE.MISSED.GRACE}: the conditional job is due "now"


@pytest.fixture
def credentials(tmp_path: Path) -> Iterator[None]:
    with moto_credentials(tmp_path):
        yield


@pytest.mark.usefixtures("credentials")
def test_jobs_that_did_not_start_page_with_why_and_resolve_when_they_run(
    zabbix: LocalZabbix,
    moto_endpoint: str,  # noqa: F811
) -> None:
    api = zabbix.api()
    host, hostid = create_poller_host(zabbix, api, "aws-missed")
    api.usermacro.create(hostid=hostid, macro="{$AWS.GLUE.MISSED.GRACE}", value=f"{GRACE}s")
    prefix = unique_name("m")  # moto's backends are shared by the process: only this test's jobs
    nightly, ontime, paused, adhoc = (f"{prefix}-{n}" for n in ("nightly", "ontime", "paused", "adhoc"))
    extract, chained = f"{prefix}-extract", f"{prefix}-chained"
    glue = client(moto_endpoint, "glue")
    for job in (nightly, ontime, paused, adhoc, extract, chained):
        make_job(glue, job)

    # One scheduled time, five minutes ago, written as AWS cron (UTC): one trigger per job.
    tick = dt.datetime.fromtimestamp((time.time() - 300) // 60 * 60, dt.UTC)
    schedule = f"cron({tick.minute} {tick.hour} {tick.day} {tick.month} ? {tick.year})"
    for job in (nightly, ontime, paused):
        glue.create_trigger(
            Name=f"at-{job}",
            Type="SCHEDULED",
            Schedule=schedule,
            Actions=[{"JobName": job}],
            StartOnCreation=True,
        )
    glue.stop_trigger(Name=f"at-{paused}")  # DEACTIVATED: its time passes without paging
    glue.create_trigger(Name=f"by-hand-{adhoc}", Type="ON_DEMAND", Actions=[{"JobName": adhoc}])
    after = {"LogicalOperator": "EQUALS", "JobName": extract, "State": "SUCCEEDED"}
    glue.create_trigger(
        Name=f"after-{extract}",
        Type="CONDITIONAL",
        Predicate={"Logical": "AND", "Conditions": [after]},
        Actions=[{"JobName": chained}],
        StartOnCreation=True,
    )

    off = {"enabled": False}
    only_ours = {"name_regex": f"^{prefix}-"}
    endpoint = {"endpoint_url": moto_endpoint, "max_attempts": 1}
    settings = parse_settings(
        "aws", section(host=host, region=REGION, emr=off, emr_serverless=off, glue=only_ours, **endpoint)
    )
    clock = [time.time() - 600]  # the poller first sees the triggers before the scheduled time
    poller = AwsPoller(settings, clock=lambda: clock[0])
    account = Account(zabbix, api, moto_endpoint, host, hostid, poller, "", "")
    assert account.cycle().errors == []
    wait_until(
        lambda: (
            items(api, host, f"glue.job.expected.why[{chained}]")
            and len(api.trigger.get(hostids=[hostid], search={"description": "Did not start"})) == 6
        ),
        timeout=LLD_TIMEOUT,
        what="discovered jobs' missed-start items and triggers",
    )
    account.reload_with_dependents()

    # The day: one scheduled job ran on time, the predecessor of the conditional job succeeded.
    glue.start_job_run(JobName=ontime)  # moto: SUCCEEDED at once
    extract_run = glue.start_job_run(JobName=extract)["JobRunId"]
    ended = glue.get_job_run(JobName=extract, RunId=extract_run)["JobRun"]["CompletedOn"]
    clock[0] = time.time()
    assert account.cycle().errors == []
    at = tick.strftime("%Y-%m-%d %H:%M UTC")
    wait_for_problems(
        api,
        [hostid],
        {
            (f"AWS Glue: Job {nightly} did not start: trigger at-{nightly}: {schedule} at {at}", "average"),
            (
                f"AWS Glue: Job {chained} did not start: trigger after-{extract}: "
                f"{extract} SUCCEEDED at {ended.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC",
                "average",
            ),
        },
        timeout=GRACE + 70,  # the grace, then the timer's pass (30 s) for now()
    )
    (due,) = items(api, host, f"glue.job.expected.due[{nightly}]")
    assert int(due["lastvalue"]) == int(tick.timestamp())

    # Both jobs run: both problems resolve.
    glue.start_job_run(JobName=nightly)
    glue.start_job_run(JobName=chained)
    clock[0] = time.time()
    assert account.cycle().errors == []
    wait_for_problems(api, [hostid], set(), timeout=30)


def _steps(cluster_id: str) -> list[Any]:
    steps: list[Any] = _moto_emr_cluster(cluster_id).steps
    return steps


@pytest.mark.usefixtures("credentials")
def test_a_step_pending_on_an_idle_cluster_pages_and_one_queued_behind_a_running_step_does_not(
    zabbix: LocalZabbix,
    moto_endpoint: str,  # noqa: F811
) -> None:
    """moto keeps steps as EMR's ListSteps shows them (StepSummary: Status.State, Timeline) and never
    moves one on: in its backend a waiting step is made two hours old, and then started."""
    api = zabbix.api()
    host, hostid = create_poller_host(zabbix, api, "aws-pending")
    prefix = unique_name("p")
    emr = client(moto_endpoint, "emr")
    stuck, busy = (
        make_cluster(emr, f"{prefix}-stuck", step=True),
        make_cluster(emr, f"{prefix}-busy", step=True),
    )
    waiting = {
        "Name": "report",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {"Jar": "command-runner.jar"},
    }
    for cluster_id in (stuck, busy):
        emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[waiting])  # PENDING behind the first
        _steps(cluster_id)[1].creation_date_time -= dt.timedelta(hours=2)
    off = {"enabled": False}
    only_ours = {"name_regex": f"^{prefix}-", "metrics": False}
    endpoint = {"endpoint_url": moto_endpoint, "max_attempts": 1}
    settings = parse_settings(
        "aws", section(host=host, region=REGION, emr=only_ours, emr_serverless=off, glue=off, **endpoint)
    )
    account = Account(zabbix, api, moto_endpoint, host, hostid, AwsPoller(settings), "", "")
    assert account.cycle().errors == []
    hosts = {cluster_id: f"emr-{cluster_id}" for cluster_id in (stuck, busy)}
    wait_until(
        lambda: (
            all(items(api, h, "emr.step.pending.step") for h in hosts.values())
            and len(api.trigger.get(search={"description": "Step pending"}, host=hosts[busy])) == 1
        ),
        timeout=LLD_TIMEOUT,
        what="discovered clusters' pending-step items and triggers",
    )
    account.reload_with_dependents()
    # The cluster hosts refused the first cycle's values (they did not exist yet): a new poller
    # sends every value again, as a restarted one would.
    account.poller = AwsPoller(settings)

    # As EMR would say it: the stuck cluster's first step is done and it waits (WAITING) with
    # "report" still PENDING; the busy one is RUNNING its first step.  (moto moves nothing on.)
    _steps(stuck)[0].state = "COMPLETED"
    _moto_emr_cluster(stuck).state = "WAITING"
    _moto_emr_cluster(busy).state = "RUNNING"
    assert account.cycle().errors == []
    stuck_id, busy_id = account.hostid_of(hosts[stuck]), account.hostid_of(hosts[busy])
    pending = _steps(stuck)[1]
    wait_for_problems(
        api,
        [hostid, stuck_id, busy_id],
        {(f"AWS EMR: Step report ({pending.id}) did not start: pending for more than 1h", "average")},
        timeout=70,  # the timer's pass (30 s) for now()
    )

    pending.state = "RUNNING"
    assert account.cycle().errors == []
    wait_for_problems(api, [hostid, stuck_id, busy_id], set(), timeout=30)
