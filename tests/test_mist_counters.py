"""Hypothesis: counters leave the fleet once per measurement, stamped with its time, so rates are exact.

Shapes: the published Mist device-stats schema (every field optional; port_stat and
radio_stat entries with rx/tx byte, packet and error counters; partial "basic" updates
carrying only a few fields).  The generator moves every counter at a known rate and
sends it in any mix and order of full updates, partial updates without counters and
partial updates with only some counters; the rate computed from what the fleet emits
(what Zabbix's change-per-second computes) must be the generator's rate, every time.
"""

from __future__ import annotations

import json
from itertools import pairwise
from random import Random
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_mist_fleet import MAC1, NODE1, make_fleet
from trapline.collectors.mist import fleet as fleet_module
from trapline.collectors.mist.fleet import FieldSchema, lld_key_param
from trapline.core.model import Reading

SCHEMA = FieldSchema.load()
DEVICE_ID = f"00000000-0000-0000-1000-{MAC1}"
ENTRIES = {"port_stat": ["eth0", "eth1"], "radio_stat": ["band_24", "band_5"]}
# Per-millisecond increments of each counter (distinct, so a mixed-up sample shows).
RATES = {
    (name, entry, member): 3 + 7 * i
    for i, (name, entry, member) in enumerate(
        (name, entry, member)
        for name, members in SCHEMA.counters.items()
        for entry in ENTRIES[name]
        for member in members
    )
}
START_MS = 1_700_000_000_000

step = st.tuples(
    st.integers(1, 5_000),  # milliseconds since the previous update
    st.sampled_from(["full", "no counters", "some counters"]),
    st.randoms(use_true_random=False),
    st.booleans(),  # as JSON text or as an object
)


def counters_update(t_ms: int, kind: str, rnd: Any) -> dict[str, Any]:
    update: dict[str, Any] = {"id": DEVICE_ID, "mac": MAC1, "uptime": t_ms // 1000}
    if kind == "no counters":
        return update
    update |= {"type": "ap", "model": "AP43", "name": "ap-1", "status": "connected"}
    for (name, entry, member), rate in RATES.items():
        if kind == "some counters" and rnd.random() < 0.5:
            continue
        stats = update.setdefault(name, {}).setdefault(entry, {"up": True} if name == "port_stat" else {})
        stats[member] = rate * t_ms
    for name in list(update):  # any order of the fields, as JSON allows
        if rnd.random() < 0.5:
            update[name] = update.pop(name)
    return update


def key_of(name: str, entry: str, member: str) -> str:
    return f"{SCHEMA.counters[name][member]}[{lld_key_param(entry)}]"


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, min_size=2, max_size=12))
def test_rates_from_emitted_counters_are_the_generators(steps: list[tuple[int, str, Any, bool]]) -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    t_ms = START_MS
    samples: dict[str, list[tuple[int, float]]] = {}
    expected: dict[str, int] = {}  # counter samples each key must have had
    first = True
    for delta, kind, rnd, as_text in steps:
        t_ms += delta
        update = counters_update(t_ms, "full" if first else kind, rnd)
        with mock.patch.object(fleet_module.time, "time_ns", return_value=t_ms * 1_000_000):
            fleet.update("s1", json.dumps(update) if as_text else update, t_ms / 1000)
        announced_before = not first  # the first update's host does not exist yet: no samples
        for item in fleet.due(t_ms / 1000):
            if isinstance(item, Reading) and item.host == NODE1 and "[" in item.key:
                at_ms = item.clock * 1000 + item.ns // 1_000_000
                samples.setdefault(item.key, []).append((at_ms, item.value))
        if announced_before:
            for (name, entry, member) in RATES:
                if member in update.get(name, {}).get(entry, {}):
                    expected[key_of(name, entry, member)] = expected.get(key_of(name, entry, member), 0) + 1
        first = False
    for (name, entry, member), rate in RATES.items():
        key = key_of(name, entry, member)
        got = samples.get(key, [])
        assert len(got) == expected.get(key, 0), key  # every measurement once, nothing more
        for (t0, v0), (t1, v1) in pairwise(got):
            assert t1 > t0
            assert (float(v1) - float(v0)) / (t1 - t0) == rate, key


def test_a_partial_update_without_counters_sends_none() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    fleet.update("s1", counters_update(START_MS, "full", Random(0)), 0.0)
    fleet.due(0.0)
    fleet.update("s1", counters_update(START_MS + 1000, "full", Random(1)), 1.0)
    assert any("[" in i.key for i in fleet.due(1.0) if isinstance(i, Reading))
    fleet.update("s1", counters_update(START_MS + 2000, "no counters", Random(2)), 2.0)
    assert [i.key for i in fleet.due(2.0) if isinstance(i, Reading)] == ["mist.ap.raw"]


def test_entry_names_are_written_into_keys_as_zabbix_lld_writes_them() -> None:
    assert lld_key_param("eth0") == "eth0"
    assert lld_key_param("ge-0/0/1,2") == '"ge-0/0/1,2"'
    assert lld_key_param('a"]') == '"a\\"]"'
    assert lld_key_param(" x") == '" x"'
