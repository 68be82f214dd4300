"""Two sharded Mist collectors against one stand-in Mist cloud (tests/mist_server.py).

Both instances get the same orgs and sites, as an MSP would deploy them, and differ
only in ``shard``: together they must subscribe every site exactly once (an org's sites
with their org), ask the REST API only about their own orgs and configured sites, and say
in their state what they own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.mist_server import MistServer, ap_full
from tests.integration.test_mist_stream import TOKEN, collecting
from trapline.collectors.mist.collector import STATS_KEY
from trapline.collectors.mist.fleet import LLD_KEY
from trapline.collectors.mist.frames import device_stats_channel
from trapline.collectors.mist.shard import shard_of

pytestmark = pytest.mark.integration

# Ids as Mist gives them (UUIDs): six orgs of three sites, and four sites configured by id only.
ORGS = {str(uuid.uuid5(uuid.NAMESPACE_URL, f"org/{i}")): f"MSP customer {i}" for i in range(6)}
ORG_SITES = {
    str(uuid.uuid5(uuid.NAMESPACE_URL, f"{org}/{i}")): (f"{name} site {i}", org)
    for org, name in ORGS.items()
    for i in range(3)
}
LONE_ORG = str(uuid.uuid5(uuid.NAMESPACE_URL, "lone org"))
LONE_SITES = {
    str(uuid.uuid5(uuid.NAMESPACE_URL, f"lone/{i}")): (f"Lone site {i}", LONE_ORG) for i in range(4)
}


def owner(site: str) -> int:
    """The instance of two that takes a site: by its org's id if listed through its org, else by its own."""
    org = ORG_SITES[site][1] if site in ORG_SITES else None
    return shard_of(org or site, 2)


def test_two_instances_split_the_sites_and_report_their_share(tmp_path: Path) -> None:
    everything = ORG_SITES | LONE_SITES
    share = {k: {s for s in everything if owner(s) == k} for k in (1, 2)}
    orgs = {k: {o for o in ORGS if shard_of(o, 2) == k} for k in (1, 2)}
    assert all(orgs.values()) and all(s & LONE_SITES.keys() for s in share.values()), (
        "each instance must get some"
    )

    async def scenario() -> None:
        (tmp_path / "1").mkdir()
        (tmp_path / "2").mkdir()
        config: dict[str, Any] = {"orgs": list(ORGS), "sites": list(LONE_SITES), "state_interval": 0.1}
        async with (
            MistServer(TOKEN, everything, ORGS | {LONE_ORG: "Lone org"}) as server,
            collecting(tmp_path / "1", server, shard="1/2", host="Mist discovery 1", **config) as (one, out1),
            collecting(tmp_path / "2", server, shard="2/2", host="Mist discovery 2", **config) as (two, out2),
        ):
            await server.wait_until(lambda: all(server.subscribers(s) for s in everything))
            # Each site on exactly one connection, and that connection belongs to its shard.
            assert all(len(server.subscribers(s)) == 1 for s in everything)
            for k, collector in ((1, one), (2, two)):
                channels = set().union(*(c.channels for c in collector.connections.values()))
                assert channels == {device_stats_channel(s) for s in share[k]}
            # Orgs and configured sites of the other shard cost no REST call.
            calls = [call.split("?")[0].split("/")[3:] for call in server.rest_calls]
            listed = [org for kind, org, *rest in calls if kind == "orgs" and rest == ["sites"]]
            looked_up = [site for kind, site, *_ in calls if kind == "sites"]
            assert sorted(listed) == sorted(ORGS)  # each once, by its own instance
            assert sorted(looked_up) == sorted(LONE_SITES)
            assert set(one.directory.orgs) == orgs[1] and set(two.directory.orgs) == orgs[2]
            assert set(one.directory.sites) | set(two.directory.sites) == set(LONE_SITES)
            assert not set(one.directory.sites) & set(two.directory.sites)

            # One AP per site: each reaches the LLD of its own instance's discovery host only.
            macs = {site: f"5c5b35{i:06x}" for i, site in enumerate(sorted(everything))}
            for site, mac in macs.items():
                await server.push(site, ap_full(mac, f"ap-{mac}"))

            def announced(out: Any) -> set[str]:
                found = out.discoveries(LLD_KEY)
                return {row["{#SITEID}"] for row in found[-1].rows} if found else set()

            await server.wait_until(lambda: announced(out1) == share[1] and announced(out2) == share[2])

            def last_state(out: Any) -> dict[str, Any]:
                readings = out.readings(STATS_KEY)
                return dict(json.loads(str(readings[-1].value))) if readings else {}

            await server.wait_until(
                lambda: (
                    [last_state(out1).get("devices"), last_state(out2).get("devices")]
                    == [len(share[1]), len(share[2])]
                )
            )
            for k, out in ((1, out1), (2, out2)):
                assert {r.host for r in out.readings(STATS_KEY)} == {f"Mist discovery {k}"}
                state = last_state(out)
                assert state["shard"] == f"{k}/2"
                assert (state["sites"], state["channels"], state["devices"]) == (len(share[k]),) * 3
                assert state["orgs"] == len(orgs[k])
            assert out1.errors == out2.errors == []

    asyncio.run(scenario())


def test_a_site_configured_twice_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Listed by its org and configured by id, a site is hashed both ways: two instances may take it.
    site = next(s for s in ORG_SITES if shard_of(s, 2) == 1)
    org = ORG_SITES[site][1]

    async def scenario() -> None:
        async with (
            MistServer(TOKEN, dict(ORG_SITES), dict(ORGS)) as server,
            collecting(tmp_path, server, shard="1/2", orgs=[org], sites=[site]) as _,
        ):
            await server.wait_until(lambda: f"/api/v1/sites/{site}" in server.rest_calls)
            await server.wait_until(lambda: any(site in r.getMessage() for r in caplog.records))

    with caplog.at_level(logging.WARNING, logger="trapline.collectors.mist.rest"):
        asyncio.run(scenario())
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == f"Mist site {site} is configured by id and through its org {org}: configure it once"
