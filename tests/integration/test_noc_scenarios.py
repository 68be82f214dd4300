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
import html
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from devtools.localzabbix import ADMIN_PASSWORD, ADMIN_USER, LocalZabbix
from tests.support.zabbix_fixtures import (
    FLOAT,
    UNSIGNED,
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
    FLEET_TABLE_COLUMNS,
    FRESH_COLOUR,
    STALE_COLOUR,
    STOPS_EXPECTED_MACRO,
    VEHICLE_TEMPLATE,
    ProvisionError,
    VehicleSettings,
    ensure_fleet_dashboard,
    geomap_widget,
    problems_widget,
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


COOLANT = "obd.pid[COOLANT_TEMP]"


def _ignition_on(host: str, volts: float, clock: int, engine: int = 1) -> list[Reading]:
    """One voltage reading with the ECU answering (link state 2), the engine turning or not (RPM > 0)."""
    return [
        Reading(host, "obd.voltage", volts, clock, 0, "V"),
        Reading(host, "obd.state", 2, clock),
        Reading(host, "obd.engine.running", engine, clock),
    ]


def _coolant(host: str, celsius: float, clock: int) -> Reading:
    return Reading(host, COOLANT, celsius, clock, 0, "°C")


@dataclass(frozen=True)
class Sustained:
    """A fault held for its trigger's whole period, and the same value alone after a gap."""

    problem: tuple[str, str]
    held: Callable[[str, int], list[Item]]  # (host, now) -> readings
    after_gap: Callable[[str, int], list[Item]]
    discovered: str | None = None  # a PID the trigger's item needs discovered first
    # Another normal day that looks like the fault to a careless trigger: (host, now) -> readings.
    look_alike: Callable[[str, int], list[Item]] | None = None


SUSTAINED = {
    # Eight readings at 140 km/h over 40 s of a 1 m window (default limit 130, 6 readings needed);
    # the other van had a reading long before the window, then lost GPS; its first fix after it is fast.
    "overspeed": Sustained(
        ("Vehicle: Speed over 130 km/h (for 1m)", "warning"),
        lambda h, now: [r for i in range(8) for r in _gps(h, 140.0, now - 40 + 5 * i)],
        lambda h, now: [*_gps(h, 100.0, now - 900), *_gps(h, 140.0, now)],
    ),
    # Ten minutes running at 12.4 V, one reading a minute (the collector's idle_interval): the
    # alternator does not charge.  The other van ran fine an hour ago, was parked with its power
    # cut, and its first reading after the engine started was taken while cranking.
    "battery": Sustained(
        ("Vehicle: Battery is not charging while running (below 13.0 V)", "average"),
        lambda h, now: [r for i in range(10) for r in _ignition_on(h, 12.4, now - 60 * (9 - i))],
        lambda h, now: [*_ignition_on(h, 14.1, now - 3600), *_ignition_on(h, 12.2, now)],
        # Ten minutes with the ignition on and the engine off (loading with the tail lift): the
        # ECU answers, so the link state says 2, but nothing charges and nothing is broken.
        look_alike=lambda h, now: [
            r for i in range(10) for r in _ignition_on(h, 12.4, now - 60 * (9 - i), engine=0)
        ],
    ),
    # Two minutes at 120 °C, one reading every 30 s as the Pi install's slow tier reads it; the
    # other engine was at 90 °C an hour ago and its first reading after the gap is hot.
    "coolant": Sustained(
        ("Vehicle: Engine coolant temperature is too high (over 110°C for 2m)", "high"),
        lambda h, now: [_coolant(h, 120.0, now - 30 * (4 - i)) for i in range(5)],
        lambda h, now: [_coolant(h, 90.0, now - 3600), _coolant(h, 120.0, now)],
        discovered="COOLANT_TEMP",
    ),
}


@pytest.mark.parametrize("case", SUSTAINED.values(), ids=SUSTAINED.keys())
def test_a_sustained_fault_pages_and_its_first_reading_after_a_gap_does_not(
    zabbix: LocalZabbix, api: Any, case: Sustained
) -> None:
    held_host, held = _van(api)
    gap_host, after_gap = _van(api)
    alike_host, alike = _van(api)
    zabbix.config_cache_reload()
    if case.discovered:
        row = {"{#PID}": case.discovered, "{#NAME}": case.discovered.lower(), "{#UNIT}": ""}
        _send(zabbix, [Discovery.now(h, PID_DISCOVERY, [row]) for h in (held_host, gap_host)])
        key = f"obd.pid[{case.discovered}]"
        wait_until(lambda: len(api.item.get(hostids=[held, after_gap], filter={"key_": key})) == 2,
                   timeout=30, what=f"the discovered {key} items")
        zabbix.config_cache_reload()
    now = int(time.time())
    look_alike = case.look_alike(alike_host, now) if case.look_alike else []
    _send(zabbix, case.held(held_host, now) + case.after_gap(gap_host, now) + look_alike)
    wait_for_problems(api, [held], {case.problem})
    assert open_problems(api, [after_gap]) == set()
    assert open_problems(api, [alike]) == set()


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
        "@PSK_COMMENT@": "# ",  # the PSK lines as the proxy uplink leaves them
        "@FLEET_PSK_IDENTITY@": "trapline-fleet",
        "@FLEET_PSK_FILE@": "/etc/trapline/secrets/fleet.psk",
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


# --------------------------------------------------------------------------
# Something to look at: the Fleet map's table marks the van whose position is stale
# --------------------------------------------------------------------------
STALE_AFTER = "5m"  # {$VEHICLE.POSITION.STALE}, shortened on the hosts from 30m
RECENT_FIXES = "vehicle.position.recent"


def _recent_fixes_after(api: Any, hostid: str, since: int) -> int:
    """The first value the server calculated for the van's recent fixes once its positions were in."""
    (item,) = api.item.get(hostids=[hostid], filter={"key_": RECENT_FIXES}, output=["itemid"])

    def calculated() -> list[dict[str, str]]:
        return [r for r in history(api, item["itemid"], UNSIGNED) if int(r["clock"]) >= since]

    # Calculated items run once a minute at an offset of their own.
    rows = wait_until(calculated, timeout=150, interval=2, what=f"{RECENT_FIXES} calculated by the server")
    return int(min(rows, key=lambda r: int(r["clock"]))["value"])


def _frontend(zabbix: LocalZabbix) -> requests.Session:
    """A browser's session: logged in through the sign-in form, as an operator would."""
    session = requests.Session()
    form = {"name": ADMIN_USER, "password": ADMIN_PASSWORD, "enter": "Sign in"}
    response = session.post(f"{zabbix.frontend_url}index.php", data=form, timeout=60)
    response.raise_for_status()
    assert any(c.name in ("zbx_session", "zbx_sessionid") for c in session.cookies), "the sign-in failed"
    return session


def _page_errors(page: str) -> list[str]:
    """The error messages a frontend page shows, but the one about this machine's missing locales.

    A frontend without the user's locale installed says so on every page; it is about the web
    server, not about what the page shows.
    """
    boxes = re.findall(r'class="msg-bad".*?</output>', page, flags=re.DOTALL)
    errors = [html.unescape(m) for box in boxes for m in re.findall(r"<li>(.*?)</li>", box, flags=re.DOTALL)]
    return [e for e in errors if not e.startswith("Locale for language")] + [
        box for box in boxes if "<li>" not in box  # an error box without details: keep it whole
    ]


def _page_widgets(page: str) -> list[dict[str, Any]]:
    """The widgets the dashboard page hands to its scripts (view.init({...}) in both versions)."""
    start = page.index("view.init(") + len("view.init(")
    data, _ = json.JSONDecoder().raw_decode(page[start:])
    pages = data["dashboard"]["pages"]
    return [w for p in pages for w in p["widgets"]]


def _rows(body: str, names: Sequence[str]) -> list[str]:
    """The table rows of the rendered widget, in the order shown, each as its HTML, for ``names``."""
    rows = body.split("<tr")[1:]
    found = [(row, name) for row in rows for name in names if f">{html.escape(name)}<" in row]
    return [row for row, _ in found]


def test_the_fleet_table_shows_every_van_and_marks_the_one_whose_position_is_stale(
    zabbix: LocalZabbix, api: Any
) -> None:
    group = unique_name("Vehicles")
    fresh_host, stale_host = unique_name("van"), unique_name("van")
    hostids = {h: provision_vehicle(api, h, group, VAN).objectid for h in (fresh_host, stale_host)}
    for hostid in hostids.values():
        api.usermacro.create(hostid=hostid, macro="{$VEHICLE.POSITION.STALE}", value=STALE_AFTER)
    dashboard_name = unique_name("Fleet map")
    board = ensure_fleet_dashboard(api, group, dashboard_name)
    assert board.action == "created"
    zabbix.config_cache_reload()

    now = int(time.time())
    # The stale van drove until ten minutes ago and was parked with its power cut; the other is on the road.
    stale_fixes = [r for t in range(now - 900, now - 600, 30) for r in _gps(stale_host, 50.0, t)]
    fresh_fixes = [r for t in range(now - 25, now + 1, 5) for r in _gps(fresh_host, 80.0, t)]
    others = [
        Reading(h, key, value, now - 600 if h == stale_host else now, 0, unit)
        for h in (fresh_host, stale_host)
        for key, value, unit in (("obd.voltage", 12.4, "V"), ("obd.dtc.count[stored]", 2, ""))
    ]
    _send(zabbix, stale_fixes + fresh_fixes + others)
    sent = int(time.time()) + 1  # a count calculated from here on has seen every fix
    assert _recent_fixes_after(api, hostids[stale_host], sent) == 0
    assert _recent_fixes_after(api, hostids[fresh_host], sent) == 6
    assert ensure_fleet_dashboard(api, group, dashboard_name).action == "unchanged"

    # The dashboard read back through the API: the table over the group, its columns by item name.
    (dashboard,) = api.dashboard.get(dashboardids=[board.objectid], selectPages="extend", output=["name"])
    (table,) = [w for p in dashboard["pages"] for w in p["widgets"] if w["type"] == "tophosts"]
    fields = {f["name"]: f["value"] for f in table["fields"]}
    groupid = api.hostgroup.get(filter={"name": [group]}, output=["groupid"])[0]["groupid"]
    assert [v for k, v in fields.items() if k.startswith("groupids")] == [groupid]
    seven = zabbix.version >= "7.0"
    named = {k: v for k, v in fields.items() if re.fullmatch(r"columns\.(\d+\.name|name\.\d+)", k)}
    assert sorted(named.values()) == sorted(c.title for c in FLEET_TABLE_COLUMNS)
    for index, column in enumerate(FLEET_TABLE_COLUMNS):
        item = fields[f"columns.{index}.item" if seven else f"columns.item.{index}"]
        assert item == (column.item or "")
        if column.item:
            # Top hosts finds a column's items by name: every van has one of each.
            vans = list(hostids.values())
            found = api.item.get(hostids=vans, filter={"name": column.item}, output=["hostid"])
            assert {i["hostid"] for i in found} == set(vans), column.item

    # The page an operator opens, then the table as the page's script asks the frontend for it.
    session = _frontend(zabbix)
    page = session.get(f"{zabbix.frontend_url}zabbix.php",
                       params={"action": "dashboard.view", "dashboardid": board.objectid}, timeout=60)
    page.raise_for_status()
    assert _page_errors(page.text) == []
    (shown,) = [w for w in _page_widgets(page.text) if w["type"] == "tophosts"]
    request = {"name": shown["name"], "dashboardid": board.objectid, "widgetid": shown["widgetid"],
               "view_mode": shown["view_mode"], "edit_mode": 0,
               # 6.0's script sends the fields as a JSON string, 7.0's as an object.
               "fields": shown["fields"] if seven else json.dumps(shown["fields"])}
    action = {"action": "widget.tophosts.view"}
    if not seven:
        # 6.0's script adds the page's token to the URL as "sid"; 7.0's widget views need none.
        action["sid"] = re.search(r'<meta name="csrf-token" content="(\w+)"', page.text).group(1)  # type: ignore[union-attr]
    answer = session.post(f"{zabbix.frontend_url}zabbix.php", params=action, json=request, timeout=60)
    answer.raise_for_status()
    assert "json" in answer.headers.get("Content-Type", ""), answer.text[:3000]
    rendered = answer.json()
    assert _page_errors(str(rendered.get("messages", ""))) == []
    body = rendered["body"]
    for column in FLEET_TABLE_COLUMNS:
        assert f">{column.title}<" in body
    stale_row, fresh_row = _rows(body, [stale_host, fresh_host])  # the stale van comes first
    assert stale_host in stale_row and fresh_host in fresh_row
    assert f"background-color: #{STALE_COLOUR}" in stale_row
    assert f"background-color: #{STALE_COLOUR}" not in fresh_row
    assert f"background-color: #{FRESH_COLOUR}" in fresh_row


def test_a_fleet_map_made_before_the_table_gets_it_below_its_widgets(zabbix: LocalZabbix, api: Any) -> None:
    group, name = unique_name("Vehicles"), unique_name("Fleet map")
    groupid = api.hostgroup.create(name=group)["groupids"][0]
    major, minor = (int(n) for n in zabbix.version.split("."))
    version = (major, minor)
    # What an older trapline provision made: the map and the problems, nothing under them.
    older = [geomap_widget(groupid, version), problems_widget(groupid, version)]
    dashboardid = api.dashboard.create(name=name, pages=[{"widgets": older}])["dashboardids"][0]
    assert ensure_fleet_dashboard(api, group, name).action == "updated"
    assert ensure_fleet_dashboard(api, group, name).action == "unchanged"
    (board,) = api.dashboard.get(dashboardids=[dashboardid], selectPages="extend")
    (page,) = board["pages"]
    widgets = {w["type"]: w for w in page["widgets"]}
    assert sorted(widgets) == ["geomap", "problems", "tophosts"]
    # The map and the problems kept their places and settings; the table sits below both.
    for kind, before in zip(("geomap", "problems"), older, strict=True):
        assert int(widgets[kind]["width"]) == before["width"] and int(widgets[kind]["y"]) == 0
        assert [f["value"] for f in widgets[kind]["fields"]] == [groupid]
    assert int(widgets["tophosts"]["y"]) == older[0]["height"]


# --------------------------------------------------------------------------
# One fault, one page: the check engine lamp and the stored codes that name its fault
# --------------------------------------------------------------------------
def test_the_check_engine_lamp_pages_only_when_no_stored_code_names_the_fault(
    zabbix: LocalZabbix, api: Any
) -> None:
    coded_host, coded = _van(api)
    bare_host, bare = _van(api)
    zabbix.config_cache_reload()
    row = {"{#DTC}": "P0301", "{#DESCRIPTION}": "Cylinder 1 Misfire Detected", "{#STATE}": "stored"}
    _send(zabbix, [Discovery.now(coded_host, DTC_DISCOVERY, [row])])
    wait_until(lambda: api.item.get(hostids=[coded], filter={"key_": "obd.dtc[P0301,stored]"}),
               timeout=30, what="the discovered trouble code item")
    zabbix.config_cache_reload()
    now = int(time.time())
    _send(zabbix, [
        Reading(coded_host, "obd.mil", 1, now), Reading(coded_host, "obd.dtc.count[stored]", 1, now),
        Reading(coded_host, "obd.dtc[P0301,stored]", 1, now),
        Reading(bare_host, "obd.mil", 1, now), Reading(bare_host, "obd.dtc.count[stored]", 0, now),
    ])
    wait_for_problems(api, [coded], {("Vehicle: Trouble code P0301 (stored): Cylinder 1 Misfire Detected",
                                      "average")})
    wait_for_problems(api, [bare], {("Vehicle: Check engine lamp (MIL) is on without a stored trouble code",
                                     "average")})
