"""The state text is the same whichever way an update took: struct fast path, dict, or merge."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.mist_server import ap_basic, ap_full
from tests.test_mist_fleet import state_text
from trapline.collectors.mist.fleet import RAW_KEY, FieldSchema, Fleet, FleetPolicy, SiteInfo, encode_json
from trapline.core.model import Reading

MAC = "5c5b35000001"


def make_fleet() -> Fleet:
    policy = FleetPolicy("Mist discovery", "mist-ap-", frozenset({"ap"}), 300.0, 0.0, 0.0, 3600.0)
    fleet = Fleet(policy, FieldSchema.load())
    fleet.set_sites({"s1": SiteInfo("s1", "Site One", "o1", "Org One")})
    return fleet


def raw_text(fleet: Fleet, now: float) -> str:
    (value,) = [i.value for i in fleet.due(now) if isinstance(i, Reading) and i.key == RAW_KEY]
    assert isinstance(value, str)
    return value


@pytest.mark.parametrize(
    "extra",
    [
        {"tx_bps": 1e16, "cpu_util": 0.1},  # float spellings differ between encoders (1e16, 1e+16)
        {"serial": "AP \u00e9t\u00e9 \u2028 \x00"},  # non-ASCII and control characters
    ],
)
def test_fast_path_text_equals_dict_and_merge_text(extra: dict[str, Any]) -> None:
    update = ap_full(MAC, "ap-1", **extra)
    fleet = make_fleet()
    fleet.update("s1", json.dumps(update), 0.0)  # first update: written from the dict of fields
    first = raw_text(fleet, 0.0)
    fleet.update("s1", json.dumps(update), 1.0)  # same shape: written from the decoded struct
    assert state_text(raw_text(fleet, 1.0)) == first  # (the value adds the counters' rates)
    fleet.update("s1", update, 2.0)  # an object, read the careful way
    assert state_text(raw_text(fleet, 2.0)) == first
    fleet.update("s1", json.dumps(ap_basic(MAC)), 3.0)  # a partial update: merged into the state
    merged_text = raw_text(fleet, 3.0)
    merged = json.loads(merged_text)
    assert merged_text == encode_json(merged).decode()
    fleet.update("s1", json.dumps(merged), 4.0)  # the merged state as a full update: fast path again
    assert state_text(raw_text(fleet, 4.0)) == merged_text
    for name, value in extra.items():
        assert merged[name] == value


def test_lone_surrogate_falls_back_to_the_standard_library() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC, "ap-\ud800"), 0.0)
    state = json.loads(raw_text(fleet, 0.0))
    assert state["name"] == "ap-\ud800"


# Paths into a full update that an update may lack: top-level fields, members, map entries.
_DROPPABLE = [
    "name", "model", "type", "uptime", "cpu_util", "env_stat", "env_stat.cpu_temp", "port_stat",
    "port_stat.eth0.speed", "radio_stat.band_5", "radio_stat.band_24.channel",
]


def _update(mac: str, dropped: list[str], name: str, uptime: int) -> dict[str, Any]:
    update = ap_full(mac, name, uptime=uptime)
    for path in sorted(dropped, key=len, reverse=True):  # members before the objects holding them
        *parents, last = path.split(".")
        holder: Any = update
        for parent in parents:
            holder = holder.get(parent, {})
        holder.pop(last, None)
    return update


updates = st.lists(
    st.builds(
        _update,
        st.sampled_from(["5c5b35000001", "5c5b35000002"]),
        st.lists(st.sampled_from(_DROPPABLE), max_size=3),
        st.sampled_from(["ap-1", "ap-2"]),
        st.integers(0, 10**12),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(updates=updates)
def test_updates_as_text_give_the_states_of_updates_as_objects(updates: list[dict[str, Any]]) -> None:
    """JSON text takes the struct paths (shape read from the struct, fast or merged); an object takes the
    careful one: any mix of full and partial updates leaves the same state and identity either way."""
    as_text, as_object = make_fleet(), make_fleet()
    for now, update in enumerate(updates):
        as_text.update("s1", json.dumps(update), float(now))
        as_object.update("s1", update, float(now))
        assert as_text.lld_rows() == as_object.lld_rows()
        assert {r.host: r.value for r in as_text.due(float(now)) if isinstance(r, Reading)} == {
            r.host: r.value for r in as_object.due(float(now)) if isinstance(r, Reading)
        }
