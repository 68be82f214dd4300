"""Real Zabbix 6.0 and 7.0 fed streams shaped by the published device-stats schema, not by our server.

Juniper's device-stats models mark every field optional, ``type`` included.  First: no
update carries ``type``; APs must still become hosts (by their model family), a switch on
the same channel must not, and the collector's own state on the discovery host says so.

Then rates: byte and error counters through partial and full updates.  The stream mixes
what the schema allows: full updates without ``type``, partial updates without counters,
partial updates with only some counters.
Counters grow linearly with the sender's clock at known rates; every rate Zabbix stores
must be within 2 % of the true one (a re-sent old counter would store 0 or a burst), and
rising inbound errors must raise their problem.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from devtools.mist_server import MistServer, ap_basic, ap_full
from tests.integration.test_mist_zabbix import (
    AP_TEMPLATE_NAME,
    MIST_TEMPLATES,
    ORGS,
    SITES,
    TOKEN,
    create_discovery_host,
    discovered_ap,
    item_keys,
    item_values,
    problems,
    random_mac,
    running_pipeline,
    until,
    write_config,
)
from trapline.templates import import_templates

pytestmark = pytest.mark.integration

RX_BYTES_PER_S = 1_250_000  # 10 Mbit/s
TX_PKTS_PER_S = 900
RX_ERRORS_PER_S = 400
SPACING = 2.0  # seconds between updates that carry counters; partial ones go in between
ROUNDS = 8
ERRORS_PROBLEM = "Mist: Port eth0: Inbound errors are rising"
RATE_KEYS = {
    "mist.ap.port.rx[eth0]": 8 * RX_BYTES_PER_S,  # the item stores bits per second
    "mist.ap.port.tx.packets[eth0]": TX_PKTS_PER_S,
    "mist.ap.port.rx.errors[eth0]": RX_ERRORS_PER_S,
}


def counters(elapsed: float, only_rx: bool = False) -> dict[str, Any]:
    eth0: dict[str, Any] = {"rx_bytes": int(RX_BYTES_PER_S * elapsed)}
    if not only_rx:
        eth0 |= {
            "up": True,
            "speed": 1000,
            "tx_pkts": int(TX_PKTS_PER_S * elapsed),
            "rx_errors": int(RX_ERRORS_PER_S * elapsed),
        }
    return {"eth0": eth0}


def without_type(update: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in update.items() if k != "type"}


def untyped_full(mac: str, elapsed: float) -> dict[str, Any]:
    return without_type(ap_full(mac, "AP-rates", port_stat=counters(elapsed)))


def rate_history(api: Any, hostid: str) -> dict[str, list[float]]:
    items = api.item.get(hostids=[hostid], filter={"key_": list(RATE_KEYS)}, output=["itemid", "key_"])
    out: dict[str, list[float]] = {}
    for item in items:
        rows = api.history.get(itemids=[item["itemid"]], history=0, sortfield="clock", output="extend")
        rows.sort(key=lambda r: (int(r["clock"]), int(r["ns"])))
        out[item["key_"]] = [float(r["value"]) for r in rows]
    return out


def rate_items_complete(api: Any, hostid: str) -> bool:
    """Every rate item exists with its preprocessing in the database.

    Seen on 6.0: a cache reload right after LLD created the items loaded them without
    their change-per-second step for a while, and raw counters were stored as rates.
    """
    items = api.item.get(
        hostids=[hostid], filter={"key_": list(RATE_KEYS)}, output=["key_"], selectPreprocessing=["type"]
    )
    return len(items) == len(RATE_KEYS) and all(item["preprocessing"] for item in items)


def enough(history: dict[str, list[float]]) -> dict[str, list[float]] | None:
    return history if len(history) == len(RATE_KEYS) and all(len(v) >= 4 for v in history.values()) else None


def test_rates_stored_in_zabbix_are_the_true_rates(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    import_templates(api, MIST_TEMPLATES)
    discovery_host, discovery_hostid = create_discovery_host(api)
    zabbix.config_cache_reload()
    mac = random_mac()
    start = time.time()

    async def scenario() -> None:
        async with MistServer(TOKEN, dict(SITES), dict(ORGS)) as server, running_pipeline(
            write_config(tmp_path, zabbix, server, discovery_host)
        ):
            await server.wait_until(lambda: all(server.subscribers(s) for s in SITES))
            await server.push("s1", ap_full(mac, "AP-rates", port_stat={"eth0": {"up": True}}))
            host = await until(lambda: discovered_ap(api, mac), "the AP host")
            hostid = host["hostid"]
            # The host's items exist once LLD linked its template; the trapper takes values after a sync.
            await until(lambda: "mist.ap.raw" in item_keys(api, hostid), "the AP items")
            await asyncio.to_thread(zabbix.config_cache_reload)

            def rate_items_after_an_update() -> bool:
                # No counters yet: every sample the test judges goes to an item that exists.
                update = ap_full(mac, "AP-rates", port_stat={"eth0": {"up": True, "speed": 1000}})
                asyncio.run_coroutine_threadsafe(server.push("s1", update), loop)
                return rate_items_complete(api, hostid)

            loop = asyncio.get_running_loop()
            await until(rate_items_after_an_update, "the port rate items", nudge=zabbix.config_cache_reload)
            await asyncio.sleep(2)  # LLD finishes what it started before the cache loads it
            await asyncio.to_thread(zabbix.config_cache_reload)
            for round_no in range(ROUNDS):
                # Counters are read off the sender's clock when sent: the true rate holds between any two.
                if round_no % 3 == 2:
                    some = counters(time.time() - start, only_rx=True)
                    await server.push("s1", ap_basic(mac, port_stat=some))
                else:
                    await server.push("s1", untyped_full(mac, time.time() - start))
                await asyncio.sleep(SPACING / 2)
                await server.push("s1", ap_basic(mac, uptime=2000 + round_no, num_clients=round_no))
                await asyncio.sleep(SPACING / 2)
            await until(lambda: ERRORS_PROBLEM in problems(api, hostid), "the inbound-errors problem")
            history = await until(lambda: enough(rate_history(api, hostid)), "stored rates",
                                  nudge=zabbix.config_cache_reload)
            assert history.keys() == RATE_KEYS.keys()
            for key, values in history.items():
                true_rate = RATE_KEYS[key]
                off = [v for v in values if abs(v - true_rate) > 0.02 * true_rate]
                assert not off, f"{key}: {off} of {values} are more than 2 % from {true_rate}"

    try:
        asyncio.run(scenario())
    finally:
        api.host.delete(discovery_hostid)


def collector_state(api: Any, hostid: str) -> dict[str, str] | None:
    values = item_values(api, hostid)
    raw = values.get("mist.collector.stats")
    return values if raw and json.loads(raw)["monitored"] == 1 else None


def test_aps_without_type_become_hosts_and_a_switch_is_counted_not_hosted(
    zabbix: LocalZabbix, tmp_path: Path
) -> None:
    api = zabbix.api()
    import_templates(api, MIST_TEMPLATES)
    discovery_host, discovery_hostid = create_discovery_host(api)
    zabbix.config_cache_reload()
    ap, switch = random_mac(), random_mac()

    async def scenario() -> None:
        async with MistServer(TOKEN, dict(SITES), dict(ORGS)) as server, running_pipeline(
            write_config(tmp_path, zabbix, server, discovery_host, "state_interval = 1\n")
        ):
            await server.wait_until(lambda: all(server.subscribers(s) for s in SITES))
            await server.push("s1", without_type(ap_full(ap, "AP-untyped", model="AP45")))
            await server.push("s1", without_type(ap_full(switch, "SW-1", model="EX4100-48P")))
            host = await until(lambda: discovered_ap(api, ap), "the host of an AP sent without type")
            assert [t["host"] for t in host["parentTemplates"]] == [AP_TEMPLATE_NAME]
            assert host["name"] == f"AP-untyped ({ap})"
            # The collector's state (every second here): one monitored AP, one switch left out.
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

