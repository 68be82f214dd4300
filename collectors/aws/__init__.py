"""AWS poller: EMR clusters, EMR Serverless applications and Glue jobs, one account+region.

Discovers the resources (LLD, full list every ``discovery_interval``), reports
run and state health from the service APIs every ``poll_interval``, reads the
CloudWatch metrics of ``metrics.toml`` with GetMetricData, and reports its own
API calls, cost estimate and errors.  Items and hosts: see README.md.

Settings: ``sample.toml`` beside this file.
"""

from __future__ import annotations

import asyncio
import logging

from trapline.collectors.aws.poller import AwsPoller, CycleResult
from trapline.collectors.aws.settings import AwsSettings, parse_settings
from trapline.core.backoff import Backoff
from trapline.core.config import Section
from trapline.core.plugin import Outbox

log = logging.getLogger(__name__)
_POLLING = "polling"  # the condition key of failing poll cycles


class AwsCollector:
    def __init__(self, name: str, settings: AwsSettings, poller: AwsPoller | None = None) -> None:
        self.name = name
        self.settings = settings
        self.poller = poller or AwsPoller(settings)
        # Throttled cycles wait twice the interval, then longer, up to max_backoff.
        self.throttle_backoff = Backoff(initial=2 * settings.poll_interval, cap=settings.max_backoff)

    async def run(self, out: Outbox) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            result = await self._cycle()
            for item in result.items:
                out.put(item)
            for reason in result.errors:
                out.error(f"{self.name}: {reason}", _POLLING)
            if not result.errors:
                out.resolved(_POLLING, f"{self.name}: a poll cycle succeeded again")
            await asyncio.sleep(self.next_delay(result.throttled, loop.time() - started))

    async def _cycle(self) -> CycleResult:
        try:
            # boto3 blocks: a whole cycle runs in a worker thread and hands back
            # its items, so the event loop never waits on AWS.
            return await asyncio.to_thread(self.poller.cycle)
        except Exception as exc:  # every step guards itself; this is the last net
            log.exception("%s: poll cycle failed", self.name)
            return CycleResult(errors=[f"unexpected error ({type(exc).__name__})"])

    def next_delay(self, throttled: bool, elapsed: float) -> float:
        if throttled:
            return self.throttle_backoff.next_delay()
        self.throttle_backoff.reset()
        return max(0.0, self.settings.poll_interval - elapsed)

    async def check(self) -> str:
        """One cycle against AWS, for ``trapline check``."""
        result = await self._cycle()
        if result.errors:
            raise RuntimeError("; ".join(result.errors))
        counts = ", ".join(f"{len(found)} {name}" for name, found in self.poller.resources.items())
        return f"{self.settings.region}: {counts or 'no services enabled'}"


def build(name: str, section: Section) -> AwsCollector:
    return AwsCollector(name, parse_settings(name, section))
