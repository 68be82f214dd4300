"""Geofences set in Zabbix, in the host macro {$VEHICLE.GEOFENCES}, reach the van: real Zabbix 6.0
and 7.0, the whole agent (``python -m trapline run``) and a real gpsd fed by gpsfake; and on
7.0 through the van's own ``zabbix_proxy`` holding its PSK (a 6.0 proxy binary is not
available here), which answers the agent's active checks from its copy of the configuration.

The host is made by ``trapline provision`` with the shipped templates; the macro is set through
the API, as a NOC admin would.  Its value has the shape of the GPS collector's ``geofences``
tables (collectors/gps/sample.toml), in JSON; the names carry what a key parameter has to
quote (comma, quote, brackets) and non-ASCII letters.  tests/data/route.nmea starts at
56.94965 N 24.10519 E and drives about 120 m east-north-east, round and round.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyzabbix.api import ZabbixAPIException

from devtools.localzabbix import LocalZabbix
from tests.integration.test_gps_gpsfake import ROUTE, Gpsfake
from tests.support.agent_process import running_agent, toml_config
from tests.support.zabbix_fixtures import open_problems, unique_name, wait_for_problems, wait_until
from trapline.collectors.gps.vehicle_derived import macro_geofences
from trapline.core.config import Secret
from trapline.exporters.zabbix.active_checks import key_params
from trapline.exporters.zabbix.client import ClusterClient, parse_cluster
from trapline.exporters.zabbix.protocol import active_checks_request, frame, parse_active_checks_reply
from trapline.provision import ProxyPsk, VehicleSettings, provision_van, provision_vehicle
from trapline.templates import import_templates, shipped_templates

pytestmark = pytest.mark.integration

TEMPLATES = [p for p in shipped_templates()
             if p.name in ("template_vehicle_obd_gps.yaml", "template_trapline_agent.yaml")]
MACRO = "{$VEHICLE.GEOFENCES}"
LIMIT = 90.0  # s for each step: discovery, a configuration reload and a retried value
START = (56.94965, 24.10519)
CUSTOMER = 'Kunde "7", Rīga [Hof]'  # holds the start of the route
TALLINN = "Tallinn"  # far from it
DEPOT = "Depot, Nord"  # the second value's only geofence; holds the start too
BAD_MACRO = ("Vehicle: Geofence macro is not valid", "warning")
MACRO_MAX = 2048  # characters of a macro value, in 6.0 and 7.0 (the API refuses more)
# The config's own geofence, which must keep working whatever the macro says.
TOWN = ["56.94 24.09", "56.96 24.09", "56.96 24.12", "56.94 24.12"]


def circle(lat: float, lon: float, radius: float) -> dict[str, float]:
    return {"latitude": lat, "longitude": lon, "radius": radius}


def inside_key(name: str) -> str:
    """As Zabbix's discovery writes ``vehicle.geofence.inside[{#GEOFENCE}]`` for ``name``
    (quoted only if it must be: checked on 6.0 and 7.0 when this was written)."""
    if name.startswith(('"', " ")) or "," in name or "]" in name:
        return 'vehicle.geofence.inside["' + name.replace('"', '\\"') + '"]'
    return f"vehicle.geofence.inside[{name}]"


class Van:
    """The van's host as the NOC sees it through the API."""

    def __init__(self, zabbix: LocalZabbix, api: Any, name: str, hostid: str) -> None:
        self.zabbix, self.api, self.name, self.hostid = zabbix, api, name, hostid

    def items(self) -> dict[str, dict[str, Any]]:
        output = ["key_", "lastvalue", "lastclock", "state", "error", "type"]
        found = self.api.item.get(hostids=[self.hostid], output=output, selectItemDiscovery=["ts_delete"])
        return {item["key_"]: item for item in found}

    def set_macro(self, value: str) -> None:
        (row,) = self.api.usermacro.get(hostids=[self.hostid], filter={"macro": MACRO}) or [None]
        if row is None:
            self.api.usermacro.create(hostid=self.hostid, macro=MACRO, value=value)
        else:
            self.api.usermacro.update(hostmacroid=row["hostmacroid"], value=value)
        self.zabbix.config_cache_reload()

    def wait_for(self, what: str, ready: Callable[[dict[str, dict[str, Any]]], bool]) -> None:
        """Until ``ready(items)``; reloads the server's configuration meanwhile, so items that
        discovery just made accept values without waiting for the periodic reload."""
        def check() -> bool:
            if ready(self.items()):
                return True
            self.zabbix.config_cache_reload()
            return False
        wait_until(check, timeout=LIMIT, interval=1.0, what=what)

    def last(self, key: str) -> str | None:
        item = self.items().get(key)
        return None if item is None or item["lastclock"] == "0" else str(item["lastvalue"])


def agent_config(tmp_path: Path, zabbix: LocalZabbix, host: str, gps_port: int) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(toml_config({
        "agent": {"flush_interval": 0.2, "shutdown_timeout": 10.0},
        "spool": {"path": str(tmp_path / "spool.db"), "retry_initial": 0.5, "retry_cap": 2.0},
        "zabbix": {"servers": [zabbix.trapper_address], "active_checks_interval": 1.0},
        "collectors.gps": {
            "type": "gps", "host": host, "port": gps_port, "interval": 0.5, "call_timeout": 2.0,
            "retry_initial": 0.1, "retry_max": 0.5, "state_dir": str(tmp_path),
        },
        "collectors.gps.geofences.town": {"polygon": TOWN},
    }))
    return path


def refused_keys(log: str) -> set[str]:
    """Every key the destination reported as not accepted (its log line lists them per host)."""
    keys: set[str] = set()
    for line in log.splitlines():
        match = re.search(r"values not accepted \(kept for retry\): [^:]+: (.*)$", line)
        if match:
            keys |= {key.strip() for key in re.split(r", (?=[a-z])", match.group(1))}
    return keys


def admin_edits_the_macro(van: Van) -> None:
    """What the NOC does and sees while the van drives."""
    # The macro's geofences are discovered beside the config's and get their values.
    expected = {inside_key(CUSTOMER): "1", inside_key(TALLINN): "0", inside_key("town"): "1"}
    van.wait_for(f"{expected} in Zabbix", lambda items: all(
        items.get(key, {}).get("lastvalue") == value and items[key]["lastclock"] != "0"
        for key, value in expected.items()))
    assert van.last("vehicle.geofence.macro.status") == "ok: 2 geofences"

    # The admin replaces them: the new one appears, the old ones are lost to discovery.
    van.set_macro(json.dumps({DEPOT: circle(*START, 1000)}))
    depot = inside_key(DEPOT)
    van.wait_for("the new geofence's value", lambda items: items.get(depot, {}).get("lastvalue") == "1")
    van.wait_for("the old geofences lost to discovery", lambda items: all(
        items[inside_key(name)]["itemDiscovery"]["ts_delete"] != "0" for name in (CUSTOMER, TALLINN)))
    assert van.last("vehicle.geofence.macro.status") == "ok: 1 geofence"
    assert BAD_MACRO not in open_problems(van.api, [van.hostid])  # a normal day: quiet

    # A typo: one warning; the config's geofence and the last valid macro's keep working.
    van.set_macro('{"Depot, Süd": {"latitude": 56.9, "longitude": 24.1}}')
    wait_for_problems(van.api, [van.hostid], {BAD_MACRO})
    status = van.last("vehicle.geofence.macro.status") or ""
    assert status.startswith("error: {$VEHICLE.GEOFENCES}") and "radius" in status
    clocks = {key: int(van.items()[key]["lastclock"]) for key in (inside_key(DEPOT), inside_key("town"))}
    van.wait_for("values of the kept geofences after the typo", lambda items: all(
        int(items[key]["lastclock"]) > clock for key, clock in clocks.items()))

    # Fixed: the problem resolves.
    van.set_macro(json.dumps({DEPOT: circle(*START, 1000)}))
    wait_for_problems(van.api, [van.hostid], set())


def carried(address: str, host: str) -> list[str] | None:
    """What the answer to an active checks request for ``host`` carries in the macro's item."""
    async def ask() -> list[str] | None:
        client = ClusterClient(parse_cluster(address), timeout=5)
        request = frame(active_checks_request(host, "trapline vehicle test"))
        reply = await client.request(request, parse_active_checks_reply)
        return key_params(reply.keys, "trapline.geofences") if reply.known else None
    return asyncio.run(ask())


def test_geofences_set_in_the_host_macro_reach_the_van_and_follow_it(
    zabbix: LocalZabbix, tmp_path: Path
) -> None:
    api = zabbix.api()
    import_templates(api, TEMPLATES)
    host = unique_name("van")
    van = Van(zabbix, api, host, provision_vehicle(api, host, unique_name("Vehicles")).objectid)
    first = {CUSTOMER: circle(*START, 1000), TALLINN: circle(59.437, 24.7536, 5000)}
    van.set_macro(json.dumps(first, ensure_ascii=False))

    fake = Gpsfake(ROUTE, tmp_path)
    fake.start()
    try:
        with running_agent(agent_config(tmp_path, zabbix, host, fake.port), tmp_path / "agent.log") as agent:
            try:
                admin_edits_the_macro(van)
            except BaseException:
                print(agent.output()[-4000:])  # pytest shows it only when the test fails
                raise
            assert agent.terminate() == 0
    finally:
        fake.stop()

    items = van.items()
    carrier = items['trapline.geofences["{$VEHICLE.GEOFENCES}"]']
    # The active item that carried the macro got no value and did not turn unsupported.
    assert (carrier["lastclock"], carrier["state"], carrier["error"]) == ("0", "0", "")
    assert all(item["state"] == "0" for item in items.values()), {
        key: item["error"] for key, item in items.items() if item["state"] != "0"}
    # Zabbix refused nothing but the values of geofence items that discovery had not yet made
    # (the agent retries those until the server has loaded them).
    discovered = {inside_key(n) for n in (CUSTOMER, TALLINN, DEPOT, "town")}
    discovered |= {k.replace("inside", "event", 1) for k in discovered}
    assert refused_keys(agent.output()) <= discovered


def test_the_vans_proxy_hands_on_the_macro_and_its_changes(zabbix70: LocalZabbix) -> None:
    zabbix = zabbix70
    api = zabbix.api()
    import_templates(api, TEMPLATES)
    host = unique_name("proxy-van")
    identity, key = f"{host}-psk", secrets.token_hex(32)
    settings = VehicleSettings(f"{host}-proxy", create_proxy=True, psk=ProxyPsk(identity, Secret(key)))
    van = Van(zabbix, api, host, provision_van(api, host, unique_name("Vehicles"), settings).host.objectid)
    address = zabbix.add_proxy(f"{host}-proxy", psk=(identity, key))

    def handed_on(value: str) -> None:
        van.set_macro(value)  # the proxy asks the server for its configuration every second
        wait_until(lambda: carried(address, host) == [value], timeout=LIMIT, interval=1.0,
                   what="the proxy's active checks to carry the macro")

    handed_on(json.dumps({CUSTOMER: circle(*START, 1000)}, ensure_ascii=False))
    handed_on(json.dumps({DEPOT: circle(*START, 500), TALLINN: circle(59.437, 24.7536, 5000)}))


def test_the_largest_value_zabbix_takes_arrives_whole(zabbix: LocalZabbix) -> None:
    api = zabbix.api()
    import_templates(api, TEMPLATES)
    host = unique_name("van")
    van = Van(zabbix, api, host, provision_vehicle(api, host, unique_name("Vehicles")).objectid)
    fences: dict[str, dict[str, float]] = {}
    while len(json.dumps({**fences, f'F"{len(fences)}"': circle(*START, 100)})) <= MACRO_MAX:
        fences[f'F"{len(fences)}"'] = circle(*START, 100)
    value = json.dumps(fences).ljust(MACRO_MAX)  # every quote escaped: the key is longer than 2048
    van.set_macro(value)
    assert carried(zabbix.trapper_address, host) == [value]
    assert len(macro_geofences(value)) == len(fences)
    with pytest.raises(ZabbixAPIException, match="too long"):
        van.set_macro(value + " ")
