"""Mist AP, switch and gateway state (the JSON master values mist.*.raw) as Prometheus series
(prometheus/expand.toml)."""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections.abc import Callable
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devtools.mist_server import ap_basic, ap_full, gateway_full, switch_full
from tests.support.peers import need_binary
from trapline.collectors.mist.fleet import FieldSchema, Fleet, FleetPolicy, SiteInfo
from trapline.core.model import Reading
from trapline.exporters.prometheus.expand import Expander, ExpansionError
from trapline.exporters.prometheus.exporter import PrometheusExporter
from trapline.middleware.normalize import normalize

STALE_AFTER = 300.0
SITE = SiteInfo("s1", "Headquarters", "o1", "Acme")
AP1 = "5c5b35000001"
AP2 = "5c5b35000002"
# Every label a series of AP1 carries besides its port or band.
AP1_LABELS = {"host": f"mist-ap-{AP1}", "org": "Acme", "site": "Headquarters", "ap": "ap-1", "mac": AP1}

# Fields of fields.toml that deliberately give no series: text, or a unit we could not confirm.
NOT_EXPOSED = {
    "id",
    "mac",
    "name",
    "model",
    "type",
    "version",
    "serial",
    "ip",
    "ip_stat.ip",
    "power_src",
    # Switches and gateways: names, roles and states as text.
    "ports.port_usage",
    "ports.neighbor_system_name",
    "module_stat.model",
    "module_stat.serial",
    "module_stat.status",
    "module_stat.vc_role",
    "module_stat.vc_state",
    "module_temperatures.status",
    "module_fans.airflow",
    "if_stat.port_id",
    "if_stat.port_usage",
    "if_stat.wan_name",
    "if_stat.wan_type",
    "if_stat.network_name",
    "tunnels.peer_ip",
    "tunnels.peer_host",
    "tunnels.wan_name",
    "tunnels.protocol",
    "tunnels.priority",
    "tunnels.last_event",
}
MIST_RAW_KEYS = ("mist.ap.raw", "mist.switch.raw", "mist.gateway.raw")


def rich_update(mac: str, name: str) -> dict[str, Any]:
    """A full update with every field fields.toml keeps, as far as the test server's sample lacks them."""
    return ap_full(
        mac,
        name,
        cpu_user=2,
        cpu_system=1,
        tx_bps=8000,
        rx_bps=16000,
        tx_bytes=100,
        rx_bytes=200,
        env_stat={"cpu_temp": 55, "ambient_temp": 30, "humidity": 40},
        port_stat={
            "eth0": {
                "up": True,
                "speed": 1000,
                "full_duplex": True,
                "tx_bytes": 20,
                "rx_bytes": 10,
                "tx_pkts": 2,
                "rx_pkts": 1,
                "rx_errors": 0,
                "tx_peak_bps": 800,
                "rx_peak_bps": 1600,
            },
            "eth1": {"up": False, "speed": 0},
        },
        radio_stat={
            "band_24": {
                "channel": 6,
                "bandwidth": 20,
                "power": 12,
                "noise_floor": -90,
                "num_clients": 1,
                "disabled": False,
                "util_all": 30,
                "util_tx": 5,
                "util_rx_in_bss": 10,
                "util_rx_other_bss": 10,
                "util_unknown_wifi": 3,
                "util_non_wifi": 2,
                "tx_bytes": 7,
                "rx_bytes": 8,
                "tx_pkts": 1,
                "rx_pkts": 2,
            },
            "band_5": {
                "channel": 36,
                "bandwidth": 80,
                "noise_floor": -95,
                "num_clients": 3,
                "disabled": False,
            },
        },
    )


def new_fleet() -> Fleet:
    policy = FleetPolicy("Mist discovery", "mist-ap-", frozenset({"ap"}), STALE_AFTER, 0.0, 0.0, 3600.0)
    fleet = Fleet(policy, FieldSchema.load())
    fleet.set_sites({SITE.site_id: SITE})
    return fleet


def feed(exporter: PrometheusExporter, fleet: Fleet, now: float) -> None:
    """What the pipeline does: normalize every item the collector emits and show it to the observer."""
    for item in fleet.due(now):
        exporter.observe(normalize(item))


def samples(exporter: PrometheusExporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(exporter.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of_ap1(**extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({**AP1_LABELS, **extra}.items())


def filled(stale_after: float = 600.0) -> tuple[PrometheusExporter, Fleet]:
    exporter, fleet = PrometheusExporter("127.0.0.1", 0, stale_after), new_fleet()
    fleet.update(SITE.site_id, rich_update(AP1, "ap-1"), 0.0)
    fleet.update(SITE.site_id, rich_update(AP2, "ap-2"), 0.0)
    feed(exporter, fleet, 0.0)
    return exporter, fleet


def test_ap_figures_become_labelled_series_in_base_units() -> None:
    got = samples(filled()[0])
    expected = {
        ("trapline_mist_ap_cpu_util_percent", of_ap1()): 3.0,
        ("trapline_mist_ap_clients", of_ap1()): 4.0,
        ("trapline_mist_ap_uptime_seconds", of_ap1()): 1000.0,
        ("trapline_mist_ap_last_seen_timestamp_seconds", of_ap1()): 1_700_000_000.0,
        ("trapline_mist_ap_memory_used_bytes", of_ap1()): 200_000 * 1024.0,  # Mist reports KiB
        ("trapline_mist_ap_cpu_temperature_celsius", of_ap1()): 55.0,
        ("trapline_mist_ap_humidity_percent", of_ap1()): 40.0,
        ("trapline_mist_ap_tx_bytes_per_second", of_ap1()): 1000.0,  # Mist reports bits/s
        ("trapline_mist_ap_tx_bytes_total", of_ap1()): 100.0,
        ("trapline_mist_ap_stale", of_ap1()): 0.0,
        ("trapline_mist_ap_port_up", of_ap1(port="eth0")): 1.0,
        ("trapline_mist_ap_port_up", of_ap1(port="eth1")): 0.0,
        ("trapline_mist_ap_port_speed_bytes_per_second", of_ap1(port="eth0")): 125_000_000.0,  # 1000 Mbps
        ("trapline_mist_ap_port_rx_errors_total", of_ap1(port="eth0")): 0.0,
        ("trapline_mist_ap_radio_noise_floor_dbm", of_ap1(band="band_5")): -95.0,
        ("trapline_mist_ap_radio_bandwidth_hertz", of_ap1(band="band_5")): 80e6,
        ("trapline_mist_ap_radio_disabled", of_ap1(band="band_24")): 0.0,
        ("trapline_mist_ap_radio_util_non_wifi_percent", of_ap1(band="band_24")): 2.0,
    }
    assert {k: got.get(k) for k in expected} == expected
    names = {name for name, _ in got}
    assert not any("raw" in n or "discovery" in n for n in names)  # the JSON itself is no series
    # A band that did not report a figure has no series for it, not a zero.
    assert ("trapline_mist_ap_radio_power_dbm", of_ap1(band="band_5")) not in got
    # 17 AP-wide series (status included), 10 + 2 for the ports, 16 + 5 for the bands: every figure
    # sent, nothing else.
    assert (
        len({k for k in got if ("mac", AP1) in k[1]}) == len({k for k in got if ("mac", AP2) in k[1]}) == 50
    )


def wired() -> tuple[PrometheusExporter, Fleet]:
    """A switch and a gateway (full updates from the test server) through the fleet into an exporter."""
    policy = FleetPolicy(
        "Mist discovery", "mist-ap-", frozenset({"ap", "switch", "gateway"}), STALE_AFTER, 0.0, 0.0, 3600.0
    )
    fleet = Fleet(policy, FieldSchema.load())
    fleet.set_sites({SITE.site_id: SITE})
    fleet.update(SITE.site_id, switch_full("5c5b35000011", "sw-1"), 0.0)
    fleet.update(SITE.site_id, gateway_full("5c5b35000021", "gw-1"), 0.0)
    exporter = PrometheusExporter("127.0.0.1", 0, 600.0)
    feed(exporter, fleet, 0.0)
    return exporter, fleet


def test_switch_and_gateway_figures_become_series_labelled_by_their_kind() -> None:
    """The exporter expands the switch and gateway values the collector sends (the test server's full
    updates, shaped after Mist's StatsSwitch / StatsGateway): one label per port, sensor, interface,
    tunnel and SPU, the device named by `switch` / `gateway` where an AP's series say `ap`."""
    got = samples(wired()[0])
    site = {"org": "Acme", "site": "Headquarters"}
    switch = {**site, "host": "mist-switch-5c5b35000011", "switch": "sw-1", "mac": "5c5b35000011"}
    gateway = {**site, "host": "mist-gateway-5c5b35000021", "gateway": "gw-1", "mac": "5c5b35000021"}

    def of(labels: dict[str, str], **extra: str) -> frozenset[tuple[str, str]]:
        return frozenset({**labels, **extra}.items())

    expected = {
        ("trapline_mist_switch_status", of(switch)): 1.0,
        ("trapline_mist_switch_stale", of(switch)): 0.0,
        ("trapline_mist_switch_cpu_idle_percent", of(switch)): 88.0,
        ("trapline_mist_switch_port_up", of(switch, port="ge-0/0/1")): 0.0,
        ("trapline_mist_switch_port_speed_bytes_per_second", of(switch, port="ge-0/0/0")): 125_000_000.0,
        ("trapline_mist_switch_port_poe_power_watts", of(switch, port="ge-0/0/0")): 6.5,
        ("trapline_mist_switch_port_rx_errors_total", of(switch, port="ge-0/0/0")): 0.0,
        ("trapline_mist_switch_temperature_celsius", of(switch, sensor="0/CPU")): 48.0,
        ("trapline_mist_switch_fan_status", of(switch, fan="0/Fan 0")): 1.0,
        ("trapline_mist_switch_psu_status", of(switch, psu="0/PSU 0")): 1.0,
        ("trapline_mist_gateway_status", of(gateway)): 1.0,
        ("trapline_mist_gateway_cpu_util_percent", of(gateway)): 30.0,
        ("trapline_mist_gateway_interface_up", of(gateway, interface="ge-0/0/0.0")): 1.0,
        ("trapline_mist_gateway_interface_up", of(gateway, interface="ge-0/0/1.0")): 1.0,
        # Only the interfaces the template discovers as WAN (a wan_name, or used as "wan").
        ("trapline_mist_gateway_wan_up", of(gateway, interface="ge-0/0/0.0")): 1.0,
        ("trapline_mist_gateway_wan_up", of(gateway, interface="ge-0/0/1.0")): None,
        ("trapline_mist_gateway_tunnel_up", of(gateway, tunnel="hub-a")): 1.0,
        ("trapline_mist_gateway_spu_sessions_max", of(gateway, spu="0")): 131072.0,
    }
    assert {k: got.get(k) for k in expected} == expected
    assert not any(("ap", "sw-1") in labels or name.startswith("trapline_mist_ap_") for name, labels in got)


@pytest.mark.parametrize(
    ("interface", "wan"),
    [
        ({"up": True, "wan_name": "wan1"}, True),
        ({"up": True, "wan_name": ""}, True),  # the template asks for a text, any text
        ({"up": False, "port_usage": "wan"}, True),
        ({"up": True, "port_usage": "lan", "network_name": "corp"}, False),
        ({"up": True, "port_usage": "WAN"}, False),  # the template compares exactly
        ({"up": True}, False),
    ],
)
def test_wan_links_are_the_interfaces_the_template_discovers(interface: dict[str, Any], wan: bool) -> None:
    """The gateway template's WAN discovery keeps an interface with a text wan_name or port_usage "wan"."""
    value = json.dumps({"if_stat": {"ge-0/0/0.0": interface}})
    reading = Reading("gw", "mist.gateway.raw", value, 0, 0, "", {})
    expanded = Expander.shipped().expand(reading) or []
    assert any(s.metric.name == "mist.gateway.wan_up" for s in expanded) == wan


def test_partial_updates_merge_and_stale_marker_follows_the_ap() -> None:
    exporter, fleet = filled()
    fleet.update(SITE.site_id, ap_basic(AP1, cpu_util=77), 10.0)
    feed(exporter, fleet, 10.0)
    got = samples(exporter)
    assert got[("trapline_mist_ap_cpu_util_percent", of_ap1())] == 77.0
    assert got[("trapline_mist_ap_clients", of_ap1())] == 4.0  # kept from the full update

    later = STALE_AFTER + 5.0
    fleet.update(SITE.site_id, ap_basic(AP1, cpu_util=78), later)
    feed(exporter, fleet, later)  # AP2 silent since 0: stale; AP1 just spoke
    ap2_stale = ("trapline_mist_ap_stale", of_ap1(mac=AP2, ap="ap-2", host=f"mist-ap-{AP2}"))
    got = samples(exporter)
    assert (got[ap2_stale], got[("trapline_mist_ap_stale", of_ap1())]) == (1.0, 0.0)
    fleet.update(SITE.site_id, ap_basic(AP2, cpu_util=5), later + 1.0)
    feed(exporter, fleet, later + 1.0)
    assert samples(exporter)[ap2_stale] == 0.0
    # One family, one HELP line, whichever key (raw or stale) set the value.
    text = generate_latest(exporter.registry).decode()
    assert text.count("# TYPE trapline_mist_ap_stale gauge") == 1


def test_series_of_a_vanished_ap_disappear() -> None:
    exporter, fleet = filled(stale_after=0.2)
    time.sleep(0.3)  # past the exporter's stale_after; only AP1 speaks again
    fleet.update(SITE.site_id, ap_basic(AP1, cpu_util=9), 1.0)
    feed(exporter, fleet, 1.0)
    macs = {dict(labels)["mac"] for _, labels in samples(exporter)}
    assert macs == {AP1}


def test_bad_values_give_no_series_and_are_counted() -> None:
    exporter = PrometheusExporter("127.0.0.1", 0, 600)
    labels = {"org": "Acme", "site": "HQ", "ap": "x", "mac": AP1}
    bad_types = {
        "cpu_util": "high",
        "num_clients": None,
        "uptime": 1e400,
        "port_stat": "eth0",
        "radio_stat": {"band_5": 7, "band_6": {"noise_floor": [1]}},
        "env_stat": {"cpu_temp": True},
    }
    for value in ("{not json", json.dumps(bad_types), "[1, 2]", "3"):
        exporter.observe(normalize(Reading(f"mist-ap-{AP1}", "mist.ap.raw", value, 0, 0, "", labels)))
    exporter.observe(normalize(Reading("van-1", "obd.voltage", 12.5, 0, 0, "V")))
    got = samples(exporter)
    # Only the constant "not stale" and a boolean that stands for 1 (as Zabbix reads JSON true).
    assert {name for name, _ in got} == {
        "trapline_mist_ap_stale",
        "trapline_mist_ap_cpu_temperature_celsius",
        "trapline_obd_voltage_volts",
    }
    assert exporter.expander.invalid == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    document=st.dictionaries(
        st.sampled_from(["port_stat", "radio_stat", "env_stat", "cpu_util", "x"]), json_values, max_size=5
    )
)
def test_any_document_expands_without_raising(document: dict[str, Any]) -> None:
    reading = Reading("ap", "mist.ap.raw", json.dumps(document), 0, 0, "", {"mac": AP1})
    expanded = Expander.shipped().expand(reading)
    assert expanded is not None
    assert all(isinstance(s.value, float) for s in expanded)


def test_every_path_reads_a_field_the_collector_keeps() -> None:
    """fields.toml is the collector's contract: a path outside it would never see a value."""
    schema = FieldSchema.load()
    data = tomllib.loads(
        resources.files("trapline.exporters.prometheus").joinpath("expand.toml").read_text("utf-8")
    )
    read = set()
    for row in (row for key in MIST_RAW_KEYS for row in data["expand"][key]):
        if "path" not in row:
            continue
        members = row["path"].split(".")[1:]
        if len(members) == 1:
            assert members[0] in schema.scalars, row
        elif len(members) == 2:
            assert members[1] in schema.objects.get(members[0], ()), row
        else:
            assert (
                len(members) == 3 and members[1] == "*" and members[2] in schema.maps.get(members[0], ())
            ), row
            members = [members[0], members[2]]
        read.add(".".join(members))
    kept = set(schema.scalars)
    kept |= {
        f"{name}.{member}"
        for name, members in [*schema.objects.items(), *schema.maps.items()]
        for member in members
    }
    # A field added to fields.toml needs a decision here: a series, or a reason for none.
    assert kept - read == NOT_EXPOSED


GOOD_METRIC = {"m": {"help": "h"}}


@pytest.mark.parametrize(
    ("expand", "metric", "complaint"),
    [
        ([{"path": "$.a", "metric": "nope"}], GOOD_METRIC, "not defined"),
        ([{"path": "$.a.*.b", "metric": "m"}], GOOD_METRIC, "needs a label"),
        ([{"path": "$.a", "label": "x", "metric": "m"}], GOOD_METRIC, "needs a label"),
        ([{"path": "$.*.*", "label": "x", "metric": "m"}], GOOD_METRIC, "at most one"),
        ([{"path": "a.b", "metric": "m"}], GOOD_METRIC, "must be"),
        ([{"path": "$..b", "metric": "m"}], GOOD_METRIC, "empty member"),
        ([{"path": "$.a", "value": 1, "metric": "m"}], GOOD_METRIC, "either path or value"),
        ([{"path": "$.a.*", "label": "host", "metric": "m"}], GOOD_METRIC, "cannot be a label"),
        ([{"path": "$.a", "metric": "m", "scael": 2}], GOOD_METRIC, "unknown field"),
        ([{"path": "$.a", "metric": "m", "fold_case": True}], GOOD_METRIC, "only with codes"),
        ([{"path": "$.a", "metric": "m", "where": {"b": "c"}}], GOOD_METRIC, "on a path with"),
        ([{"path": "$.a.*.b", "label": "x", "metric": "m", "where": {"b": 1}}], GOOD_METRIC, "member = text"),
        (
            [{"path": "$.a", "metric": "m"}, {"path": "$.b.*", "label": "x", "metric": "m"}],
            GOOD_METRIC,
            "different labels",
        ),
        ([], {"m": {"help": "h", "unit": "kb"}}, "canonical unit"),
        ([], {"m": {"help": "h", "type": "histogram"}}, "type must be"),
        ([], {"m": {}}, "help is required"),
        ([], {"m x": {"help": "h"}}, "letters, digits"),
    ],
)
def test_data_file_mistakes_are_named(
    expand: list[dict[str, Any]], metric: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ExpansionError, match=complaint):
        Expander.from_data({"expand": {"k": expand}, "metric": metric})


@pytest.mark.integration
@pytest.mark.parametrize(
    ("devices", "names"),
    [
        (filled, ["trapline_mist_ap_port_up", "trapline_mist_ap_radio_noise_floor_dbm"]),
        (wired, ["trapline_mist_switch_port_up", "trapline_mist_gateway_spu_sessions"]),
    ],
)
def test_promtool_accepts_the_mist_series(
    devices: Callable[[], tuple[PrometheusExporter, Fleet]], names: list[str]
) -> None:
    promtool = need_binary("promtool")
    exporter, fleet = devices()
    feed(exporter, fleet, STALE_AFTER)  # stale markers too
    text = generate_latest(exporter.registry).decode()
    assert all(name in text for name in names)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
