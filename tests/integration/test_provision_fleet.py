"""Issue 20 item 1: one admin command per van, or one per fleet, on real Zabbix.

A CSV of 50 vans (each with its own active proxy, half with the PSK file the van's install
wrote, half with a key generated here) provisions in one ``trapline provision`` call on 6.0
and 7.0, and the same call again changes nothing.  On 7.0 a real ``zabbix_proxy`` holding a
van's PSK gets its configuration over TLS-PSK and forwards the van's values, its agent's
own metrics included, without one refusal.  (A 6.0 proxy binary is not available here:
the 7.0 stack's proxy cannot talk to a 6.0 server.)
"""

from __future__ import annotations

import asyncio
import csv
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import ADMIN_PASSWORD, ADMIN_USER, LocalZabbix
from tests.support.zabbix_fixtures import unique_name, wait_until
from trapline import cli
from trapline.core.config import Secret
from trapline.core.model import Reading
from trapline.core.plugin import Spooled
from trapline.exporters.zabbix.client import ClusterClient, parse_cluster
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.provision import STOPS_EXPECTED_MACRO, ProxyPsk, VehicleSettings, provision_van

VANS = 50
PSK_FILE_EVERY = 2  # every other van brings the key its install wrote


def _private(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def _argv(zabbix: LocalZabbix, tmp_path: Path, *args: str) -> list[str]:
    password = _private(tmp_path / "admin.password", ADMIN_PASSWORD + "\n")
    argv = ["provision", *args, "--url", zabbix.frontend_url, "--user", ADMIN_USER,
            "--password-file", str(password), "--dashboard", ""]
    return argv


@pytest.mark.integration
def test_a_csv_of_50_vans_provisions_in_one_call_and_again_changes_nothing(
    zabbix: LocalZabbix, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = unique_name("csv-van")
    group = unique_name("trapline-fleet")
    keys: dict[str, str] = {}
    rows = []
    for number in range(VANS):
        host = f"{prefix}-{number:02d}"
        psk_file = ""
        if number % PSK_FILE_EVERY == 0:
            keys[host] = secrets.token_hex(32)
            psk_file = str(_private(tmp_path / f"{host}.psk", keys[host] + "\n"))
        cut = "yes" if number % 5 == 0 else ""
        rows.append({"host": host, "psk_file": psk_file, "power_cut_at_ignition": cut})
    sheet = tmp_path / "vans.csv"
    with sheet.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["host", "psk_file", "power_cut_at_ignition"])
        writer.writeheader()
        writer.writerows(rows)
    argv = _argv(zabbix, tmp_path, "--csv", str(sheet), "--group", group,
                 "--proxy-name", "{host}-proxy", "--create-proxy", "--new-psk")

    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    created = r"^host \S+: created \(hostid \d+\); proxy \S+-proxy: created$"
    assert len(re.findall(created, first, re.M)) == VANS
    # Keys generated here are shown once, to be copied to the vans; keys read from files never are.
    assert len(re.findall(r"^  PSK for ", first, re.M)) == VANS - len(keys)
    assert not [key for key in keys.values() if key in first]

    api = zabbix.api()
    name_field = "name" if zabbix.version == "7.0" else "host"
    proxies = api.proxy.get(output=["proxyid", name_field, "tls_accept"],
                            search={name_field: prefix}, startSearch=True)
    assert len(proxies) == VANS
    assert {int(p["tls_accept"]) for p in proxies} == {2}  # PSK only
    hosts = api.host.get(output=["host"], search={"host": prefix}, startSearch=True,
                         selectMacros=["macro", "value"], selectParentTemplates=["host"])
    assert len(hosts) == VANS
    power_cut = {h["host"] for h in hosts if {"macro": STOPS_EXPECTED_MACRO, "value": "1"} in h["macros"]}
    assert power_cut == {row["host"] for row in rows if row["power_cut_at_ignition"]}
    assert all(len(h["parentTemplates"]) == 2 for h in hosts)

    assert cli.main(argv) == 0
    again = capsys.readouterr().out
    unchanged = r"^host \S+: unchanged \(hostid \d+\); proxy \S+-proxy: unchanged$"
    assert len(re.findall(unchanged, again, re.M)) == VANS
    assert "PSK for" not in again  # nothing was set, so no key to copy


@pytest.mark.integration
def test_a_van_behind_its_psk_proxy_delivers_everything(zabbix70: LocalZabbix, tmp_path: Path) -> None:
    zabbix = zabbix70
    api = zabbix.api()
    van = unique_name("psk-van")
    identity, key = f"{van}-psk", secrets.token_hex(32)
    settings = VehicleSettings(f"{van}-proxy", create_proxy=True, psk=ProxyPsk(identity, Secret(key)))
    done = provision_van(api, van, unique_name("trapline-fleet"), settings)
    assert (done.host.action, done.proxy and done.proxy.action) == ("created", "created")
    address = zabbix.add_proxy(f"{van}-proxy", psk=(identity, key))
    zabbix.config_cache_reload()

    # Vehicle values and the agent's own metrics, as the van's agent sends them to its proxy.
    now = int(time.time())
    readings = [Reading(van, "gps.speed", 40.0 + i, now - 30 + i) for i in range(5)]
    readings += [Reading(van, "obd.voltage", 13.8, now - 30 + i) for i in range(5)]
    readings += [Reading(van, "trapline.uptime", 100 + i, now - 30 + i) for i in range(3)]
    batch = [Spooled(i, r, time.time(), 0) for i, r in enumerate(readings)]

    async def deliver() -> Any:
        destination = ZabbixDestination("proxy", ClusterClient(parse_cluster(address), timeout=5))
        try:
            return await destination.deliver(batch)
        finally:
            await destination.close()

    # The proxy learns the host over its PSK connection; until then it refuses the values.
    outcome = wait_until(lambda: _accepted_all(asyncio.run(deliver()), len(batch)), timeout=90, interval=2,
                         what="the proxy to accept the van's values (its configuration comes over PSK)")
    assert outcome
    items = api.item.get(output=["itemid", "key_", "value_type"],
                         filter={"host": van, "key_": ["gps.speed", "obd.voltage", "trapline.uptime"]})
    expected = {"gps.speed": 5, "obd.voltage": 5, "trapline.uptime": 3}
    assert sorted(i["key_"] for i in items) == sorted(expected)
    for item in items:
        wait_until(
            lambda item=item: len(api.history.get(
                itemids=[item["itemid"]], history=int(item["value_type"]), output=["clock"]
            )) >= expected[item["key_"]],
            timeout=60, interval=1, what=f"{item['key_']} through the PSK proxy in the server's history",
        )


def _accepted_all(delivery: Any, expected: int) -> bool:
    return len(delivery.accepted) == expected and not delivery.retry and not delivery.rejected
