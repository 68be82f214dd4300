"""The vehicle template end to end on real Zabbix 6.0 and 7.0.

The real OBD collector reads the ELM327-emulator; what it emits goes through the
real Zabbix destination into a host that ``provision_vehicle`` made.  GPS readings
come from the GPS collector's own conversion of a gpsd report.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix

# The emulator fixtures are shared with the collector's own emulator tests.
from tests.support.elm_fixtures import obd_section
from tests.support.outbox import ListOutbox
from tests.support.zabbix_fixtures import unique_name, wait_until
from trapline.collectors.gps.collector import fix_readings
from trapline.collectors.obd import build
from trapline.core.model import Item, Reading
from trapline.core.plugin import Delivery, Spooled
from trapline.exporters.zabbix import ZabbixDestination
from trapline.exporters.zabbix.client import ClusterClient, Endpoint
from trapline.provision import (
    AGENT_TEMPLATE,
    VEHICLE_TEMPLATE,
    ensure_fleet_dashboard,
    ensure_template,
    provision_vehicle,
)
from trapline.templates import import_templates, shipped_templates

pytestmark = pytest.mark.integration

TEMPLATE_FILE = next(p for p in shipped_templates() if p.name == "template_vehicle_obd_gps.yaml")
LIMIT = 90.0  # the whole drive; a hang fails here instead of stalling the suite

# A gpsd POLL answer as the GPS collector reads it (Berlin, 3D fix, 36 km/h).
GPS_REPORT = {
    "class": "POLL",
    "active": 1,
    "tpv": [
        {
            "class": "TPV",
            "mode": 3,
            "lat": 52.520008,
            "lon": 13.404954,
            "altMSL": 34.0,
            "speed": 10.0,
            "track": 90.0,
            "epx": 3.1,
            "epy": 4.2,
            "epv": 6.0,
            "time": "2024-01-01T00:00:00.000Z",
        }
    ],
    "sky": [{"class": "SKY", "uSat": 7}],
}


class Feed:
    """Delivers what the collector emitted, as the pipeline would, and remembers what was sent."""

    def __init__(self, zabbix: LocalZabbix, out: ListOutbox) -> None:
        self.destination = ZabbixDestination(
            "test", ClusterClient([Endpoint(zabbix.trapper_host, zabbix.trapper_port)], timeout=5)
        )
        self.out = out
        self.sent = 0
        self.ids = itertools.count(1)

    async def push(self, extra: list[Item] | None = None) -> Delivery:
        items = self.out.items[self.sent :] + (extra or [])
        self.sent = len(self.out.items)
        return await self.destination.deliver(
            [Spooled(next(self.ids), item, time.time(), 0) for item in items]
        )


async def until(what: str, condition: Callable[[], Any], feed: Feed | None = None) -> Any:
    """Poll ``condition`` (run in a thread: it may call the API), pushing new readings meanwhile."""
    while True:
        if feed is not None:
            await feed.push()
        result = await asyncio.to_thread(condition)
        if result:
            return result
        await asyncio.sleep(0.2)


def test_a_provisioned_vehicle_gets_items_problems_and_a_place_on_the_map(
    zabbix: LocalZabbix,
    emulator: tuple[Any, int],
    elm_module: Any,
    tmp_path: Path,
) -> None:
    _, port = emulator
    obd_message = elm_module.obd_message
    api = zabbix.api()
    import_templates(api, [TEMPLATE_FILE])
    assert ensure_template(api).action == "unchanged"
    host, group = unique_name("van"), unique_name("Vehicles")

    created = provision_vehicle(api, host, group)
    assert created.action == "created"
    assert provision_vehicle(api, host, group) == type(created)(created.objectid, "unchanged")
    hostid = created.objectid
    # Every coolant reading counts as overheating, so the coolant trigger must fire.
    api.usermacro.create(hostid=hostid, macro="{$VEHICLE.COOLANT.TEMP.MAX}", value="-100")
    api.usermacro.create(hostid=hostid, macro="{$VEHICLE.COOLANT.TEMP.TIME}", value="1h")
    dashboard = ensure_fleet_dashboard(api, group)
    assert dashboard.action == "created"
    assert ensure_fleet_dashboard(api, group).action == "unchanged"
    zabbix.config_cache_reload()

    def items(key: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = api.item.get(
            hostids=[hostid],
            filter={"key_": key},
            output=["itemid", "lastvalue", "lastclock", "state", "error"],
        )
        return found

    def has_value(key: str) -> bool:
        found = items(key)
        return bool(found) and int(found[0]["lastclock"]) > 0

    def problems(name_part: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = api.problem.get(
            hostids=[hostid],
            output=["name", "severity", "r_eventid"],
            search={"name": name_part},
            recent=False,
        )
        return found

    out = ListOutbox()
    feed = Feed(zabbix, out)
    gps = [
        Reading.now(host, key, value, unit)
        for key, (value, unit) in fix_readings(GPS_REPORT, datetime.now(UTC)).items()
    ]

    async def drive() -> None:
        # Supported PIDs: discovery creates the items, values follow once the server knows them.
        await until(
            "PID discovery",
            lambda: out.discoveries("obd.pid.discovery") and out.discoveries("obd.dtc.discovery"),
        )
        await feed.push(gps)
        await until(
            "discovered PID items", lambda: items("obd.pid[COOLANT_TEMP]") and items("obd.pid[SPEED]")
        )
        await asyncio.to_thread(zabbix.config_cache_reload)
        await until(
            "PID values", lambda: has_value("obd.pid[SPEED]") and has_value("obd.pid[COOLANT_TEMP]"), feed
        )

        # A stored trouble code appears (the emulator wants the count first on CAN) ...
        obd_message.DTC_STORED.extend(["01", "0143"])
        await until("DTC item", lambda: items("obd.dtc[P0143,stored]"), feed)
        await asyncio.to_thread(zabbix.config_cache_reload)
        await until("DTC problem", lambda: problems("P0143"), feed)
        # ... and is cleared: the collector sends 0 and the problem resolves.
        obd_message.DTC_STORED.clear()
        await until("DTC resolved", lambda: not problems("P0143"), feed)

    async def main() -> None:
        task = asyncio.create_task(build("car", obd_section(port, tmp_path, host=host)).run(out))
        try:
            async with asyncio.timeout(LIMIT):
                await drive()
        except TimeoutError:
            pytest.fail(f"gave up after {LIMIT:g} s; collector errors: {out.errors[-3:]}", pytrace=False)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await feed.destination.close()

    asyncio.run(main())

    # The trouble code problem carried its description while it was open.
    events = api.event.get(
        hostids=[hostid], output=["name", "value", "severity"], source=0, object=0, search={"name": "P0143"}
    )
    assert {e["name"] for e in events} == {
        "Vehicle: Trouble code P0143 (stored): O2 Sensor Circuit Low Voltage"
    }
    assert sorted(e["value"] for e in events) == ["0", "1"], "one problem, then its recovery"
    assert items("obd.dtc[P0143,stored]")[0]["lastvalue"] == "0"

    # Every supported PID became an item with a value; the coolant trigger exists only for coolant.
    rows = out.discoveries("obd.pid.discovery")[0].rows
    assert rows, "the emulated car supports some of the configured PIDs"
    for row in rows:
        wait_until(lambda row=row: has_value(f"obd.pid[{row['{#PID}']}]"), what=f"value of {row['{#PID}']}")
    coolant = api.trigger.get(
        hostids=[hostid], search={"description": "coolant"}, output=["description"], selectItems=["key_"]
    )
    assert [t["items"][0]["key_"] for t in coolant] == ["obd.pid[COOLANT_TEMP]"]
    wait_until(lambda: problems("coolant"), what="the coolant problem (threshold set to -100 on the host)")
    assert items("obd.state")[0]["lastvalue"] == "2"

    # The GPS position filled the inventory, which is what Geomap reads.
    inventory = wait_until(lambda: _location(api, hostid), what="inventory location")
    assert float(inventory["location_lat"]) == pytest.approx(52.520008, abs=1e-6)
    assert float(inventory["location_lon"]) == pytest.approx(13.404954, abs=1e-6)

    (board,) = api.dashboard.get(dashboardids=[dashboard.objectid], selectPages="extend", output=["name"])
    widgets = [w for page in board["pages"] for w in page["widgets"]]
    assert board["name"] == "Fleet map"
    assert sorted(w["type"] for w in widgets) == ["geomap", "problems"]
    groupid = api.hostgroup.get(filter={"name": [group]}, output=["groupid"])[0]["groupid"]
    for widget in widgets:
        assert [f["value"] for f in widget["fields"] if f["name"].startswith("groupids")] == [groupid]


def _location(api: Any, hostid: str) -> dict[str, str] | None:
    (host,) = api.host.get(
        hostids=[hostid],
        output=["hostid", "inventory_mode"],
        selectInventory=["location_lat", "location_lon", "serialno_a"],
    )
    inventory: dict[str, str] = host["inventory"]
    return inventory if inventory.get("location_lat") and inventory.get("location_lon") else None


def test_provisioning_updates_a_host_made_by_hand_and_keeps_its_links(zabbix: LocalZabbix) -> None:
    api = zabbix.api()
    import_templates(api, [TEMPLATE_FILE])
    group = unique_name("Vehicles")
    other_group = api.hostgroup.create(name=unique_name("Garage"))["groupids"][0]
    # 6.2 gave templates groups of their own.
    template_groups = api.templategroup if zabbix.version != "6.0" else api.hostgroup
    template_group = template_groups.create(name=unique_name("Local templates"))["groupids"][0]
    other_template = api.template.create(
        host=unique_name("Local checks"), groups=[{"groupid": template_group}]
    )
    host = unique_name("van")
    hostid = api.host.create(
        host=host,
        groups=[{"groupid": other_group}],
        templates=[{"templateid": other_template["templateids"][0]}],
    )["hostids"][0]

    assert provision_vehicle(api, host, group).action == "updated"
    assert provision_vehicle(api, host, group).action == "unchanged"
    groups_key, select = (
        ("hostgroups", "selectHostGroups") if zabbix.version != "6.0" else ("groups", "selectGroups")
    )
    (found,) = api.host.get(
        hostids=[hostid], output=["inventory_mode"], selectParentTemplates=["host"], **{select: ["name"]}
    )
    assert found["inventory_mode"] == "1"
    assert {t["host"] for t in found["parentTemplates"]} == {
        VEHICLE_TEMPLATE,
        AGENT_TEMPLATE,
        api.template.get(templateids=other_template["templateids"], output=["host"])[0]["host"],
    }
    assert len({g["name"] for g in found[groups_key]}) == 2

    # A dashboard of that name made by hand keeps its page; the map is added beside it.
    name = unique_name("Fleet map")
    api.dashboard.create(name=name, pages=[{"widgets": [{"type": "clock", "width": 4, "height": 3}]}])
    assert ensure_fleet_dashboard(api, group, name).action == "updated"
    assert ensure_fleet_dashboard(api, group, name).action == "unchanged"
    (board,) = api.dashboard.get(filter={"name": [name]}, selectPages="extend")
    types = sorted(w["type"] for page in board["pages"] for w in page["widgets"])
    assert types == ["clock", "geomap", "problems"]
