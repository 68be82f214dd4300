"""Hypothesis: whatever sequence of full and partial updates an AP sends, its mist.ap.raw is the plain merge.

The fleet takes short cuts (an update shaped like the state replaces it unread,
the shape after a merge is remembered per pair of shapes, a known device is
found without checking its MAC again); the reference here takes none: it
keeps the state as dicts and merges every update into it.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.mist_server import ap_full
from tests.test_mist_fleet import state_text
from trapline.collectors.mist.fleet import RAW_KEY, FieldSchema, Fleet, FleetPolicy, SiteInfo, encode_json
from trapline.core.model import Reading

SCHEMA = FieldSchema.load()
MAC = "5c5b35000001"
DEVICE_ID = f"00000000-0000-0000-1000-{MAC}"

# Values of each type fields.toml may declare, or null (taken as absent); wrongly typed
# values are tests/test_mist_field_types.py's subject.
OF_TYPE: dict[frozenset[type], st.SearchStrategy[Any]] = {
    frozenset({str}): st.sampled_from(["a", "é", ""]),
    frozenset({int, float}): st.integers(-5, 5) | st.just(1.5),
    frozenset({bool}): st.booleans(),
}


def members_of(level: str, names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    declared = SCHEMA.accepted[level]
    one = st.sampled_from(names).flatmap(
        lambda name: st.tuples(st.just(name), st.none() | OF_TYPE[declared[name]])
    ) | st.tuples(st.just("dropped"), st.integers())
    return st.lists(one, max_size=4).map(dict)


def members(level: str) -> st.SearchStrategy[dict[str, Any]]:
    # A few of the kept members, sometimes one that is dropped; any order.
    return members_of(level, sorted(SCHEMA.accepted[level]))


def entries(level: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(["band_24", "band_5", "eth0", "eth1"]), members(level), max_size=3)


def keyed(level: str, key: str) -> st.SearchStrategy[dict[str, Any]]:
    """An array item: some members, named by its key member (positions need none)."""
    if not key:
        return members(level)
    return st.builds(
        lambda item, k: item | {key: k}, members(level), st.sampled_from(["a", "ge-0/0/1", 0, 1])
    )


def array(name: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A [lists] array (module_stat, ports, ...), its items with the arrays other lists read within them."""
    inner = {n: s for n, s in SCHEMA.lists.items() if s.within and s.source == name}
    item = st.builds(
        lambda outer, more: outer | more,
        keyed(name, SCHEMA.lists[name].key),
        st.fixed_dictionaries(
            {}, optional={s.within: st.lists(keyed(n, s.key), max_size=2) for n, s in inner.items()}
        ),
    )
    return st.lists(item, max_size=3)


nested = st.fixed_dictionaries(
    {},
    optional={
        **{name: members(name) for name in SCHEMA.objects},
        **{name: entries(name) for name in SCHEMA.maps if name not in SCHEMA.lists},
        **{name: array(name) for name, spec in SCHEMA.lists.items() if not spec.within},
    },
)
partial = st.builds(
    lambda top, inner: {"id": DEVICE_ID, "mac": MAC} | top | inner,
    members_of("", ["uptime", "num_clients", "name", "cpu_util"]),
    nested,
)
full = st.builds(
    lambda inner, reverse: _ordered(ap_full(MAC, "ap-1") | inner, reverse), nested, st.booleans()
)
# A full update first (it makes the device an AP, so its state is sent), then any mix; as
# Mist sends them (JSON text) or as objects: both ways must merge alike.
updates = st.builds(
    lambda first, rest: [first, *rest],
    st.tuples(full, st.booleans()),
    st.lists(st.tuples(full | partial, st.booleans()), max_size=7),
)


def make_fleet() -> Fleet:
    fleet = Fleet(
        FleetPolicy("Mist discovery", "mist-ap-", frozenset({"ap"}), 300.0, 0.0, 0.0, 3600.0), SCHEMA
    )
    fleet.set_sites({"s1": SiteInfo.unnamed("s1")})
    return fleet


def _ordered(update: dict[str, Any], reverse: bool) -> dict[str, Any]:
    return dict(reversed(update.items())) if reverse else update


def assert_merged_plainly(sequence: list[tuple[dict[str, Any], bool]]) -> None:
    """Each update (sent as JSON text or as an object) gives the state a plain dict merge gives."""
    fleet = make_fleet()
    reference: dict[str, Any] = {}
    for step, (update, as_text) in enumerate(sequence):
        assert fleet.update("s1", json.dumps(update) if as_text else update, float(step)) == []
        kept, problems = SCHEMA.filter(json.loads(json.dumps(update)))  # a copy: merge keeps its dicts
        assert problems == []
        SCHEMA.merge(reference, kept)
        (raw,) = [i.value for i in fleet.due(float(step)) if isinstance(i, Reading) and i.key == RAW_KEY]
        assert state_text(raw) == encode_json(reference).decode()


@settings(max_examples=200, deadline=None)
@given(sequence=updates)
def test_every_sequence_of_updates_gives_the_plainly_merged_state(
    sequence: list[tuple[dict[str, Any], bool]],
) -> None:
    assert_merged_plainly(sequence)


def test_partial_updates_between_full_ones_keep_merging_correctly() -> None:
    """As Mist is said to send them: full and basic updates alternately, each pair of shapes seen again."""
    basic = {"id": DEVICE_ID, "num_clients": 9}
    assert_merged_plainly(
        [(ap_full(MAC, "ap-1", uptime=n), True) if n % 2 == 0 else (basic, True) for n in range(6)]
    )


def test_the_same_partial_update_merged_into_a_larger_state_keeps_what_only_that_state_had() -> None:
    """An AP gains a radio between two basic updates; a later full update without it must not drop it."""
    first = ap_full(MAC, "ap-1")
    wider = ap_full(MAC, "ap-1")
    wider["radio_stat"] = wider["radio_stat"] | {"band_6": {"channel": 37}}
    basic = {"id": DEVICE_ID, "mac": MAC, "num_clients": 9}
    assert_merged_plainly([(first, True), (basic, True), (wider, True), (basic, True), (first, True)])
