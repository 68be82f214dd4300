"""The state text is the same whichever way an update took: struct fast path, dict, or merge."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.mist_server import ap_basic, ap_full
from trapline.collectors.mist.fleet import RAW_KEY, FieldSchema, Fleet, FleetPolicy, SiteInfo, encode_json
from trapline.middleware.model import Reading

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
    assert raw_text(fleet, 1.0) == first
    fleet.update("s1", update, 2.0)  # an object, read the careful way
    assert raw_text(fleet, 2.0) == first
    fleet.update("s1", json.dumps(ap_basic(MAC)), 3.0)  # a partial update: merged into the state
    merged_text = raw_text(fleet, 3.0)
    merged = json.loads(merged_text)
    assert merged_text == encode_json(merged).decode()
    fleet.update("s1", json.dumps(merged), 4.0)  # the merged state as a full update: fast path again
    assert raw_text(fleet, 4.0) == merged_text
    for name, value in extra.items():
        assert merged[name] == value


def test_lone_surrogate_falls_back_to_the_standard_library() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC, "ap-\ud800"), 0.0)
    state = json.loads(raw_text(fleet, 0.0))
    assert state["name"] == "ap-\ud800"
