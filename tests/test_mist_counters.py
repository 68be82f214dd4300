"""Hypothesis: every counter measurement after the first gives its rate once, at its update's time, exactly.

The fleet works out each counter's per-second rate between its two last measurements and
sends it in the ``rates`` member of the ``mist.ap.raw`` value of the update that measured
it; the template's rate items read it there (JSONPath, discard when absent), and this
test reads it the same way.

Shapes: the published Mist device-stats schema (every field optional; port_stat and
radio_stat entries with rx/tx byte, packet and error counters; partial "basic" updates
carrying only a few fields).  The generator moves every counter at a known rate and
sends it in any mix and order of full updates, partial updates without counters and
partial updates with only some counters; every rate the fleet emits must be the
generator's rate.
"""

from __future__ import annotations

import json
from pathlib import Path
from random import Random
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_mist_fleet import MAC1, NODE1, make_fleet
from trapline.collectors.mist import fleet as fleet_module
from trapline.collectors.mist.fleet import RATES_MEMBER, RAW_KEY, FieldSchema, raw_key
from trapline.core.model import Item, Reading

SCHEMA = FieldSchema.load()
DEVICE_ID = f"00000000-0000-0000-1000-{MAC1}"
ENTRIES = {"port_stat": ["eth0", "eth1"], "radio_stat": ["band_24", "band_5"]}
# The AP's counters (the maps an AP sends); switches' and gateways' are tests/test_mist_wired.py's.
AP_COUNTERS = {name: members for name, members in SCHEMA.counters.items() if name in ENTRIES}
# Per-millisecond increments of each counter (distinct, so a mixed-up sample shows).
RATES = {
    (name, entry, member): 3 + 7 * i
    for i, (name, entry, member) in enumerate(
        (name, entry, member)
        for name, members in AP_COUNTERS.items()
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


Counter = tuple[str, str, str]  # map, entry, member


def emitted_rates(items: list[Item]) -> list[tuple[Counter, float]]:
    """What the template's rate items of NODE1 take from ``items``, as Zabbix does: JSONPath
    ``$.rates.<map>['<entry>'].<member>`` on each mist.ap.raw value; a value without it is discarded."""
    out = []
    for item in items:
        if isinstance(item, Reading) and item.host == NODE1:
            assert item.key in {RAW_KEY, "mist.ap.stale"}, item.key  # no value of its own per counter
            if item.key == RAW_KEY:
                for name, entries in json.loads(str(item.value)).get(RATES_MEMBER, {}).items():
                    for entry, members in entries.items():
                        out.extend(((name, entry, member), value) for member, value in members.items())
    return out


def feed(fleet: fleet_module.Fleet, update: dict[str, Any], t_ms: int, as_text: bool = False) -> list[Item]:
    """One update arriving at ``t_ms`` (wall clock, as the fleet stamps it), and what is sent then."""
    with mock.patch.object(fleet_module.time, "time_ns", return_value=t_ms * 1_000_000):
        fleet.update("s1", json.dumps(update) if as_text else update, t_ms / 1000)
    return fleet.due(t_ms / 1000)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(step, min_size=2, max_size=12))
def test_rates_from_emitted_counters_are_the_generators(steps: list[tuple[int, str, Any, bool]]) -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    t_ms = START_MS
    got: dict[Counter, int] = {}
    measurements: dict[Counter, int] = {}
    first = True
    for delta, kind, rnd, as_text in steps:
        t_ms += delta
        update = counters_update(t_ms, "full" if first else kind, rnd)
        for counter, rate in emitted_rates(feed(fleet, update, t_ms, as_text)):
            # The generator's rate is per millisecond.
            assert rate == pytest.approx(RATES[counter] * 1000, rel=1e-9), counter
            got[counter] = got.get(counter, 0) + 1
        for (name, entry, member) in RATES:
            if member in update.get(name, {}).get(entry, {}):
                measurements[name, entry, member] = measurements.get((name, entry, member), 0) + 1
        first = False
    # Every measurement but a counter's first gives one rate, nothing more.
    assert got == {counter: n - 1 for counter, n in measurements.items() if n > 1}


def raw_values(items: list[Item]) -> list[dict[str, Any]]:
    return [json.loads(str(i.value)) for i in items if isinstance(i, Reading) and i.key == RAW_KEY]


def eth0_rx(update: dict[str, Any], value: int) -> dict[str, Any]:
    update["port_stat"] = {"eth0": {"rx_bytes": value}}
    return update


def at_second(fleet: fleet_module.Fleet, second: int, kind: str) -> list[dict[str, Any]]:
    """The mist.ap.raw values sent after an update of ``kind`` arriving ``second`` s after START_MS."""
    t_ms = START_MS + 1000 * second
    return raw_values(feed(fleet, counters_update(t_ms, kind, Random(second)), t_ms))


RX = ("port_stat", "eth0", "rx_bytes")


def test_a_partial_update_without_counters_sends_no_rate_and_keeps_the_state() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    at_second(fleet, 0, "full")
    [with_rates] = at_second(fleet, 1, "full")
    assert with_rates[RATES_MEMBER]["port_stat"]["eth0"]["rx_bytes"] == RATES[RX] * 1000
    [without] = at_second(fleet, 2, "no counters")
    assert RATES_MEMBER not in without
    # The merged state still holds the last counters, for the Prometheus expansion.
    assert without["port_stat"]["eth0"]["rx_bytes"] == RATES[RX] * (START_MS + 1000)


def test_a_counter_that_goes_down_gives_no_rate_then_counts_from_there() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    base = {"id": DEVICE_ID, "mac": MAC1, "type": "ap"}
    sent = [
        emitted_rates(feed(fleet, eth0_rx(dict(base), value), START_MS + 1000 * i))
        for i, value in enumerate([5_000, 7_000, 100, 600, 600])  # an AP restart between 2nd and 3rd
    ]
    assert sent == [[], [(RX, 2000.0)], [], [(RX, 500.0)], [(RX, 0.0)]]


def test_the_same_clock_twice_gives_no_rate() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    base = {"id": DEVICE_ID, "mac": MAC1, "type": "ap"}
    assert emitted_rates(feed(fleet, eth0_rx(dict(base), 10), START_MS)) == []
    assert emitted_rates(feed(fleet, eth0_rx(dict(base), 20), START_MS)) == []
    assert emitted_rates(feed(fleet, eth0_rx(dict(base), 30), START_MS + 500)) == [(RX, 20.0)]


def test_min_interval_merges_updates_but_never_holds_back_rates() -> None:
    fleet = make_fleet(lld_min_interval=0.0, min_interval=60.0)
    at_second(fleet, 0, "full")
    assert len(at_second(fleet, 1, "full")) == 1
    assert at_second(fleet, 2, "no counters") == []  # merged, sent once min_interval has passed
    [sent] = at_second(fleet, 3, "full")
    assert sent["uptime"] == (START_MS + 3000) // 1000 and RATES_MEMBER in sent


TEMPLATES = Path(__file__).parents[1] / "zabbix_templates"


def test_every_counter_has_a_rate_item_reading_its_rate() -> None:
    """fields.toml's [counters] against the templates (a key mist.<kind>.* is the mist_<kind> template's):
    per counter, a dependent item prototype of mist.<kind>.raw that reads the rate, discards values without
    it, and has no change-per-second step (the rate is one already; that step after a discarding one
    stored nothing on 6.0 and 7.0)."""
    for name, members in SCHEMA.counters.items():
        for member, key in members.items():
            kind = key.split(".")[1]
            path = TEMPLATES / f"mist_{kind}" / f"template_mist_{kind}.yaml"
            template = yaml.safe_load(path.read_text(encoding="utf-8"))["zabbix_export"]["templates"][0]
            prototypes = {
                p["key"]: p for rule in template["discovery_rules"] for p in rule.get("item_prototypes", [])
            }
            [item] = [p for k, p in prototypes.items() if k.startswith(f"{key}[")]
            macro = item["key"][len(key) + 1 : -1]
            steps = item["preprocessing"]
            assert item["type"] == "DEPENDENT" and item["master_item"]["key"] == raw_key(kind)
            assert steps[0] == {
                "type": "JSONPATH",
                "parameters": [f"$.{RATES_MEMBER}.{name}['{macro}'].{member}"],
                "error_handler": "DISCARD_VALUE",
            }
            assert [s["type"] for s in steps[1:]] in ([], ["MULTIPLIER"])
