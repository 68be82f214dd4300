"""Poll cycles: of one account+region (``AwsPoller``), or of a list of accounts and regions
(``AccountsPoller``, one ``AwsPoller`` each); discovery, health, metrics, self-metrics.

Everything here blocks (boto3) and runs in the collector's worker thread; the
cycle returns what it found instead of touching the outbox, so that nothing
crosses threads but the finished result.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
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
from trapline.collectors.aws.glue_pipelines import CrawlerService, WorkflowService
from trapline.collectors.aws.resources import Cycle, Resource, key_param
from trapline.collectors.aws.services import EmrService, GlueService, ServerlessService, Service
from trapline.collectors.aws.session import ApiCalls, Clients, make_clients, needs_refresh
from trapline.collectors.aws.settings import AccountSettings, AwsSettings, scoped
from trapline.core.model import Discovery, Item

log = logging.getLogger(__name__)
# At most this many periods are fetched again after throttled cycles (a long outage loses the rest).
MAX_CATCH_UP_PERIODS = 12

DISCOVERY_RULES = {
    "emr": "emr.cluster.discovery",
    "emr_serverless": "emr.serverless.app.discovery",
    "glue": "glue.job.discovery",
    "glue_crawlers": "glue.crawler.discovery",
    "glue_workflows": "glue.workflow.discovery",
}
ClientFactory = Callable[[AwsSettings, ApiCalls], Clients]
POLLING = "polling"  # the condition of failing poll cycles (per account in the list form)


@dataclass(slots=True)
class CycleResult:
    items: list[Item] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # distinct reasons, for out.error
    throttled: bool = False
    # condition -> its reasons this cycle (none: the condition is over); one per account in the
    # list form, so that a refused account is logged as one fault and the others as fine.
    conditions: dict[str, list[str]] = field(default_factory=dict)


@dataclass(slots=True)
class Totals:
    """The poller host's self-metrics, summed over every account and region one section polls."""

    errors_total: int = 0
    error_streak: int = 0  # cycles in a row that ended with errors

    def emit(
        self, cycle: Cycle, host: str, pollers: Sequence[AwsPoller], own: ApiCalls | None = None
    ) -> None:
        """``own``: calls of the section's own identity in the list form (the event queue)."""
        self.errors_total += sum(cycle.errors.values())
        # The error triggers wait for several failed cycles in a row: one failed poll is retried
        # next cycle anyway, and paging for it would open and close a problem around each report.
        self.error_streak = self.error_streak + 1 if cycle.errors else 0
        calls: Counter[str] = Counter(own or {})
        for poller in pollers:
            calls.update(poller.calls)
        for action, count in sorted(calls.items()):
            cycle.reading(host, f"aws.poller.api.calls[{key_param(action)}]", count)
        for service, missing in sorted(cycle.missing.items()):
            cycle.reading(host, f"aws.poller.metrics.missing[{service}]", missing)
        cycle.reading(host, "aws.poller.metrics.requested", sum(p.metrics_requested for p in pollers))
        cost = round(sum(p.estimated_cost_per_hour() for p in pollers), 6)
        cycle.reading(host, "aws.poller.cloudwatch.cost", cost, unit="USD")
        cycle.reading(host, "aws.poller.errors", self.errors_total)
        cycle.reading(host, "aws.poller.error.streak", self.error_streak)
        cycle.reading(host, "aws.poller.error", "; ".join(sorted(cycle.errors)) or "ok")


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
        jobs = GlueService(settings.glue, settings.host, settings.scope, clock)
        crawlers = CrawlerService(settings.glue_crawlers, settings.host, settings.scope)
        if crawlers.settings.enabled:
            jobs.crawl_outcomes = crawlers.outcomes  # for Glue triggers conditional on a crawl
        services: list[Service] = [
            EmrService(settings.emr, settings.discovery_interval),
            ServerlessService(settings.emr_serverless),
            jobs,
            crawlers,
            WorkflowService(settings.glue_workflows, settings.host, settings.scope),
        ]
        self.services = [s for s in services if s.settings.enabled]
        self.resources: dict[str, list[Resource]] = {s.name: [] for s in self.services}
        self._next_discovery: dict[str, float] = {s.name: 0.0 for s in self.services}
        self._next_health: dict[str, float] = {s.name: 0.0 for s in self.services}
        self._last_window_end: dict[str, int] = {}
        # Per service, (host, key) -> epoch of the newest datapoint sent: overlapping windows and
        # the catch-up after a throttled cycle send each datapoint once.
        self._sent_until: dict[str, dict[tuple[str, str], float]] = {}
        self._series_per_fetch: dict[str, int] = {}
        self.metrics_requested = 0
        self.totals = Totals()

    @property
    def where(self) -> str:
        return self.settings.scope or self.settings.region

    def cycle(self) -> CycleResult:
        cycle = Cycle()
        found = self.poll(cycle)
        host = self.settings.host
        cycle.items[:0] = [Discovery.now(host, DISCOVERY_RULES[name], self.rows(name)) for name in found]
        self.totals.emit(cycle, host, [self])
        errors = sorted(cycle.errors)
        return CycleResult(cycle.items, errors, cycle.throttled, {POLLING: errors})

    def poll(self, cycle: Cycle) -> list[str]:
        """Discovery, health and metrics into ``cycle``; the services whose discovery ran, in order."""
        found = []
        clients = cycle.guard("credentials", self._current_clients)
        if clients is not None:
            for service in self.services:
                if self._discover(service, clients, cycle):
                    found.append(service.name)
                if self._health_due(service):
                    service.health(clients, self.resources[service.name], cycle)
                if service.settings.metrics is not None:
                    cycle.guard(f"{service.name} metrics", partial(self._metrics, service, clients, cycle))
        if cycle.credentials_failed:
            self._clients = None  # rebuild from the credential chain next time
        return found

    def poll_now(self, name: str) -> CycleResult:
        """The run and state poll of one service, out of turn: an event said something changed there.

        Neither discovery nor metrics: only what ``health`` sends, deduplicated as in a cycle."""
        cycle = Cycle()
        service = next((s for s in self.services if s.name == name), None)
        clients = cycle.guard("credentials", self._current_clients)
        if clients is not None and service is not None:
            service.health(clients, self.resources[name], cycle)
        if cycle.credentials_failed:
            self._clients = None
        return CycleResult(cycle.items, sorted(cycle.errors), cycle.throttled)

    def _health_due(self, service: Service) -> bool:
        """Run and state polls every cycle; with events on, every ``reconcile_interval`` only."""
        if self.settings.events_queue_url is None:
            return True
        now = self._clock()
        if now < self._next_health[service.name]:
            return False
        self._next_health[service.name] = now + self.settings.reconcile_interval
        return True

    def rows(self, service: str) -> list[dict[str, str]]:
        """The LLD rows of a service's resources as last discovered."""
        return [dict(r.lld) for r in self.resources[service]]

    def _current_clients(self) -> Clients:
        if self._clients is None or needs_refresh(self._clients, self._clock()):
            self._clients = self._client_factory(self.settings, self.calls)
        return self._clients

    def _discover(self, service: Service, clients: Clients, cycle: Cycle) -> bool:
        now = self._clock()
        if now < self._next_discovery[service.name]:
            return False
        found = cycle.guard(f"{service.name} discovery", lambda: service.discover(clients))
        if found is None:
            # Keep the previous list and send no LLD: an empty list would make
            # Zabbix start deleting every discovered entity.  Retry next cycle.
            return False
        self.resources[service.name] = found
        self._next_discovery[service.name] = now + self.settings.discovery_interval
        log.info("%s: %d %s resources in %s", self.settings.name, len(found), service.name, self.where)
        return True

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
        cycle.missing[service.name] += fetched.missing
        if fetched.failed:
            cycle.errors[f"GetMetricData: {fetched.failed} {service.name} series failed"] += 1

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


ACCOUNT_DISCOVERY = "aws.account.discovery"
PollerMaker = Callable[[AwsSettings], AwsPoller]  # the poller of one account and region


@dataclass(slots=True)
class AccountStats:
    """Counters of one account over its regions, since start."""

    throttles: int = 0
    denied: int = 0


class AccountsPoller:
    """The list form: one ``AwsPoller`` per account and region, all on one poller host.

    Each account assumes its own role and fails on its own: a refused role costs that account's
    readings and nothing else.  The LLD of a service is one list over every account and region
    (Zabbix deletes what a list leaves out), sent whenever one of them rediscovered.
    """

    def __init__(self, settings: AwsSettings, make_poller: PollerMaker = AwsPoller) -> None:
        self.settings = settings
        self.pollers: list[tuple[AccountSettings, AwsPoller]] = [
            (account, make_poller(scoped(settings, account, region)))
            for account in settings.accounts
            for region in account.regions
        ]
        self.stats = {account.label: AccountStats() for account in settings.accounts}
        self.calls = ApiCalls()  # the section's own identity: the event queue's calls
        self.totals = Totals()
        self._accounts_sent = False

    @property
    def where(self) -> str:
        return ", ".join(poller.where for _, poller in self.pollers)

    @property
    def resources(self) -> dict[str, list[Resource]]:
        merged: dict[str, list[Resource]] = {}
        for _, poller in self.pollers:
            for name, found in poller.resources.items():
                merged.setdefault(name, []).extend(found)
        return merged

    def cycle(self) -> CycleResult:
        cycle = Cycle()
        found: set[str] = set()
        reasons: dict[str, list[str]] = {account.label: [] for account in self.settings.accounts}
        for account, poller in self.pollers:
            part = Cycle(where=f"{poller.where}: ")
            found.update(poller.poll(part))
            cycle.items.extend(part.items)
            for reason, count in part.errors.items():
                cycle.errors[f"{poller.where}: {reason}"] += count
                reasons[account.label].append(f"{poller.where}: {reason}")
            cycle.throttled |= part.throttled
            cycle.missing.update(part.missing)
            stats = self.stats[account.label]
            stats.throttles += part.throttles
            stats.denied += part.denied
        cycle.items[:0] = self._discoveries(found)
        self._account_metrics(cycle, reasons)
        self.totals.emit(cycle, self.settings.host, [poller for _, poller in self.pollers], self.calls)
        conditions = {f"{POLLING} {label}": sorted(texts) for label, texts in reasons.items()}
        return CycleResult(cycle.items, sorted(cycle.errors), cycle.throttled, conditions)

    def _discoveries(self, found: set[str]) -> list[Discovery]:
        host = self.settings.host
        out = []
        for name, rule in DISCOVERY_RULES.items():
            if name not in found:
                continue
            rows = [
                {**row, "{#ACCOUNT}": account.label, "{#REGION}": poller.settings.region}
                for account, poller in self.pollers
                for row in poller.rows(name)
            ]
            out.append(Discovery.now(host, rule, rows))
        if found or not self._accounts_sent:
            # The accounts come from the config: sent at start, so that a refused account has
            # its items before it ever answers, and then along with the services' lists.
            self._accounts_sent = True
            rows = [
                {
                    "{#ACCOUNT}": account.label,
                    "{#ACCOUNTID}": account.account_id,
                    "{#REGIONS}": " ".join(account.regions),
                }
                for account in self.settings.accounts
            ]
            out.append(Discovery.now(host, ACCOUNT_DISCOVERY, rows))
        return out

    def _account_metrics(self, cycle: Cycle, reasons: dict[str, list[str]]) -> None:
        calls: Counter[str] = Counter()
        for account, poller in self.pollers:
            calls[account.label] += poller.calls.total()
        host = self.settings.host
        for label, stats in self.stats.items():
            cycle.reading(host, f"aws.account.api.calls[{label}]", calls[label])
            cycle.reading(host, f"aws.account.throttles[{label}]", stats.throttles)
            cycle.reading(host, f"aws.account.denied[{label}]", stats.denied)
            cycle.reading(host, f"aws.account.error[{label}]", "; ".join(sorted(reasons[label])) or "ok")
