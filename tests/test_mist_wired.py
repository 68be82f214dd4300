"""Switches and gateways: each a host of its own, through its own discovery rule, with its own raw value.

Shapes: Juniper's published device-stats models for switches and gateways (StatsSwitch,
StatsGateway and the item models they use: StatsSwitchPort, StatsSwitchModuleStatItem and its
fans / psus / temperatures items, IfStatProperty, StatsGatewayWanTunnel, StatsGatewaySpuItem, CpuStat,
MemoryStat; as documented in tmunzer/mistapi-go doc/models).  Every field there is optional,
``type`` included; ports, modules, tunnels and SPUs are arrays of objects; the fields trapline
does not keep (hostname, clients, ext_ip, load_avg, ...) are sent too, to be dropped.  Names
(devices, ports, tunnels, sensors) are any legal text: commas, quotes, non-ASCII.
"""

from __future__ import annotations

import json
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.mist_server import ap_full, gateway_full, switch_full
from tests.test_mist_counters import START_MS, feed
from tests.test_mist_fleet import make_fleet
from trapline.collectors.mist.fleet import RATES_MEMBER, FieldSchema, lld_key, raw_key
from trapline.core.model import Discovery, Item, Reading

SCHEMA = FieldSchema.load()
ALL_KINDS = frozenset({"ap", "switch", "gateway"})
SW, GW, AP = "5c5b35000011", "5c5b35000012", "5c5b35000013"


def node(kind: str, mac: str) -> str:
    return f"mist-{kind}-{mac}"


def rows(items: list[Item], kind: str) -> list[str]:
    return [
        r["{#NODEID}"] for i in items if isinstance(i, Discovery) and i.rule == lld_key(kind) for r in i.rows
    ]


def raws(items: list[Item], kind: str, mac: str) -> list[dict[str, Any]]:
    return [
        json.loads(str(i.value))
        for i in items
        if isinstance(i, Reading) and i.key == raw_key(kind) and i.host == node(kind, mac)
    ]


def test_a_switch_and_a_gateway_become_hosts_of_their_own_beside_the_aps() -> None:
    fleet = make_fleet(lld_min_interval=0.0, device_types=ALL_KINDS)
    fleet.update("s1", switch_full(SW, "sw-1"), 0.0)
    fleet.update("s1", gateway_full(GW, "gw-1"), 0.0)
    fleet.update("s1", ap_full(AP, "ap-1"), 0.0)
    items = fleet.due(0.0)
    assert (rows(items, "switch"), rows(items, "gateway"), rows(items, "ap")) == (
        [node("switch", SW)],
        [node("gateway", GW)],
        [node("ap", AP)],
    )
    [switch] = raws(items, "switch", SW)
    assert switch["ports"]["ge-0/0/0"] == {
        "up": True, "speed": 1000, "full_duplex": True, "poe_on": True, "power_draw": 6.5,
        "rx_bytes": 1000, "tx_bytes": 2000, "rx_errors": 0, "tx_errors": 0,
    }  # fmt: skip
    assert switch["module_stat"] == {
        "0": {"model": "EX4100-48P", "serial": "FC0000000001", "vc_role": "master", "vc_state": "present",
              "status": "connected"}
    }  # fmt: skip
    assert switch["module_temperatures"] == {"0/CPU": {"celsius": 48.0, "status": "ok"}}
    assert switch["module_fans"] == {"0/Fan 0": {"status": "ok", "airflow": "out"}}
    assert switch["module_psus"] == {"0/PSU 0": {"status": "ok"}}
    assert switch["cpu_stat"] == {"idle": 88.0, "user": 8.0, "system": 4.0}  # load_avg is an array: dropped
    assert "clients_stats" not in switch
    [gateway] = raws(items, "gateway", GW)
    assert gateway["if_stat"]["ge-0/0/0.0"]["wan_name"] == "wan1"
    assert gateway["tunnels"] == {
        "hub-a": {"up": True, "peer_ip": "198.51.100.7", "peer_host": "hub-a.example.net", "wan_name": "wan1",
                  "protocol": "ipsec", "priority": "primary", "uptime": 3600}
    }  # fmt: skip
    assert gateway["spu_stat"]["0"]["spu_current_session"] == 215
    # Nothing crosses over: no switch value on an AP key, no AP row in the switch list.
    assert {i.key for i in items if isinstance(i, Reading)} == {raw_key(k) for k in ALL_KINDS}


def test_a_partial_update_merges_ports_by_name_and_keeps_the_others() -> None:
    fleet = make_fleet(lld_min_interval=0.0, device_types=ALL_KINDS)
    fleet.update("s1", switch_full(SW, "sw-1"), 0.0)
    fleet.due(0.0)
    partial = {"mac": SW, "ports": [{"port_id": "ge-0/0/1", "up": True, "speed": 100}]}
    assert fleet.update("s1", json.dumps(partial), 1.0) == []
    [state] = raws(fleet.due(1.0), "switch", SW)
    assert state["ports"]["ge-0/0/1"] == {"up": True, "speed": 100, "poe_on": False, "power_draw": 0.0}
    assert state["ports"]["ge-0/0/0"]["up"] is True
    assert state["module_stat"]["0"]["vc_role"] == "master"


def test_items_without_their_key_are_named_not_lost_silently() -> None:
    fleet = make_fleet(lld_min_interval=0.0, device_types=ALL_KINDS)
    update = switch_full(SW, "sw-1", ports=[{"up": True}, {"port_id": "ge-0/0/5", "up": False}, "junk"])
    problems = fleet.update("s1", json.dumps(update), 0.0)
    assert problems == ["field ports[0]: no usable port_id", "field ports[2]: expected an object, got str"]
    [state] = raws(fleet.due(0.0), "switch", SW)
    assert state["ports"] == {"ge-0/0/5": {"up": False}}


def test_a_silent_switch_is_marked_stale_on_its_own_key_with_its_own_labels() -> None:
    fleet = make_fleet(lld_min_interval=0.0, device_types=ALL_KINDS, stale_after=5.0)
    fleet.update("s1", switch_full(SW, "sw-1"), 0.0)
    fleet.due(0.0)
    [marker] = [i for i in fleet.due(6.0) if isinstance(i, Reading)]
    assert (marker.host, marker.key, marker.value) == (node("switch", SW), "mist.switch.stale", 1)
    assert marker.labels["switch"] == "sw-1" and "ap" not in marker.labels


def test_switches_are_not_hosts_while_only_aps_are_monitored() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    fleet.update("s1", switch_full(SW, "sw-1"), 0.0)
    assert fleet.due(0.0) == []
    assert fleet.unmonitored() == {"type switch": 1}


# -- hypothesis over the published shapes --------------------------------------------------------

names = st.text(min_size=1, max_size=12)  # any legal name: commas, quotes, non-ASCII
counts = st.integers(0, 2**40)
percent = st.floats(0, 100, allow_nan=False)
cpu_stat = st.fixed_dictionaries(
    {}, optional={"idle": percent, "user": percent, "system": percent, "usage": percent, "interrupt": percent,
                  "load_avg": st.lists(percent, max_size=3)}
)  # fmt: skip
port = st.fixed_dictionaries(
    {},
    optional={
        "port_id": names, "up": st.booleans(), "speed": st.sampled_from([0, 100, 1000, 10000]),
        "full_duplex": st.booleans(), "poe_on": st.booleans(), "poe_disabled": st.booleans(),
        "power_draw": st.floats(0, 90, allow_nan=False), "rx_bytes": counts, "tx_bytes": counts,
        "rx_pkts": counts, "tx_pkts": counts, "rx_errors": counts, "tx_errors": counts,
        "port_usage": names, "neighbor_system_name": names, "uplink": st.booleans(),
        "xcvr_model": names, "mac": st.just("5c4527a96580"), "stp_state": st.just("forwarding"),
    },
)  # fmt: skip
sensor = st.fixed_dictionaries({}, optional={"name": names, "celsius": percent, "status": st.just("ok")})
fan = st.fixed_dictionaries({}, optional={"name": names, "status": st.sampled_from(["ok", "fail"]),
                                          "airflow": st.just("out")})  # fmt: skip
psu = st.fixed_dictionaries({}, optional={"name": names, "status": st.sampled_from(["ok", "absent"])})
module = st.fixed_dictionaries(
    {},
    optional={
        "fpc_idx": st.integers(0, 9), "model": names, "serial": names, "status": st.just("connected"),
        "vc_role": st.sampled_from(["master", "backup", "linecard"]), "vc_state": st.just("present"),
        "uptime": counts, "temperatures": st.lists(sensor, max_size=3), "fans": st.lists(fan, max_size=2),
        "psus": st.lists(psu, max_size=2), "poe": st.just({"max_power": 740.0, "power_draw": 12.0}),
        "cpu_stat": cpu_stat, "bios_version": names,
    },
)  # fmt: skip
interface = st.fixed_dictionaries(
    {},
    optional={
        "port_id": names, "up": st.booleans(), "port_usage": st.sampled_from(["wan", "lan"]),
        "wan_name": names, "wan_type": st.just("broadband"), "network_name": names, "rx_bytes": counts,
        "tx_bytes": counts,
        "rx_pkts": counts, "tx_pkts": counts, "ips": st.lists(st.just("192.0.2.1/30"), max_size=1),
        "vlan": st.integers(1, 4094),
    },
)  # fmt: skip
tunnel = st.fixed_dictionaries(
    {},
    optional={
        "tunnel_name": names, "up": st.booleans(), "peer_ip": st.just("198.51.100.7"), "peer_host": names,
        "wan_name": names, "protocol": st.sampled_from(["gre", "ipsec"]), "priority": st.just("primary"),
        "last_event": names, "uptime": counts, "rx_bytes": counts, "tx_bytes": counts,
        "node": st.just("node0"),
    },
)  # fmt: skip
spu = st.fixed_dictionaries(
    {}, optional={k: counts for k in ("spu_cpu", "spu_memory", "spu_current_session", "spu_max_session")}
)
common = {
    "name": names, "status": st.just("connected"), "uptime": counts, "version": names,
    "serial": names, "ip": st.just("10.2.11.137"), "hostname": names, "cpu_stat": cpu_stat,
    "memory_stat": st.fixed_dictionaries({"usage": percent}), "last_seen": counts,
    "ext_ip": st.just("192.0.2.9"),
}  # fmt: skip
switch_fields = st.fixed_dictionaries(
    {},
    optional=common | {
        "ports": st.lists(port, max_size=4), "module_stat": st.lists(module, max_size=2),
        "clients": st.just([{"mac": "aabbccddeeff", "port_id": "ge-0/0/1"}]),
        "vc_mac": st.just("5c4527a96580"),
    },
)  # fmt: skip
gateway_fields = st.fixed_dictionaries(
    {},
    optional=common | {
        "if_stat": st.dictionaries(names, interface, max_size=3), "tunnels": st.lists(tunnel, max_size=3),
        "spu_stat": st.lists(spu, max_size=2), "node_name": st.just("node0"), "is_ha": st.booleans(),
    },
)  # fmt: skip
MODELS = {"switch": ["EX4100-48P", "QFX5120", "ex2300"], "gateway": ["SRX320", "SSR130"]}


def usable(value: object) -> str | None:
    if type(value) is int:
        return str(value)
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


def expected_entries(update: dict[str, Any]) -> tuple[dict[str, dict[str, dict[str, Any]]], set[str]]:
    """The map entries an update's arrays must give (kept members only) and the paths of the items
    the fleet must name as dropped."""
    entries: dict[str, dict[str, dict[str, Any]]] = {}
    lost: set[str] = set()

    def keep(name: str, key: str, item: dict[str, Any]) -> None:
        members = {k: v for k, v in item.items() if k in SCHEMA.maps[name]}
        entries.setdefault(name, {}).setdefault(key, {}).update(members)

    for name, array_key in (("ports", "port_id"), ("tunnels", "tunnel_name")):
        for i, item in enumerate(update.get(name, [])):
            key = usable(item.get(array_key))
            (keep(name, key, item) if key else lost.add(f"{name}[{i}]"))
    for i, item in enumerate(update.get("spu_stat", [])):
        keep("spu_stat", str(i), item)
    for i, item in enumerate(update.get("module_stat", [])):
        fpc = usable(item.get("fpc_idx"))
        if fpc is None:
            lost.add(f"module_stat[{i}]")
        else:
            keep("module_stat", fpc, item)
        for within, name in (("temperatures", "module_temperatures"), ("fans", "module_fans"),
                             ("psus", "module_psus")):  # fmt: skip
            inners = item.get(within, [])
            if fpc is None and inners:  # the whole array is named once: its items have no module to go to
                lost.add(f"module_stat[{i}].{within}")
            for j, inner in enumerate(inners if fpc is not None else []):
                key = usable(inner.get("name"))
                if key is None:
                    lost.add(f"module_stat[{i}].{within}[{j}]")
                else:
                    keep(name, f"{fpc}/{key}", inner)
    return entries, lost


device_plan = st.tuples(
    st.sampled_from(["switch", "gateway"]),
    st.lists(
        st.tuples(
            st.sampled_from(["full", "partial"]),
            st.booleans(),  # carries type
            st.booleans(),  # carries a model of its family
            st.booleans(),  # as JSON text
            st.randoms(use_true_random=False),  # the order of its fields
        ),
        min_size=1,
        max_size=5,
    ),
)


@settings(max_examples=100, deadline=None)
@given(
    plans=st.lists(device_plan, min_size=1, max_size=3),
    switch_updates=st.lists(switch_fields, min_size=5, max_size=5),
    gateway_updates=st.lists(gateway_fields, min_size=5, max_size=5),
    interleave=st.randoms(use_true_random=False),
)
def test_every_named_switch_and_gateway_is_discovered_once_and_nothing_is_lost_unnamed(
    plans: list[tuple[str, list[tuple[str, bool, bool, bool, Random]]]],
    switch_updates: list[dict[str, Any]],
    gateway_updates: list[dict[str, Any]],
    interleave: Random,
) -> None:
    """Any mix of full and partial updates, in any order across devices, with or without ``type``:
    a device told as a switch or gateway (by type or model family) is one row of its kind's list and
    no other; every array item reaches its map entry or is named in the returned reasons; the
    emitted state holds each kept entry as merged from every update."""
    fleet = make_fleet(lld_min_interval=0.0, device_types=ALL_KINDS)
    macs = [f"5c5b350001{i:02x}" for i in range(len(plans))]
    steps = [(mac, kind, step) for mac, (kind, plan) in zip(macs, plans, strict=True) for step in plan]
    interleave.shuffle(steps)  # devices interleave; each one's own updates keep their order below
    own: dict[str, list[Any]] = {mac: [s for m, _, s in steps if m == mac] for mac in macs}
    told: dict[str, str] = {}
    merged: dict[str, dict[str, dict[str, dict[str, Any]]]] = {mac: {} for mac in macs}
    emitted: dict[str, dict[str, Any]] = {}
    for n, (mac, kind, _) in enumerate(steps):
        shape, with_type, with_model, as_text, order = own[mac].pop(0)
        pool = switch_updates if kind == "switch" else gateway_updates
        fields = dict(pool[n % len(pool)])
        if shape == "partial":
            fields = dict(list(fields.items())[:2])
        fields.pop("model", None)
        if with_type:
            fields["type"] = kind
        if with_model:
            fields["model"] = order.choice(MODELS[kind])
        identity = {"mac": mac} if order.random() < 0.5 else {"id": f"00000000-0000-0000-1000-{mac}"}
        pairs = list((identity | fields).items())
        order.shuffle(pairs)
        update = dict(pairs)
        if with_type or with_model:
            told[mac] = kind
        problems = fleet.update("s1", json.dumps(update) if as_text else update, float(n))
        entries, lost = expected_entries(update)
        assert len(problems) == len(lost), (problems, lost)
        assert all(any(f"field {path}" in p for p in problems) for path in lost), (problems, lost)
        for name, by_key in entries.items():
            for key, members in by_key.items():
                merged[mac].setdefault(name, {}).setdefault(key, {}).update(members)
        for item in fleet.due(float(n)):
            if isinstance(item, Reading):
                mac_of = item.host[-12:]
                assert (item.key, item.host) == (raw_key(told[mac_of]), node(told[mac_of], mac_of))
                emitted[mac_of] = json.loads(str(item.value))
    for item in fleet.flush():
        if isinstance(item, Reading):
            emitted[item.host[-12:]] = json.loads(str(item.value))
    for kind in ("switch", "gateway"):
        listed = [r["{#NODEID}"] for r in fleet.lld_rows(kind)]
        assert listed == sorted(node(kind, m) for m, k in told.items() if k == kind)
    assert fleet.lld_rows("ap") == ()
    for mac in told:
        for name, by_key in merged[mac].items():
            assert emitted[mac][name] == by_key, name
    assert fleet.unmonitored() == ({"kind unknown": len(macs) - len(told)} if len(told) < len(macs) else {})


# Per-millisecond increments of the switch port counters and the gateway WAN counters.
PORT_RATES = {("ge-0/0/0", "rx_bytes"): 3, ("ge-0/0/0", "rx_errors"): 1, ("xe-1/0/2", "tx_bytes"): 11}
WAN_RATES = {("ge-0/0/0.0", "rx_bytes"): 5, ("ge-0/0/0.0", "tx_bytes"): 2}


def wired_counters(kind: str, mac: str, t_ms: int, plan: str) -> dict[str, Any]:
    """A switch's ports array or a gateway's if_stat with each counter at ``rate * t_ms``; "none" sends
    no counter (a partial update), "some" only the first port's or interface's."""
    update: dict[str, Any] = {"mac": mac, "uptime": t_ms // 1000}
    rates = PORT_RATES if kind == "switch" else WAN_RATES
    entries: dict[str, dict[str, Any]] = {}
    for (entry, member), rate in rates.items():
        if plan == "all" or (plan == "some" and entry == next(iter(rates))[0]):
            entries.setdefault(entry, {"up": True})[member] = rate * t_ms
    if entries and kind == "switch":
        update["ports"] = [{"port_id": entry, **members} for entry, members in entries.items()]
    elif entries:
        update["if_stat"] = {entry: {"wan_name": "wan1", **members} for entry, members in entries.items()}
    return update


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["switch", "gateway"]),
    steps=st.lists(
        st.tuples(st.integers(1, 5_000), st.sampled_from(["all", "some", "none"])), min_size=2, max_size=10
    ),
)
def test_switch_and_gateway_rates_are_taken_between_real_measurements(
    kind: str, steps: list[tuple[int, str]]
) -> None:
    """Counters at known rates through any mix of full and partial updates: every rate in a
    mist.<kind>.raw value is the true one, and each measurement after a counter's first gives one."""
    fleet = make_fleet(lld_min_interval=0.0, device_types=ALL_KINDS)
    mac = SW if kind == "switch" else GW
    t_ms = START_MS
    feed(fleet, {"mac": mac, "type": kind}, t_ms)
    rates = PORT_RATES if kind == "switch" else WAN_RATES
    name = "ports" if kind == "switch" else "if_stat"
    got: dict[tuple[str, str], int] = {}
    measured: dict[tuple[str, str], int] = {}
    for delta, plan in steps:
        t_ms += delta
        update = wired_counters(kind, mac, t_ms, plan)
        for state in raws(feed(fleet, update, t_ms), kind, mac):
            for entry, members in state.get(RATES_MEMBER, {}).get(name, {}).items():
                for member, rate in members.items():
                    assert rate == pytest.approx(rates[entry, member] * 1000, rel=1e-9)
                    got[entry, member] = got.get((entry, member), 0) + 1
        for entry, member in rates:
            if plan == "all" or (plan == "some" and entry == next(iter(rates))[0]):
                measured[entry, member] = measured.get((entry, member), 0) + 1
    assert got == {counter: n - 1 for counter, n in measured.items() if n > 1}
