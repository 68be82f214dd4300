"""Mist switches and gateways on real Zabbix 6.0 and 7.0: each a host of its own, with discovery and triggers.

devtools/mist_server.py stands in for the Mist cloud; the collector (device_types with switch and
gateway), the pipeline and the shipped templates are the real ones.  The updates are shaped after
Mist's StatsSwitch / StatsGateway models (devtools/mist_server.switch_full, gateway_full).
Scenarios: a normal day (one switch port never cabled, an empty PSU slot, a spare WAN link never up)
raises nothing at all; then a cabled port's errors rise and it loses its link, a fan and a PSU fail,
sensor, CPU and memory run hot, the gateway's WAN link goes down with the tunnel over it and its SPU
session table fills: exactly those problems open; then the switch falls silent (stale) and the
gateway is reported disconnected (its stale problem waits on that).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from devtools.mist_server import MistServer, gateway_full, switch_full
from tests.integration import test_mist_zabbix as e2e
from tests.support.zabbix_fixtures import assert_quiet_for, wait_for_problems
from trapline.templates import import_templates

pytestmark = pytest.mark.integration

SWITCH_NAME = "Juniper Mist switch by Zabbix trapper"
GATEWAY_NAME = "Juniper Mist gateway by Zabbix trapper"
SETTINGS = 'device_types = ["ap", "switch", "gateway"]\nstate_interval = 1\n'

# A normal day: ge-0/0/1 was never cabled, PSU 1 is an empty slot, wan2 was never up.
SWITCH_EXTRA = {
    "ports": [
        {"port_id": "ge-0/0/0", "up": True, "speed": 1000, "poe_on": True, "power_draw": 6.5,
         "rx_bytes": 1000, "tx_bytes": 2000, "rx_errors": 0},
        {"port_id": "ge-0/0/1", "up": False, "speed": 0, "poe_on": False, "power_draw": 0.0},
    ],
    "module_stat": [
        {"fpc_idx": 0, "model": "EX4100-48P", "serial": "FC0000000001", "vc_role": "master",
         "vc_state": "present", "temperatures": [{"name": "CPU", "celsius": 48.0, "status": "ok"}],
         "fans": [{"name": "Fan 0", "status": "ok"}],
         "psus": [{"name": "PSU 0", "status": "ok"}, {"name": "PSU 1", "status": "absent"}]},
    ],
}  # fmt: skip
SPARE_WAN = {"ge-0/0/2.0": {"port_id": "ge-0/0/2", "up": False, "port_usage": "wan", "wan_name": "wan2"}}
LLD_ROWS = {
    "mist.switch.port.discovery": [{"{#PORT}": "ge-0/0/0"}, {"{#PORT}": "ge-0/0/1"}],
    "mist.switch.member.discovery": [{"{#FPC}": "0"}],
    "mist.switch.temp.discovery": [{"{#SENSOR}": "0/CPU"}],
    "mist.switch.fan.discovery": [{"{#FAN}": "0/Fan 0"}],
    "mist.switch.psu.discovery": [{"{#PSU}": "0/PSU 0"}, {"{#PSU}": "0/PSU 1"}],
    "mist.gateway.wan.discovery": [{"{#IFNAME}": "ge-0/0/0.0"}, {"{#IFNAME}": "ge-0/0/2.0"}],
    "mist.gateway.tunnel.discovery": [{"{#TUNNEL}": "hub-a"}],
    "mist.gateway.spu.discovery": [{"{#SPU}": "0"}],
}
SWITCH_VALUES = {
    "mist.switch.status": "1", "mist.switch.cpu.util": "12", "mist.switch.memory.util": "41.5",
    "mist.switch.port.up[ge-0/0/0]": "1", "mist.switch.port.up[ge-0/0/1]": "0",
    "mist.switch.port.poe.power[ge-0/0/0]": "6.5", "mist.switch.member.role[0]": "master",
    "mist.switch.temp[0/CPU]": "48", "mist.switch.fan.status[0/Fan 0]": "1",
    "mist.switch.psu.status[0/PSU 0]": "1", "mist.switch.psu.status[0/PSU 1]": "2",
}  # fmt: skip
GATEWAY_VALUES = {
    "mist.gateway.status": "1", "mist.gateway.cpu.util": "30", "mist.gateway.memory.util": "55",
    "mist.gateway.wan.up[ge-0/0/0.0]": "1", "mist.gateway.wan.up[ge-0/0/2.0]": "0",
    "mist.gateway.tunnel.up[hub-a]": "1", "mist.gateway.tunnel.peer[hub-a]": "198.51.100.7",
    "mist.gateway.spu.sessions[0]": "215",
}  # fmt: skip
FAULTS_SWITCH = {
    ("Mist switch: Port ge-0/0/0: Inbound errors are rising", "warning"),
    ("Mist switch: Port ge-0/0/0: Link down", "average"),
    ("Mist switch: Fan 0/Fan 0 has failed", "average"),
    ("Mist switch: Power supply 0/PSU 0 has failed", "average"),
    ("Mist switch: Sensor 0/CPU: Temperature is high", "warning"),
    ("Mist switch: High CPU utilization", "warning"),
    ("Mist switch: High memory utilization", "warning"),
}
FAULTS_GATEWAY = {
    ("Mist gateway: WAN wan1 (ge-0/0/0.0): Link down", "high"),
    ("Mist gateway: Tunnel hub-a to hub-a.example.net is down", "average"),
    ("Mist gateway: SPU 0: Session table nearly full", "warning"),
    ("Mist gateway: High CPU utilization", "warning"),
    ("Mist gateway: High memory utilization", "warning"),
}
SILENT_SWITCH = ("Mist switch: Stale: Mist sends no statistics", "average")
DISCONNECTED_GATEWAY = ("Mist gateway: Disconnected from the Mist cloud", "average")


def discovered(api: Any, host: str) -> dict[str, Any] | None:
    hosts = api.host.get(
        filter={"host": [host]},
        output=["hostid", "name"],
        selectGroups=["name"],
        selectParentTemplates=["host"],
    )
    return hosts[0] if hosts and hosts[0]["parentTemplates"] else None


def same(values: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(k in values and _number(values[k]) == _number(v) for k, v in wanted.items())


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def test_a_switch_and_a_gateway_become_hosts_with_discovery_values_and_triggers(
    zabbix: LocalZabbix, tmp_path: Path
) -> None:
    api = zabbix.api()
    import_templates(api, e2e.MIST_TEMPLATES)
    discovery_host, discovery_hostid = e2e.create_discovery_host(api)
    zabbix.config_cache_reload()
    sw, gw = e2e.random_mac(), e2e.random_mac()

    async def scenario() -> None:
        async with (
            MistServer(e2e.TOKEN, dict(e2e.SITES), dict(e2e.ORGS)) as server,
            e2e.running_pipeline(e2e.write_config(tmp_path, zabbix, server, discovery_host, SETTINGS)),
        ):
            await server.wait_until(lambda: all(server.subscribers(s) for s in e2e.SITES))
            await server.push("s1", switch_full(sw, "SW-1", **SWITCH_EXTRA))
            await server.push("s2", gateway_full(gw, "GW-1"))
            gateway_update = gateway_full(gw, "GW-1")
            gateway_update["if_stat"] |= SPARE_WAN
            await server.push("s2", gateway_update)

            # 1. One host each, created by its own rule on the discovery host, with its template.
            switch = await e2e.until(lambda: discovered(api, f"mist-switch-{sw}"), "the switch host")
            gateway = await e2e.until(lambda: discovered(api, f"mist-gateway-{gw}"), "the gateway host")
            assert [t["host"] for t in switch["parentTemplates"]] == [SWITCH_NAME]
            assert [t["host"] for t in gateway["parentTemplates"]] == [GATEWAY_NAME]
            assert {g["name"] for g in switch["groups"]} == {
                "Mist", "Mist switches/Acme", "Mist switches/Acme/Headquarters"
            }
            assert switch["name"] == f"SW-1 ({sw})"
            ids = {switch["hostid"]: e2e.SWITCH_TEMPLATE, gateway["hostid"]: e2e.GATEWAY_TEMPLATE}
            hostids = [discovery_hostid, *ids]

            # 2. Their template items exist; the trapper takes values once its cache knows them.
            for hostid, path in ids.items():
                keys = e2e.template_keys({}, path)
                await e2e.until(
                    lambda h=hostid, k=keys: k <= e2e.item_keys(api, h), f"the items of {path.stem}"
                )
            await asyncio.to_thread(zabbix.config_cache_reload)

            async def push_full() -> None:  # as Mist sends full updates now and then
                await server.push("s1", switch_full(sw, "SW-1", **SWITCH_EXTRA))
                await server.push("s2", gateway_update)

            async with e2e.keeping_alive(server, {sw: "s1", gw: "s2"}) as keepalive:
                # Ports, chassis members, sensors, fans, PSUs, WAN links, tunnels and SPUs are discovered ...
                for hostid, path in ids.items():
                    discovered_keys = e2e.template_keys(LLD_ROWS, path)

                    async def found(h: str = hostid, k: set[str] = discovered_keys) -> bool | None:
                        await push_full()
                        return k <= await asyncio.to_thread(e2e.item_keys, api, h) or None

                    await until_async(found, zabbix.config_cache_reload)
                await asyncio.to_thread(zabbix.config_cache_reload)
                # ... and their values reach the discovered items.
                for hostid, wanted in zip(ids, (SWITCH_VALUES, GATEWAY_VALUES), strict=True):

                    async def filled(h: str = hostid, w: dict[str, str] = wanted) -> dict[str, str] | None:
                        await push_full()
                        values = await asyncio.to_thread(e2e.item_values, api, h)
                        return values if same(values, w) else None

                    await until_async(filled, zabbix.config_cache_reload)

                # 3. A normal day: the never-cabled port, the empty PSU slot and the spare WAN page nobody.
                await asyncio.to_thread(assert_quiet_for, api, hostids, 20.0, 0)

                # 4. ge-0/0/0's receive errors rise (three measurements), then it loses its link; a fan fails.
                for step in range(1, 5):
                    await asyncio.sleep(0.4)
                    port = {"port_id": "ge-0/0/0", "up": True, "rx_errors": 500 * step}
                    await server.push("s1", {"mac": sw, "ports": [port]})
                unplugged = {"port_id": "ge-0/0/0", "up": False, "speed": 0}
                await server.push("s1", {"mac": sw, "ports": [unplugged]})
                # A fan and a PSU fail; the CPU sensor, the CPU and the memory run hot (three readings each).
                module = {
                    "fpc_idx": 0,
                    "fans": [{"name": "Fan 0", "status": "failed"}],
                    "psus": [{"name": "PSU 0", "status": "failed"}, {"name": "PSU 1", "status": "absent"}],
                    "temperatures": [{"name": "CPU", "celsius": 85.0}],
                }
                busy = {"mac": sw, "module_stat": [module], "cpu_stat": {"idle": 2.0}}
                busy["memory_stat"] = {"usage": 97.0}
                spu = {"spu_current_session": 130_000, "spu_max_session": 131_072}
                loaded = {"mac": gw, "spu_stat": [spu], "cpu_stat": {"usage": 99.0}}
                loaded["memory_stat"] = {"usage": 95.0}
                for _ in range(3):
                    await server.push("s1", busy)
                    await server.push("s2", loaded)
                    await asyncio.sleep(0.3)
                # The gateway's wan1 goes down, and the tunnel over it.
                wan_down = {"ge-0/0/0.0": {"up": False}}
                tunnel_down = [{"tunnel_name": "hub-a", "up": False}]
                await server.push("s2", {"mac": gw, "if_stat": wan_down, "tunnels": tunnel_down})
                await asyncio.to_thread(wait_for_problems, api, hostids, FAULTS_SWITCH | FAULTS_GATEWAY)

                # 5. The switch falls silent; Mist reports the gateway disconnected, then nothing more of it:
                # its stale problem waits on "disconnected" (one problem, not two).
                keepalive.macs.clear()
                await server.push("s2", {"mac": gw, "status": "disconnected"})
                expected = FAULTS_SWITCH | FAULTS_GATEWAY | {SILENT_SWITCH, DISCONNECTED_GATEWAY}
                await asyncio.to_thread(wait_for_problems, api, hostids, expected)

    try:
        asyncio.run(scenario())
    finally:
        api.host.delete(discovery_hostid)  # takes its discovered hosts along


async def until_async(check: Any, nudge: Any) -> Any:
    """:func:`e2e.until` for a check that pushes updates itself (an async one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + e2e.WAIT_LIMIT
    next_nudge = loop.time() + e2e.NUDGE_EVERY
    while (result := await check()) is None:
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {e2e.WAIT_LIMIT} s waiting for values", pytrace=False)
        if loop.time() >= next_nudge:
            await asyncio.to_thread(nudge)
            next_nudge = loop.time() + e2e.NUDGE_EVERY
        await asyncio.sleep(0.5)
    return result
