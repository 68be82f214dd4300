"""End to end, list form: two accounts via AssumeRole on moto -> the real AWS poller -> real Zabbix 6.0
and 7.0 with the shipped templates.

Both accounts hold a Glue job and an EMR cluster of the same name. They must become two item sets
and two hosts on Zabbix, and a failed run in one account must be a problem of that account's job
only, named after it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.localzabbix import LocalZabbix
from tests.integration.test_aws_moto import (
    ACCOUNTS,
    REGION,
    _as_account,
    _post,
    accounts_poller,
    make_accounts,
    moto_endpoint,  # noqa: F401 (fixture)
)
from tests.integration.test_aws_zabbix import (
    Account,
    _fail_glue_run,
    create_poller_host,
    items,
    moto_credentials,
    wait_problem,
)
from tests.support.zabbix_fixtures import wait_for_problems, wait_until

pytestmark = pytest.mark.integration

LLD_TIMEOUT = 60.0  # LLD workers and template linking on a busy 2-core machine
PROBLEM_TIMEOUT = 30.0
PROD, TEST = "prod/eu-west-1", f"{ACCOUNTS['test']}/eu-west-1"  # the test account has no label


def test_one_job_and_cluster_name_in_two_accounts_are_two_items_and_hosts_and_the_failure_stays_on_its_own(
    zabbix: LocalZabbix,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _post(moto_endpoint, "/moto-api/reset")
    with moto_credentials(tmp_path), pytest.MonkeyPatch.context() as env:
        api = zabbix.api()
        host, hostid = create_poller_host(zabbix, api, "aws-accounts")
        make_accounts(moto_endpoint, clusters=True)
        poller = accounts_poller(
            moto_endpoint, env, host=host, emr_serverless={"enabled": False}, emr={"metrics": False}
        )
        world = Account(zabbix, api, moto_endpoint, host, hostid, poller, "", "")
        first = world.cycle()
        assert first.errors == []

        cluster_hosts = sorted(f"emr-{p}-{REGION}-" for p in ("prod", ACCOUNTS["test"]))
        wait_until(
            lambda: (
                items(api, host, f"glue.job.run.state[{PROD}/load-orders]")
                and items(api, host, f"glue.job.run.state[{TEST}/load-orders]")
                and items(api, host, "aws.account.denied[prod]")
                and len(api.trigger.get(hostids=[hostid], search={"description": "Run failed"})) == 4
                and len(api.host.get(search={"host": cluster_hosts}, searchByAny=True, output=["host"])) == 2
            ),
            timeout=LLD_TIMEOUT,
            what="the two accounts' items, triggers and cluster hosts",
        )
        world.reload_with_dependents()

        # Two hosts of one cluster name, each named after its account and region.
        clusters = api.host.get(search={"host": cluster_hosts}, searchByAny=True, output=["host", "name"])
        by_prefix = {prefix: c for c in clusters for prefix in cluster_hosts if c["host"].startswith(prefix)}
        assert sorted(by_prefix) == cluster_hosts
        for prefix, cluster in by_prefix.items():
            cluster_id = cluster["host"][len(prefix):]
            assert cluster_id.startswith("j-") and cluster["name"] == f"EMR nightly-etl ({cluster_id})"

        # Both accounts run the job; prod's run fails.
        for account in ACCOUNTS.values():
            _as_account(moto_endpoint, account, "glue").start_job_run(JobName="load-orders")
        message = "Job aborted: stage 3 failed 4 times"
        _fail_glue_run("load-orders", message, ACCOUNTS["prod"])
        result = world.cycle()
        assert result.errors == []

        name = wait_problem(api, hostid, "AWS Glue: Job ")
        assert name.startswith(f"AWS Glue: Job {PROD}: load-orders: Run jr_")
        assert name.endswith(f"FAILED: {message}")
        # The same job in the test account succeeded: its own items say so, and it raises nothing.
        for key, state in ((f"{PROD}/load-orders", "FAILED"), (f"{TEST}/load-orders", "SUCCEEDED")):
            (run,) = items(api, host, f"glue.job.run[{key}]")
            assert json.loads(run["lastvalue"])["state"] == state
        (success,) = items(api, host, f"glue.job.last_success[{TEST}/load-orders]")
        assert int(success["lastvalue"]) > 0
        (account_error,) = items(api, host, "aws.account.error[prod]")
        assert account_error["lastvalue"] == "ok"
        hostids = [hostid, *(world.hostid_of(c["host"]) for c in clusters)]
        wait_for_problems(api, hostids, {(name, "average")}, timeout=PROBLEM_TIMEOUT)
