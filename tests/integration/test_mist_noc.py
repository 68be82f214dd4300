"""What a NOC sees from the Mist templates on real Zabbix 6.0 and 7.0: one problem per root cause.

The agent runs as installed (collector, pipeline, Zabbix sender); only time settings are
shortened: the collector's stale_after and state_interval, and the discovery host's
{$MIST.STREAM.DOWN.FOR} macro.  Trigger logic is the shipped one.
Scenarios: a normal day raises nothing of Warning or above; an AP Mist reports
disconnected (and that then falls silent) raises one problem, not two; a Mist outage (the
token refused, every stream down) raises exactly one problem, on the discovery host, however
long the APs stay silent, and nothing once it is over.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from devtools.mist_server import MistServer, ap_basic, ap_full
from tests.integration import test_mist_zabbix as e2e
from tests.support.zabbix_fixtures import assert_quiet_for, open_problems, wait_for_problems
from trapline.templates import import_templates

pytestmark = pytest.mark.integration

DOWN_FOR = "5s"
OUTAGE = {("Mist: Stream down or trapline silent for " + DOWN_FOR, "high")}
DISCONNECTED = {("Mist: AP is disconnected from the Mist cloud", "average")}
SETTINGS = "state_interval = 1\n"


def stale(api: Any, hostid: str) -> str | None:
    return e2e.item_values(api, hostid).get("mist.ap.stale")


def test_one_problem_per_root_cause(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    import_templates(api, e2e.MIST_TEMPLATES)
    discovery_host, discovery_hostid = e2e.create_discovery_host(api)
    api.usermacro.create(hostid=discovery_hostid, macro="{$MIST.STREAM.DOWN.FOR}", value=DOWN_FOR)
    zabbix.config_cache_reload()
    ap1, ap2 = e2e.random_mac(), e2e.random_mac()

    async def scenario() -> None:
        async with (
            MistServer(e2e.TOKEN, dict(e2e.SITES), dict(e2e.ORGS)) as server,
            e2e.running_pipeline(e2e.write_config(tmp_path, zabbix, server, discovery_host, SETTINGS)),
        ):
            await server.wait_until(lambda: all(server.subscribers(s) for s in e2e.SITES))
            await server.push("s1", ap_full(ap1, "AP-1"))
            await server.push("s2", ap_full(ap2, "AP-2"))
            hosts = [await e2e.until(lambda m=m: e2e.discovered_ap(api, m), f"AP {m}") for m in (ap1, ap2)]
            hostids = [discovery_hostid, *(h["hostid"] for h in hosts)]
            ap_items = e2e.template_keys({})
            await e2e.until(
                lambda: all(ap_items <= e2e.item_keys(api, h) for h in hostids[1:]), "the AP items"
            )
            await asyncio.to_thread(zabbix.config_cache_reload)
            async with e2e.keeping_alive(server, {ap1: "s1", ap2: "s2"}) as keepalive:
                # Dependent items fill only once the server's cache has them (see test_mist_zabbix.until).
                for h in hostids[1:]:
                    await e2e.until(
                        lambda h=h: e2e.values_of(api, h, {"mist.ap.status"}),
                        "AP status values",
                        nudge=zabbix.config_cache_reload,
                    )
                # 1. A normal day: APs talk, the stream stays up. One timer pass (30 s) and more.
                await asyncio.to_thread(assert_quiet_for, api, hostids, 40.0)

                # 2. Mist reports AP-2 disconnected and then hears nothing more of it.
                keepalive.macs.discard(ap2)
                await server.push("s2", ap_basic(ap2, status="disconnected"))
                await e2e.until(lambda: stale(api, hosts[1]["hostid"]) == "1", "AP-2 marked stale")
                await asyncio.to_thread(wait_for_problems, api, hostids, DISCONNECTED)
                await asyncio.sleep(5)  # the stale problem would open within one evaluation
                assert await asyncio.to_thread(open_problems, api, hostids) == DISCONNECTED
                await server.push("s2", ap_basic(ap2, status="connected"))
                keepalive.macs.add(ap2)
                await asyncio.to_thread(wait_for_problems, api, hostids, set())

                # 3. Mist refuses the token: every stream goes down, every AP falls silent.
                server.token = "rotated-elsewhere"
                await server.drop_all()
                await asyncio.to_thread(wait_for_problems, api, hostids, OUTAGE)
                await asyncio.sleep(10)  # many times stale_after: still no AP-level problem
                assert await asyncio.to_thread(open_problems, api, hostids) == OUTAGE
                assert all(stale(api, h["hostid"]) != "1" for h in hosts)  # trapline marked none stale

                # 4. The token is good again: the outage closes, and the APs' silence left nothing behind.
                server.token = e2e.TOKEN
                await asyncio.to_thread(wait_for_problems, api, hostids, set())
                await asyncio.to_thread(assert_quiet_for, api, hostids, 10.0)

    try:
        asyncio.run(scenario())
    finally:
        api.host.delete(discovery_hostid)
