"""CloudWatch cost per poll: trapline's GetMetricData batches vs one GetMetricStatistics per series.

A moto server (in-process, on loopback) gets ``ceil(series / 11)`` EMR clusters and,
for every catalog metric of every cluster, ``--datapoints`` datapoints (one per
period of the window the poller asks for).  Then, interleaved, ``--polls`` times each:

* trapline: ``fetch_datapoints`` of the AWS collector (``collectors/aws/cloudwatch.py``)
  over the first ``--series`` series that ``series_for`` builds from the clusters the
  poller discovered, through the collector's own boto3 client;
* naive: one GetMetricStatistics call per series, written here.

API calls are counted by a botocore event hook on each client (the collector's
``ApiCalls`` plus a hook here that counts the metrics each call asks for).  Target:
exactly ``ceil(series / 500)`` GetMetricData calls per poll.  Before that, as a
cross-check, the real ``AwsPoller.cycle()`` runs twice: once to discover the clusters,
then (one period later) over the seeded data.

    python3 -m bench.aws [--series 2000] [--polls 5] [--datapoints 3]

With ``--calls-per-hour`` it measures instead the state-polling API calls of one hour for
``--jobs`` Glue jobs and ``--clusters`` EMR clusters (CloudWatch metrics off), in the same run:
the real ``AwsPoller`` polling every cycle, and the same poller with ``events_queue_url`` set,
whose run and state polls only reconcile every ``reconcile_interval``.  The hour is virtual
(the pollers' clock moves 60 s per cycle); the calls are real calls to moto, counted by the
collector's ``ApiCalls``.  The SQS consumer's calls are not run for an hour: on a quiet queue
they are one ReceiveMessage per 20 s long poll, which the table adds.

    python3 -m bench.aws --calls-per-hour [--jobs 300] [--clusters 50]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The tree this file is in, not whatever trapline is installed, is what gets measured.
from bench._util import machine, median, table, timed
from trapline.collectors.aws import build
from trapline.collectors.aws.cloudwatch import (
    MAX_QUERIES_PER_CALL,
    USD_PER_METRIC,
    Series,
    Window,
    aligned_window,
    calls_needed,
    fetch_datapoints,
)
from trapline.collectors.aws.poller import AwsPoller, series_for
from trapline.collectors.aws.queue import WAIT_SECONDS
from trapline.collectors.aws.session import ApiCalls, make_clients
from trapline.core.config import Section
from trapline.core.model import Reading

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_emr import EMRClient

REGION = "eu-west-1"
# GetMetricStatistics: USD 0.01 per 1,000 requests (one metric per request).
USD_PER_REQUEST = 0.01 / 1000
PUT_BATCH = 1000  # datapoints per PutMetricData call (the AWS limit)
GET_METRIC_DATA = "cloudwatch:GetMetricData"
GET_METRIC_STATISTICS = "cloudwatch:GetMetricStatistics"
BOUNDARY_SIZES = (1, 500, 501, 1000, 1001, 1500, 1501)


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto server in this process on a free loopback port, like the integration tests."""
    from moto.server import ThreadedMotoServer  # noqa: PLC0415 (optional peer, bench only)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def fake_credentials(scratch: Path) -> None:
    # moto accepts any key; keep the bench away from real profiles and instance metadata.
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=str(scratch / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


def setup_client(endpoint: str, service: str) -> Any:
    """A plain client for creating the test data (not counted)."""
    import boto3  # noqa: PLC0415 (as the collector: loaded only when needed)
    from botocore.config import Config  # noqa: PLC0415

    # botocore gzips large PutMetricData bodies, which moto 5.2 fails to read.
    config = Config(disable_request_compression=True)
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint, config=config)  # type: ignore[call-overload]


def make_poller(endpoint: str, clock: Callable[[], float], **changes: object) -> AwsPoller:
    """The collector as a user would configure it (EMR only unless ``changes`` say else), on moto."""
    values = {
        "type": "aws",
        "host": "aws-bench",
        "region": REGION,
        "endpoint_url": endpoint,
        "max_attempts": 1,
        "emr_serverless": {"enabled": False},
        "glue": {"enabled": False},
        **changes,
    }
    settings = build("aws", Section(Path("bench/aws.py"), "collectors.aws", values)).settings
    return AwsPoller(settings, clock=clock)


def make_clusters(emr: EMRClient, count: int) -> list[str]:
    ids = []
    for number in range(count):
        response = emr.run_job_flow(
            Name=f"bench-{number:04d}",
            ReleaseLabel="emr-6.15.0",
            Instances={
                "MasterInstanceType": "m5.xlarge",
                "InstanceCount": 1,
                "KeepJobFlowAliveWhenNoSteps": True,
            },
            JobFlowRole="EMR_EC2_DefaultRole",
            ServiceRole="EMR_DefaultRole",
        )
        ids.append(response["JobFlowId"])
    return ids


def newest_value(position: int) -> float:
    return float(position)


def seed(cloudwatch: CloudWatchClient, series: Sequence[Series], window: Window, datapoints: int) -> int:
    """``datapoints`` values per series, newest first one per period back from the window's end.

    The newest is the series' position, so both pollers' answers can be checked.
    """
    data: list[tuple[str, dict[str, Any]]] = []
    for position, one in enumerate(series):
        for age in range(datapoints):
            stamp = window.end - one.period // 2 - age * one.period
            datum = {
                "MetricName": one.metric,
                "Dimensions": [{"Name": k, "Value": v} for k, v in one.dimensions],
                "Value": newest_value(position) + age * 0.25,
                "Timestamp": dt.datetime.fromtimestamp(stamp, dt.UTC),
            }
            data.append((one.namespace, datum))
    calls = 0
    for namespace in sorted({ns for ns, _ in data}):
        batch = [d for ns, d in data if ns == namespace]
        for start in range(0, len(batch), PUT_BATCH):
            cloudwatch.put_metric_data(Namespace=namespace, MetricData=batch[start : start + PUT_BATCH])  # type: ignore[arg-type]
            calls += 1
    return calls


class MetricsRequested(Counter[str]):
    """Metrics each call asks for, read from the request parameters by a botocore hook.

    GetMetricData bills per query; GetMetricStatistics asks for one metric per request.
    """

    def watch(self, client: Any) -> None:
        def count(model: Any, params: dict[str, Any], **_: Any) -> None:
            if model.name == "GetMetricData":
                self[GET_METRIC_DATA] += len(params.get("MetricDataQueries", []))
            elif model.name == "GetMetricStatistics":
                self[GET_METRIC_STATISTICS] += 1

        client.meta.events.register("before-parameter-build", count)


Fetch = Callable[["CloudWatchClient", Sequence[Series], Window], dict[int, float]]  # position -> newest value


@dataclass(slots=True)
class Poller:
    """One way of polling, its client, and the counters that client's hooks feed."""

    name: str
    action: str
    usd_per_unit: float  # per metric requested (GetMetricData) or per request (GetMetricStatistics)
    fetch: Fetch
    cloudwatch: CloudWatchClient
    calls: ApiCalls
    metrics: MetricsRequested
    walls: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    calls_per_poll: list[int] = field(default_factory=list)
    metrics_per_poll: list[int] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)  # series with the expected newest value

    def run_once(self, series: Sequence[Series], window: Window, expected: Sequence[float]) -> None:
        calls_before, metrics_before = sum(self.calls.values()), self.metrics[self.action]
        found: dict[int, float] = {}
        # Thread CPU: the client side only; moto answers in its own threads of this process.
        cpu = time.thread_time()
        self.walls.append(timed(lambda: found.update(self.fetch(self.cloudwatch, series, window))))
        self.client_cpu.append(time.thread_time() - cpu)
        self.calls_per_poll.append(sum(self.calls.values()) - calls_before)
        self.metrics_per_poll.append(self.metrics[self.action] - metrics_before)
        self.answered.append(sum(1 for i, want in enumerate(expected) if found.get(i) == want))

    def usd_per_poll(self) -> float:
        billed = self.metrics_per_poll[-1] if self.action == GET_METRIC_DATA else self.calls_per_poll[-1]
        return billed * self.usd_per_unit


class ShiftedClock:
    """The collector's clock, movable forward so that a new period has closed for the next cycle."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


def trapline_poll(cloudwatch: CloudWatchClient, series: Sequence[Series], window: Window) -> dict[int, float]:
    return {i: points[-1][1] for i, points in fetch_datapoints(cloudwatch, series, window).points.items()}


def naive_poll(cloudwatch: CloudWatchClient, series: Sequence[Series], window: Window) -> dict[int, float]:
    """The obvious poller: one GetMetricStatistics per series, newest datapoint kept."""
    start = dt.datetime.fromtimestamp(window.start, dt.UTC)
    end = dt.datetime.fromtimestamp(window.end, dt.UTC)
    found = {}
    for position, one in enumerate(series):
        answer = cloudwatch.get_metric_statistics(
            Namespace=one.namespace,
            MetricName=one.metric,
            Dimensions=[{"Name": k, "Value": v} for k, v in one.dimensions],
            StartTime=start,
            EndTime=end,
            Period=one.period,
            Statistics=[one.stat],  # type: ignore[list-item]
        )
        points = answer.get("Datapoints", [])
        if points:
            newest = max(points, key=lambda p: p["Timestamp"])
            found[position] = float(newest[one.stat])  # type: ignore[literal-required]
    return found


def full_cycle(poller: AwsPoller) -> tuple[Counter[str], int, int]:
    """One real collector cycle: API calls by action, readings sent, series missing."""
    before = Counter(poller.calls)
    result = poller.cycle()
    made = Counter(poller.calls)
    made.subtract(before)
    readings = [i for i in result.items if isinstance(i, Reading)]
    sent = sum(
        1
        for r in readings
        if r.host.startswith("emr-") and r.key.startswith("emr.") and isinstance(r.value, float)
    )
    missing = next(int(r.value) for r in readings if r.key == "aws.poller.metrics.missing[emr]")
    if result.errors:
        print(f"cycle errors: {result.errors}")
    return +made, sent, missing


def state_poller(endpoint: str, clock: Callable[[], float], events: bool) -> AwsPoller:
    """Glue and EMR with metrics off, polling only or with the event path on."""
    queue = {"events_queue_url": f"{endpoint}/123456789012/trapline-events"} if events else {}
    return make_poller(endpoint, clock, emr={"metrics": False}, glue={"metrics": False}, **queue)


def calls_per_hour(args: argparse.Namespace) -> None:
    print(f"# State-polling API calls per hour: {args.jobs} Glue jobs, {args.clusters} EMR clusters")
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="trapline-bench-") as scratch, moto_server() as endpoint:
        fake_credentials(Path(scratch))
        glue = setup_client(endpoint, "glue")
        for number in range(args.jobs):
            glue.create_job(
                Name=f"bench-{number:04d}",
                Role="arn:aws:iam::123456789012:role/glue",
                Command={"Name": "glueetl"},
            )
        make_clusters(setup_client(endpoint, "emr"), args.clusters)
        now = [time.time()]
        pollers = {events: state_poller(endpoint, lambda: now[0], events) for events in (False, True)}
        cycles = 3600 // 60
        for _ in range(cycles):
            for poller in pollers.values():
                poller.cycle()
            now[0] += 60
        rows: list[list[object]] = []
        totals: list[int] = []
        for events, poller in pollers.items():
            found = (len(poller.resources["glue"]), len(poller.resources["emr"]))
            assert found == (args.jobs, args.clusters), f"discovered {found}"
            receives = 3600 // WAIT_SECONDS if events else 0
            label = (
                f"events + reconcile every {poller.settings.reconcile_interval:.0f} s"
                if events
                else "polling only"
            )
            totals.append(poller.calls.total() + receives)
            rows.append([label, cycles, poller.calls.total(), receives, totals[-1]])
            print(f"{label}: {dict(sorted(poller.calls.items()))}")
        print()
        print(
            table(
                ["mode", "cycles", "poller API calls", "SQS receives (quiet queue)", "API calls/hour"], rows
            )
        )
        saved = 1 - totals[1] / totals[0]
        print(f"\nEvents + reconciliation make {saved:.0%} fewer API calls per hour than polling only.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--polls", type=int, default=5)
    parser.add_argument("--datapoints", type=int, default=3, help="datapoints per series (one per period)")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round trip to AWS for the estimate only")
    parser.add_argument(
        "--calls-per-hour", action="store_true", help="polling only vs events + reconciliation"
    )
    parser.add_argument("--jobs", type=int, default=300, help="Glue jobs (--calls-per-hour)")
    parser.add_argument("--clusters", type=int, default=50, help="EMR clusters (--calls-per-hour)")
    args = parser.parse_args()
    if args.calls_per_hour:
        calls_per_hour(args)
        return
    print(f"# CloudWatch polling: {args.series} series, {args.polls} polls each, interleaved")
    print(machine(), flush=True)

    with tempfile.TemporaryDirectory(prefix="trapline-bench-") as scratch, moto_server() as endpoint:
        fake_credentials(Path(scratch))
        clock = ShiftedClock()
        poller = make_poller(endpoint, clock)
        emr_service = poller.services[0]
        spec = emr_service.settings.metrics
        assert spec is not None
        clusters = math.ceil(args.series / len(spec.metrics))
        cluster_ids = make_clusters(setup_client(endpoint, "emr"), clusters)

        # Discovery first (the series come from what the poller found), then data.
        first, _, _ = full_cycle(poller)
        discovered = {r.id for r in poller.resources["emr"]}
        assert discovered == set(cluster_ids), "the poller did not discover every cluster"
        window = aligned_window(dt.datetime.now(dt.UTC).timestamp(), spec.period, spec.delay, spec.periods)
        targets = emr_service.metric_targets(poller.resources["emr"], window)
        everything = [s for s, _, _ in series_for(spec, targets)]
        puts = seed(setup_client(endpoint, "cloudwatch"), everything, window, args.datapoints)
        print(
            f"moto at {endpoint}: {clusters} EMR clusters x {len(spec.metrics)} catalog metrics = "
            f"{len(everything)} series, {len(everything) * args.datapoints} datapoints in {puts} "
            f"PutMetricData calls; window {window.start}-{window.end} (period {spec.period} s)",
            flush=True,
        )

        # A later cycle in a new period reads the seeded data back end to end.
        clock.shift = spec.period
        cycle_calls, cycle_sent, cycle_missing = full_cycle(poller)
        print(f"\nfull AwsPoller.cycle() over {len(everything)} series (discovery done in an earlier cycle):")
        print(
            table(
                ["API action", "calls in the cycle"],
                [[action, count] for action, count in sorted(cycle_calls.items())],
            )
        )
        target_cycle = calls_needed(len(everything))
        print(
            f"GetMetricData calls: {cycle_calls[GET_METRIC_DATA]} (target {target_cycle}: "
            f"{'OK' if cycle_calls[GET_METRIC_DATA] == target_cycle else 'MISSED'}); "
            f"metric readings sent {cycle_sent}, missing {cycle_missing}; "
            f"first cycle (discovery) made {sum(first.values())} calls"
        )
        print(f"collector's own estimate: {poller.estimated_cost_per_hour():.4f} USD/h", flush=True)

        series = everything[: args.series]
        expected = [newest_value(i) for i in range(len(series))]
        pollers = []
        for name, action, usd, fetch in (
            ("trapline fetch_datapoints (GetMetricData)", GET_METRIC_DATA, USD_PER_METRIC, trapline_poll),
            ("naive, 1 GetMetricStatistics per series", GET_METRIC_STATISTICS, USD_PER_REQUEST, naive_poll),
        ):
            calls, metrics = ApiCalls(), MetricsRequested()
            # The collector's own client (config, retries) for both, each with its own counters.
            cloudwatch = make_clients(poller.settings, calls).cloudwatch
            metrics.watch(cloudwatch)
            pollers.append(Poller(name, action, usd, fetch, cloudwatch, calls, metrics))
        for number in range(args.polls):
            for one in pollers:
                one.run_once(series, window, expected)
                print(
                    f"poll {number + 1} {one.name}: {one.calls_per_poll[-1]} calls, "
                    f"{one.metrics_per_poll[-1]} metrics, {one.walls[-1]:.3f} s, "
                    f"{one.answered[-1]}/{len(series)} series answered correctly",
                    flush=True,
                )

        trapline = pollers[0]
        boundary: list[list[object]] = []
        for size in sorted({*(n for n in BOUNDARY_SIZES if n < len(series)), len(series)}):
            before = trapline.calls[GET_METRIC_DATA]
            trapline_poll(trapline.cloudwatch, series[:size], window)
            made = trapline.calls[GET_METRIC_DATA] - before
            boundary.append(
                [size, made, calls_needed(size), "OK" if made == calls_needed(size) else "MISSED"]
            )

    report(args, pollers, boundary, len(series))


def report(
    args: argparse.Namespace, pollers: Sequence[Poller], boundary: list[list[object]], series: int
) -> None:
    polls_per_hour = 3600 / 300  # one fetch per closed EMR period, as the collector does
    rows = []
    for one in pollers:
        rows.append(
            [
                one.name,
                one.calls_per_poll[-1],
                one.metrics_per_poll[-1],
                f"{one.usd_per_poll():.4f}",
                f"{one.usd_per_poll() * polls_per_hour:.3f}",
                f"{median(one.walls):.3f}",
                f"{min(one.walls):.3f} - {max(one.walls):.3f}",
                f"{median(one.client_cpu):.3f}",
                f"{min(one.answered)}/{series}",
            ]
        )
    print(f"\n## {series} series, {args.polls} polls each (medians; moto on loopback)\n")
    print(
        table(
            [
                "poller",
                "API calls/poll",
                "metrics requested/poll",
                "USD/poll",
                f"USD/hour ({polls_per_hour:.0f} polls)",
                "wall s/poll (median)",
                "wall range s",
                "client CPU s/poll (median)",
                "series correct (worst poll)",
            ],
            rows,
        )
    )
    trapline, naive = pollers
    target = calls_needed(series)
    steady = set(trapline.calls_per_poll)
    verdict = "OK" if steady == {target} else "MISSED"
    print(
        f"\nTarget: exactly ceil({series}/{MAX_QUERIES_PER_CALL}) = {target} GetMetricData calls per poll: "
        f"{verdict} (every poll: {sorted(steady)})"
    )
    print("\nGetMetricData calls at batch boundaries (one fetch each):\n")
    print(table(["series", "GetMetricData calls", "target ceil(n/500)", "verdict"], boundary))
    rtt = args.rtt_ms / 1000
    print(
        f"\nNot measured: with a {args.rtt_ms:.0f} ms round trip to AWS the naive poller adds "
        f"{naive.calls_per_poll[-1]} x {args.rtt_ms:.0f} ms = {naive.calls_per_poll[-1] * rtt:.1f} s "
        f"per poll (sequential), trapline {trapline.calls_per_poll[-1]} x {args.rtt_ms:.0f} ms = "
        f"{trapline.calls_per_poll[-1] * rtt:.2f} s."
    )


if __name__ == "__main__":
    main()
