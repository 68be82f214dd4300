"""Odometer, engine hours, today's distance and trips across a killed agent, and their service triggers.

The drive: the whole agent (``python -m trapline run``) reads the ELM327-emulator
over TCP and a real gpsd that gpsfake feeds with a generated NMEA drive north at
36 km/h (RMC, GGA, GSA as NMEA 0183 defines them).  Mid-drive it gets SIGKILL, as
in a power cut, and is started again.  What it said before and after is read back
from its spool (its Zabbix is unreachable on purpose, so nothing leaves it).

The triggers and the geofence discovery: values shaped by :class:`VehicleState` and
:class:`EdgeDerivations` themselves, sent through the real Zabbix destination to a
host made by ``trapline provision``, on Zabbix 6.0 and 7.0.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.integration.test_gps_gpsfake import Gpsfake, checksummed
from tests.support.agent_process import AgentProcess, TomlValue, spooled_readings, toml_config
from tests.support.elm_fixtures import HOST
from tests.support.peers import free_port
from tests.support.zabbix_fixtures import assert_quiet_for, unique_name, wait_for_problems, wait_until
from trapline.collectors.gps.vehicle_derived import (
    GEOFENCE_DISCOVERY,
    DerivedSettings,
    EdgeDerivations,
    Geofence,
    great_circle_m,
)
from trapline.core.model import Discovery, Item, Reading
from trapline.core.plugin import Spooled as Row
from trapline.exporters.zabbix import ZabbixDestination
from trapline.exporters.zabbix.client import ClusterClient, Endpoint
from trapline.provision import provision_vehicle
from trapline.templates import import_templates, shipped_templates
from trapline.wire.vehicle_state import VehicleState, state_path

pytestmark = pytest.mark.integration

START = (56.9496, 24.1052)
STEP_M = 10.0  # one fix per NMEA second at 36 km/h
FIXES = 900  # more than the test drives: gpsfake starts over at the end of its log
ECU_ODOMETER_M = 12_345_600.0  # what the emulator's PID A6 answer below says: 0x0001E240 tenths of a km
FAST = 0.2  # s between RPM samples
LIMIT = 90.0
TOTALS = ("vehicle.odometer", "vehicle.distance.today", "vehicle.engine.time", "vehicle.trips",
          "vehicle.trip.distance", "vehicle.trip.duration")


def _nmea_coordinate(value: float, digits: int) -> str:
    degrees = int(value)
    return f"{degrees:0{digits}d}{(value - degrees) * 60:07.4f}"


def write_drive(path: Path) -> None:
    """A drive due north at 36 km/h, one fix per second from 12:00:00."""
    knots = 36 / 1.852
    lines = []
    for i in range(FIXES):
        lat = START[0] + i * STEP_M / 111_195.0
        stamp = f"{12 + i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}.00"
        lat_text, lon_text = _nmea_coordinate(lat, 2), _nmea_coordinate(START[1], 3)
        lines += [
            checksummed(f"GPRMC,{stamp},A,{lat_text},N,{lon_text},E,{knots:.2f},0.0,150624,,,A"),
            checksummed(f"GPGGA,{stamp},{lat_text},N,{lon_text},E,1,08,0.9,12.0,M,22.6,M,,"),
            checksummed("GPGSA,A,3,02,05,09,12,15,18,21,25,,,,,1.6,0.9,1.3"),
        ]
    path.write_text("".join(lines), newline="")


def agent_config(tmp_path: Path, zabbix_port: int, gps_port: int, obd_port: int | None) -> Path:
    sections: dict[str, Mapping[str, TomlValue]] = {
        "agent": {"flush_interval": 0.2, "shutdown_timeout": 10.0},
        "spool": {"path": str(tmp_path / "spool.db")},
        "zabbix": {"servers": [f"127.0.0.1:{zabbix_port}"]},  # nobody listens: everything stays spooled
        "collectors.gps": {
            "type": "gps", "host": HOST, "port": gps_port, "interval": 0.2, "call_timeout": 2.0,
            "retry_initial": 0.1, "retry_max": 0.5, "trip_start_after": 1.0, "state_dir": str(tmp_path),
        },
    }
    if obd_port is not None:
        sections |= {
            "collectors.obd": {
                "type": "obd", "host": HOST, "device": f"socket://127.0.0.1:{obd_port}", "protocol": "6",
                "call_timeout": 2.0, "retry_initial": 0.1, "retry_max": 0.5, "idle_interval": 0.5,
                "dtc_interval": 30.0, "state_dir": str(tmp_path),
            },
            "collectors.obd.tiers.fast": {"interval": FAST, "pids": ["SPEED", "RPM"]},
            "collectors.obd.tiers.slow": {"interval": 0.5, "pids": ["COOLANT_TEMP", "ODOMETER"]},
        }
    path = tmp_path / f"agent-{obd_port is not None}.toml"
    path.write_text(toml_config(sections))
    return path


def saved(tmp_path: Path) -> dict[str, Any]:
    """The agent's state file (replaced atomically, so always whole), or {} before the first write."""
    try:
        found: dict[str, Any] = json.loads(state_path(tmp_path, HOST).read_text())
    except FileNotFoundError:
        return {}
    return found


def drive_killed_midway(
    tmp_path: Path, adapter: tuple[int | None, int | None], first_leg: Callable[[dict[str, Any]], bool],
    second_leg: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> tuple[Spooled, dict[str, Any]]:
    """Drive until ``first_leg(state)``, SIGKILL the agent, start it again (with the OBD adapter
    at ``adapter[1]`` now, None = unplugged) and drive until ``second_leg(state at the kill, state)``.

    Returns what the agent spooled, split at the kill, and the state file at the kill.
    """
    route = tmp_path / "drive.nmea"
    write_drive(route)
    fake = Gpsfake(route, tmp_path)
    fake.start()
    zabbix_port = free_port()
    log = tmp_path / "agent.log"
    agent = AgentProcess(agent_config(tmp_path, zabbix_port, fake.port, adapter[0]), log)
    try:
        agent.start()
        wait_until(lambda: first_leg(saved(tmp_path)), timeout=LIMIT, interval=0.2, what="the first leg")
        agent.kill()
        killed, first = time.time(), saved(tmp_path)
        agent = AgentProcess(agent_config(tmp_path, zabbix_port, fake.port, adapter[1]), log)
        agent.start()
        wait_until(lambda: second_leg(first, saved(tmp_path)), timeout=LIMIT, interval=0.2,
                   what="the second leg")
        assert agent.terminate() == 0, agent.output()
    except BaseException:
        print(agent.output()[-3000:])  # pytest shows it only when the test fails
        raise
    finally:
        if agent.running:
            agent.kill()
        fake.stop()
    return Spooled(tmp_path, zabbix_port, killed), first


class Spooled:
    """What the agent said, read back from its spool and split at the moment it was killed."""

    def __init__(self, tmp_path: Path, zabbix_port: int, killed: float) -> None:
        readings = spooled_readings(tmp_path / "spool.db", f"zabbix[127.0.0.1:{zabbix_port}]")
        self.all = sorted(readings, key=lambda r: (r.clock, r.ns))
        self.before = [r for r in self.all if r.clock + r.ns / 1e9 < killed]
        self.after = [r for r in self.all if r.clock + r.ns / 1e9 >= killed]
        assert self.before and self.after, "the agent said something before and after the kill"

    @staticmethod
    def series(readings: list[Reading], key: str) -> list[float]:
        return [float(r.value) for r in readings if r.key == key]

    def across(self) -> float:
        """Metres from the last fix before the kill to the first fix after it (the drive is due north)."""
        last = next(r for r in reversed(self.before) if r.key == "gps.latitude")
        then = next(r for r in self.after if r.key == "gps.latitude")
        return great_circle_m(float(last.value), START[1], float(then.value), START[1])

    def elapsed(self, key: str) -> float:
        """Seconds between the last reading of ``key`` before the kill and the first after it."""
        last = next(r for r in reversed(self.before) if r.key == key)
        then = next(r for r in self.after if r.key == key)
        return then.clock + then.ns / 1e9 - last.clock - last.ns / 1e9


def test_a_killed_agent_carries_on_mid_drive_with_no_reset_and_no_jump(
    emulator: tuple[Any, int], tmp_path: Path
) -> None:
    _, obd_port = emulator  # the emulated car has no PID A6: the odometer is GPS distance
    said, first = drive_killed_midway(
        tmp_path, (obd_port, obd_port),
        lambda state: state.get("odometer_m", 0) >= 300 and state.get("engine_s", 0) > 1,
        lambda first, state: state["odometer_m"] >= first["odometer_m"] + 300,
    )
    assert first["trips"]["moving"] is True, "killed mid-trip"
    for key in TOTALS:  # a reset would show as a step down
        values = said.series(said.all, key)
        assert values and values == sorted(values), f"{key} went down: {values}"
    moving = said.series(said.all, "vehicle.moving")
    assert 0 not in moving[moving.index(1):], "the trip must go on across the restart"
    assert said.series(said.all, "vehicle.trips")[-1] == 0

    # No jump: across the outage the odometer and the trip grow by the straight line from
    # the last fix before the kill to the first fix after it, and by nothing else.
    for key in ("vehicle.odometer", "vehicle.trip.distance"):
        last, then = said.series(said.before, key)[-1], said.series(said.after, key)[0]
        assert 0 <= then - last <= said.across() + 0.5, (key, last, then, said.across())
    # Time totals grow no faster than time: the engine ran at most while it could be seen,
    # the trip lasted exactly as long as the clock says.
    for key in ("vehicle.engine.time", "vehicle.trip.duration"):
        last, then = said.series(said.before, key)[-1], said.series(said.after, key)[0]
        assert 0 <= then - last <= said.elapsed(key) + 0.2, (key, last, then, said.elapsed(key))
    assert said.series(said.before, "vehicle.engine.time")[-1] > 0
    last_trip, next_trip = said.series(said.before, "vehicle.trip.duration")[-1], said.series(
        said.after, "vehicle.trip.duration")[0]
    assert next_trip - last_trip == pytest.approx(said.elapsed("vehicle.trip.duration"), abs=0.3)
    assert said.series(said.all, "vehicle.distance.today")[-1] == pytest.approx(
        said.series(said.all, "vehicle.odometer")[-1])


def _a6_car(emulator: Any, elm_module: Any) -> None:
    """The emulated engine ECU flags PID A6 in its bitmaps (chained up to 01A0) and answers it."""
    message = elm_module.obd_message

    def engine(data: str) -> str:
        size = f"{len(data.split()):02X}"
        return str(message.HD(message.ECU_R_ADDR_E) + message.SZ(size) + message.DT(data))

    emulator.answer.update({
        "PIDS_C": engine("41 40 7A 1C 80 01"),  # last bit: 0160 exists
        "PIDS_D": engine("41 60 00 00 00 01"),
        "PIDS_E": engine("41 80 00 00 00 01"),
        "PIDS_F": engine("41 A0 04 00 00 00"),  # A6 is the sixth PID after A0
        "ODOMETER": engine("41 A6 00 01 E2 40"),
    })


def test_the_ecu_odometer_wins_and_gps_carries_on_from_it_when_the_adapter_is_gone(
    emulator: tuple[Any, int], elm_module: Any, tmp_path: Path
) -> None:
    emu, obd_port = emulator
    _a6_car(emu, elm_module)
    said, _ = drive_killed_midway(
        tmp_path, (obd_port, None),  # the adapter is unplugged while the agent is down: GPS alone then
        lambda state: state.get("ecu_m") == ECU_ODOMETER_M and state["trips"].get("distance", 0) >= 200,
        lambda _, state: state["odometer_m"] >= ECU_ODOMETER_M + 200,
    )
    odometer = said.series(said.all, "vehicle.odometer")
    assert odometer == sorted(odometer), "the odometer went down"
    assert said.series(said.before, "obd.pid[ODOMETER]")[-1] == ECU_ODOMETER_M
    # While the ECU answered, GPS distance did not count: every value from its first reading on is the ECU's.
    from_ecu = [v for v in said.series(said.before, "vehicle.odometer") if v >= ECU_ODOMETER_M]
    assert from_ecu and set(from_ecu) == {ECU_ODOMETER_M}
    # The source changed with no jump: GPS counts on from the ECU's figure.
    then = said.series(said.after, "vehicle.odometer")
    assert 0 <= then[0] - ECU_ODOMETER_M <= said.across() + 0.5
    assert then[-1] >= ECU_ODOMETER_M + 200
    # today's distance is what was driven, not the odometer the ECU reported first
    assert said.series(said.all, "vehicle.distance.today")[-1] < 2_000


# -- service triggers on Zabbix 6.0 and 7.0 ---------------------------------------------------------

DISTANCE = ("Vehicle: Service due by distance", "warning")
HOURS = ("Vehicle: Service due by engine hours", "warning")
TEMPLATES = [p for p in shipped_templates()
             if p.name in ("template_vehicle_obd_gps.yaml", "template_trapline_agent.yaml")]


def test_service_triggers_fire_when_due_and_stay_quiet_before(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    import_templates(api, TEMPLATES)
    host = unique_name("van")
    hostid = provision_vehicle(api, host, unique_name("Vehicles")).objectid
    zabbix.config_cache_reload()
    state = VehicleState(tmp_path / "vehicle.json", host)
    clock = [time.time()]

    def drive(odometer_km: float, engine_h: float) -> None:
        """Bring the totals to these figures the way the collectors do, and send them."""
        clock[0] += 1
        state.ecu_odometer(clock[0], odometer_km * 1000, 60)
        # two running samples that far apart carry the hours still missing
        state.engine_sample(0.0, True, math.inf)
        state.engine_sample(engine_h * 3600 - state.engine()["vehicle.engine.time"][0], True, math.inf)
        readings = [Reading(host, key, value, int(clock[0]), 0, unit)
                    for key, (value, unit) in (state.odometer() | state.engine()).items()]

        send(zabbix, readings)
        wait_until(lambda: _last(api, hostid, "vehicle.odometer") == int(clock[0]),
                   what="the totals in Zabbix")

    def set_macro(name: str, value: str) -> None:
        found = api.usermacro.get(hostids=[hostid], filter={"macro": name}, output=["hostmacroid"])
        if found:
            api.usermacro.update(hostmacroid=found[0]["hostmacroid"], value=value)
        else:
            api.usermacro.create(hostid=hostid, macro=name, value=value)
        zabbix.config_cache_reload()

    # The template's defaults (0) never fire, however far the van went.
    drive(14_999.9, 599.9)
    assert_quiet_for(api, [hostid], 5)
    # The next service set on the host: not due yet.
    set_macro("{$VEHICLE.SERVICE.KM}", "15000")
    set_macro("{$VEHICLE.SERVICE.HOURS}", "600")
    drive(14_999.9, 599.9)
    assert_quiet_for(api, [hostid], 5)
    drive(15_000.0, 599.95)
    wait_for_problems(api, [hostid], {DISTANCE}, timeout=30)
    drive(15_010.0, 600.0)
    wait_for_problems(api, [hostid], {DISTANCE, HOURS}, timeout=30)
    # Serviced: the macros move on to the next service, the problems resolve with the next values.
    set_macro("{$VEHICLE.SERVICE.KM}", "30000")
    drive(15_010.5, 600.1)
    wait_for_problems(api, [hostid], {HOURS}, timeout=30)
    set_macro("{$VEHICLE.SERVICE.HOURS}", "1200")
    drive(15_011.0, 600.2)
    wait_for_problems(api, [hostid], set(), timeout=30)


def _last(api: Any, hostid: str, key: str) -> int:
    found = api.item.get(hostids=[hostid], filter={"key_": key}, output=["lastclock"])
    return int(found[0]["lastclock"]) if found else 0


def send(zabbix: LocalZabbix, items: Sequence[Item]) -> None:
    """Through the real Zabbix destination, as the agent's pipeline hands items over."""

    async def deliver() -> None:
        destination = ZabbixDestination(
            "vehicle", ClusterClient([Endpoint(zabbix.trapper_host, zabbix.trapper_port)], timeout=10))
        try:
            ids = itertools.count(1)
            delivery = await destination.deliver([Row(next(ids), item, time.time(), 0) for item in items])
        finally:
            await destination.close()
        assert len(delivery.accepted) == len(items), delivery

    asyncio.run(deliver())


def test_named_geofences_are_discovered_and_get_their_crossings(zabbix: LocalZabbix) -> None:
    api = zabbix.api()
    import_templates(api, TEMPLATES)
    host = unique_name("van")
    hostid = provision_vehicle(api, host, unique_name("Vehicles")).objectid
    zabbix.config_cache_reload()
    depot = Geofence("depot-1", centre=(56.9496, 24.1052), radius=100.0)
    edge = EdgeDerivations(DerivedSettings(geofences=(depot,)))
    send(zabbix, [Discovery.now(host, GEOFENCE_DISCOVERY, edge.discovery_rows())])

    keys = ["vehicle.geofence.inside[depot-1]", "vehicle.geofence.event[depot-1]"]

    def last_values() -> dict[str, str]:
        output = ["key_", "lastvalue", "lastclock"]
        found = api.item.get(hostids=[hostid], filter={"key_": keys}, output=output)
        return {item["key_"]: item["lastvalue"] for item in found if item["lastclock"] != "0"}

    wait_until(lambda: len(api.item.get(hostids=[hostid], filter={"key_": keys})) == 2,
               what="the geofence's discovered items")
    zabbix.config_cache_reload()
    start = int(time.time()) - 10
    readings: list[Item] = []
    for i, lat in enumerate((56.9496, 56.9596)):  # in the depot, then a kilometre north of it
        derived = edge.update(start + i, lat, 24.1052, 30.0)
        readings += [Reading(host, key, value, start + i, 0, unit) for key, (value, unit) in derived.items()
                     if key in keys]
    send(zabbix, readings)
    # Both fixes travel in one batch, but the history syncers may store them in two steps:
    # wait for the second fix's values rather than for any value.
    expected = {"vehicle.geofence.inside[depot-1]": "0", "vehicle.geofence.event[depot-1]": "exit"}
    wait_until(lambda: last_values() == expected, what=f"{expected} in Zabbix")
