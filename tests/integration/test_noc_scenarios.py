"""What an on-call engineer sees: the vehicle and agent templates tried as a NOC would.

On real Zabbix 6.0 and 7.0.

Hosts are made by ``trapline provision`` (the vehicle and agent templates linked, as the Pi
install needs); values go through the real Zabbix destination, shaped as the collectors and the
agent's self-monitoring shape them (``fix_readings``, ``EdgeDerivations``, ``AgentStats``); the
problems are read back through the API and compared as exact sets of (event name, severity).
Time macros are shortened on the hosts, never the trigger logic.  Values are sent with clocks in
the past where the trigger's function reads history (count, min, avg), so a five-minute window
is filled in one send; only ``nodata`` needs real time to pass.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.support.zabbix_fixtures import (
    FLOAT,
    assert_quiet_for,
    history,
    open_problems,
    unique_name,
    wait_for_problems,
    wait_until,
)
from trapline.app.settings import build_pipeline, load_settings
from trapline.collectors.gps.collector import fix_readings
from trapline.collectors.gps.vehicle_derived import DerivedSettings, EdgeDerivations
from trapline.collectors.obd.collector import DTC_DISCOVERY, PID_DISCOVERY, ObdCollector
from trapline.core.model import Discovery, Item, Reading
from trapline.core.plugin import Delivery, Spooled
from trapline.exporters.zabbix import ZabbixDestination
from trapline.exporters.zabbix.client import ClusterClient, Endpoint
from trapline.provision import (
    AGENT_TEMPLATE,
    STOPS_EXPECTED_MACRO,
    VEHICLE_TEMPLATE,
    ProvisionError,
    VehicleSettings,
    provision_vehicle,
)
from trapline.templates import import_templates, shipped_templates

pytestmark = pytest.mark.integration

INSTALL_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "raspberrypi" / "trapline.toml.in"
TEMPLATE_FILES = ("template_vehicle_obd_gps.yaml", "template_trapline_agent.yaml")
TEMPLATES = [p for p in shipped_templates() if p.name in TEMPLATE_FILES]
VAN = VehicleSettings(power_cut_at_ignition=True)
NODATA = "30s"  # the shortest nodata period Zabbix accepts


@pytest.fixture
def api(zabbix: LocalZabbix) -> Any:
    client = zabbix.api()
    import_templates(client, TEMPLATES)
    return client


def _van(
    api: Any, settings: VehicleSettings = VAN, macros: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """A vehicle host made by ``trapline provision``, with time macros shortened on the host."""
    host = unique_name("van")
    hostid = provision_vehicle(api, host, unique_name("Vehicles"), settings).objectid
    for macro, value in (macros or {}).items():
        api.usermacro.create(hostid=hostid, macro="{$" + macro + "}", value=value)
    return host, hostid


def _deliver(zabbix: LocalZabbix, items: Sequence[Item]) -> Delivery:
    async def send() -> Delivery:
        client = ClusterClient([Endpoint(zabbix.trapper_host, zabbix.trapper_port)], timeout=10)
        destination = ZabbixDestination("noc", client)
        try:
            ids = itertools.count(1)
            return await destination.deliver([Spooled(next(ids), item, time.time(), 0) for item in items])
        finally:
            await destination.close()

    return asyncio.run(send())


def _send(zabbix: LocalZabbix, items: Sequence[Item]) -> None:
    delivery = _deliver(zabbix, items)
    assert (delivery.retry, delivery.rejected, delivery.unreachable) == ({}, {}, None)
    assert len(delivery.accepted) == len(items)


def _gps(host: str, speed_kmh: float, clock: int) -> list[Reading]:
    """One gpsd fix at ``speed_kmh`` as the GPS collector turns it into readings."""
    report = {
        "class": "POLL",
        "active": 1,
        "tpv": [{"class": "TPV", "mode": 3, "lat": 52.52, "lon": 13.40, "speed": speed_kmh / 3.6,
                 "track": 90.0, "epx": 3.0, "epy": 4.0, "epv": 6.0, "altMSL": 34.0,
                 "time": "2026-01-01T00:00:00Z"}],
        "sky": [{"uSat": 8}],
    }
    return [Reading(host, key, value, clock, 0, unit)
            for key, (value, unit) in fix_readings(report, datetime.fromtimestamp(clock, UTC)).items()]


def _drive_then_stop(host: str, speeds: Sequence[float], end: int) -> list[Item]:
    """A short drive, one fix every 5 s ending at ``end``, with what the agent sends beside it."""
    edge = EdgeDerivations(DerivedSettings(trip_start_after=0, trip_stop_after=30))
    out: list[Item] = []
    for i, speed in enumerate(speeds):
        clock = end - 5 * (len(speeds) - 1 - i)
        out += _gps(host, speed, clock)
        derived = edge.update(clock, 52.52, 13.40, speed)
        out += [Reading(host, k, v, clock, 0, u) for k, (v, u) in derived.items()]
        # The engine runs and charges until the van stops: the link's last state stays "running".
        out += [Reading(host, "obd.state", 2, clock), Reading(host, "obd.voltage", 14.1, clock, 0, "V")]
    return out


def _agent_started(host: str, clock: int) -> Reading:
    """The first self-monitoring report after the agent started: a small uptime."""
    return Reading(host, "trapline.uptime", 20, clock, 0, "s")


def test_vans_that_stop_and_lose_power_stay_quiet_and_one_silent_while_moving_pages_once(
    zabbix: LocalZabbix, api: Any
) -> None:
    # Both silences as short as Zabbix allows; the agent's own one is off on vans all the same.
    short = {"VEHICLE.NODATA.TIMEOUT": NODATA, "TRAPLINE.NODATA.TIMEOUT": NODATA}
    parked_host, parked = _van(api, macros=short)
    moving_host, moving = _van(api, macros=short)
    # An agent where stops are not expected (a depot server): its restart is information, never a page.
    server_host, server = _van(api, VehicleSettings(), {"TRAPLINE.NODATA.TIMEOUT": "1h"})
    zabbix.config_cache_reload()

    now = int(time.time())
    _send(zabbix, [
        _agent_started(parked_host, now - 60),
        *_drive_then_stop(parked_host, [40, 55, 30, 10, 0, 0], now),
        _agent_started(moving_host, now - 60),
        *_drive_then_stop(moving_host, [40, 55, 60, 62, 61, 60], now),
        _agent_started(server_host, now),
    ])
    # Both vans are silent from now on.  By the time the moving van's nodata has fired,
    # the parked one's would have fired too.
    wait_for_problems(api, [moving], {("Vehicle: No data while moving (for 30s)", "average")})
    assert open_problems(api, [parked]) == set()
    restarted = ("trapline: Agent has been restarted (uptime below 10m)", "information")
    wait_for_problems(api, [server], {restarted})
    # Another timer pass: still exactly one problem for the moving van, none for the parked one.
    assert_quiet_for(api, [parked], 35, min_severity=0)
    assert open_problems(api, [moving]) == {("Vehicle: No data while moving (for 30s)", "average")}


def test_overspeed_needs_its_readings_and_the_first_value_after_a_gap_is_not_enough(
    zabbix: LocalZabbix, api: Any
) -> None:
    sustained_host, sustained = _van(api)
    gap_host, after_gap = _van(api)
    zabbix.config_cache_reload()
    now = int(time.time())
    # Eight readings at 140 km/h over 40 s of a 1 m window (default limit 130, 6 readings needed).
    fast = [r for i in range(8) for r in _gps(sustained_host, 140.0, now - 40 + 5 * i)]
    # A reading long before the window, then GPS was lost; the first fix after it is fast.
    gap = _gps(gap_host, 100.0, now - 900) + _gps(gap_host, 140.0, now)
    _send(zabbix, fast + gap)
    wait_for_problems(api, [sustained], {("Vehicle: Speed over 130 km/h (for 1m)", "warning")})
    assert open_problems(api, [after_gap]) == set()


def _collector_errors(host: str, per_minute: int, end: int) -> list[Reading]:
    """Six self-monitoring reports, one a minute, of a collector whose errors grow steadily."""
    key = 'trapline.collector.errors["obd"]'
    return [Reading(host, key, per_minute * i, end - 60 * (5 - i)) for i in range(6)]


def _wait_for_rate_preprocessing(zabbix: LocalZabbix, api: Any, host: str, hostid: str, key: str) -> None:
    """Wait until the server turns this freshly discovered counter into a rate.

    Zabbix 6.0 stores the first values of a new item raw until its preprocessing manager has
    the item's steps, even after the configuration cache was reloaded.  Probe with two equal
    totals an hour back (outside every trigger window): stored raw they read 1000, as a rate 0.
    Until then the configuration is synced again.
    The real totals that follow are smaller, so their first one is dropped as a counter reset.
    """
    (item,) = api.item.get(hostids=[hostid], filter={"key_": key}, output=["itemid"])
    first = int(time.time()) - 3600
    for attempt in range(20):
        clock = first + 2 * attempt

        def probe_stored(clock: int = clock) -> list[float]:
            rows = history(api, item["itemid"], FLOAT)
            return [float(r["value"]) for r in rows if int(r["clock"]) == clock + 1]

        _send(zabbix, [Reading(host, key, 1000, clock), Reading(host, key, 1000, clock + 1)])
        if wait_until(probe_stored, what=f"the probe of {key} in the history") == [0.0]:
            return
        # The steps reach the preprocessing manager with a configuration sync after the item
        # was created; ask for another rather than wait a whole CacheUpdateFrequency.
        zabbix.config_cache_reload()
    pytest.fail(f"{key} on {host} is still stored without its preprocessing")


def test_collector_errors_at_a_constant_rate_raise_at_once_and_a_parked_vans_idle_probe_does_not(
    zabbix: LocalZabbix, api: Any
) -> None:
    failing_host, failing = _van(api)
    idle_host, idle = _van(api)
    zabbix.config_cache_reload()
    discovery = [Discovery.now(h, "trapline.collector.discovery", [{"{#COLLECTOR}": "obd"}])
                 for h in (failing_host, idle_host)]
    _send(zabbix, discovery)
    key = 'trapline.collector.errors["obd"]'
    wait_until(
        lambda: len(api.item.get(hostids=[failing, idle], filter={"key_": key}, output=["itemid"])) == 2,
        timeout=30,
        what="the discovered error items",
    )
    zabbix.config_cache_reload()
    for host, hostid in ((failing_host, failing), (idle_host, idle)):
        _wait_for_rate_preprocessing(zabbix, api, host, hostid, key)
    now = int(time.time())
    # 12 errors a minute is 0.2/s, above the default 0.05/s; one a minute (the idle probe of a
    # parked van whose adapter sleeps) is 0.017/s.  The window is full at the first evaluation.
    _send(zabbix, _collector_errors(failing_host, 12, now) + _collector_errors(idle_host, 1, now))
    rising = ("trapline: Collector obd: Errors are rising (over 0.05/s for 5m)", "warning")
    wait_for_problems(api, [failing], {rising})
    assert open_problems(api, [idle]) == set()


def _install_config(tmp_path: Path, host: str, zabbix: LocalZabbix) -> Path:
    """deploy/raspberrypi/trapline.toml.in as install.sh fills it in, pointed at the test server."""
    text = INSTALL_CONFIG.read_text(encoding="utf-8")
    for placeholder, value in {
        "@VEHICLE@": host,
        "@OBD_DEVICE@": "/dev/elm327",
        "@TRAPLINE_SERVERS@": f"{zabbix.trapper_host}:{zabbix.trapper_port}",
        "@UPLINK_COMMENT@": "direct to the test server",
        "/var/lib/trapline/spool.db": str(tmp_path / "spool.db"),
    }.items():
        text = text.replace(placeholder, value)
    assert "@" not in text, "every placeholder of the install template is filled"
    path = tmp_path / "trapline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _install_keys(config: Path, host: str) -> tuple[list[Discovery], list[Reading]]:
    """Every discovery and key the Pi install sends for ``host``, from its own configuration."""
    settings = load_settings(config)
    pipeline = build_pipeline(settings)
    try:
        own = pipeline.stats.readings(host, 0, None)
    finally:
        pipeline.spool.close()
    (obd,) = [c for c in settings.collectors if isinstance(c, ObdCollector)]
    pids = {spec.name: spec for tier in obd.settings.tiers for spec in tier.pids}
    now = int(time.time())
    discoveries = [i for i in own if isinstance(i, Discovery)] + [
        Discovery(host, PID_DISCOVERY, tuple({"{#PID}": p.name, "{#NAME}": p.description, "{#UNIT}": p.unit}
                                             for p in pids.values()), now),
        Discovery(host, DTC_DISCOVERY, ({"{#DTC}": "P0143", "{#DESCRIPTION}": "O2 Sensor Circuit Low Voltage",
                                         "{#STATE}": "stored"},), now),
    ]
    # Every option of the edge derivations on, and a whole trip, so every derived key appears.
    edge = EdgeDerivations(DerivedSettings(home=(52.5, 13.4), geofence_radius=1000, overspeed_limit=1,
                                           trip_start_after=0, trip_stop_after=0))
    derived: dict[str, tuple[Any, str]] = {}
    for t, speed in enumerate([50.0, 50.0, 0.0]):
        derived |= edge.update(now - 3 + t, 52.52 + 0.001 * t, 13.40, speed)
    readings = [r for r in own if isinstance(r, Reading)] + _gps(host, 50.0, now) + [
        Reading(host, key, value, now, 0, unit) for key, (value, unit) in derived.items()
    ] + [
        Reading(host, "obd.state", 2, now), Reading(host, "obd.voltage", 14.1, now, 0, "V"),
        Reading(host, "obd.protocol", "ISO 15765-4 (CAN 11/500)", now),
        Reading(host, "obd.vin", "WDB9066331S123456", now),
        Reading(host, "obd.mil", 0, now), Reading(host, "obd.dtc.count[stored]", 1, now),
        Reading(host, "obd.dtc.count[pending]", 0, now), Reading(host, "obd.dtc[P0143,stored]", 1, now),
        *[Reading(host, f"obd.pid[{name}]", 1.0, now) for name in pids],
    ]
    return discoveries, readings


def test_a_provisioned_van_accepts_every_key_the_pi_install_sends(
    zabbix: LocalZabbix, api: Any, tmp_path: Path
) -> None:
    host, hostid = _van(api)
    (found,) = api.host.get(hostids=[hostid], selectParentTemplates=["host"], selectMacros=["macro", "value"],
                            output=["hostid"])
    assert {t["host"] for t in found["parentTemplates"]} == {VEHICLE_TEMPLATE, AGENT_TEMPLATE}
    assert {(m["macro"], m["value"]) for m in found["macros"]} == {(STOPS_EXPECTED_MACRO, "1")}
    zabbix.config_cache_reload()

    discoveries, readings = _install_keys(_install_config(tmp_path, host, zabbix), host)
    _send(zabbix, discoveries)
    keys = {r.key for r in readings}
    wait_until(lambda: keys <= {i["key_"] for i in api.item.get(hostids=[hostid], output=["key_"])},
               timeout=30, what="every discovered item")
    zabbix.config_cache_reload()
    delivery = _deliver(zabbix, readings)
    assert (delivery.retry, delivery.rejected) == ({}, {}), "the server refused some of the install's keys"
    assert len(delivery.accepted) == len(readings)


def test_provision_puts_the_van_behind_its_proxy_and_creates_it_when_asked(
    zabbix: LocalZabbix, api: Any
) -> None:
    settings = VehicleSettings(proxy="{host}-proxy", create_proxy=True, power_cut_at_ignition=True)
    host, group = unique_name("van"), unique_name("Vehicles")
    hostid = provision_vehicle(api, host, group, settings).objectid
    seven = zabbix.version >= "7.0"
    (proxy,) = api.proxy.get(filter={"name" if seven else "host": [f"{host}-proxy"]}, output=["proxyid"])
    fields = ["monitored_by", "proxyid"] if seven else ["proxy_hostid"]
    (found,) = api.host.get(hostids=[hostid], output=fields)
    proxyid = proxy["proxyid"]
    expected = {"monitored_by": "1", "proxyid": proxyid} if seven else {"proxy_hostid": proxyid}
    assert {k: found[k] for k in fields} == expected
    assert provision_vehicle(api, host, group, settings).action == "unchanged"

    # A host moved to the proxy later, and a proxy that must exist but does not.
    other = unique_name("van")
    provision_vehicle(api, other, group)
    assert provision_vehicle(api, other, group, VehicleSettings(proxy=f"{host}-proxy")).action == "updated"
    (moved,) = api.host.get(filter={"host": [other]}, output=fields)
    assert {k: moved[k] for k in fields} == expected
    with pytest.raises(ProvisionError, match="does not exist"):
        provision_vehicle(api, unique_name("van"), group, VehicleSettings(proxy=unique_name("nowhere")))
