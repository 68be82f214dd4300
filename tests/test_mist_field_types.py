"""Hypothesis: every kept field is checked against the type fields.toml declares for it.

Shapes: the Mist device-stats models (every field optional; numbers, text, booleans and
nested objects as the published schema gives them); here each kept field gets any JSON
value at all, to show that a wrongly typed one is dropped for that update, named in the
returned reasons (which the collector counts) and never part of what goes to Zabbix.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.test_mist_fleet import MAC1, make_fleet, raw
from trapline.collectors.mist.fleet import RATES_MEMBER, FieldSchema

SCHEMA = FieldSchema.load()
DEVICE_ID = f"00000000-0000-0000-1000-{MAC1}"
IDENTITY = {"id", "mac", "type"}  # fixed below so the update reaches an AP host

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)


def fits(level: str, member: str, value: object) -> bool:
    return type(value) in SCHEMA.accepted[level][member]


def wrong(level: str, member: str, value: object) -> bool:
    return value is not None and not fits(level, member, value)


def array_item(name: str, key: str) -> st.SearchStrategy[dict[str, Any]]:
    members = st.dictionaries(st.sampled_from(sorted(SCHEMA.maps[name])), json_values, max_size=3)
    if not key:
        return members
    return st.builds(lambda item, k: item | {key: k}, members, st.sampled_from(["ge-0/0/1", "x", 3]))


top = st.dictionaries(st.sampled_from(sorted(SCHEMA.scalars - IDENTITY)), json_values, max_size=6)
nested = st.fixed_dictionaries(
    {},
    optional={
        **{
            n: st.dictionaries(st.sampled_from(sorted(m)), json_values, max_size=3)
            for n, m in SCHEMA.objects.items()
        },
        **{
            n: st.dictionaries(
                st.sampled_from(["eth0", "band_5"]),
                st.dictionaries(st.sampled_from(sorted(m)), json_values, max_size=3),
                max_size=2,
            )
            for n, m in SCHEMA.maps.items()
            if n not in SCHEMA.lists
        },
        # Arrays of items (ports, tunnels, SPUs...), each named by its key member (or position).
        **{
            spec.source: st.lists(array_item(n, spec.key), max_size=2)
            for n, spec in SCHEMA.lists.items()
            if not spec.within
        },
    },
)


def expected_problems(update: dict[str, Any]) -> int:
    count = sum(wrong("", k, v) for k, v in update.items() if k in SCHEMA.scalars)
    for name in SCHEMA.objects:
        count += sum(wrong(name, k, v) for k, v in update.get(name, {}).items())
    for name in SCHEMA.maps:
        spec = SCHEMA.lists.get(name)
        if spec is None:
            entries = update.get(name, {}).values()
        else:
            entries = update.get(spec.source, []) if not spec.within else []
        count += sum(
            wrong(name, k, v)
            for entry in entries
            for k, v in entry.items()
            if k != getattr(spec, "key", None)
        )
    return count


def assert_declared_types(state: dict[str, Any]) -> None:
    for key, value in state.items():
        if key == RATES_MEMBER:  # rates of declared counters only, numbers only
            for name, entries in value.items():
                members = [(k, v) for entry in entries.values() for k, v in entry.items()]
                assert all(k in SCHEMA.counters[name] and fits(name, k, v) for k, v in members), (key, value)
        elif key in SCHEMA.objects:
            assert all(fits(key, k, v) for k, v in value.items()), (key, value)
        elif key in SCHEMA.maps:
            assert all(fits(key, k, v) for entry in value.values() for k, v in entry.items()), (key, value)
        else:
            assert fits("", key, value), (key, value)


@settings(max_examples=300, deadline=None)
@given(
    updates=st.lists(st.builds(lambda a, b: a | b, top, nested), min_size=1, max_size=4),
    as_text=st.booleans(),
)
# found by the search once: a counter jumping near float's limit made an infinite rate
@example(updates=[{"port_stat": {"eth0": {"rx_errors": 0}}},
                  {"port_stat": {"eth0": {"rx_errors": 1.797693134862316e299}}}], as_text=False)
def test_wrongly_typed_fields_are_dropped_counted_and_never_sent(
    updates: list[dict[str, Any]], as_text: bool
) -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    for step, fields in enumerate(updates):
        update = {"id": DEVICE_ID, "mac": MAC1, "type": "ap"} | fields
        problems = fleet.update("s1", json.dumps(update) if as_text else update, float(step))
        assert len(problems) == expected_problems(update)
        for state in raw(fleet.due(float(step))):
            assert_declared_types(state)


def test_a_cpu_of_high_is_dropped_and_the_rest_kept() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    update = {"id": DEVICE_ID, "mac": MAC1, "type": "ap", "cpu_util": "high", "num_clients": 2}
    problems = fleet.update("s1", json.dumps(update), 0.0)
    assert [p.split(":")[0] for p in problems] == ["field cpu_util"]
    (state,) = raw(fleet.due(0.0))
    assert "cpu_util" not in state and state["num_clients"] == 2
