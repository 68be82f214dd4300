"""A synthetic source: a numbered sequence and a sine wave per series.

Useful to try a Zabbix set-up without any hardware, and for the fault tests:
``synthetic.seq[<series>]`` counts 1, 2, 3... so a missing or doubled value in
Zabbix history is plain to see.

Settings: ``sample.toml`` beside this file.
"""

from __future__ import annotations

import asyncio
import math

from trapline.core.config import Section
from trapline.core.model import Discovery, Reading, now_clock
from trapline.core.plugin import Outbox

DISCOVERY_RULE = "synthetic.discovery"


class SyntheticCollector:
    def __init__(self, name: str, host: str, series: int, interval: float, limit: int) -> None:
        self.name = name
        self.host = host
        self.series = [f"s{i}" for i in range(1, series + 1)]
        self.interval = interval
        self.limit = limit
        self.rounds = 0

    async def run(self, out: Outbox) -> None:
        out.put(Discovery.now(self.host, DISCOVERY_RULE, [{"{#SERIES}": s} for s in self.series]))
        while not self.limit or self.rounds < self.limit:
            self.rounds += 1
            clock, ns = now_clock()
            for i, s in enumerate(self.series):
                out.put(Reading(self.host, f"synthetic.seq[{s}]", self.rounds, clock, ns, "",
                                {"series": s}))
                wave = math.sin(self.rounds / 10 + i)
                out.put(Reading(self.host, f"synthetic.sine[{s}]", round(wave, 6), clock, ns, "",
                                {"series": s}))
            await asyncio.sleep(self.interval)


def build(name: str, section: Section) -> SyntheticCollector:
    collector = SyntheticCollector(
        name,
        host=section.text("host"),
        series=section.integer("series", 3, minimum=1),
        interval=section.number("interval", 1.0, minimum=0.001),
        limit=section.integer("limit", 0, minimum=0),
    )
    section.text("type")
    section.done()
    return collector
