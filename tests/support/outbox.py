"""The simplest Outbox for collector tests: remembers what a collector put and reported."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from trapline.core.model import Discovery, Item, Reading, Value
from trapline.core.plugin import Collector


class ListOutbox:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.errors: list[str] = []
        self.conditions: dict[str, str] = {}  # active condition -> its latest reason
        self.cleared: list[str] = []

    def put(self, item: Item) -> None:
        self.items.append(item)

    def error(self, reason: str, condition: str | None = None) -> None:
        self.errors.append(reason)
        if condition is not None:
            self.conditions[condition] = reason

    def resolved(self, condition: str, message: str) -> None:
        self.conditions.pop(condition, None)
        self.cleared.append(message)

    def readings(self, key: str, host: str | None = None) -> list[Reading]:
        return [i for i in self.items if isinstance(i, Reading) and i.key == key and host in (None, i.host)]

    def values(self, key: str) -> list[Value]:
        return [r.value for r in self.readings(key)]

    def discoveries(self, rule: str | None = None) -> list[Discovery]:
        return [i for i in self.items if isinstance(i, Discovery) and rule in (None, i.rule)]


def run_collector_until(
    collector: Collector, out: ListOutbox, done: Callable[[ListOutbox], bool], limit: float
) -> None:
    """Run ``collector`` until ``done(out)`` holds, then cancel it; fail after ``limit`` seconds."""

    async def scenario() -> None:
        task = asyncio.create_task(collector.run(out))
        async with asyncio.timeout(limit):
            while not done(out):
                assert not task.done(), "the collector loop ended"
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
