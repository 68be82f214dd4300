"""GetMetricData handling: aligned windows, 500-query batches, NextToken, missing data.

CloudWatch pagination cannot be produced by moto (it always answers in one
page), so those cases use a botocore Stubber: the fault a real peer here
cannot produce.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st

from trapline.collectors.aws.catalog import BUILTIN_CATALOG, CatalogError, load_catalog
from trapline.collectors.aws.cloudwatch import (
    MAX_QUERIES_PER_CALL,
    Series,
    Window,
    aligned_window,
    batches,
    calls_needed,
    fetch_datapoints,
)


def _client() -> Any:
    return boto3.client(
        "cloudwatch", region_name="eu-west-1", aws_access_key_id="k", aws_secret_access_key="s"
    )


def _series(n: int) -> list[Series]:
    return [
        Series("AWS/ElasticMapReduce", "IsIdle", (("JobFlowId", f"j-{i}"),), "Average", 300) for i in range(n)
    ]


def _at(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


# -- window alignment ---------------------------------------------------------


def test_window_ends_on_the_period_boundary_before_the_delay() -> None:
    # now = 10:07:30, delay 300 s -> 10:02:30 -> last whole 5-min boundary 10:00.
    now = dt.datetime(2024, 5, 1, 10, 7, 30, tzinfo=dt.UTC).timestamp()
    window = aligned_window(now, period=300, delay=300, periods=3)
    assert _at(window.end) == dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
    assert _at(window.start) == dt.datetime(2024, 5, 1, 9, 45, tzinfo=dt.UTC)


def test_window_on_an_exact_boundary_includes_that_boundary() -> None:
    window = aligned_window(1_000_000 * 60 + 30, period=60, delay=30, periods=2)
    assert window == Window(1_000_000 * 60 - 120, 1_000_000 * 60)


@given(
    now=st.floats(min_value=1e9, max_value=2e9),
    period=st.sampled_from([1, 60, 300, 3600]),
    delay=st.integers(min_value=0, max_value=900),
    periods=st.integers(min_value=1, max_value=5),
)
def test_window_is_aligned_and_as_recent_as_the_delay_allows(
    now: float, period: int, delay: int, periods: int
) -> None:
    window = aligned_window(now, period, delay, periods)
    assert window.end % period == 0 and window.start % period == 0
    assert window.end <= now - delay < window.end + period
    assert window.end - window.start == periods * period


# -- batching -----------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 499, 500, 501, 1000, 1234])
def test_calls_needed_is_ceil_of_n_over_500(n: int) -> None:
    assert calls_needed(n) == math.ceil(n / 500)
    assert len(list(batches(list(range(n))))) == calls_needed(n)
    assert all(len(b) <= MAX_QUERIES_PER_CALL for b in batches(list(range(n))))


def test_1234_series_take_three_calls_of_500_500_234() -> None:
    client = _client()
    sizes: list[int] = []
    client.meta.events.register(
        "before-parameter-build.cloudwatch.GetMetricData",
        lambda params, **_: sizes.append(len(params["MetricDataQueries"])),
    )
    series = _series(1234)
    stamp = _at(1_700_000_100)
    with Stubber(client) as stub:
        for offset, size in ((0, 500), (500, 500), (1000, 234)):
            # Every series answers except the last of each batch.
            results = [
                {
                    "Id": f"q{offset + i}",
                    "Timestamps": [stamp],
                    "Values": [float(offset + i)],
                    "StatusCode": "Complete",
                }
                for i in range(size - 1)
            ]
            stub.add_response("get_metric_data", {"MetricDataResults": results})
        fetched = fetch_datapoints(client, series, Window(1_700_000_000, 1_700_000_300))
        stub.assert_no_pending_responses()
    assert sizes == [500, 500, 234]
    assert fetched.calls == 3
    assert fetched.missing == 3
    assert fetched.points[1233 - 1] == [(stamp.timestamp(), 1232.0)]
    assert 499 not in fetched.points and 999 not in fetched.points


def test_next_token_is_followed_and_every_datapoint_is_kept_oldest_first() -> None:
    client = _client()
    series = _series(3)
    window = Window(1_700_000_000, 1_700_000_900)
    old, new = _at(1_700_000_300), _at(1_700_000_600)
    with Stubber(client) as stub:
        stub.add_response(
            "get_metric_data",
            {
                "MetricDataResults": [
                    {"Id": "q0", "Timestamps": [old], "Values": [1.0], "StatusCode": "PartialData"},
                    {"Id": "q2", "Timestamps": [], "Values": [], "StatusCode": "PartialData"},
                ],
                "NextToken": "page-2",
            },
        )
        stub.add_response(
            "get_metric_data",
            {
                "MetricDataResults": [
                    {"Id": "q0", "Timestamps": [new], "Values": [0.0], "StatusCode": "Complete"},
                    {"Id": "q1", "Timestamps": [old], "Values": [7.0], "StatusCode": "Complete"},
                ]
            },
            expected_params={
                "MetricDataQueries": [s.query(f"q{i}") for i, s in enumerate(series)],
                "StartTime": _at(window.start),
                "EndTime": _at(window.end),
                "ScanBy": "TimestampDescending",
                "NextToken": "page-2",
            },
        )
        fetched = fetch_datapoints(client, series, window)
        stub.assert_no_pending_responses()
    assert fetched.calls == 2
    # A real zero is a value; a series with no datapoint is missing, not zero.
    assert fetched.points == {
        0: [(old.timestamp(), 1.0), (new.timestamp(), 0.0)],
        1: [(old.timestamp(), 7.0)],
    }
    assert fetched.missing == 1


def test_forbidden_series_are_counted_as_failed_not_missing() -> None:
    client = _client()
    with Stubber(client) as stub:
        stub.add_response(
            "get_metric_data",
            {"MetricDataResults": [{"Id": "q0", "Timestamps": [], "Values": [], "StatusCode": "Forbidden"}]},
        )
        fetched = fetch_datapoints(client, _series(2), Window(0, 300))
    assert (fetched.failed, fetched.missing) == (1, 1)


# -- catalog ------------------------------------------------------------------


def test_builtin_catalog_has_every_metric_the_issue_asks_for() -> None:
    catalog = load_catalog()
    emr = {m.name for m in catalog["emr"].metrics}
    assert {
        "IsIdle",
        "AppsPending",
        "AppsRunning",
        "ContainerPendingRatio",
        "YARNMemoryAvailablePercentage",
        "HDFSUtilization",
        "CapacityRemainingGB",
        "MissingBlocks",
        "CoreNodesRunning",
        "MRUnhealthyNodes",
        "MRLostNodes",
    } <= emr
    assert (catalog["emr"].period, catalog["emr"].delay) == (300, 300)
    assert catalog["glue"].delay == 30
    glue = {m.name: m for m in catalog["glue"].metrics}
    assert glue["glue.driver.aggregate.numFailedTasks"].requires == "--enable-metrics"
    assert glue["glue.driver.workerUtilization"].requires == "--enable-observability-metrics"
    assert ("JobRunId", "ALL") in glue["glue.ALL.jvm.heap.usage"].dimensions
    serverless = {m.name for m in catalog["emr_serverless"].metrics}
    assert {"CPUAllocated", "MemoryAllocated", "RunningWorkerCount"} <= serverless
    keys = [m.key for spec in catalog.values() for m in spec.metrics]
    assert all(k == k.lower() and " " not in k for k in keys)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[emr]\nnamespace = 'x'\n", "[emr].metrics"),
        ("[ec2]\n", "unknown service"),
        (
            "[emr]\nnamespace='n'\nresource_dimension='d'\nperiod=60\ndelay=0\nperiods=1\n"
            "[[emr.metrics]]\nname='m'\nstat='p99'\nkey='k'\n",
            "[emr].metrics[0].stat",
        ),
        (
            "[emr]\nnamespace='n'\nresource_dimension='d'\nperiod=0\ndelay=0\nperiods=1\n"
            "[[emr.metrics]]\nname='m'\nstat='Sum'\nkey='k'\n",
            "[emr].period",
        ),
        (
            "[emr]\nnamespace='n'\nresource_dimension='d'\nperiod=60\ndelay=0\nperiods=1\n"
            "[[emr.metrics]]\nname='m'\nstat='Sum'\nkey='k'\nkye='typo'\n",
            "[emr].metrics[0].kye",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_a_broken_catalog_is_refused_naming_the_entry(tmp_path: Any, text: str, complaint: str) -> None:
    path = tmp_path / "metrics.toml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=None) as caught:
        load_catalog(path)
    assert complaint in str(caught.value)
    assert str(path) in str(caught.value)


def test_builtin_catalog_path_is_packaged_next_to_the_code() -> None:
    assert BUILTIN_CATALOG.name == "metrics.toml" and BUILTIN_CATALOG.is_file()
