"""The agent's own counters, and the readings that carry them to Zabbix.

Keys here are the contract with the template "trapline agent by Zabbix trapper".
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from trapline import __version__
from trapline.core.keys import quote_param
from trapline.core.model import Discovery, Item, Reading, now_clock


@dataclass(slots=True)
class DestinationStats:
    sent: int = 0  # values the destination accepted
    failed: int = 0  # values it refused (kept for retry)
    latency_last: float = 0.0  # seconds for the last delivery round
    latency_avg: float = 0.0  # exponentially weighted average
    backlog: int = 0

    def record_latency(self, seconds: float) -> None:
        self.latency_last = seconds
        self.latency_avg = seconds if self.latency_avg == 0 else 0.8 * self.latency_avg + 0.2 * seconds


@dataclass(slots=True)
class CollectorStats:
    readings: int = 0
    errors: int = 0


@dataclass(slots=True)
class AgentStats:
    started: float = field(default_factory=time.time)
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> count
    filtered: int = 0
    dropped: int = 0  # spool bound
    destinations: dict[str, DestinationStats] = field(default_factory=dict)
    collectors: dict[str, CollectorStats] = field(default_factory=dict)

    def destination(self, name: str) -> DestinationStats:
        return self.destinations.setdefault(name, DestinationStats())

    def collector(self, name: str) -> CollectorStats:
        return self.collectors.setdefault(name, CollectorStats())

    def readings(self, host: str, spool_depth: int, oldest_enqueued: float | None) -> list[Item]:
        """Everything the agent reports about itself, as items for ``host``."""
        clock, ns = now_clock()
        now = clock + ns / 1e9

        def r(key: str, value: int | float | str, unit: str = "") -> Reading:
            return Reading(host, key, value, clock, ns, unit)

        items: list[Item] = [
            Discovery(host, "trapline.destination.discovery",
                      tuple({"{#DEST}": d} for d in sorted(self.destinations)), clock, ns),
            Discovery(host, "trapline.collector.discovery",
                      tuple({"{#COLLECTOR}": c} for c in sorted(self.collectors)), clock, ns),
            r("trapline.uptime", int(now - self.started), "s"),
            r("trapline.version", __version__),
            r("trapline.spool.depth", spool_depth),
            r("trapline.spool.oldest.age", max(0.0, now - oldest_enqueued) if oldest_enqueued else 0.0, "s"),
            r("trapline.spool.dropped", self.dropped),
            r("trapline.rejected", sum(self.rejected.values())),
        ]
        for name, d in sorted(self.destinations.items()):
            items += [
                r(f"trapline.sent[{quote_param(name)}]", d.sent),
                r(f"trapline.failed[{quote_param(name)}]", d.failed),
                r(f"trapline.send.latency[{quote_param(name)}]", round(d.latency_avg, 6), "s"),
                r(f"trapline.backlog[{quote_param(name)}]", d.backlog),
            ]
        for name, c in sorted(self.collectors.items()):
            items += [
                r(f"trapline.collector.readings[{quote_param(name)}]", c.readings),
                r(f"trapline.collector.errors[{quote_param(name)}]", c.errors),
            ]
        return items
