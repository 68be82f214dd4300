"""Real Zabbix 6.0 and 7.0 fed a stream shaped by the published device-stats schema, not by our server.

Juniper's device-stats models mark every field optional, ``type`` included: here no update
carries ``type`` at all.  APs must still become hosts (by their model family), a switch on
the same channel must not, and the collector's own state on the discovery host says so.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_mist_zabbix import (
    AP_TEMPLATE,
    AP_TEMPLATE_NAME,
    DISCOVERY_TEMPLATE,
    ORGS,
    SITES,
    TOKEN,
    create_discovery_host,
    discovered_ap,
    item_values,
    random_mac,
    running_pipeline,
    until,
    write_config,
)
from tests.mist_server import MistServer, ap_full
from trapline.localzabbix import LocalZabbix
from trapline.templates import import_templates

pytestmark = pytest.mark.integration


def untyped(update: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in update.items() if k != "type"}


def collector_state(api: Any, hostid: str) -> dict[str, str] | None:
    values = item_values(api, hostid)
    raw = values.get("mist.collector.stats")
    return values if raw and json.loads(raw)["monitored"] == 1 else None


def test_aps_without_type_become_hosts_and_a_switch_is_counted_not_hosted(
    zabbix: LocalZabbix, tmp_path: Path
) -> None:
    api = zabbix.api()
    import_templates(api, [AP_TEMPLATE, DISCOVERY_TEMPLATE])
    discovery_host, discovery_hostid = create_discovery_host(api)
    zabbix.config_cache_reload()
    ap, switch = random_mac(), random_mac()

    async def scenario() -> None:
        async with MistServer(TOKEN, dict(SITES), dict(ORGS)) as server, running_pipeline(
            write_config(tmp_path, zabbix, server, discovery_host)
        ):
            await server.wait_until(lambda: all(server.subscribers(s) for s in SITES))
            await server.push("s1", untyped(ap_full(ap, "AP-untyped", model="AP45")))
            await server.push("s1", untyped(ap_full(switch, "SW-1", model="EX4100-48P")))
            host = await until(lambda: discovered_ap(api, ap), "the host of an AP sent without type")
            assert [t["host"] for t in host["parentTemplates"]] == [AP_TEMPLATE_NAME]
            assert host["name"] == f"AP-untyped ({ap})"
            # The collector's state, every 30 s from the start: one monitored AP, one switch left out.
            # The first state may predate the subscriptions: wait for one that saw both devices.
            values = await until(lambda: collector_state(api, discovery_hostid), "the collector state")
            assert json.loads(values["mist.collector.stats"])["unmonitored"] == {"type switch": 1}
            assert values["mist.collector.devices.unmonitored"] == "1"
            assert values["mist.collector.channels.down"] == "0"
            assert not api.host.get(filter={"host": [f"mist-ap-{switch}"]}, output=["hostid"])

    try:
        asyncio.run(scenario())
    finally:
        api.host.delete(discovery_hostid)

