"""Issue 22, item 2: trapline sends through a real Zabbix 7.0 proxy group and follows it.

Two ``zabbix_proxy`` 7.0 processes (active, SQLite) form one proxy group; the
test hosts are monitored by the group, so the server spreads them over the
proxies.  The agent has both proxies as one entry ``"p1;p2"``, the proxy that
does not own the first host listed first: values for a host reach a proxy that
does not own it and come back as a redirect (``{"redirect": {"revision": N,
"address": ...}}``), which the agent must follow.  Then the server is stopped
for longer than the group's failover delay: a proxy that lost the server that
long answers the first value of each host it owns with ``{"redirect": {"reset":
true}}`` (the client starts over from its configured list).  Then the owner is SIGKILLed at
a quiet moment (see ``quiet_moment``): after the group's failover delay the server
moves its hosts to the survivor, and the agent's readings flow again.  Every
reading is in history exactly once.

Sync needs found here: a proxy learns the hosts it owns only from a server
configuration sync after the assignment (then its own sync, every second
here), so the stack keeps 7.0's default ``CacheUpdateFrequency`` of 10 s instead
of the fixtures' 60 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.support.agent_process import ZabbixHost, create_synthetic_host
from tests.support.zabbix_fixtures import started, unique_name, wait_until
from tests.support.zabbix_topologies import (
    PausableAgent,
    account,
    agent_config,
    quiet_moment,
    stored_rounds,
    wait_discovered,
    wait_stored,
)

PROXIES = ("proxy-1", "proxy-2")
HOSTS = 2
ROUNDS = 300
INTERVAL = 0.5  # 150 s of readings: the server outage, the kill and the move, with room for a loaded machine
FAILOVER_DELAY = "10s"  # the group's minimum
CACHE_UPDATE_FREQUENCY = 10  # 7.0's default
MONITORED_BY_PROXY_GROUP = 2
MOVE_TIMEOUT = 120.0
SERVER_OUTAGE = 15.0  # longer than FAILOVER_DELAY


def _owners(api: Any, hosts: list[ZabbixHost]) -> dict[str, str]:
    """host name -> proxyid of the proxy the server assigned it to ('0': pending)."""
    rows = api.host.get(hostids=[h.hostid for h in hosts], output=["host", "assigned_proxyid"])
    return {row["host"]: row["assigned_proxyid"] for row in rows}


def _assigned(api: Any, hosts: list[ZabbixHost]) -> dict[str, str]:
    owners = _owners(api, hosts)
    return owners if "0" not in owners.values() else {}


@pytest.mark.integration
def test_agent_follows_redirects_and_a_proxy_failover_without_loss(tmp_path: Path) -> None:
    stack = LocalZabbix("7.0", tmp_path / "zabbix", cache_update_frequency=CACHE_UPDATE_FREQUENCY)
    with started(stack):
        api = stack.api()
        group = api.proxygroup.create(
            name=unique_name("trapline-pg"), failover_delay=FAILOVER_DELAY, min_online="1"
        )
        groupid = group["proxy_groupids"][0]
        address: dict[str, str] = {}  # proxyid -> host:port
        name_of: dict[str, str] = {}
        for name in PROXIES:
            address_text = stack.add_proxy(name)
            host, port = address_text.rsplit(":", 1)
            proxyid = api.proxy.create(
                name=name, operating_mode=0, proxy_groupid=groupid, local_address=host, local_port=port
            )["proxyids"][0]
            address[proxyid] = address_text
            name_of[proxyid] = name
        hosts = [create_synthetic_host(api, prefix="trapline-pg") for _ in range(HOSTS)]
        for host_ in hosts:
            api.host.update(hostid=host_.hostid, monitored_by=MONITORED_BY_PROXY_GROUP, proxy_groupid=groupid)
        stack.config_cache_reload()
        owners: dict[str, str] = wait_until(
            lambda: _assigned(api, hosts),
            timeout=60,
            what="the server to assign the hosts to proxies",
        )
        stack.config_cache_reload()  # the proxies learn which hosts they own from this sync

        owner = owners[hosts[0].name]
        (other,) = set(address) - {owner}
        cluster = f"{address[other]};{address[owner]}"  # the first host's values get redirected
        config = agent_config(
            tmp_path / "trapline.toml", [cluster], [h.name for h in hosts], ROUNDS, INTERVAL
        )
        agent = PausableAgent(config, tmp_path / "agent.log")
        agent.start()
        try:
            items = [wait_discovered(api, h.hostid, timeout=90) for h in hosts]
            stack.config_cache_reload()  # the discovered items reach the proxies now
            for found, host_ in zip(items, hosts, strict=True):
                wait_stored(api, found, 5, 90, f"the first readings of {host_.name}")

            # A proxy cut off from the server for the failover delay tells senders of the
            # hosts it owns to reset (start over from their configured addresses), once per
            # host per delay: stop the server for longer than that while the agent sends.
            stack.stop_server()
            time.sleep(SERVER_OUTAGE)
            stack.start_server()
            for found, host_ in zip(items, hosts, strict=True):
                wait_stored(api, found, stored_rounds(api, found) + 5, 90, f"{host_.name} after the outage")

            # The server may have reassigned hosts after its restart: kill today's owner.
            owner = _assigned(api, hosts)[hosts[0].name]
            (other,) = set(address) - {owner}
            with quiet_moment(agent, api, items):
                before = [stored_rounds(api, found) for found in items]
                assert max(before) < ROUNDS - 40, "the stream had ended before the proxy was killed"
                stack.kill_proxy(name_of[owner])
            killed = time.monotonic()
            wait_until(
                lambda: set(_owners(api, hosts).values()) == {other},
                timeout=MOVE_TIMEOUT,
                interval=0.5,
                what=f"the server to move all hosts to {name_of[other]}",
            )
            moved = time.monotonic() - killed
            for found, count, host_ in zip(items, before, hosts, strict=True):
                wait_stored(api, found, count + 5, MOVE_TIMEOUT, f"readings of {host_.name} after the move")
            followed = time.monotonic() - killed
            for found, host_ in zip(items, hosts, strict=True):
                wait_stored(api, found, ROUNDS, ROUNDS * INTERVAL, f"the whole stream of {host_.name}")
            assert agent.terminate() == 0
        finally:
            if agent.running:
                agent.kill()
        time.sleep(2.0)  # let the history syncer write anything still in flight (a late duplicate)
        results = [account(api, h.name, found, ROUNDS) for h, found in zip(hosts, items, strict=True)]
        output = agent.output()
        redirects, resets = output.count(" redirected to "), output.count("reset its redirect")
        summary = (
            f"{'; '.join(map(str, results))}; hosts moved {moved:.1f} s after the kill, "
            f"readings flowing again after {followed:.1f} s; redirects followed {redirects}, resets {resets}"
        )
        print(f"proxy group: {summary}")
        assert all(r.lost == r.duplicated == r.foreign == 0 for r in results), summary
        assert redirects > 0, f"no redirect was followed: {summary}"
        assert resets > 0, f"no proxy asked for a reset during the server outage: {summary}"
        # A reset may also come from the proxy a redirect led to; the client starts over then.
        assert "redirected twice" not in output, output[-3000:]
