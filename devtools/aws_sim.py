"""``python3 -m devtools.aws_sim``: the demo's AWS account, a moto server in this process.

It holds the Glue jobs and the EMR cluster of ``[aws]`` in
``devtools/demo_data/scenario.toml``; each job has one successful run to start with.
In-process because what the demo shows cannot be asked of moto's API: a Glue run
that FAILED with an error text.  The demo steers it through stdin, one command a line:

* ``glue-fail <job>``: a run of the job that failed with the scenario's error text;
* ``glue-run <job>``: a run that succeeds.

When the server listens and the account is filled, its port is written to the
``--ready`` file (written whole, then renamed).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3

from devtools.simulation import announce_port, ready_file, scenario_data

ACCOUNT = "123456789012"  # moto's default account
FAILED_RUN_SECONDS = 95  # how long the failing run "ran" before its error


@dataclass(frozen=True, slots=True)
class Account:
    region: str
    glue_jobs: tuple[str, ...]
    emr_cluster: str
    failure: str


def load_account(raw: Mapping[str, Any]) -> Account:
    """The ``[aws]`` table of the scenario."""
    return Account(raw["region"], tuple(raw["glue_jobs"]), raw["emr_cluster"], raw["failure"])


def scenario_account() -> Account:
    return load_account(scenario_data()["aws"])


# What moto wants to see, and never the caller's own AWS configuration.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/nonexistent",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def fill(endpoint: str, account: Account) -> str:
    """Create the jobs (one good run each) and the cluster; returns the cluster id."""
    glue = boto3.client("glue", region_name=account.region, endpoint_url=endpoint)
    for job in account.glue_jobs:
        glue.create_job(Name=job, Role=f"arn:aws:iam::{ACCOUNT}:role/glue", Command={"Name": "glueetl"})
        glue.start_job_run(JobName=job)  # moto: SUCCEEDED when first read
    emr = boto3.client("emr", region_name=account.region, endpoint_url=endpoint)
    cluster = emr.run_job_flow(
        Name=account.emr_cluster,
        ReleaseLabel="emr-7.1.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 3,
                   "KeepJobFlowAliveWhenNoSteps": True},
        Steps=[{"Name": "compact", "ActionOnFailure": "CONTINUE",
                "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["spark-submit", "compact.py"]}}],
    )
    return str(cluster["JobFlowId"])


def run_job(endpoint: str, account: Account, job: str, error: str | None) -> str:
    """Start a run of ``job``; with ``error`` it ends FAILED with that text.  Returns the run id."""
    from moto.glue.models import FakeJobRun, glue_backends  # noqa: PLC0415 (moto's own state)

    glue = boto3.client("glue", region_name=account.region, endpoint_url=endpoint)
    run_id = str(glue.start_job_run(JobName=job)["JobRunId"])
    if error is not None:
        run = next(r for r in glue_backends[ACCOUNT][account.region].jobs[job].job_runs
                   if r.job_run_id == run_id)
        run.status = "FAILED"
        run.started_on = run.completed_on - dt.timedelta(seconds=FAILED_RUN_SECONDS)
        # moto's runs have no ErrorMessage: add the field Glue sends with a failure.
        run.as_dict = lambda: {**FakeJobRun.as_dict(run), "ErrorMessage": error}  # type: ignore[method-assign]
    return run_id


def command(endpoint: str, account: Account, line: str) -> str:
    """Apply one stdin command; returns what it did."""
    words = line.split()
    if len(words) != 2 or words[0] not in ("glue-fail", "glue-run") or words[1] not in account.glue_jobs:
        raise ValueError(f"expected 'glue-fail|glue-run <job>', a job of the scenario; got {line.strip()!r}")
    failing = words[0] == "glue-fail"
    run_id = run_job(endpoint, account, words[1], account.failure if failing else None)
    return f"Glue job {words[1]}: run {run_id} {'FAILED' if failing else 'SUCCEEDED'}"


def main(argv: Sequence[str] | None = None) -> int:
    ready = ready_file(argv, "devtools.aws_sim", __doc__, "once the account is filled")
    os.environ.update(FAKE_CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 (a slow import, only for this command)

    account = scenario_account()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        cluster = fill(endpoint, account)
        print(f"aws_sim: moto on {endpoint}: Glue jobs {', '.join(account.glue_jobs)}, "
              f"EMR cluster {account.emr_cluster} ({cluster})", flush=True)
        announce_port(ready, port)
        for line in sys.stdin:  # the demo closing stdin ends the simulator
            try:
                print(f"aws_sim: {command(endpoint, account, line)}", flush=True)
            except ValueError as exc:
                print(f"aws_sim: {exc}", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
