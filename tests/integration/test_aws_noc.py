"""NOC scenarios for the AWS templates on real Zabbix 6.0 and 7.0, fed by the real poller from moto.

Each scenario asserts the exact set of problems (name, severity) it must raise on the hosts it
touches, or that nothing of Warning or above opens: a normal day, the opt-in "no successful run"
check, the state decisions of the template README ("Run and step states"), and failed polls that
must page once, only after ``{$AWS.POLLER.ERROR.CYCLES}`` of them in a row.  Time macros are never
shortened here: every scenario runs with the template's defaults, except the macro it is about.

The tests of this module build on each other's world in file order (the normal day first, while
nothing is open yet); each one creates or changes only the resources it asserts on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.integration import test_aws_moto as aws
from tests.integration.test_aws_moto import moto_endpoint  # noqa: F401 (fixture)
from tests.integration.test_aws_zabbix import (
    APP_TEMPLATE,
    CLUSTER_TEMPLATE,
    LLD_TIMEOUT,
    POLLER_TEMPLATE,
    Account,
    _glue_runs_end,
    create_poller_host,
    deliver,
    items,
    make_poller,
    moto_credentials,
)
from tests.support.zabbix_fixtures import assert_quiet_for, open_problems, wait_for_problems, wait_until
from trapline.collectors.aws.resources import short_id

pytestmark = pytest.mark.integration

WEEKLY_AGO = 3 * 86400  # the weekly job's last success: older than any daily schedule
QUIET = 45.0  # seconds of silence: longer than one timer pass (30 s) for the time-based triggers


@dataclass
class Day(Account):
    @property
    def cluster_hostid(self) -> str:
        return self.hostid_of(f"emr-{self.cluster_id}")

    @property
    def app_hostid(self) -> str:
        return self.hostid_of(f"emr-serverless-{self.app_id}")

    def last(self, host: str, key: str) -> str | None:
        """The item's last value as the API shows it, None before its first value."""
        found = self.api.item.get(host=host, filter={"key_": [key]}, output=["lastvalue", "lastclock"])
        assert found, f"no item {key} on {host}"
        return None if found[0]["lastclock"] == "0" else str(found[0]["lastvalue"])

    def wait_stored(self, host: str, key: str) -> None:
        """Wait for a value in the history of an integer item, however old its clock.

        The API's last value only looks one day back, and the weekly job's success is older.
        """
        (item,) = items(self.api, host, key)
        wait_until(
            lambda: self.api.history.get(itemids=[item["itemid"]], history=3, limit=1),
            timeout=30,
            what=f"a value of {key} on {host}",
        )

    def wait_last(self, host: str, key: str, value: str) -> None:
        wait_until(lambda: self.last(host, key) == value, timeout=30, what=f"{key} = {value} on {host}")

    def code(self, template: str, valuemap: str, state: str) -> str:
        """The number the template's value map gives ``state`` (read from Zabbix, not from the file)."""
        (found,) = self.api.valuemap.get(
            hostids=[template_id(self.api, template)],
            filter={"name": [valuemap]},
            selectMappings=["value", "newvalue"],
        )
        (number,) = [m["value"] for m in found["mappings"] if m["newvalue"] == state]
        return str(number)


def template_id(api: Any, name: str) -> str:
    (template,) = api.template.get(filter={"host": [name]}, output=["templateid"])
    return str(template["templateid"])


def _discovered(api: Any, host: str, cluster_id: str, app_id: str, jobs: list[str]) -> bool:
    return bool(
        items(api, f"emr-{cluster_id}", "emr.step.state")
        and items(api, f"emr-serverless-{app_id}", "emr.serverless.job.run.state")
        and all(items(api, host, f"glue.job.last_success[{job}]") for job in jobs)
        and len(api.trigger.get(host=host, search={"description": "No successful run"})) == len(jobs)
    )


@pytest.fixture(scope="module")
def day(
    zabbix: LocalZabbix,
    moto_endpoint: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Day]:
    """An account on a normal day: an on-demand job never run, a weekly job that last succeeded three
    days ago, a daily job that succeeded an hour ago, a cluster whose step completed, and a Serverless
    application whose run succeeded."""
    aws._post(moto_endpoint, "/moto-api/reset")
    with moto_credentials(tmp_path_factory.mktemp("aws-noc")):
        api = zabbix.api()
        host, hostid = create_poller_host(zabbix, api, "aws-noc")
        emr, glue, serverless = (aws.client(moto_endpoint, s) for s in ("emr", "glue", "emr-serverless"))
        jobs = ["on-demand", "weekly", "daily"]
        for job in jobs:
            aws.make_job(glue, job)
        _glue_runs_end(moto_endpoint, "weekly", [("SUCCEEDED", "")], ended_ago=WEEKLY_AGO)
        _glue_runs_end(moto_endpoint, "daily", [("SUCCEEDED", "")], ended_ago=3600)
        cluster_id = aws.make_cluster(emr, "steady", step=True)
        step = aws._moto_emr_cluster(cluster_id).steps[0]
        step.state, step.end_date_time = "COMPLETED", dt.datetime.now(dt.UTC) - dt.timedelta(seconds=600)
        app_id = aws.make_app(serverless, "adhoc", {"team": "spark"})
        serverless.start_job_run(  # moto: SUCCESS at once
            applicationId=app_id,
            executionRoleArn="arn:aws:iam::123456789012:role/job",
            name="hourly",
            jobDriver={"sparkSubmit": {"entryPoint": "s3://bucket/job.py"}},
        )
        poller = make_poller(moto_endpoint, host)
        world = Day(zabbix, api, moto_endpoint, host, hostid, poller, cluster_id, app_id)
        first = world.cycle()
        assert first.errors == []
        wait_until(
            lambda: _discovered(api, host, cluster_id, app_id, jobs),
            timeout=LLD_TIMEOUT,
            what="discovered hosts, items and triggers",
        )
        world.reload_with_dependents()
        # The first cycle's values reached Zabbix before their items existed: send them again,
        # as the agent's spool does with refused values.
        deliver(zabbix, first)
        yield world


def _tags(api: Any, hostid: str, problems: set[tuple[str, str]]) -> dict[str, str]:
    """The tags of the one open problem in ``problems`` (name, severity) on the host."""
    ((name, _),) = problems
    rows = api.problem.get(hostids=[hostid], output=["name"], selectTags=["tag", "value"])
    (row,) = [r for r in rows if r["name"] == name]
    return {tag["tag"]: tag["value"] for tag in row["tags"]}


def _poller_problems(day: Day) -> set[tuple[str, str]]:
    return {p for p in open_problems(day.api, [day.hostid]) if p[0].startswith("AWS poller:")}


def test_a_normal_day_with_one_failed_poll_raises_nothing(day: Day) -> None:
    # Everything arrived (otherwise silence would prove nothing), states as their value map's numbers.
    day.wait_stored(day.host, "glue.job.last_success[weekly]")
    day.wait_stored(day.host, "glue.job.last_success[daily]")
    assert day.last(day.host, "glue.job.run.state[on-demand]") is None  # never ran
    cluster, app = f"emr-{day.cluster_id}", f"emr-serverless-{day.app_id}"
    waiting = day.code(CLUSTER_TEMPLATE, "AWS EMR cluster state", "WAITING")
    day.wait_last(cluster, "emr.cluster.state", waiting)
    completed = day.code(CLUSTER_TEMPLATE, "AWS EMR step state", "COMPLETED")
    day.wait_last(cluster, "emr.step.state", completed)
    success = day.code(APP_TEMPLATE, "AWS EMR Serverless job run state", "SUCCESS")
    day.wait_last(app, "emr.serverless.job.run.state", success)

    # One poll fails (moto starts checking the keys and refuses the test ones), the next one is clean.
    aws._post(day.endpoint, "/moto-api/reset-auth", b"0")
    try:
        failed = day.cycle()
    finally:
        aws._post(day.endpoint, "/moto-api/reset-auth", b"inf")
    assert failed.errors
    day.wait_last(day.host, "aws.poller.error.streak", "1")
    assert day.cycle().errors == []
    day.wait_last(day.host, "aws.poller.error.streak", "0")

    assert_quiet_for(day.api, [day.hostid, day.cluster_hostid, day.app_hostid], QUIET)


def test_no_successful_run_pages_only_for_a_job_it_is_turned_on_for(day: Day) -> None:
    api = day.api
    macro = '{$AWS.GLUE.JOB.SUCCESS.AGE.MAX:"weekly"}'
    (hostmacroid,) = api.usermacro.create(hostid=day.hostid, macro=macro, value="26h")["hostmacroids"]
    try:
        day.zabbix.config_cache_reload()
        expected = {("AWS Glue: Job weekly: No successful run for more than 26h", "warning")}
        wait_for_problems(api, [day.hostid], expected)  # the daily job's success is recent: quiet

        api.usermacro.update(hostmacroid=hostmacroid, value="8d")  # what a weekly job needs
        day.zabbix.config_cache_reload()
        wait_for_problems(api, [day.hostid], set())
    finally:
        api.usermacro.delete(hostmacroid)
        day.zabbix.config_cache_reload()


def test_each_state_decision_raises_or_stays_quiet_as_the_readme_says(day: Day) -> None:
    from moto.emrserverless.models import emrserverless_backends  # noqa: PLC0415 (in-process peer)

    api, endpoint = day.api, day.endpoint
    job = "decisions"
    aws.make_job(aws.client(endpoint, "glue"), job, {"Team": "data", "owner": "ann"})
    day.poller._next_discovery["glue"] = 0.0  # discover the new job now, not in ten minutes
    day.cycle()
    wait_until(
        lambda: (
            items(api, day.host, f"glue.job.run.state[{job}]")
            and api.trigger.get(hostids=[day.hostid], search={"description": f"{job}: Run failed"})
        ),
        timeout=LLD_TIMEOUT,
        what="the new job's items and trigger",
    )
    day.reload_with_dependents()

    # Glue: EXPIRED is a failure (the run never ran); STOPPED, a stop on purpose, is not.
    expired = "Job run expired while waiting for capacity"
    ids = _glue_runs_end(endpoint, job, [("EXPIRED", expired), ("STOPPED", "")], ended_ago=60)
    # EMR: the steps a failure cancelled and a step its ending cluster interrupted raise nothing.
    emr = aws.client(endpoint, "emr")
    jar = {"Jar": "command-runner.jar"}
    new_steps = [
        {"Name": f"after {k}", "ActionOnFailure": "CONTINUE", "HadoopJarStep": jar} for k in range(2)
    ]
    step_ids = emr.add_job_flow_steps(JobFlowId=day.cluster_id, Steps=new_steps)["StepIds"]
    steps = {s.id: s for s in aws._moto_emr_cluster(day.cluster_id).steps}
    now = dt.datetime.now(dt.UTC)
    for k, (step_id, state) in enumerate(zip(step_ids, ["CANCELLED", "INTERRUPTED"], strict=True)):
        steps[step_id].state = state
        steps[step_id].end_date_time = now - dt.timedelta(seconds=10 - k)
    # Serverless: CANCELLED is a failure, since a run that outlives its execution timeout is cancelled.
    run_id = aws.client(endpoint, "emr-serverless").start_job_run(
        applicationId=day.app_id,
        executionRoleArn="arn:aws:iam::123456789012:role/job",
        name="nightly",
        jobDriver={"sparkSubmit": {"entryPoint": "s3://bucket/job.py"}},
    )["jobRunId"]
    runs = emrserverless_backends[aws.ACCOUNT][aws.REGION].job_runs[day.app_id]
    (run,) = [r for r in runs if r.id == run_id]
    run.state, run.state_details = "CANCELLED", "Job run timed out"
    run.created_at = run.updated_at = now  # moto dates runs at midnight: after the setup's run
    assert day.cycle().errors == []

    glue_expected = {(f"AWS Glue: Job {job}: Run {short_id(ids[0])} EXPIRED: {expired}", "average")}
    wait_for_problems(api, [day.hostid], glue_expected)
    stopped = day.code(POLLER_TEMPLATE, "AWS Glue job run state", "STOPPED")
    day.wait_last(day.host, f"glue.job.run.state[{job}]", stopped)
    cancelled = f"AWS EMR Serverless: Job run nightly ({short_id(run_id)}) CANCELLED: Job run timed out"
    app_expected = {(cancelled, "average")}
    wait_for_problems(api, [day.app_hostid], app_expected)
    # Both problems carry the team and owner of their AWS resource, for routing and maintenance.
    glue_tags, app_tags = _tags(api, day.hostid, glue_expected), _tags(api, day.app_hostid, app_expected)
    assert (glue_tags["team"], glue_tags["owner"]) == ("data", "ann")
    assert (app_tags["team"], app_tags["owner"]) == ("spark", "")
    interrupted = day.code(CLUSTER_TEMPLATE, "AWS EMR step state", "INTERRUPTED")
    day.wait_last(f"emr-{day.cluster_id}", "emr.step.state", interrupted)
    # The step values were evaluated with the state value just seen: a short look for late problems.
    assert_quiet_for(api, [day.cluster_hostid], 5.0, min_severity=0)


def test_refused_polls_page_once_after_enough_in_a_row_and_resolve(
    day: Day, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = day.api
    cycles_macro = {"macro": "{$AWS.POLLER.ERROR.CYCLES}"}
    (macro,) = api.usermacro.get(hostids=[template_id(api, POLLER_TEMPLATE)], filter=cycles_macro)
    cycles = int(macro["value"])
    assert cycles >= 2  # else there is no "in a row" to show

    iam = aws.client(day.endpoint, "iam")
    iam.create_user(UserName="no-rights")
    key = iam.create_access_key(UserName="no-rights")["AccessKey"]
    aws._post(day.endpoint, "/moto-api/reset-auth", b"0")  # moto checks IAM from now on
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        denied = make_poller(day.endpoint, day.host)
        for streak in range(1, cycles + 1):
            result = day.cycle(denied)
            assert any("access denied" in e for e in result.errors)
            day.wait_last(day.host, "aws.poller.error.streak", str(streak))
            if streak < cycles:
                assert _poller_problems(day) == set()
    finally:
        aws._post(day.endpoint, "/moto-api/reset-auth", b"inf")
        monkeypatch.undo()

    refused = {("AWS poller: Access to AWS refused", "high")}
    wait_until(lambda: _poller_problems(day) == refused, timeout=30, what=f"only {refused}")
    error = day.last(day.host, "aws.poller.error") or ""
    assert "access denied" in error and key["SecretAccessKey"] not in error

    assert day.cycle().errors == []  # the scenario's own poller, with the keys moto accepts
    wait_until(lambda: _poller_problems(day) == set(), timeout=30, what="the refusal to resolve")
    (trigger,) = api.trigger.get(
        hostids=[day.hostid], filter={"description": "AWS poller: Access to AWS refused"}
    )
    events = api.event.get(objectids=[trigger["triggerid"]], source=0, object=0, value=1, output=["eventid"])
    assert len(events) == 1  # opened once, no flapping on the way
