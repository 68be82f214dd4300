"""The simplest Outbox for collector tests: remembers what a collector put and reported."""

from __future__ import annotations

from trapline.middleware.model import Discovery, Item, Reading, Value


class ListOutbox:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.errors: list[str] = []

    def put(self, item: Item) -> None:
        self.items.append(item)

    def error(self, reason: str) -> None:
        self.errors.append(reason)

    def readings(self, key: str, host: str | None = None) -> list[Reading]:
        return [i for i in self.items if isinstance(i, Reading) and i.key == key and host in (None, i.host)]

    def values(self, key: str) -> list[Value]:
        return [r.value for r in self.readings(key)]

    def discoveries(self, rule: str | None = None) -> list[Discovery]:
        return [i for i in self.items if isinstance(i, Discovery) and rule in (None, i.rule)]
