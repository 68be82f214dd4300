"""The two things that flow through trapline: a Reading and a Discovery."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

import msgspec

Value = str | int | float

_NS_PER_S = 1_000_000_000


def now_clock() -> tuple[int, int]:
    """Current wall clock as (seconds, nanoseconds), the form Zabbix stores."""
    t = time.time_ns()
    return t // _NS_PER_S, t % _NS_PER_S


# Both are frozen msgspec Structs, not frozen dataclasses: a frozen dataclass sets
# each field through object.__setattr__, which made building one several times dearer
# (bench/RESULTS.md, "Code shapes"), paid by the collector that makes a reading and
# again by each spool claim.  array_like: msgpack and JSON see the fields as an array in
# declaration order, the form the spool's batch rows store (so it decodes them
# straight into Readings): never reorder the fields.
# gc=False for Reading, made by the ten thousand: the cycle collector neither tracks
# nor walks them, which makes a spool claim of many readings cheaper.  Safe because a
# Reading holds only text, numbers and a label mapping of text, so it can never be
# part of a reference cycle; keep it so (no field that may refer back to objects).


class Reading(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One value of one item on one Zabbix host at one instant.

    ``key`` is the Zabbix item key (lowercase, dotted, optional ``[params]``);
    ``labels`` carry the same identity for Prometheus (e.g. ``{"pid": "RPM"}``);
    ``unit`` is the base unit after normalization ("" when dimensionless).
    """

    host: str
    key: str
    value: Value
    clock: int
    ns: int = 0
    unit: str = ""
    labels: Mapping[str, str] = msgspec.field(default_factory=dict)

    @classmethod
    def now(
        cls,
        host: str,
        key: str,
        value: Value,
        unit: str = "",
        labels: Mapping[str, str] | None = None,
    ) -> Reading:
        clock, ns = now_clock()
        return cls(host, key, value, clock, ns, unit, labels or {})


class Discovery(msgspec.Struct, frozen=True, array_like=True):
    """A low-level discovery value: the *full* list of rows for one LLD rule.

    Zabbix treats every LLD value as the complete set, so a collector always
    sends all current rows, never a delta.
    """

    host: str
    rule: str
    rows: Sequence[Mapping[str, str]]
    clock: int
    ns: int = 0

    @classmethod
    def now(cls, host: str, rule: str, rows: Sequence[Mapping[str, str]]) -> Discovery:
        clock, ns = now_clock()
        return cls(host, rule, tuple(rows), clock, ns)

    def as_reading(self) -> Reading:
        """The trapper value that carries this discovery to Zabbix."""
        payload = json.dumps({"data": [dict(r) for r in self.rows]}, separators=(",", ":"))
        return Reading(self.host, self.rule, payload, self.clock, self.ns)


Item = Reading | Discovery
