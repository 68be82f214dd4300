"""The AP fleet: merging updates, field filtering, staleness, LLD rows and when things are sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devtools.mist_server import ap_basic, ap_full
from trapline.collectors.mist.fleet import (
    LLD_KEY,
    RATES_MEMBER,
    RAW_KEY,
    STALE_KEY,
    FieldSchema,
    Fleet,
    FleetPolicy,
    SiteInfo,
    normalize_mac,
)
from trapline.collectors.mist.frames import FrameError
from trapline.core.model import Discovery, Item, Reading

MAC1, MAC2 = "5c5b35000001", "5c5b35000002"
NODE1, NODE2 = f"mist-ap-{MAC1}", f"mist-ap-{MAC2}"
SITE = SiteInfo("s1", "Site One", "o1", "Org One")


def make_fleet(**policy: Any) -> Fleet:
    defaults: dict[str, Any] = {
        "discovery_host": "Mist discovery",
        "node_prefix": "mist-ap-",
        "device_types": frozenset({"ap"}),
        "stale_after": 300.0,
        "min_interval": 0.0,
        "lld_min_interval": 10.0,
        "lld_refresh": 3600.0,
    }
    fleet = Fleet(FleetPolicy(**(defaults | policy)), FieldSchema.load())
    fleet.set_sites({"s1": SITE})
    return fleet


def raw(items: list[Item], host: str = NODE1) -> list[dict[str, Any]]:
    return [
        json.loads(str(i.value))
        for i in items
        if isinstance(i, Reading) and i.key == RAW_KEY and i.host == host
    ]


def state_text(value: object) -> str:
    """The merged state in a mist.ap.raw value: the fleet appends the rates of the counters its update
    measured as the last member (a quote inside a text field is escaped, so only that member matches)."""
    text = str(value)
    head, found, _ = text.partition(f',"{RATES_MEMBER}":')
    return head + "}" if found else text


def lld(items: list[Item]) -> list[Discovery]:
    return [i for i in items if isinstance(i, Discovery)]


def test_partial_updates_merge_into_the_full_state() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    fleet.due(0.0)
    fleet.update("s1", ap_basic(MAC1, num_clients=9, radio_stat={"band_5": {"num_clients": 8}}), 1.0)
    (state,) = raw(fleet.due(1.0))
    assert state["num_clients"] == 9
    assert state["name"] == "ap-1"  # kept from the full update
    assert state["radio_stat"]["band_5"] == {"channel": 36, "noise_floor": -95, "num_clients": 8}
    assert state["radio_stat"]["band_24"]["channel"] == 6


def test_only_template_fields_are_kept() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC1, "ap-1", secret_sauce=1, env_stat={"cpu_temp": 50, "junk": 2}), 0.0)
    (state,) = raw(fleet.due(0.0))
    assert "lldp_stat" not in state
    assert "secret_sauce" not in state
    assert state["env_stat"] == {"cpu_temp": 50}


def test_wrong_types_are_dropped_and_reported_while_the_rest_is_kept() -> None:
    fleet = make_fleet()
    problems = fleet.update(
        "s1", ap_full(MAC1, "ap-1", cpu_util={"x": 1}, port_stat=[1], env_stat="hot"), 0.0
    )
    assert len(problems) == 3
    assert any("cpu_util" in p for p in problems)
    (state,) = raw(fleet.due(0.0))
    assert "cpu_util" not in state
    assert state["num_clients"] == 4


def test_an_update_without_identity_is_refused() -> None:
    fleet = make_fleet()
    with pytest.raises(FrameError, match="without a usable id or mac"):
        fleet.update("s1", {"num_clients": 3}, 0.0)
    with pytest.raises(FrameError):
        fleet.update("s1", {"id": 5, "mac": "zz"}, 0.0)
    assert len(fleet) == 0


def test_mac_is_normalized_and_derived_from_the_device_id() -> None:
    assert normalize_mac("5C:5B:35:00:00:01") == MAC1
    assert normalize_mac("5c5b3500000") is None
    assert normalize_mac(12) is None
    fleet = make_fleet()
    fleet.update("s1", {"id": f"00000000-0000-0000-1000-{MAC1}", "type": "ap"}, 0.0)
    assert fleet.lld_rows()[0]["{#MAC}"] == MAC1


def test_updates_by_id_or_by_mac_alone_reach_the_same_ap() -> None:
    fleet = make_fleet()
    fleet.update("s1", {"id": f"00000000-0000-0000-1000-{MAC1}", "type": "ap", "name": "ap-1"}, 0.0)
    fleet.update("s1", {"mac": MAC1.upper(), "num_clients": 3}, 1.0)
    assert len(fleet) == 1
    (state,) = raw(fleet.due(1.0))
    assert (state["name"], state["num_clients"], state["mac"]) == ("ap-1", 3, MAC1)


def test_lld_rows_carry_every_macro() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    assert fleet.lld_rows() == (
        {
            "{#NODEID}": NODE1,
            "{#NAME}": "ap-1",
            "{#SITENAME}": "Site One",
            "{#SITEID}": "s1",
            "{#MAC}": MAC1,
            "{#ORGNAME}": "Org One",
            "{#MODEL}": "AP43",
        },
    )


def test_lld_goes_first_and_readings_wait_for_it() -> None:
    fleet = make_fleet(lld_min_interval=10.0)
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    first = fleet.due(0.0)
    assert isinstance(first[0], Discovery) and first[0].rule == LLD_KEY
    assert len(raw(first)) == 1
    fleet.update("s1", ap_full(MAC2, "ap-2"), 1.0)
    assert fleet.due(1.0) == []  # ap-2's host does not exist yet; its update is held, not lost
    later = fleet.due(10.0)
    (discovery,) = lld(later)
    assert [r["{#NODEID}"] for r in discovery.rows] == [NODE1, NODE2]  # always the full list
    assert raw(later, NODE2)[0]["name"] == "ap-2"


def test_lld_is_refreshed_periodically_and_not_resent_without_change() -> None:
    fleet = make_fleet(lld_min_interval=1.0, lld_refresh=100.0)
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    assert len(lld(fleet.due(0.0))) == 1
    fleet.update("s1", ap_basic(MAC1, num_clients=1), 5.0)
    assert lld(fleet.due(5.0)) == []
    assert len(lld(fleet.due(100.0))) == 1
    fleet.update("s1", ap_basic(MAC1, name="renamed"), 150.0)
    assert lld(fleet.due(150.0))[0].rows[0]["{#NAME}"] == "renamed"


def test_non_ap_devices_stay_out() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC1, "switch-1", type="switch"), 0.0)
    fleet.update("s1", ap_basic(MAC2, num_clients=1), 0.0)  # type not known yet
    assert fleet.due(0.0) == []
    fleet.update("s1", ap_basic(MAC2, type="ap"), 1.0)
    assert [r["{#NODEID}"] for r in fleet.lld_rows()] == [NODE2]


def test_min_interval_merges_fast_updates_instead_of_dropping_them() -> None:
    fleet = make_fleet(min_interval=60.0)
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    assert len(raw(fleet.due(0.0))) == 1
    fleet.update("s1", ap_basic(MAC1, num_clients=7), 10.0)
    fleet.update("s1", ap_basic(MAC1, cpu_util=70), 20.0)
    assert raw(fleet.due(30.0)) == []
    (state,) = raw(fleet.due(60.0))
    assert (state["num_clients"], state["cpu_util"]) == (7, 70)


def test_after_an_update_only_ready_devices_go_and_held_ones_wait_for_the_sweep() -> None:
    """due(sweep=False) follows every update, so it must not walk the held devices of a large fleet."""
    fleet = make_fleet(min_interval=60.0, lld_min_interval=0.0)
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    fleet.update("s1", ap_full(MAC2, "ap-2"), 0.0)
    first = fleet.due(0.0, sweep=False)  # the LLD value announces both: both go with it
    assert len(lld(first)) == 1 and len(raw(first)) == 1 and len(raw(first, NODE2)) == 1
    fleet.update("s1", ap_basic(MAC1, num_clients=7), 10.0)
    assert fleet.due(10.0, sweep=False) == []  # inside min_interval: held
    fleet.update("s1", ap_basic(MAC2, num_clients=3), 70.0)
    after_update = fleet.due(70.0, sweep=False)
    assert raw(after_update) == [] and raw(after_update, NODE2)[0]["num_clients"] == 3
    (released,) = raw(fleet.due(70.0))  # the tick releases ap-1's held update
    assert released["num_clients"] == 7
    assert raw(fleet.due(80.0)) == []  # once


def test_flush_sends_what_is_held() -> None:
    fleet = make_fleet(min_interval=60.0)
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    fleet.due(0.0)
    fleet.update("s1", ap_basic(MAC1, num_clients=7), 1.0)
    fleet.update("s1", ap_full(MAC2, "ap-2"), 1.0)
    flushed = fleet.flush()
    assert isinstance(flushed[0], Discovery)
    assert raw(flushed)[0]["num_clients"] == 7
    assert raw(flushed, NODE2)[0]["name"] == "ap-2"


def test_a_silent_ap_goes_stale_once_and_recovers() -> None:
    fleet = make_fleet(stale_after=60.0)
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    fleet.update("s1", ap_full(MAC2, "ap-2"), 0.0)
    fleet.due(0.0)
    fleet.update("s1", ap_basic(MAC2, num_clients=1), 50.0)
    fleet.due(50.0)
    stale = [i for i in fleet.due(61.0) if isinstance(i, Reading) and i.key == STALE_KEY]
    assert [(i.host, i.value) for i in stale] == [(NODE1, 1)]
    assert [i for i in fleet.due(62.0) if isinstance(i, Reading) and i.key == STALE_KEY] == []
    fleet.update("s1", ap_basic(MAC1, num_clients=2), 70.0)
    back = fleet.due(70.0)
    keys = [(i.host, i.key, i.value) for i in back if isinstance(i, Reading)]
    assert keys[0] == (NODE1, STALE_KEY, 0)  # the marker clears before the new state arrives
    assert keys[1][:2] == (NODE1, RAW_KEY)


def test_devices_of_vanished_sites_are_forgotten() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    fleet.set_sites({"s2": SiteInfo.unnamed("s2")})
    assert len(fleet) == 0
    assert fleet.lld_rows() == ()


def test_readings_carry_labels_for_prometheus() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    (reading,) = [i for i in fleet.due(0.0) if isinstance(i, Reading)]
    assert reading.labels == {"org": "Org One", "site": "Site One", "ap": "ap-1", "mac": MAC1}


def test_merge_replaces_scalars_and_merges_objects_and_map_entries_by_member() -> None:
    schema = FieldSchema.load()
    state: dict[str, Any] = {
        "uptime": 1,
        "env_stat": {"cpu_temp": 50, "humidity": 40},
        "port_stat": {"eth0": {"up": True, "speed": 1000}},
    }
    schema.merge(
        state,
        {
            "uptime": 2,
            "env_stat": {"cpu_temp": 60},
            "port_stat": {"eth0": {"up": False}, "eth1": {"up": True}},
        },
    )
    assert state == {
        "uptime": 2,
        "env_stat": {"cpu_temp": 60, "humidity": 40},
        "port_stat": {"eth0": {"up": False, "speed": 1000}, "eth1": {"up": True}},
    }


def test_equal_states_are_sent_as_equal_json_whatever_the_field_order() -> None:
    fleet = make_fleet()
    update = ap_full(MAC1, "ap-1")
    fleet.update("s1", update, 0.0)
    (first,) = [i.value for i in fleet.due(0.0) if isinstance(i, Reading) and i.key == RAW_KEY]
    fleet.update("s1", dict(reversed(update.items())), 1.0)
    (second,) = [i.value for i in fleet.due(1.0) if isinstance(i, Reading) and i.key == RAW_KEY]
    # The pipeline's discard-unchanged compares the text.  The second value also carries the
    # counters' rates (0 here): a measurement, which must not be discarded.
    state = state_text(first)
    assert state == first == state_text(second)
    assert state == json.dumps(json.loads(state), sort_keys=True, separators=(",", ":"))


def test_values_beyond_64_bits_and_lone_surrogates_still_make_json() -> None:
    fleet = make_fleet()
    fleet.update("s1", ap_full(MAC1, "ap-\ud800", uptime=2**70), 0.0)
    fleet.update("s1", ap_basic(MAC1, num_clients=5), 1.0)
    (state,) = raw(fleet.due(1.0))
    assert (state["uptime"], state["name"], state["num_clients"]) == (2**70, "ap-\ud800", 5)


def test_no_ap_goes_stale_while_the_stream_is_down_nor_right_after() -> None:
    """A stream outage is one problem on the discovery host: the silence it causes is no AP's fault."""
    fleet = make_fleet(stale_after=60.0)
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    fleet.due(0.0)
    for t in (30.0, 90.0, 500.0):
        assert fleet.due(t, streams_up=False) == []
    # Back at 500 s: the AP gets stale_after from then to speak.
    assert [i for i in fleet.due(559.0) if isinstance(i, Reading) and i.key == STALE_KEY] == []
    stale = [i for i in fleet.due(560.0) if isinstance(i, Reading) and i.key == STALE_KEY]
    assert [(i.host, i.value) for i in stale] == [(NODE1, 1)]


def test_lld_rows_never_carry_an_empty_organization() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    fleet.set_sites({"s1": SiteInfo.unnamed("s1")})
    fleet.update("s1", ap_full(MAC1, "ap-1"), 0.0)
    (row,) = fleet.lld_rows()
    assert row["{#ORGNAME}"] and row["{#SITENAME}"] == "s1"
