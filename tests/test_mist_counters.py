"""Hypothesis: counters leave the fleet once per measurement, stamped with its time, so rates are exact.

They travel in the ``counters`` member of the ``mist.ap.raw`` value of the update that
measured them; the template's rate items read them there (JSONPath, discard when absent,
then change per second), and this test reads them the same way.

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
from pathlib import Path
from random import Random
from typing import Any
from unittest import mock

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_mist_fleet import MAC1, NODE1, make_fleet
from trapline.collectors.mist import fleet as fleet_module
from trapline.collectors.mist.fleet import COUNTERS_MEMBER, RAW_KEY, FieldSchema
from trapline.core.model import Item, Reading

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


Sample = tuple[str, str, str]  # map, entry, member


def measured(items: list[Item]) -> list[tuple[int, Sample, float]]:
    """What the template's rate items of NODE1 take from ``items``: (ms, counter, value) per sample.

    As Zabbix does: JSONPath ``$.counters.<map>['<entry>'].<member>`` on each mist.ap.raw
    value, at that value's clock; a value without it is discarded (no sample).
    """
    out = []
    for item in items:
        if isinstance(item, Reading) and item.host == NODE1:
            assert item.key in {RAW_KEY, "mist.ap.stale"}, item.key  # no value of its own per counter
            at_ms = item.clock * 1000 + item.ns // 1_000_000
            if item.key == RAW_KEY:
                for name, entries in json.loads(str(item.value)).get(COUNTERS_MEMBER, {}).items():
                    for entry, members in entries.items():
                        out.extend((at_ms, (name, entry, member), value) for member, value in members.items())
    return out


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, min_size=2, max_size=12))
def test_rates_from_emitted_counters_are_the_generators(steps: list[tuple[int, str, Any, bool]]) -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    t_ms = START_MS
    samples: dict[Sample, list[tuple[int, float]]] = {}
    expected: dict[Sample, int] = {}  # samples each counter must have had
    first = True
    for delta, kind, rnd, as_text in steps:
        t_ms += delta
        update = counters_update(t_ms, "full" if first else kind, rnd)
        with mock.patch.object(fleet_module.time, "time_ns", return_value=t_ms * 1_000_000):
            fleet.update("s1", json.dumps(update) if as_text else update, t_ms / 1000)
        for at_ms, counter, value in measured(fleet.due(t_ms / 1000)):
            samples.setdefault(counter, []).append((at_ms, value))
        # Every update's counters, the first one's too: its value goes out right after the LLD
        # value that announces the host (lld_min_interval 0), still at its own time.
        for (name, entry, member) in RATES:
            if member in update.get(name, {}).get(entry, {}):
                expected[name, entry, member] = expected.get((name, entry, member), 0) + 1
        first = False
    for key, rate in RATES.items():
        got = samples.get(key, [])
        assert len(got) == expected.get(key, 0), key  # every measurement once, nothing more
        for (t0, v0), (t1, v1) in pairwise(got):
            assert t1 > t0
            assert (float(v1) - float(v0)) / (t1 - t0) == rate, key


def raw_values(items: list[Item]) -> list[dict[str, Any]]:
    return [json.loads(str(i.value)) for i in items if isinstance(i, Reading) and i.key == RAW_KEY]


def test_a_partial_update_without_counters_sends_none() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    fleet.update("s1", counters_update(START_MS, "full", Random(0)), 0.0)
    fleet.due(0.0)
    fleet.update("s1", counters_update(START_MS + 1000, "full", Random(1)), 1.0)
    [with_counters] = raw_values(fleet.due(1.0))
    rx_bytes = RATES["port_stat", "eth0", "rx_bytes"] * (START_MS + 1000)
    assert with_counters[COUNTERS_MEMBER]["port_stat"]["eth0"]["rx_bytes"] == rx_bytes
    fleet.update("s1", counters_update(START_MS + 2000, "no counters", Random(2)), 2.0)
    [without] = raw_values(fleet.due(2.0))
    assert COUNTERS_MEMBER not in without
    # The merged state still holds the last counters, for the Prometheus expansion.
    assert without["port_stat"]["eth0"]["rx_bytes"] == with_counters["port_stat"]["eth0"]["rx_bytes"]


def test_min_interval_merges_updates_but_never_holds_back_measured_counters() -> None:
    fleet = make_fleet(lld_min_interval=0.0, min_interval=60.0)
    fleet.update("s1", counters_update(START_MS, "full", Random(0)), 0.0)
    fleet.due(0.0)
    fleet.update("s1", counters_update(START_MS + 1000, "full", Random(1)), 1.0)
    assert len(raw_values(fleet.due(1.0))) == 1
    fleet.update("s1", counters_update(START_MS + 2000, "no counters", Random(2)), 2.0)
    assert raw_values(fleet.due(2.0)) == []  # merged, sent when min_interval has passed
    fleet.update("s1", counters_update(START_MS + 3000, "full", Random(3)), 3.0)
    [sent] = raw_values(fleet.due(3.0))
    assert sent["uptime"] == (START_MS + 3000) // 1000 and COUNTERS_MEMBER in sent
    assert raw_values(fleet.due(100.0, sweep=True)) == []  # nothing left to send


TEMPLATE = Path(__file__).parents[1] / "zabbix_templates" / "mist_ap" / "template_mist_ap.yaml"


def test_every_counter_has_a_rate_item_reading_it_as_measured() -> None:
    """fields.toml's [counters] against the AP template: one dependent item prototype per counter that
    reads it from the counters member, discards the value when this update did not measure it, and
    only then takes the change per second."""
    template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]["templates"][0]
    prototypes = {
        p["key"]: p for rule in template["discovery_rules"] for p in rule.get("item_prototypes", [])
    }
    for name, members in SCHEMA.counters.items():
        for member, key in members.items():
            [item] = [p for k, p in prototypes.items() if k.startswith(f"{key}[")]
            macro = item["key"][len(key) + 1 : -1]
            steps = item["preprocessing"]
            assert item["type"] == "DEPENDENT" and item["master_item"]["key"] == RAW_KEY
            assert steps[0]["type"] == "JSONPATH" and steps[0]["error_handler"] == "DISCARD_VALUE"
            assert steps[0]["parameters"] == [f"$.{COUNTERS_MEMBER}.{name}['{macro}'].{member}"]
            assert steps[-1]["type"] == "CHANGE_PER_SECOND"
            assert [s["type"] for s in steps[1:-1]] in ([], ["MULTIPLIER"])
