"""Devices whose updates never tell their kind, classified from the site's device inventory (REST).

Shapes: the inventory is Mist's ``GET /api/v1/sites/{site_id}/devices`` (listSiteDevices, with
``type=all``): a JSON list of device configuration objects (the DeviceAp, DeviceSwitch and
DeviceGateway models of Juniper's API reference, e.g. tmunzer/mistapi-go doc/models), where
``type`` is the one required member and ``mac``, ``id``, ``name``, ``model`` and everything else
are optional.  The reference writes MACs as 12 lowercase hex digits (``5c5b350e0001``) and
device ids ending in that MAC; the upper-case and separated spellings are what other Mist
calls and operators write, and a MAC read from either side must meet the other.  Stats updates
follow the device-stats schema, where every field, ``type`` included, is optional.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.mist_server import MistServer
from tests.integration.test_mist_stream import TOKEN, collecting
from tests.test_mist_fleet import lld, make_fleet
from trapline.collectors.mist.collector import STATS_KEY
from trapline.collectors.mist.fleet import KnownDevice, kind_of_model, raw_key
from trapline.collectors.mist.rest import inventory_entries
from trapline.core.model import Item, Reading

HOSTED = frozenset({"ap", "switch", "gateway"})
PREFIX = {"ap": "mist-ap-", "switch": "mist-switch-", "gateway": "mist-gateway-"}

# Names as operators give them: commas, quotes, backslashes, non-ASCII.
names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
tricky_names = st.sampled_from(['Hall "B", 2nd floor', "Café Ü-Bahn", "a\\b", "控制室"]) | names
# Model names of no known family (so only the inventory can tell the kind), or no model at all.
unknown_models = st.none() | st.text(max_size=12).filter(lambda m: kind_of_model(m) is None)


def spelled(mac: str, style: int) -> str:
    """One spelling of a MAC: as the API reference writes it, upper case, with colons or dashes."""
    pairs = [mac[i : i + 2] for i in range(0, 12, 2)]
    return [mac, mac.upper(), ":".join(pairs), "-".join(pairs).upper()][style]


@st.composite
def inventory_item(draw: st.DrawFn, mac: str, kind: str) -> dict[str, Any]:
    """One listSiteDevices item: type always, the MAC in ``mac`` or only in ``id``, optional members."""
    item: dict[str, Any] = {"type": kind}
    where = draw(st.sampled_from(["mac", "id", "both"]))
    if where in ("mac", "both"):
        item["mac"] = spelled(mac, draw(st.integers(0, 3)))
    if where in ("id", "both"):
        item["id"] = f"00000000-0000-0000-1000-{mac}"
    if draw(st.booleans()):
        item["name"] = draw(tricky_names)
    if draw(st.booleans()):
        item["model"] = draw(st.text(max_size=12))
    if draw(st.booleans()):
        item["serial"], item["x"], item["vars"] = "FXLH2015150025", 53.5, {"RADIUS_IP1": "172.31.2.5"}
    order = draw(st.permutations(list(item)))
    return {k: item[k] for k in order}


def stats(mac: str, step: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"00000000-0000-0000-1000-{mac}", "mac": mac, "uptime": step, **fields}


def rows_of(items: list[Item]) -> dict[str, dict[str, str]]:
    return {r["{#NODEID}"]: r for d in lld(items) for r in d.rows}


def raws(items: list[Item]) -> dict[str, dict[str, Any]]:
    return {
        i.host: json.loads(str(i.value))
        for i in items
        if isinstance(i, Reading) and i.key in {raw_key(k) for k in HOSTED}
    }


@settings(max_examples=60, deadline=None)
@given(data=st.data(), count=st.integers(1, 6))
def test_held_devices_take_the_kind_the_inventory_gives_with_everything_held(
    data: st.DataObject, count: int
) -> None:
    """Devices whose updates carry neither type nor a known model family are held; once the
    inventory lists them they become hosts of their kind with every field merged while held, and
    the others stay held and counted.  No device is lost or counted twice."""
    macs = [f"5c5b35{i:06x}" for i in range(count)]
    kinds = {mac: data.draw(st.none() | st.sampled_from(["ap", "switch", "gateway", "ble"])) for mac in macs}
    fleet = make_fleet(lld_min_interval=0.0, device_types=HOSTED)
    for step in range(data.draw(st.integers(1, 3))):
        for mac in macs:
            update = stats(mac, step, model=data.draw(unknown_models), num_clients=step)
            fleet.update("s1", update, float(step))
    assert fleet.due(10.0) == []
    assert fleet.unmonitored() == {"kind unknown": count}
    assert fleet.sites_with_unknown_kinds() == {"s1"}

    listing = {mac: data.draw(inventory_item(mac, kind)) for mac, kind in kinds.items() if kind is not None}
    listed = list(listing.values())
    # Items the inventory may hold that name nothing usable: no type, a MAC that is none.
    junk = [{"mac": macs[0], "name": "no type"}, {"type": "ap", "mac": "not-a-mac"}, "text", None]
    entries, left_out = inventory_entries(data.draw(st.permutations(listed + junk)))
    assert left_out == len(junk)
    assert fleet.learn_inventory("s1", entries) == len(listed)
    items = fleet.due(11.0)

    rows, states = rows_of(items), raws(items)
    expected = {PREFIX[k] + mac: mac for mac, k in kinds.items() if k in HOSTED}
    assert rows.keys() == expected.keys() == states.keys()
    for node, mac in expected.items():
        assert rows[node]["{#NAME}"] == listing[mac].get("name", mac)
        assert states[node]["mac"] == mac and "uptime" in states[node] and "num_clients" in states[node]
    unknown = sum(k is None for k in kinds.values())
    ble = sum(k == "ble" for k in kinds.values())
    assert fleet.unmonitored() == Counter({"kind unknown": unknown, "type ble": ble}) - Counter()
    assert len(fleet) == count
    assert fleet.sites_with_unknown_kinds() == ({"s1"} if unknown else set())


def test_a_device_the_inventory_named_first_is_classified_on_its_first_update() -> None:
    fleet = make_fleet(lld_min_interval=0.0, device_types=HOSTED)
    fleet.update("s1", stats("5c5b35000009", 0, type="ap"), 0.0)  # a site with a known device only
    fleet.learn_inventory("s1", {"5c5b35000001": KnownDevice("switch", "core, \"east\"")})
    fleet.update("s1", stats("5c5b35000001", 1), 1.0)
    rows = rows_of(fleet.due(1.0))
    assert rows["mist-switch-5c5b35000001"]["{#NAME}"] == 'core, "east"'
    # A type in the update wins; a name in the update wins over the inventory's.
    fleet.learn_inventory("s1", {"5c5b35000002": KnownDevice("switch", "listed")})
    fleet.update("s1", stats("5c5b35000002", 2, type="gateway", name="told"), 2.0)
    assert rows_of(fleet.due(20.0))["mist-gateway-5c5b35000002"]["{#NAME}"] == "told"


def test_an_inventory_of_a_site_no_longer_subscribed_is_dropped() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    fleet.update("s1", stats("5c5b35000001", 0), 0.0)
    fleet.set_sites({})
    assert fleet.learn_inventory("s1", {"5c5b35000001": KnownDevice("ap", None)}) == 0
    assert len(fleet) == 0 and fleet.sites_with_unknown_kinds() == set()


# -- through the collector, against the Mist test server ----------------------------------------
SITES = {"s1": ("Site One", "o1"), "s2": ("Site Two", "o1")}
ORGS = {"o1": "Org One"}
UNTYPED, TYPED = "5c5b35000001", "5c5b35000002"


def inventory_calls(server: MistServer) -> list[str]:
    return [c for c in server.rest_calls if c.split("?")[0].endswith("/devices")]


@pytest.mark.integration
def test_the_collector_reads_the_inventory_of_sites_with_unknown_devices_once(tmp_path: Path) -> None:
    """An AP whose updates never carry type nor model becomes a host once the inventory names it;
    only its site's inventory is read, once within site_refresh however many updates come."""

    async def scenario() -> None:
        server = MistServer(TOKEN, dict(SITES), dict(ORGS))
        server.devices["s1"] = [
            {"id": f"00000000-0000-0000-1000-{UNTYPED}", "mac": UNTYPED, "type": "ap", "name": 'Lobby, "A"'},
            {"mac": "5c5b350000ff", "type": "switch", "model": "EX4100-48P"},  # never streams
        ]
        async with server, collecting(tmp_path, server, orgs=["o1"], state_interval=0.1) as (collector, out):
            await server.wait_until(lambda: bool(server.subscribers("s1") and server.subscribers("s2")))
            for step in range(5):
                await server.push("s1", stats(UNTYPED, step, num_clients=step))
                await server.push("s2", stats(TYPED, step, type="ap", model="AP45"))
            host = f"mist-ap-{UNTYPED}"
            await server.wait_until(lambda: bool(out.readings(raw_key("ap"), host)))
            await server.wait_until(lambda: len(out.readings(raw_key("ap"))) >= 6)
            assert inventory_calls(server) == ["/api/v1/sites/s1/devices?type=all&limit=1000&page=1"]
            (row,) = [r for d in out.discoveries() for r in d.rows if r["{#NODEID}"] == host][-1:]
            assert row["{#NAME}"] == 'Lobby, "A"'
            assert json.loads(str(out.readings(raw_key("ap"), host)[0].value))["num_clients"] == 4
            await server.wait_until(lambda: '"kind unknown"' not in str(out.values(STATS_KEY)[-1]))
            assert out.errors == []
            # The org and its site list, then the one inventory: all the REST calls, within the budget.
            assert len(server.rest_calls) == collector.directory.rest.calls == 3

    asyncio.run(scenario())


@pytest.mark.integration
def test_a_failing_inventory_is_one_condition_and_the_device_stays_held(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = MistServer(TOKEN, dict(SITES), dict(ORGS), retry_after="0.3")
        server.devices["s1"] = [{"mac": UNTYPED.upper(), "type": "ap"}]
        async with server, collecting(tmp_path, server, orgs=["o1"]) as (_, out):
            await server.wait_until(lambda: bool(server.subscribers("s1")))
            server.rate_limit_next = 3
            await server.push("s1", stats(UNTYPED, 0, num_clients=7))
            await server.wait_until(lambda: server.rate_limit_next == 0)
            assert out.readings(raw_key("ap")) == []  # held, not dropped
            assert set(out.conditions) <= {"device inventory"}
            host = f"mist-ap-{UNTYPED}"
            await server.wait_until(lambda: bool(out.readings(raw_key("ap"), host)))
            assert json.loads(str(out.readings(raw_key("ap"), host)[0].value))["num_clients"] == 7
            failed = [e for e in out.errors if e.startswith("device inventory: ")]
            assert len(failed) == 3 and all("HTTP 429" in e for e in failed)
            assert "device inventory works again" in out.cleared and out.conditions == {}
            # Rate limited: every retry waited for Retry-After, no burst of calls.
            assert len(inventory_calls(server)) == 4

    asyncio.run(scenario())
