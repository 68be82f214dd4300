"""The Mist collector: site lookup, stream connections, the AP fleet and its output."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from trapline.collectors.mist.fleet import FieldSchema, Fleet, FleetPolicy, encode_json
from trapline.collectors.mist.frames import DataFrame, FrameError, device_stats_channel, site_of_channel
from trapline.collectors.mist.rest import (
    MistRest,
    RateLimited,
    RestBudget,
    RestError,
    SiteDirectory,
    site_inventory,
)
from trapline.collectors.mist.settings import MistSettings
from trapline.collectors.mist.stream import StreamConnection
from trapline.core.backoff import Backoff
from trapline.core.config import Secret
from trapline.core.model import Reading
from trapline.core.plugin import Outbox

logger = logging.getLogger(__name__)
_SITE_LOOKUP = "site lookup"  # the condition key of failing REST site lookups
_INVENTORY = "device inventory"  # ... and of failing device inventory calls

STATS_KEY = "mist.collector.stats"


class MistCollector:
    def __init__(self, name: str, settings: MistSettings, token: Secret) -> None:
        self.name = name
        self.settings = settings
        self._token = token
        self.fleet = Fleet(
            FleetPolicy(
                discovery_host=settings.discovery_host,
                node_prefix=settings.node_prefix,
                switch_prefix=settings.switch_prefix,
                gateway_prefix=settings.gateway_prefix,
                device_types=settings.device_types,
                stale_after=settings.stale_after,
                min_interval=settings.min_interval,
                lld_min_interval=settings.lld_min_interval,
                lld_refresh=settings.lld_refresh,
            ),
            FieldSchema.load(),
        )
        rest = MistRest(
            settings.rest_url, token, RestBudget(settings.rest_calls_per_hour), settings.rest_timeout
        )
        self.directory = SiteDirectory(rest, settings.orgs, settings.sites, settings.shard)
        self.connections: dict[int, StreamConnection] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._assignment: dict[str, int] = {}  # channel -> connection index; stable across refreshes
        self._rest_backoff = Backoff(settings.retry_min, settings.retry_max)
        self._inventory_backoff = Backoff(settings.retry_min, settings.retry_max)
        # Site -> monotonic time its device inventory was last read: at most once per site_refresh.
        self._inventory_read: dict[str, float] = {}
        self._stats_sent: float | None = None

    def __repr__(self) -> str:
        return f"MistCollector({self.name!r}, {self.settings.stream_url!r})"

    async def run(self, out: Outbox) -> None:
        try:
            self._apply_sites(out)  # configured sites are subscribed before any REST call
            await asyncio.gather(
                self._forever(out, "site lookup", self._refresh_sites),
                self._forever(out, "housekeeping", self._housekeeping),
                self._forever(out, "device inventory", self._read_inventories),
            )
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            self._tasks.clear()
            for item in self.fleet.flush():  # what arrived is sent, even on shutdown
                out.put(item)

    # -- data ----------------------------------------------------------------
    def accept(self, event: DataFrame, out: Outbox) -> None:
        """One data frame from any connection."""
        site_id = site_of_channel(event.channel)
        if site_id is None or site_id not in self.fleet.sites:
            out.error(f"data on a channel not subscribed: {event.channel[:80]!r}")
            return
        now = time.monotonic()  # one reading of the clock serves the update and what it makes due
        try:
            problems = self.fleet.update(site_id, event.data, now)
        except FrameError as exc:
            out.error(f"site {site_id}: {exc}")
            return
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            out.error(f"site {site_id}: dropped {'; '.join(problems[:3])}{more}")
        for item in self.fleet.due(now, sweep=False):
            out.put(item)

    # -- background loops ----------------------------------------------------
    async def _forever(self, out: Outbox, what: str, step: Callable[[Outbox], Awaitable[float]]) -> None:
        """Run ``step`` again and again, sleeping what it returns; no failure ends the loop."""
        while True:
            try:
                delay = await step(out)
            except Exception as exc:
                logger.debug("mist %s: %s failed", self.name, what, exc_info=True)
                out.error(f"{what} failed: {type(exc).__name__}: {exc}", what)
                delay = self.settings.retry_max
            await asyncio.sleep(delay)

    async def _housekeeping(self, out: Outbox) -> float:
        now = time.monotonic()
        for item in self.fleet.due(now, streams_up=self._streams_up()):
            out.put(item)
        if self._stats_sent is None or now - self._stats_sent >= self.settings.state_interval:
            self._stats_sent = now
            out.put(self.stats())
        return self.settings.tick

    def _streams_up(self) -> bool:
        return all(c.channels <= c.subscribed for c in self.connections.values())

    def stats(self) -> Reading:
        """The collector's state for the discovery host: its share of sites, streams and devices.

        Sent every ``state_interval`` whatever happens, so that its absence means the agent
        (or its way to Zabbix) is gone: one root cause for every AP's silence.
        """
        channels = sum(len(c.channels) for c in self.connections.values())
        subscribed = sum(len(c.subscribed & c.channels) for c in self.connections.values())
        unmonitored = self.fleet.unmonitored()
        value = {
            "shard": str(self.settings.shard),
            "orgs": len(self.directory.orgs),
            "sites": len(self.fleet.sites),
            "channels": channels,
            "channels_down": channels - subscribed,
            "devices": len(self.fleet),
            "monitored": len(self.fleet) - sum(unmonitored.values()),
            "unmonitored": dict(unmonitored),
        }
        return Reading.now(self.settings.discovery_host, STATS_KEY, encode_json(value).decode())

    async def _refresh_sites(self, out: Outbox) -> float:
        failures = await self.directory.refresh()
        self._apply_sites(out)
        if not failures:
            self._rest_backoff.reset()
            out.resolved(_SITE_LOOKUP, "site lookup works again")
            return self.settings.site_refresh
        return self._retry_later(out, _SITE_LOOKUP, failures, self._rest_backoff)

    @staticmethod
    def _retry_later(out: Outbox, condition: str, failures: list[RestError], backoff: Backoff) -> float:
        """Report failed REST calls under ``condition``; returns the delay before the next try."""
        delay = backoff.next_delay()
        for failure in failures:
            if isinstance(failure, RateLimited) and failure.retry_after is not None:
                delay = max(delay, failure.retry_after)
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        # Keyed on the condition: the text carries a delay that changes on every retry.
        out.error(f"{condition}: {failures[0]}{more}; retrying in {delay:.3g}s", condition)
        return delay

    async def _read_inventories(self, out: Outbox) -> float:
        """Read the device inventory of each site that holds a device of unknown kind.

        Only such sites cost calls (none while every update tells its kind by ``type``
        or model), each at most once per ``site_refresh``: a device the inventory did
        not list yet waits for the next read.  The calls share the REST budget with the
        site lookup.  A failing read is retried with backoff; the devices stay held.
        """
        now = time.monotonic()
        due = sorted(
            site
            for site in self.fleet.sites_with_unknown_kinds()
            if now - self._inventory_read.get(site, -self.settings.site_refresh) >= self.settings.site_refresh
        )
        failures: list[RestError] = []
        for site in due:
            try:
                listed, left_out = await site_inventory(self.directory.rest, site)
            except RateLimited as exc:
                failures.append(exc)
                break  # the token is over its limit: the other sites would be refused too
            except RestError as exc:
                failures.append(exc)
                continue
            self._inventory_read[site] = now
            classified = self.fleet.learn_inventory(site, listed)
            logger.info(
                "collector %s: site %s: inventory of %d devices (%d items without kind or MAC left out) "
                "classified %d held devices",
                self.name, site, len(listed), left_out, classified,
            )
        if not failures:
            if due:
                self._inventory_backoff.reset()
                out.resolved(_INVENTORY, "device inventory works again")
            return self.settings.tick
        return self._retry_later(out, _INVENTORY, failures, self._inventory_backoff)

    # -- connections ---------------------------------------------------------
    def _apply_sites(self, out: Outbox) -> None:
        sites = self.directory.known()
        self.fleet.set_sites(sites)
        self._rebalance({device_stats_channel(s) for s in sites}, out)

    def _rebalance(self, channels: set[str], out: Outbox) -> None:
        """Spread channels over connections; only connections whose set changed restart."""
        limit = self.settings.channels_per_connection
        assignment = {ch: i for ch, i in self._assignment.items() if ch in channels}
        load = Counter(assignment.values())
        for channel in sorted(channels - assignment.keys()):
            index = next(i for i in itertools.count() if load[i] < limit)
            assignment[channel] = index
            load[index] += 1
        self._assignment = assignment
        groups: dict[int, set[str]] = {}
        for channel, index in assignment.items():
            groups.setdefault(index, set()).add(channel)
        for index in list(self.connections):
            if frozenset(groups.get(index, ())) != self.connections[index].channels:
                self._tasks.pop(index).cancel()
                del self.connections[index]
        for index, group in sorted(groups.items()):
            if index not in self.connections:
                self._start(index, frozenset(group), out)

    def _start(self, index: int, channels: frozenset[str], out: Outbox) -> None:
        connection = StreamConnection(
            f"collector {self.name}: connection {index}",
            self.settings,
            self._token,
            channels,
            on_data=lambda event: self.accept(event, out),
            out=out,
        )
        self.connections[index] = connection
        self._tasks[index] = asyncio.create_task(connection.run(), name=connection.label)
        logger.info("%s: %d channels", connection.label, len(channels))
