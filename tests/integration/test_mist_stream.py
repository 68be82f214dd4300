"""The Mist collector against devtools/mist_server.py, which speaks the Mist stream and REST protocol.

The real peer, the Mist cloud, is not reachable from tests; the local server
produces the faults a test needs (refused token, refused subscription, missing
acks, server-side disconnects, HTTP 429) on demand.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from devtools.mist_server import WAIT_LIMIT, MistServer, ap_basic, ap_full
from tests.support.outbox import ListOutbox
from trapline.collectors.mist import MistCollector, build
from trapline.collectors.mist.fleet import RAW_KEY
from trapline.core.config import Section

pytestmark = pytest.mark.integration

TOKEN = "integration-token"
SITES = {"s1": ("Site One", "o1"), "s2": ("Site Two", "o1"), "s3": ("Site Three", "o2")}
ORGS = {"o1": "Org One", "o2": "Org Two"}


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


@asynccontextmanager
async def collecting(
    tmp: Path, server: MistServer, token: str = TOKEN, **config: Any
) -> AsyncIterator[tuple[MistCollector, ListOutbox]]:
    token_file = tmp / "mist.token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    data = {
        "type": "mist",
        "host": "Mist discovery",
        "token_file": str(token_file),
        "stream_url": server.stream_url,
        "rest_url": server.rest_url,
        "retry_min": 0.05,
        "retry_max": 0.4,
        "lld_min_interval": 0,
        "subscribe_timeout": 2.0,
    } | config
    collector = build("test", Section(tmp / "trapline.toml", "collectors.test", data))
    out = ListOutbox()
    task = asyncio.create_task(collector.run(out))
    try:
        yield collector, out
    finally:
        task.cancel()
        # A collector that swallowed the cancel would hang here: fail instead, naming the wait.
        async with asyncio.timeout(WAIT_LIMIT):
            with pytest.raises(asyncio.CancelledError):
                await task


def all_subscribed(server: MistServer, sites: list[str], clients: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        return len(server.clients) == clients and all(server.subscribers(s) for s in sites)

    return check


def raw_states(out: ListOutbox, mac: str) -> list[dict[str, Any]]:
    return [json.loads(str(r.value)) for r in out.readings(RAW_KEY, f"mist-ap-{mac}")]


def test_org_sites_are_found_subscribed_and_streamed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            MistServer(TOKEN, dict(SITES), dict(ORGS)) as server,
            collecting(tmp_path, server, orgs=["o1"]) as (collector, out),
        ):
            await server.wait_until(all_subscribed(server, ["s1", "s2"]))
            assert not server.subscribers("s3")  # another org
            await server.push("s1", ap_full("5c5b35000001", "ap-1"))
            await server.push("s1", ap_basic("5c5b35000001", num_clients=11))
            await server.wait_until(lambda: len(raw_states(out, "5c5b35000001")) == 2)
            first, second = raw_states(out, "5c5b35000001")
            assert (first["num_clients"], second["num_clients"]) == (4, 11)
            assert second["model"] == "AP43"  # merged, not replaced
            (row,) = out.discoveries()[0].rows
            assert row["{#SITENAME}"] == "Site One" and row["{#ORGNAME}"] == "Org One"
            assert out.errors == []
            assert collector.directory.rest.calls == len(server.rest_calls) == 2  # org name + one page

    run(scenario)


def test_reconnect_resubscribes_and_everything_received_is_emitted(tmp_path: Path) -> None:
    """What the server delivered before it dropped the stream and after it came back all arrives.

    Mist does not replay what was sent while a client was away, so "nothing
    lost" means: every update the collector received is emitted, and the
    stream resumes on every channel after the reconnect.
    """

    async def scenario() -> None:
        async with (
            MistServer(TOKEN, dict(SITES), dict(ORGS)) as server,
            collecting(tmp_path, server, sites=["s1", "s2"]) as (_, out),
        ):
            await server.wait_until(all_subscribed(server, ["s1", "s2"]))
            await server.push("s1", ap_full("5c5b35000001", "ap-1", num_clients=0))
            for count in range(1, 4):
                await server.push("s1", ap_basic("5c5b35000001", num_clients=count))
            await server.drop_all()  # right after the sends: frames in flight must still be used
            await server.wait_until(all_subscribed(server, ["s1", "s2"]))
            assert server.subscriptions.count("/sites/s1/stats/devices") == 2
            for count in range(4, 7):
                await server.push("s1", ap_basic("5c5b35000001", num_clients=count))
            await server.push("s2", ap_full("5c5b35000002", "ap-2"))
            await server.wait_until(
                lambda: len(raw_states(out, "5c5b35000001")) == 7 and raw_states(out, "5c5b35000002")
            )
            assert [s["num_clients"] for s in raw_states(out, "5c5b35000001")] == list(range(7))
            assert out.errors == []

    run(scenario)


def test_fragmented_binary_and_plain_messages_are_used_in_order(tmp_path: Path) -> None:
    """The collector takes messages straight from the websocket parser: fragments and binary frames too."""

    async def scenario() -> None:
        async with (
            MistServer(TOKEN, dict(SITES), dict(ORGS)) as server,
            collecting(tmp_path, server, sites=["s1"]) as (_, out),
        ):
            await server.wait_until(all_subscribed(server, ["s1"]))
            await server.push_fragmented("s1", ap_full("5c5b35000001", "ap-1", num_clients=0), pieces=5)
            update = json.dumps(ap_basic("5c5b35000001", num_clients=1))
            binary = {"event": "data", "channel": "/sites/s1/stats/devices", "data": update}
            await server.push_raw(json.dumps(binary).encode())
            await server.push("s1", ap_basic("5c5b35000001", num_clients=2))
            await server.push_fragmented("s1", ap_basic("5c5b35000001", num_clients=3), pieces=3)
            await server.wait_until(lambda: len(raw_states(out, "5c5b35000001")) == 4)
            assert [s["num_clients"] for s in raw_states(out, "5c5b35000001")] == [0, 1, 2, 3]
            assert raw_states(out, "5c5b35000001")[-1]["name"] == "ap-1"
            assert out.errors == []

    run(scenario)


@pytest.mark.parametrize(("compression", "negotiated"), [("deflate", ["permessage-deflate"]), ("none", [])])
def test_compression_is_offered_only_when_configured(
    tmp_path: Path, compression: str, negotiated: list[str]
) -> None:
    async def scenario() -> None:
        async with (
            MistServer(TOKEN, dict(SITES), dict(ORGS)) as server,
            collecting(tmp_path, server, sites=["s1"], compression=compression) as (_, out),
        ):
            await server.wait_until(all_subscribed(server, ["s1"]))
            (client,) = server.clients
            assert [e.name for e in client.ws.protocol.extensions] == negotiated
            for count in range(3):
                await server.push("s1", ap_full("5c5b35000001", "ap-1", num_clients=count))
            await server.wait_until(lambda: len(raw_states(out, "5c5b35000001")) == 3)
            assert [s["num_clients"] for s in raw_states(out, "5c5b35000001")] == [0, 1, 2]
            assert out.errors == []

    run(scenario)


def test_a_refused_token_is_one_clear_error_and_retried_with_backoff(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with MistServer("the-right-token", dict(SITES), dict(ORGS)) as server:
            started = time.monotonic()
            async with collecting(tmp_path, server, token="a-wrong-token", sites=["s1"]) as (collector, out):
                await server.wait_until(lambda: server.refused_upgrades >= 4)
                elapsed = time.monotonic() - started
            # Every refusal is counted; all of them are one condition, which the agent's log
            # reports once when it starts (tests/test_config.py, the ThrottledLog tests).
            assert sum("refused the API token (HTTP 401)" in e for e in out.errors) >= 4
            (stream_down,) = (c for c in out.conditions if c.endswith("down"))
            assert "refused the API token (HTTP 401)" in out.conditions[stream_down]
            # The REST lookup with the same token is a condition of its own, whatever its delay.
            assert "HTTP 401" in out.conditions["site lookup"]
            assert not any("a-wrong-token" in e for e in out.errors)
            # Never a tight loop: each retry waits at least half of retry_min (jitter floor).
            assert collector.connections[0].attempts <= elapsed / 0.025 + 2
            assert collector.connections[0].backoff.failures >= 4

    run(scenario)


def test_subscribe_failed_is_reported_per_channel_and_others_keep_flowing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            MistServer(TOKEN, dict(SITES), dict(ORGS)) as server,
            collecting(tmp_path, server, sites=["s1", "gone-1", "gone-2"]) as (collector, out),
        ):
            # The REST lookups of the two unknown sites fail too: wait for the refusals themselves.
            def refusals() -> list[str]:
                return sorted(e for e in out.errors if "refused the subscription" in e)

            await server.wait_until(lambda: len(refusals()) >= 2)
            await server.wait_until(all_subscribed(server, ["s1"]))
            await server.push("s1", ap_full("5c5b35000001", "ap-1"))
            await server.wait_until(lambda: bool(raw_states(out, "5c5b35000001")))
            refused = refusals()
            assert len(refused) == 2
            assert "/sites/gone-1/stats/devices" in refused[0]
            assert "/sites/gone-2/stats/devices" in refused[1]
            assert set(collector.connections[0].refused) == {
                "/sites/gone-1/stats/devices",
                "/sites/gone-2/stats/devices",
            }

    run(scenario)


def test_a_missing_ack_is_an_error_naming_the_channel_and_a_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = MistServer(TOKEN, dict(SITES), dict(ORGS), silent_channels={"/sites/s2/stats/devices"})
        async with (
            server,
            collecting(tmp_path, server, sites=["s1", "s2"], subscribe_timeout=0.3) as (
                _,
                out,
            ),
        ):
            await server.wait_until(lambda: server.subscriptions.count("/sites/s2/stats/devices") >= 2)
            (error,) = [e for e in out.errors if "no subscribe ack" in e]
            assert "/sites/s2/stats/devices" in error

    run(scenario)


def test_channels_are_spread_over_connections(tmp_path: Path) -> None:
    async def scenario() -> None:
        sites = {f"site-{i}": (f"Site {i}", "o1") for i in range(5)}
        async with (
            MistServer(TOKEN, sites, dict(ORGS)) as server,
            collecting(tmp_path, server, orgs=["o1"], channels_per_connection=2) as (collector, out),
        ):
            await server.wait_until(all_subscribed(server, list(sites), clients=3))
            assert sorted(len(c.channels) for c in server.clients) == [1, 2, 2]
            assert len(collector.connections) == 3
            for i, site in enumerate(sites):
                await server.push(site, ap_full(f"5c5b350000{i:02x}", f"ap-{i}"))
            await server.wait_until(lambda: len(out.readings(RAW_KEY)) == 5)
            assert len(out.discoveries()[-1].rows) == 5

    run(scenario)


def test_rest_429_backs_off_and_recovers(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = MistServer(TOKEN, dict(SITES), dict(ORGS), rate_limit_next=2, retry_after="0.2")
        async with server, collecting(tmp_path, server, orgs=["o1", "o2"]) as (_, out):
            await server.wait_until(all_subscribed(server, ["s1", "s2", "s3"]))
            limited = [e for e in out.errors if "HTTP 429" in e]
            assert len(limited) == 2  # each attempt stopped at the first 429, no burst of calls
            assert len(server.rest_calls) == 2 + 4  # two refused, then org + sites for each org

    run(scenario)
