"""AWS poller: EMR clusters, EMR Serverless applications and Glue jobs, of one account+region or a list.

Discovers the resources (LLD, full list every ``discovery_interval``), reports
run and state health from the service APIs every ``poll_interval``, reads the
CloudWatch metrics of ``metrics.toml`` with GetMetricData, and reports its own
API calls, cost estimate and errors.  With ``events_queue_url`` it also reads the
EventBridge state changes from SQS (queue.py, events.py) and the run and state
polls only reconcile.  Items and hosts: see README.md.

Settings: ``sample.toml`` beside this file.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Protocol

from trapline.collectors.aws.events import EventMapper, lookup_for
from trapline.collectors.aws.poller import POLLING, AccountsPoller, AwsPoller, CycleResult
from trapline.collectors.aws.queue import EventQueue, consume, make_sqs_client
from trapline.collectors.aws.resources import Resource
from trapline.collectors.aws.session import describe_failure
from trapline.collectors.aws.settings import AwsSettings, parse_settings
from trapline.core.backoff import Backoff
from trapline.core.config import Section
from trapline.core.plugin import CommittingOutbox, Outbox

log = logging.getLogger(__name__)


class Poller(Protocol):
    @property
    def where(self) -> str: ...

    @property
    def resources(self) -> dict[str, list[Resource]]: ...

    def cycle(self) -> CycleResult: ...


class AwsCollector:
    def __init__(self, name: str, settings: AwsSettings, poller: Poller | None = None) -> None:
        self.name = name
        self.settings = settings
        if poller is None:
            poller = AccountsPoller(settings) if settings.accounts else AwsPoller(settings)
        self.poller: Poller = poller
        # Throttled cycles wait twice the interval, then longer, up to max_backoff.
        self.throttle_backoff = Backoff(initial=2 * settings.poll_interval, cap=settings.max_backoff)
        self.events: EventQueue | None = None
        # A poll cycle and a poll an event asks for (events.NUDGES) never run at once.
        self.poll_lock = asyncio.Lock()
        url = settings.events_queue_url
        if url is not None and isinstance(self.poller, AwsPoller | AccountsPoller):
            maker = partial(make_sqs_client, settings, self.poller.calls)
            mapper = EventMapper(lookup_for(self.poller))
            self.events = EventQueue(url, maker, mapper, poll_lock=self.poll_lock)

    async def run(self, out: Outbox) -> None:
        if self.events is None:
            await self._poll(out)
            return
        if not isinstance(out, CommittingOutbox):
            raise TypeError("the AWS event queue needs an outbox that confirms spool commits")
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(consume(self.events, out, self.settings.max_backoff))
            tasks.create_task(self._poll(out))

    async def _poll(self, out: Outbox) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            result = await self._cycle()
            for item in result.items:
                out.put(item)
            if self.events is not None:
                for reading in self.events.readings(self.settings.host):
                    out.put(reading)
            # POLLING is also the condition of a cycle that crashed, whatever the form.
            crashed: dict[str, list[str]] = {POLLING: []}
            for condition, reasons in (crashed | result.conditions).items():
                for reason in reasons:
                    out.error(f"{self.name}: {reason}", condition)
                if not reasons:
                    out.resolved(condition, f"{self.name}: {condition}: a poll cycle succeeded again")
            await asyncio.sleep(self.next_delay(result.throttled, loop.time() - started))

    async def _cycle(self) -> CycleResult:
        try:
            # boto3 blocks: a whole cycle runs in a worker thread and hands back
            # its items, so the event loop never waits on AWS.
            async with self.poll_lock:
                return await asyncio.to_thread(self.poller.cycle)
        except Exception as exc:  # every step guards itself; this is the last net
            log.exception("%s: poll cycle failed", self.name)
            reason = f"unexpected error ({type(exc).__name__})"
            return CycleResult(errors=[reason], conditions={POLLING: [reason]})

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
        text = f"{self.poller.where}: {counts or 'no services enabled'}"
        if self.events is None:
            return text
        try:
            waiting = await asyncio.to_thread(self.events.waiting)
        except Exception as exc:
            raise RuntimeError(f"event queue: {describe_failure(exc).reason}") from None
        return f"{text}; event queue: {waiting} messages waiting"


def build(name: str, section: Section) -> AwsCollector:
    return AwsCollector(name, parse_settings(name, section))
