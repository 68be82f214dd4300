"""GetMetricData for a list of series: aligned windows, batches of 500, every datapoint of the window.

Blocking (boto3); called from the collector's worker thread.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient

T = TypeVar("T")

MAX_QUERIES_PER_CALL = 500
# CloudWatch price of GetMetricData: USD 0.01 per 1,000 metrics requested.
USD_PER_METRIC = 0.01 / 1000
# Statuses after which a series has no usable data at all.
_FAILED_STATUSES = frozenset({"InternalError", "Forbidden"})


@dataclass(frozen=True, slots=True)
class Window:
    start: int  # epoch seconds, multiple of the period
    end: int


def aligned_window(now: float, period: int, delay: int, periods: int) -> Window:
    """The ``periods`` whole periods that end at or before ``now - delay``.

    Aligned boundaries make CloudWatch return whole periods (an unaligned end
    would give a partial, too-low last datapoint).
    """
    end = math.floor((now - delay) / period) * period
    return Window(end - periods * period, end)


def batches(items: Sequence[T], size: int = MAX_QUERIES_PER_CALL) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def calls_needed(series: int) -> int:
    return math.ceil(series / MAX_QUERIES_PER_CALL)


@dataclass(frozen=True, slots=True)
class Series:
    """One metric of one resource, as a GetMetricData query."""

    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    stat: str
    period: int

    def query(self, query_id: str) -> dict[str, Any]:
        return {
            "Id": query_id,
            "MetricStat": {
                "Metric": {
                    "Namespace": self.namespace,
                    "MetricName": self.metric,
                    "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions],
                },
                "Period": self.period,
                "Stat": self.stat,
            },
            "ReturnData": True,
        }


@dataclass(slots=True)
class Fetched:
    """The datapoints of each series that had any, oldest first, by position in the input."""

    points: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # i -> [(epoch, value)]
    missing: int = 0  # series without any datapoint in the window (not zero: missing)
    failed: int = 0  # series CloudWatch could not answer (Forbidden, InternalError)
    calls: int = 0


def fetch_datapoints(client: CloudWatchClient, series: Sequence[Series], window: Window) -> Fetched:
    """Ask for every series in batches of 500 and follow NextToken within each batch."""
    result = Fetched()
    start = dt.datetime.fromtimestamp(window.start, dt.UTC)
    end = dt.datetime.fromtimestamp(window.end, dt.UTC)
    for offset, batch in _numbered_batches(series):
        queries = [s.query(f"q{offset + i}") for i, s in enumerate(batch)]
        failed: set[int] = set()
        token: str | None = None
        while True:
            extra: dict[str, Any] = {"NextToken": token} if token else {}
            page = client.get_metric_data(
                MetricDataQueries=queries,  # type: ignore[arg-type]
                StartTime=start,
                EndTime=end,
                ScanBy="TimestampDescending",
                **extra,
            )
            result.calls += 1
            for item in page.get("MetricDataResults", []):
                index = int(item.get("Id", "q-1")[1:])
                if item.get("StatusCode") in _FAILED_STATUSES:
                    failed.add(index)
                _add_points(result.points, index, item.get("Timestamps", []), item.get("Values", []))
            token = page.get("NextToken")
            if not token:
                break
        for index in range(offset, offset + len(batch)):
            if index in result.points:
                result.points[index].sort()
                continue
            if index in failed:
                result.failed += 1
            else:
                result.missing += 1
    return result


def _numbered_batches(series: Sequence[Series]) -> Iterator[tuple[int, Sequence[Series]]]:
    offset = 0
    for batch in batches(series):
        yield offset, batch
        offset += len(batch)


def _add_points(
    points: dict[int, list[tuple[float, float]]],
    index: int,
    timestamps: Sequence[dt.datetime],
    values: Sequence[float],
) -> None:
    # Datapoints of one series may be split over pages; the caller sorts them once complete.
    if timestamps:
        points.setdefault(index, []).extend(
            (stamp.timestamp(), value) for stamp, value in zip(timestamps, values, strict=False)
        )
