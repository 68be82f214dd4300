"""Two Mist collector instances share an MSP's orgs, each with its own discovery host, on real Zabbix.

Both agents run as `trapline run` processes with the same configuration (four orgs) except
``shard`` ("1/2", "2/2") and ``host`` (their discovery host); tests/mist_server.py stands in
for the Mist cloud.  The discovery rules delete a lost AP host at once (``{$MIST.LLD.LIFETIME}``
= 0) and the agents resend their AP lists every ``LLD_REFRESH`` seconds, so a list that
left out the other instance's APs would remove their hosts within seconds; the test
watches for that across many resends, while both run and after one is SIGKILLed.  The
last step shows the watch would see it: a third agent that wrongly shares the second
one's discovery host makes that host's rule drop hosts.  On the way: each AP host is in its
org's and site's groups (on 6.0 only one rule can create a group), each discovery host shows
its instance's share, and a restarted instance takes the same share and keeps its hosts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from devtools.mist_server import MistServer, ap_full
from tests.integration import test_mist_zabbix as e2e
from tests.support.agent_process import AgentProcess
from tests.support.zabbix_fixtures import open_problems, wait_for_problems
from trapline.collectors.mist.shard import shard_of
from trapline.templates import import_templates

pytestmark = pytest.mark.integration

LLD_REFRESH = 2.0  # seconds between resends of an unchanged AP list
NODATA = "15s"  # {$MIST.STATE.NODATA}: a dead instance is one problem on its discovery host
# The discovery template's one outage problem, named with its default {$MIST.STREAM.DOWN.FOR}.
SILENT = {("Mist: Stream down or trapline silent for 2m", "high")}
# Four orgs of two sites, two APs per site; ids as Mist gives them (UUIDs).
ORGS = {str(uuid.uuid5(uuid.NAMESPACE_URL, f"shard-org-{i}")): f"Customer {i}" for i in range(4)}
SITES = {
    str(uuid.uuid5(uuid.NAMESPACE_URL, f"{org}/site-{i}")): (f"Site {i}", org)
    for org in ORGS
    for i in range(2)
}
APS_PER_SITE = 2


def settings(shard: str) -> str:
    return f'shard = "{shard}"\nlld_refresh = {LLD_REFRESH}\nstate_interval = 1\n'


def ap_hosts(api: Any, macs: list[str]) -> dict[str, dict[str, Any]]:
    """mac -> the AP's host (if it exists) with the rule that created it and its lost-since mark."""
    rows = api.host.get(
        filter={"host": [f"mist-ap-{m}" for m in macs]},
        output=["hostid", "host", "name"],
        selectParentTemplates=["host"],
        selectGroups=["name"],
        selectDiscoveryRule=["itemid", "hostid"],
        selectHostDiscovery="extend",
    )
    return {row["host"].removeprefix("mist-ap-"): row for row in rows}


def lost(host: dict[str, Any]) -> bool:
    """Whether the AP's host is marked lost by its rule.

    7.0 says so in ``status`` (and keeps a stale ``ts_delete`` once the host is found again,
    seen here); 6.0 has no ``status`` and sets ``ts_delete`` only while the host is lost.
    """
    found = host["hostDiscovery"]
    return found["status"] == "1" if "status" in found else int(found["ts_delete"]) != 0


def owners(hosts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """mac -> hostid of the discovery host whose rule created the AP's host."""
    return {mac: str(h["discoveryRule"]["hostid"]) for mac, h in hosts.items() if h.get("discoveryRule")}


def rule_errors(api: Any, hostids: list[str]) -> dict[str, str]:
    rules = api.discoveryrule.get(
        hostids=hostids, output=["hostid", "error"], filter={"key_": "mist.ap.discovery"}
    )
    return {r["hostid"]: r["error"] for r in rules if r["error"]}


def uptimes(api: Any, hostids: list[str]) -> dict[str, int]:
    """hostid -> last mist.ap.uptime value, for the AP hosts that have one."""
    items = api.item.get(
        hostids=hostids, filter={"key_": "mist.ap.uptime"}, output=["hostid", "lastvalue", "lastclock"]
    )
    return {i["hostid"]: int(i["lastvalue"]) for i in items if int(i["lastclock"]) > 0}


def share_shown(api: Any, hostid: str) -> tuple[str, str]:
    """(shard, sites) as the discovery host's items show them."""
    values = e2e.item_values(api, hostid)
    return values.get("mist.collector.shard", ""), values.get("mist.collector.sites", "")


def test_two_instances_share_the_aps_without_touching_each_others_hosts(
    zabbix: LocalZabbix, tmp_path: Path
) -> None:
    share = {k: sorted(s for s, (_, org) in SITES.items() if shard_of(org, 2) == k) for k in (1, 2)}
    assert all(share.values()), f"the fixture must give each instance sites: {share}"
    site_of = {e2e.random_mac(): site for site in SITES for _ in range(APS_PER_SITE)}
    macs = sorted(site_of)
    api = zabbix.api()
    import_templates(api, e2e.MIST_TEMPLATES)
    discovery = [e2e.create_discovery_host(api) for _ in range(2)]  # (name, hostid) per instance
    discovery_ids = [hostid for _, hostid in discovery]
    lifetime_macros = [
        api.usermacro.create(hostid=hostid, macro="{$MIST.LLD.LIFETIME}", value="0")["hostmacroids"][0]
        for hostid in discovery_ids
    ]
    for hostid in discovery_ids:
        api.usermacro.create(hostid=hostid, macro="{$MIST.STATE.NODATA}", value=NODATA)
    zabbix.config_cache_reload()
    owner_of = {mac: discovery_ids[shard_of(SITES[site][1], 2) - 1] for mac, site in site_of.items()}
    first_macs = [m for m in macs if owner_of[m] == discovery_ids[0]]
    second_macs = [m for m in macs if owner_of[m] == discovery_ids[1]]
    agents: list[AgentProcess] = []

    def start_agent(name: str, discovery_host: str, shard: str, server: MistServer) -> AgentProcess:
        workdir = tmp_path / name
        workdir.mkdir()
        config = e2e.write_config(
            workdir, zabbix, server, discovery_host, settings(shard), orgs=" ".join(ORGS)
        )
        agent = AgentProcess(config, workdir / "agent.log")
        agent.start()
        agents.append(agent)
        return agent

    def subscribed_once(server: MistServer) -> bool:
        return all(len(server.subscribers(site)) == 1 for site in SITES)

    async def scenario() -> None:
        async with (
            MistServer(e2e.TOKEN, dict(SITES), dict(ORGS)) as server,
            e2e.keeping_alive(server, site_of) as keepalive,
        ):
            first = start_agent("one", discovery[0][0], "1/2", server)
            start_agent("two", discovery[1][0], "2/2", server)
            await server.wait_until(lambda: subscribed_once(server))
            for mac, site in site_of.items():
                await server.push(site, ap_full(mac, f"AP {mac}"))

            # 1. Every AP is one host, created by the rule of the instance that owns its site.
            hosts = await e2e.until(
                lambda: (
                    (h := ap_hosts(api, macs)).keys() == set(macs)
                    and all(x["parentTemplates"] for x in h.values())
                    and h
                ),
                "a host for every AP",
            )
            assert owners(hosts) == owner_of
            # Each in its org's and site's groups: an org's sites are all in one instance, as Zabbix
            # 6.0 lets only one rule create a group (7.0 shares it).
            for mac, host in hosts.items():
                site, org = SITES[site_of[mac]]
                groups = {g["name"] for g in host["groups"]}
                assert groups == {"Mist", f"Mist/{ORGS[org]}", f"Mist/{ORGS[org]}/{site}"}, (mac, groups)
            hostids = {mac: h["hostid"] for mac, h in hosts.items()}
            ap_items = e2e.template_keys({})
            await e2e.until(
                lambda: all(ap_items <= e2e.item_keys(api, h) for h in hostids.values()), "the AP items"
            )
            await asyncio.to_thread(zabbix.config_cache_reload)
            watched = [*discovery_ids, *hostids.values()]

            def unchanged() -> None:
                """Fails if an AP host was deleted, recreated, moved or marked lost."""
                now = ap_hosts(api, macs)
                assert {m: h["hostid"] for m, h in now.items()} == hostids, (
                    "an AP host was removed or recreated"
                )
                assert owners(now) == owner_of
                marked = sorted(m for m, h in now.items() if lost(h))
                assert not marked, f"AP hosts marked lost: {marked}"
                assert rule_errors(api, discovery_ids) == {}

            def watch(seconds: float, expected: set[tuple[str, str]]) -> None:
                """For ``seconds`` (many AP-list resends): hosts unchanged, no problem but ``expected``."""
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    unchanged()
                    assert open_problems(api, watched) <= expected
                    time.sleep(1.0)

            await e2e.until(
                lambda: uptimes(api, list(hostids.values())).keys() == set(hostids.values()),
                "uptime values on every AP host",
                nudge=zabbix.config_cache_reload,
            )
            # Each discovery host shows its instance's share (sites: 0 until the REST lookup answered).
            shown = {hostid: (f"{k}/2", str(len(share[k]))) for k, hostid in enumerate(discovery_ids, 1)}
            await e2e.until(
                lambda: {h: share_shown(api, h) for h in discovery_ids} == shown,
                f"the discovery hosts to show their shares {shown}",
            )
            # A timer pass (30 s) for the time-based triggers, and over a dozen resends of each list.
            await asyncio.to_thread(watch, 35.0, set())

            # 2. The first instance dies: one problem on its discovery host, nothing else changes.
            first.kill()
            await asyncio.to_thread(wait_for_problems, api, watched, SILENT)
            assert await asyncio.to_thread(open_problems, api, [discovery_ids[0]]) == SILENT
            before = await asyncio.to_thread(uptimes, api, list(hostids.values()))
            await asyncio.to_thread(watch, 10.0, SILENT)
            after = await asyncio.to_thread(uptimes, api, list(hostids.values()))
            # The survivor's APs kept getting values; the dead one's hosts stay, silent.
            for mac, hostid in hostids.items():
                moved = after[hostid] > before[hostid]
                assert moved == (mac in second_macs), (mac, before[hostid], after[hostid])

            # 3. It restarts with the same configuration: the same share, the same hosts, quiet again.
            # A restarted instance lists its APs as it hears of them, so its first lists are short:
            # with the lifetime at 0 they would delete the rest; the template's default (7d) lets the
            # rule find them again in the next list, as in production.
            api.usermacro.delete(lifetime_macros[0])
            await asyncio.to_thread(zabbix.config_cache_reload)
            first.start()
            await server.wait_until(lambda: subscribed_once(server))
            # Mist's periodic full updates, which tell the AP's kind again (an uptime going back
            # would be a restart of the AP, a problem of its own).
            for mac in first_macs:
                await server.push(site_of[mac], ap_full(mac, f"AP {mac}", uptime=keepalive.uptime))
            await asyncio.sleep(3 * LLD_REFRESH)  # its lists are complete again: let Zabbix process them
            await e2e.until(
                lambda: not any(lost(h) for h in ap_hosts(api, macs).values()),
                "no AP host marked lost",
            )
            await asyncio.to_thread(wait_for_problems, api, watched, set())
            await asyncio.to_thread(watch, 5.0, set())

            # 4. Control, that the watch above could fail: a third agent that shares the second one's
            # discovery host (with the first one's sites) makes that host's rule drop the second's APs.
            start_agent("wrong", discovery[1][0], "1/2", server)
            await server.wait_until(lambda: all(len(server.subscribers(s)) == 2 for s in share[1]))
            for mac in first_macs:
                await server.push(site_of[mac], ap_full(mac, f"AP {mac}", uptime=keepalive.uptime))
            await e2e.until(
                lambda: (
                    {m: h["hostid"] for m, h in ap_hosts(api, second_macs).items()}
                    != {m: hostids[m] for m in second_macs}
                ),
                "a shared discovery host to remove AP hosts",
            )
            # Nor can the second rule create the first instance's APs: their host names are taken.
            # (The error lasts until the next list from the right instance, hence the polling.)
            error = await e2e.until(
                lambda: rule_errors(api, [discovery_ids[1]]).get(discovery_ids[1]), "the rule's error"
            )
            assert any(f"mist-ap-{m}" in error for m in first_macs), error

    try:
        asyncio.run(scenario())
    finally:
        for agent in agents:
            if agent.running:
                agent.kill()
        for _, hostid in discovery:
            api.host.delete(hostid)  # takes its discovered AP hosts along
