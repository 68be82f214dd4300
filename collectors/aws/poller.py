"""One poll cycle of one account+region: discovery, health, metrics, self-metrics.

Everything here blocks (boto3) and runs in the collector's worker thread; the
cycle returns what it found instead of touching the outbox, so that nothing
crosses threads but the finished result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from trapline.collectors.aws.catalog import MetricSpec, NamespaceSpec
from trapline.collectors.aws.cloudwatch import (
    USD_PER_METRIC,
    Series,
    Window,
    aligned_window,
    fetch_datapoints,
)
from trapline.collectors.aws.resources import Cycle, Resource, key_param
from trapline.collectors.aws.services import EmrService, GlueService, ServerlessService, Service
from trapline.collectors.aws.session import ApiCalls, Clients, make_clients, needs_refresh
from trapline.collectors.aws.settings import AwsSettings
from trapline.core.model import Discovery, Item

log = logging.getLogger(__name__)
# At most this many periods are fetched again after throttled cycles (a long outage loses the rest).
MAX_CATCH_UP_PERIODS = 12

DISCOVERY_RULES = {
    "emr": "emr.cluster.discovery",
    "emr_serverless": "emr.serverless.app.discovery",
    "glue": "glue.job.discovery",
}
ClientFactory = Callable[[AwsSettings, ApiCalls], Clients]


@dataclass(slots=True)
class CycleResult:
    items: list[Item] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # distinct reasons, for out.error
    throttled: bool = False


class AwsPoller:
    def __init__(
        self,
        settings: AwsSettings,
        client_factory: ClientFactory = make_clients,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.calls = ApiCalls()
        self._client_factory = client_factory
        self._clock = clock
        self._clients: Clients | None = None
        services: list[Service] = [
            EmrService(settings.emr, settings.discovery_interval),
            ServerlessService(settings.emr_serverless),
            GlueService(settings.glue, settings.host),
        ]
        self.services = [s for s in services if s.settings.enabled]
        self.resources: dict[str, list[Resource]] = {s.name: [] for s in self.services}
        self._next_discovery: dict[str, float] = {s.name: 0.0 for s in self.services}
        self._last_window_end: dict[str, int] = {}
        # Per service, (host, key) -> epoch of the newest datapoint sent: overlapping windows and
        # the catch-up after a throttled cycle send each datapoint once.
        self._sent_until: dict[str, dict[tuple[str, str], float]] = {}
        self._series_per_fetch: dict[str, int] = {}
        self.metrics_requested = 0
        self.errors_total = 0
        self.error_streak = 0  # cycles in a row that ended with errors

    def cycle(self) -> CycleResult:
        cycle = Cycle()
        clients = cycle.guard("credentials", self._current_clients)
        if clients is not None:
            for service in self.services:
                self._discover(service, clients, cycle)
                service.health(clients, self.resources[service.name], cycle)
                if service.settings.metrics is not None:
                    cycle.guard(f"{service.name} metrics", partial(self._metrics, service, clients, cycle))
        if cycle.credentials_failed:
            self._clients = None  # rebuild from the credential chain next time
        self._self_metrics(cycle)
        return CycleResult(cycle.items, sorted(cycle.errors), cycle.throttled)

    def _current_clients(self) -> Clients:
        if self._clients is None or needs_refresh(self._clients, self._clock()):
            self._clients = self._client_factory(self.settings, self.calls)
        return self._clients

    def _discover(self, service: Service, clients: Clients, cycle: Cycle) -> None:
        now = self._clock()
        if now < self._next_discovery[service.name]:
            return
        found = cycle.guard(f"{service.name} discovery", lambda: service.discover(clients))
        if found is None:
            # Keep the previous list and send no LLD: an empty list would make
            # Zabbix start deleting every discovered entity.  Retry next cycle.
            return
        self.resources[service.name] = found
        self._next_discovery[service.name] = now + self.settings.discovery_interval
        rows = [dict(r.lld) for r in found]
        cycle.items.append(Discovery.now(self.settings.host, DISCOVERY_RULES[service.name], rows))
        log.info("%s: %d %s resources discovered", self.settings.name, len(found), service.name)

    def _metrics(self, service: Service, clients: Clients, cycle: Cycle) -> None:
        spec = service.settings.metrics
        assert spec is not None
        window = aligned_window(self._clock(), spec.period, spec.delay, spec.periods)
        last_end = self._last_window_end.get(service.name)
        if last_end == window.end:
            return  # no new period has closed since the last fetch
        if last_end is not None and last_end < window.start:
            # Throttled cycles left periods unfetched: reach back to them, within a bound.
            window = Window(max(last_end, window.end - MAX_CATCH_UP_PERIODS * spec.period), window.end)
        targets = service.metric_targets(self.resources[service.name], window)
        wanted = series_for(spec, targets)
        self._series_per_fetch[service.name] = len(wanted)
        if not wanted:
            self._last_window_end[service.name] = window.end
            return
        self.metrics_requested += len(wanted)
        fetched = fetch_datapoints(clients.cloudwatch, [s for s, _, _ in wanted], window)
        # Done only once fetched: a fetch that raises (throttled) leaves the window to the next cycle.
        self._last_window_end[service.name] = window.end
        before = self._sent_until.get(service.name, {})
        sent: dict[tuple[str, str], float] = {}
        for index, points in fetched.points.items():
            _, resource, metric = wanted[index]
            ident = (resource.host, resource.key(metric.key))
            newest = before.get(ident)
            # First contact: the newest datapoint only, as the item may be new; later every
            # datapoint the previous fetches did not send, oldest first.
            new = points[-1:] if newest is None else [p for p in points if p[0] > newest]
            for stamp, value in new:
                cycle.reading(ident[0], ident[1], value * metric.scale, int(stamp), unit=metric.unit)
            if new:
                sent[ident] = new[-1][0]
        # Series still asked for keep their mark; those of resources gone are forgotten.
        wanted_idents = {(resource.host, resource.key(metric.key)) for _, resource, metric in wanted}
        self._sent_until[service.name] = {
            ident: mark for ident, mark in (before | sent).items() if ident in wanted_idents
        }
        host = self.settings.host
        cycle.reading(host, f"aws.poller.metrics.missing[{service.name}]", fetched.missing)
        if fetched.failed:
            cycle.errors[f"GetMetricData: {fetched.failed} {service.name} series failed"] += 1

    def _self_metrics(self, cycle: Cycle) -> None:
        host = self.settings.host
        self.errors_total += sum(cycle.errors.values())
        # The error triggers wait for several failed cycles in a row: one failed poll is retried
        # next cycle anyway, and paging for it would open and close a problem around each report.
        self.error_streak = self.error_streak + 1 if cycle.errors else 0
        for action, count in sorted(self.calls.items()):
            cycle.reading(host, f"aws.poller.api.calls[{key_param(action)}]", count)
        cycle.reading(host, "aws.poller.metrics.requested", self.metrics_requested)
        cost = round(self.estimated_cost_per_hour(), 6)
        cycle.reading(host, "aws.poller.cloudwatch.cost", cost, unit="USD")
        cycle.reading(host, "aws.poller.errors", self.errors_total)
        cycle.reading(host, "aws.poller.error.streak", self.error_streak)
        cycle.reading(host, "aws.poller.error", "; ".join(sorted(cycle.errors)) or "ok")

    def estimated_cost_per_hour(self) -> float:
        """USD per hour if the last fetch of each namespace repeats once per period."""
        total = 0.0
        for service in self.services:
            spec = service.settings.metrics
            if spec is None:
                continue
            every = max(spec.period, self.settings.poll_interval)
            total += self._series_per_fetch.get(service.name, 0) * 3600 / every * USD_PER_METRIC
        return total


def series_for(spec: NamespaceSpec, targets: Sequence[Resource]) -> list[tuple[Series, Resource, MetricSpec]]:
    """Every catalog metric of every target, skipping metrics a Glue job has not turned on."""
    wanted = []
    for resource in targets:
        for metric in spec.metrics:
            if metric.requires is not None and metric.requires not in resource.flags:
                continue
            dimensions = tuple(sorted(((spec.resource_dimension, resource.id), *metric.dimensions)))
            series = Series(spec.namespace, metric.name, dimensions, metric.stat, spec.period)
            wanted.append((series, resource, metric))
    return wanted
