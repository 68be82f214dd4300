"""Mist to Zabbix end to end: the real collector and pipeline feed the shipped Mist templates.

devtools/mist_server.py stands in for the Mist cloud (unreachable from tests); everything
after it is real: the Mist collector, the pipeline with its spool, the Zabbix sender
destination, and Zabbix 6.0 / 7.0 with the two templates imported from
zabbix_templates/. The test shows what a user of the templates sees: one host per AP
with its name, groups and template, values in the dependent items, discovered ports
and radios, and problems when an AP falls silent or a port loses its link.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from devtools.localzabbix import LocalZabbix
from devtools.mist_server import MistServer, ap_basic, ap_full
from tests.support.zabbix_fixtures import TEST_HOST_GROUP, unique_name
from trapline.app.settings import build_pipeline, load_settings
from trapline.middleware.pipeline import Pipeline
from trapline.templates import import_templates, template_dir

pytestmark = pytest.mark.integration

T = TypeVar("T")

AP_TEMPLATE = template_dir() / "mist_ap" / "template_mist_ap.yaml"
DISCOVERY_TEMPLATE = template_dir() / "mist_discovery" / "template_mist_discovery.yaml"
SWITCH_TEMPLATE = template_dir() / "mist_switch" / "template_mist_switch.yaml"
GATEWAY_TEMPLATE = template_dir() / "mist_gateway" / "template_mist_gateway.yaml"
# The discovery template's host prototypes link the other three: Zabbix needs them first.
MIST_TEMPLATES = [AP_TEMPLATE, SWITCH_TEMPLATE, GATEWAY_TEMPLATE, DISCOVERY_TEMPLATE]
AP_TEMPLATE_NAME = "Juniper Mist AP by Zabbix trapper"
DISCOVERY_TEMPLATE_NAME = "Juniper Mist discovery by Zabbix trapper"

TOKEN = "zabbix-e2e-token"
ORGS = {"o1": "Acme"}
SITES = {"s1": ("Headquarters", "o1"), "s2": ("Lab", "o1")}
STALE_AFTER = 3.0  # collector setting: silence after which an AP is marked stale
KEEPALIVE_INTERVAL = 0.5
WAIT_LIMIT = 60.0
NUDGE_EVERY = 10.0  # seconds between cache reloads while waiting for values of new items
AP_CHECKED = {
    "mist.ap.status", "mist.ap.model", "mist.ap.cpu.util", "mist.ap.clients", "mist.ap.memory.used",
    "mist.ap.memory.util", "mist.ap.temp.cpu", "mist.ap.uptime",
}
LLD_CHECKED = {
    "mist.ap.port.up[eth0]", "mist.ap.port.speed[eth0]", "mist.ap.radio.noise[band_5]",
    "mist.ap.radio.channel[band_24]", "mist.ap.radio.disabled[band_24]",
}  # generous: LLD and config syncs on a busy 2-core machine


async def until(check: Callable[[], T], what: str, nudge: Callable[[], None] | None = None) -> T:
    """Poll a blocking check (API calls) in a thread so the pipeline keeps running meanwhile.

    ``nudge`` runs every NUDGE_EVERY seconds while waiting.  Seen here on 6.0 in about
    half of the runs: dependent items that LLD created less than a second before the
    cache reload got no values from the master item until a later reload (or the
    periodic sync, 60 s on), although the API showed them complete.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    next_nudge = loop.time() + NUDGE_EVERY
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {WAIT_LIMIT} s waiting for {what}", pytrace=False)
        if nudge is not None and loop.time() >= next_nudge:
            await asyncio.to_thread(nudge)
            next_nudge = loop.time() + NUDGE_EVERY
        await asyncio.sleep(0.2)


def write_config(
    tmp: Path,
    zabbix: LocalZabbix,
    server: MistServer,
    discovery_host: str,
    extra: str = "",
    *,
    orgs: str = "o1",  # space-separated org ids
) -> Path:
    token_file = tmp / "mist.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    config = tmp / "trapline.toml"
    config.write_text(
        f"""
[agent]
flush_interval = 0.05
self_interval = 3600
shutdown_timeout = 2

[spool]
path = {json.dumps(str(tmp / "spool.db"))}
sync = "normal"
retry_initial = 0.2
retry_cap = 1.0

[zabbix]
servers = [{json.dumps(zabbix.trapper_address)}]

[collectors.mist]
type = "mist"
host = {json.dumps(discovery_host)}
token_file = {json.dumps(str(token_file))}
stream_url = {json.dumps(server.stream_url)}
rest_url = {json.dumps(server.rest_url)}
orgs = {json.dumps(orgs.split())}
stale_after = {STALE_AFTER}
lld_min_interval = 0
retry_min = 0.05
retry_max = 0.5
{extra}
""",
        encoding="utf-8",
    )
    return config


@asynccontextmanager
async def running_pipeline(config: Path) -> AsyncIterator[Pipeline]:
    """The agent as `trapline run` builds it from the configuration file."""
    pipeline = build_pipeline(load_settings(config))
    task = asyncio.create_task(pipeline.run(install_signal_handlers=False))
    try:
        yield pipeline
    finally:
        pipeline.stop()
        await task
        pipeline.spool.close()


class KeepAlive:
    """Sends a small stats update for every AP in ``macs`` twice a second, as Mist does for live APs."""

    def __init__(self, server: MistServer, site_of: dict[str, str]) -> None:
        self.server = server
        self.site_of = site_of
        self.macs = set(site_of)
        self.uptime = 1000

    async def run(self) -> None:
        while True:
            self.uptime += 1
            for mac in sorted(self.macs):
                await self.server.push(self.site_of[mac], ap_basic(mac, uptime=self.uptime))
            await asyncio.sleep(KEEPALIVE_INTERVAL)


@asynccontextmanager
async def keeping_alive(server: MistServer, site_of: dict[str, str]) -> AsyncIterator[KeepAlive]:
    """A :class:`KeepAlive` running for the duration of the block."""
    keepalive = KeepAlive(server, site_of)
    pusher = asyncio.create_task(keepalive.run())
    try:
        yield keepalive
    finally:
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)


def template_keys(lld_rows: dict[str, list[dict[str, str]]], path: Path = AP_TEMPLATE) -> set[str]:
    """Keys a host of the template at ``path`` (the AP's) has once its discovery rules found ``lld_rows``.

    Read from the YAML file, so the test waits for every item before it asks Zabbix to
    reload its configuration: an item created after the reload would miss values.
    """
    export = yaml.safe_load(path.read_text(encoding="utf-8"))["zabbix_export"]
    (template,) = export["templates"]
    keys = {item["key"] for item in template["items"]}
    for rule in template["discovery_rules"]:
        for row in lld_rows.get(rule["key"], []):
            for prototype in rule["item_prototypes"]:
                key = prototype["key"]
                for macro, value in row.items():
                    key = key.replace(macro, value)
                keys.add(key)
    return keys


def random_mac() -> str:
    return "5c5b35" + secrets.token_hex(3)


def create_discovery_host(api: Any) -> tuple[str, str]:
    groups = api.hostgroup.get(filter={"name": [TEST_HOST_GROUP]}, output=["groupid"])
    groupid = groups[0]["groupid"] if groups else api.hostgroup.create(name=TEST_HOST_GROUP)["groupids"][0]
    (template,) = api.template.get(filter={"host": [DISCOVERY_TEMPLATE_NAME]}, output=["templateid"])
    name = unique_name("mist-discovery")
    hostid = api.host.create(
        host=name, groups=[{"groupid": groupid}], templates=[{"templateid": template["templateid"]}]
    )["hostids"][0]
    return name, str(hostid)


def discovered_ap(api: Any, mac: str) -> dict[str, Any] | None:
    """The AP's host once LLD created it and linked its template (a separate step of LLD)."""
    hosts = api.host.get(
        filter={"host": [f"mist-ap-{mac}"]},
        output=["hostid", "host", "name"],
        selectGroups=["name"],
        selectParentTemplates=["host"],
        selectMacros=["macro", "value"],
        selectTags=["tag", "value"],
    )
    return hosts[0] if hosts and hosts[0]["parentTemplates"] else None


def item_values(api: Any, hostid: str) -> dict[str, str]:
    """key -> last value of every item of the host that has one."""
    items = api.item.get(hostids=[hostid], output=["key_", "lastclock", "lastvalue"])
    return {i["key_"]: i["lastvalue"] for i in items if int(i["lastclock"]) > 0}


def values_of(api: Any, hostid: str, keys: set[str]) -> dict[str, str] | None:
    """Last values of the host's items once every one of ``keys`` has one (history is written in batches)."""
    values = item_values(api, hostid)
    return values if keys <= values.keys() else None


def item_keys(api: Any, hostid: str) -> set[str]:
    return {i["key_"] for i in api.item.get(hostids=[hostid], output=["key_"])}


def trigger_names(api: Any, hostid: str) -> set[str]:
    return {t["description"] for t in api.trigger.get(hostids=[hostid], output=["description"])}


def problems(api: Any, hostid: str) -> set[str]:
    return {p["name"] for p in api.problem.get(hostids=[hostid], output=["name"])}


def test_mist_aps_become_zabbix_hosts_with_values_and_problems(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    imported = import_templates(api, MIST_TEMPLATES)
    assert imported[0] == AP_TEMPLATE_NAME and imported[-1] == DISCOVERY_TEMPLATE_NAME
    discovery_host, discovery_hostid = create_discovery_host(api)
    zabbix.config_cache_reload()  # the trapper must know the new discovery host's LLD rule
    hq_ap, lab_ap = random_mac(), random_mac()

    async def scenario() -> None:
        async with MistServer(TOKEN, dict(SITES), dict(ORGS)) as server, running_pipeline(
            write_config(tmp_path, zabbix, server, discovery_host)
        ):
            await server.wait_until(lambda: all(server.subscribers(s) for s in SITES))
            await server.push("s1", ap_full(hq_ap, "AP-HQ-1"))
            await server.push("s2", ap_full(lab_ap, "AP-LAB-1", model="AP45"))

            # 1. The discovery host's LLD turned each AP into a host with the AP template.
            hq = await until(lambda: discovered_ap(api, hq_ap), "the HQ AP host")
            lab = await until(lambda: discovered_ap(api, lab_ap), "the lab AP host")
            # Visible names carry the MAC: two APs named alike in Mist are two hosts.
            assert (hq["name"], lab["name"]) == (f"AP-HQ-1 ({hq_ap})", f"AP-LAB-1 ({lab_ap})")
            assert {g["name"] for g in hq["groups"]} == {"Mist", "Mist/Acme", "Mist/Acme/Headquarters"}
            assert {g["name"] for g in lab["groups"]} == {"Mist", "Mist/Acme", "Mist/Acme/Lab"}
            assert [t["host"] for t in hq["parentTemplates"]] == [AP_TEMPLATE_NAME]
            assert {m["macro"]: m["value"] for m in hq["macros"]} == {
                "{$MIST.ORG}": "Acme", "{$MIST.SITE}": "Headquarters", "{$MIST.SITE.ID}": "s1",
            }
            assert {"tag": "mist.model", "value": "AP45"} in lab["tags"]
            hq_id, lab_id = hq["hostid"], lab["hostid"]
            # The template's items exist on the new hosts; the trapper accepts values after a sync.
            ap_items = template_keys({})
            await until(lambda: ap_items <= item_keys(api, hq_id) & item_keys(api, lab_id), "the AP items")
            await asyncio.to_thread(zabbix.config_cache_reload)

            keepalive = KeepAlive(server, {hq_ap: "s1", lab_ap: "s2"})
            pusher = asyncio.create_task(keepalive.run())
            try:
                # 2. Dependent items take the pushed JSON apart.
                values = await until(lambda: values_of(api, hq_id, AP_CHECKED), "AP item values",
                                     nudge=zabbix.config_cache_reload)
                assert values["mist.ap.status"] == "1"  # connected
                assert values["mist.ap.model"] == "AP43"
                assert float(values["mist.ap.cpu.util"]) == 3
                assert values["mist.ap.clients"] == "4"
                assert values["mist.ap.memory.used"] == str(200_000 * 1024)
                assert float(values["mist.ap.memory.util"]) == 40
                assert float(values["mist.ap.temp.cpu"]) == 55
                assert int(values["mist.ap.uptime"]) >= 1000

                # 3. Ports and radios are discovered from the same JSON (dependent LLD) ...
                wanted = template_keys({
                    "mist.ap.port.discovery": [{"{#PORT}": "eth0"}],
                    "mist.ap.radio.discovery": [{"{#BAND}": "band_24"}, {"{#BAND}": "band_5"}],
                })
                await until(lambda: item_keys(api, hq_id) == wanted, "port and radio items")
                # LLD can write a rule's triggers after its items: a cache reloaded in between holds
                # the items but not "Link down" until the next sync (60 s), and a value that comes
                # meanwhile is never judged by it (seen once on 7.0).
                link_down = "Mist: Port eth0: Link down"
                await until(lambda: link_down in trigger_names(api, hq_id), "the port triggers")
                await asyncio.to_thread(zabbix.config_cache_reload)
                # ... and filled by the next updates.
                values = await until(lambda: values_of(api, hq_id, LLD_CHECKED), "port and radio values",
                                     nudge=zabbix.config_cache_reload)
                assert values["mist.ap.port.up[eth0]"] == "1"
                assert values["mist.ap.port.speed[eth0]"] == str(1000 * 1_000_000)
                assert float(values["mist.ap.radio.noise[band_5]"]) == -95
                assert values["mist.ap.radio.channel[band_24]"] == "6"
                assert values["mist.ap.radio.disabled[band_24]"] == "0"
                assert await asyncio.to_thread(problems, api, hq_id) == set()

                # 4. eth0 of the HQ AP loses its link.
                await server.push("s1", ap_basic(hq_ap, port_stat={"eth0": {"up": False, "speed": 0}}))
                await until(
                    lambda: link_down in problems(api, hq_id), "the port-down problem"
                )
                # Interference on 2.4 GHz: three readings above the -80 dBm default threshold.
                for noise in (-70, -65, -60):
                    await server.push("s1", ap_basic(hq_ap, radio_stat={"band_24": {"noise_floor": noise}}))
                noisy = "Mist: Radio 2.4 GHz: Noise floor is high"
                await until(lambda: noisy in problems(api, hq_id), "the noise problem")
                assert problems(api, hq_id) == {"Mist: Port eth0: Link down", noisy}
                # The link comes back at 10 Mbps: "link down" resolves, the slow link is reported
                # (below the default expected speed, 100 Mbps, which itself raises nothing).
                await server.push("s1", ap_basic(hq_ap, port_stat={"eth0": {"up": True, "speed": 10}}))
                slow = "Mist: Port eth0: Speed below 100 Mbps"
                await until(lambda: problems(api, hq_id) == {slow, noisy}, "the slow-link problem alone")

                # 5. The lab AP falls silent while the HQ AP keeps talking.
                keepalive.macs.discard(lab_ap)
                await until(
                    lambda: "Mist: AP is stale: Mist sends no statistics" in problems(api, lab_id),
                    "the stale problem",
                )
                assert item_values(api, lab_id)["mist.ap.stale"] == "1"
                assert "Mist: AP is stale: Mist sends no statistics" not in problems(api, hq_id)

                # It speaks again: the problem is resolved.
                keepalive.macs.add(lab_ap)
                await until(lambda: not problems(api, lab_id), "the stale problem to resolve")
            finally:
                pusher.cancel()
                await asyncio.gather(pusher, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        api.host.delete(discovery_hostid)  # takes its discovered AP hosts along
