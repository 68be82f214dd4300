"""The Zabbix destination: verdicts per value, LLD order, failure localisation, config.

Unit tests run against the fake trapper of test_zabbix_client.py (counts like
Zabbix, misbehaves on demand); integration tests at the end use a real Zabbix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.localzabbix import LocalZabbix
from tests.support.peers import free_port
from tests.support.zabbix_fixtures import (
    FLOAT,
    TEXT,
    TrapperHost,
    create_trapper_host,
    history,
    unique_name,
    wait_until,
)
from tests.test_zabbix_client import FakeZabbix, fake_zabbix
from trapline.core.config import ConfigError, Secret, Section
from trapline.core.model import Discovery, Item, Reading
from trapline.core.plugin import Delivery, Spooled
from trapline.exporters.zabbix import build_destinations
from trapline.exporters.zabbix.client import ClusterClient, Endpoint, SendError, parse_cluster
from trapline.exporters.zabbix.destination import NOT_ACCEPTED, ZabbixDestination, _BoundedSet
from trapline.exporters.zabbix.diagnose import ApiDiagnoser, Ident, reason_for
from trapline.exporters.zabbix.protocol import Reply, parse_reply, unpack_frame

pytest_plugins = ["tests.support.zabbix_fixtures"]

CLOCK = 1_700_000_000


def spool(items: list[Item]) -> list[Spooled]:
    return [Spooled(i, item, CLOCK, 0) for i, item in enumerate(items)]


def spool_at(items: list[Item]) -> list[Spooled]:
    return [Spooled(i, item, time.time(), 0) for i, item in enumerate(items)]


def readings(host: str, keys: list[str], per_key: int = 1) -> list[Item]:
    return [Reading(host, k, n, CLOCK + n, n) for n in range(per_key) for k in keys]


def destination(server: FakeZabbix, **kwargs: Any) -> ZabbixDestination:
    kwargs.setdefault("resend_delay", 0)
    return ZabbixDestination("test", ClusterClient([server.endpoint], timeout=2), **kwargs)


def deliver(server_kwargs: Mapping[str, Any], batches: list[list[Spooled]], **kwargs: Any) -> list[Delivery]:
    async def scenario() -> list[Delivery]:
        async with fake_zabbix(**server_kwargs) as server:
            dest = destination(server, **kwargs)
            out = [await dest.deliver(batch) for batch in batches]
            await dest.close()
            return out

    return asyncio.run(scenario())


def test_all_accepted_with_counters() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            dest = destination(server, batch_size=100, concurrency=1)
            batch = spool(readings("h", [f"k{i}" for i in range(250)]))
            first = await dest.deliver(batch)
            # First contact: one request per key, so each verdict is exact.
            assert sorted(first.accepted) == list(range(250))
            assert [len(r) for r in server.requests] == [1] * 250
            server.requests.clear()
            outcome = await dest.deliver(batch)
            assert sorted(outcome.accepted) == list(range(250))
            assert not outcome.retry and outcome.unreachable is None
            # Known-good keys travel together in requests of batch_size.
            assert [len(r) for r in server.requests] == [100, 100, 50]
            stats = dest.stats.as_dict()
            assert (stats["values_sent"], stats["values_processed"], stats["values_failed"]) == (500, 500, 0)
            assert (stats["requests"], stats["errors"]) == (253, 0)
            assert stats["average_latency_seconds"] > 0

    asyncio.run(scenario())


def test_values_keep_their_own_clock_and_ns() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            item = Reading("h", "k", 1.5, 1_650_000_000, 123_456_789)
            await destination(server).deliver(spool([item]))
            assert server.stored == [("h", "k", "1.5", 1_650_000_000, 123_456_789)]

    asyncio.run(scenario())


def test_values_of_one_item_never_travel_in_parallel_or_out_of_order() -> None:
    """Zabbix evaluates values in arrival order: one item's values go in one lane, in order."""

    async def scenario() -> None:
        async with fake_zabbix(delay=0.02) as server:
            dest = destination(server, batch_size=10, concurrency=4)
            keys = [f"k{i}" for i in range(8)]
            await dest.deliver(spool(readings("h", keys)))  # keys now known
            server.requests.clear()
            outcome = await dest.deliver(spool(readings("h", keys, per_key=30)))
            assert len(outcome.accepted) == 240
            arrival: dict[str, list[int]] = {}
            for request in server.requests:
                for value in request:
                    arrival.setdefault(str(value["key"]), []).append(int(str(value["ns"])))
            assert all(ns == sorted(ns) and len(ns) == 30 for ns in arrival.values())
            assert max(len(r) for r in server.requests) <= 10
            # several lanes were used: the work was spread, not serialised
            assert server.max_busy > 1

    asyncio.run(scenario())


def test_discovery_goes_first_in_requests_of_its_own() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            lld = Discovery("h", "fs.discovery", ({"{#FS}": "/"},), CLOCK)
            items: list[Item] = [*readings("h", ["a", "b"]), lld, *readings("h", ["c"])]
            dest = destination(server)
            await dest.deliver(spool(readings("h", ["a", "b", "c"])))  # keys now known
            server.requests.clear()
            outcome = await dest.deliver(spool(items))
            assert sorted(outcome.accepted) == [0, 1, 2, 3]
            assert [[v["key"] for v in r] for r in server.requests] == [["fs.discovery"], ["a", "b", "c"]]
            assert json.loads(str(server.requests[0][0]["value"])) == {"data": [{"{#FS}": "/"}]}

    asyncio.run(scenario())


def test_refused_values_are_found_and_kept_for_retry(caplog: pytest.LogCaptureFixture) -> None:
    keys = [f"k{i}" for i in range(40)]
    missing = {"k3", "k17", "k18", "k39"}
    batch = spool(readings("h", keys, per_key=3))
    with caplog.at_level(logging.WARNING):
        [outcome] = deliver({"accepts": lambda h, k: k not in missing}, [batch])
    refused = {s.id for s in batch if isinstance(s.item, Reading) and s.item.key in missing}
    assert set(outcome.retry) == refused
    assert set(outcome.accepted) == {s.id for s in batch} - refused
    assert all(why == NOT_ACCEPTED for why in outcome.retry.values())
    assert outcome.unreachable is None
    assert "12 of 120 values not accepted" in caplog.text and "h: k17, k18, k3, k39" in caplog.text


def test_known_classes_are_not_mixed_on_the_next_round() -> None:
    async def scenario() -> None:
        async with fake_zabbix(accepts=lambda h, k: k != "new") as server:
            dest = destination(server)
            await dest.deliver(spool(readings("h", ["old1", "new", "old2"])))
            server.requests.clear()
            outcome = await dest.deliver(spool(readings("h", ["old1", "new", "old2", "other"])))
            # good keys, failing keys and unknown keys travel in separate requests:
            # no bisection is needed, so nothing is sent twice.
            assert sorted(sorted(str(v["key"]) for v in r) for r in server.requests) == [
                ["new"],
                ["old1", "old2"],
                ["other"],
            ]
            assert set(outcome.retry) == {1}

    asyncio.run(scenario())


@settings(max_examples=40, deadline=None)
@given(
    keys=st.lists(st.sampled_from([f"k{i}" for i in range(30)]), min_size=1, max_size=120),
    refused=st.sets(st.sampled_from([f"k{i}" for i in range(30)])),
    batch_size=st.integers(1, 50),
)
def test_every_value_gets_the_right_verdict(keys: list[str], refused: set[str], batch_size: int) -> None:
    """Property: accepted == processed by the server, retry == refused, nothing lost or invented."""
    sent: list[tuple[str, int]] = []

    class CountingServer:
        async def send(self, framed: bytes) -> Reply:
            data = json.loads(unpack_frame(framed, 1 << 30))["data"]
            sent.extend((v["key"], v["ns"]) for v in data)
            failed = sum(v["key"] in refused for v in data)
            total = len(data)
            info = f"processed: {total - failed}; failed: {failed}; total: {total}; seconds spent: 0"
            return parse_reply(json.dumps({"response": "success", "info": info}).encode())

    batch = [Spooled(n, Reading("h", k, n, CLOCK, n), CLOCK, 0) for n, k in enumerate(keys)]
    dest = ZabbixDestination("prop", CountingServer(), batch_size=batch_size, concurrency=3, resend_delay=0)
    expected_refused = {n for n, k in enumerate(keys) if k in refused}
    # Round 1: every key is new (requests of one key); round 2: accepted keys are known
    # and packed together (items split where a request is full).
    for _ in range(2):
        sent.clear()
        outcome = asyncio.run(dest.deliver(batch))
        assert set(outcome.retry) == expected_refused
        assert sorted(outcome.accepted) == sorted(set(range(len(keys))) - expected_refused)
        # Re-sends stay bounded: each value travels at most once per bisection level.
        assert len(sent) <= len(keys) * (2 + len(keys).bit_length())


def test_key_cache_forgets_the_first_learned_keys_when_full() -> None:
    known = _BoundedSet(limit=2)
    for ident in [("h", "a"), ("h", "b"), ("h", "a"), ("h", "c")]:
        known.add(ident)
    assert ("h", "a") not in known and list(known) == [("h", "b"), ("h", "c")]
    known.discard(("h", "b"))
    known.discard(("h", "never"))
    assert list(known) == [("h", "c")]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("garbage", "bad reply"),
        ("truncated", "truncated"),
        ("hang", "no answer within"),
        ("reset", "connection"),
        ("failed", "server refused the request: cannot parse"),
    ],
)
def test_faults_keep_the_whole_batch(fault: str, reason: str) -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            dest = ZabbixDestination("test", ClusterClient([server.endpoint], timeout=0.3))
            batch = spool(readings("h", ["a", "b"]))
            await dest.deliver(batch)  # keys now known: the next batch is one request
            dest.stats.errors = 0
            server.faults.append(fault)
            outcome = await dest.deliver(batch)
            assert not outcome.accepted and not outcome.rejected and not outcome.retry
            assert outcome.unreachable is not None and reason in outcome.unreachable
            assert dest.stats.errors == 1
            retried = await dest.deliver(batch)  # the same rows go again and arrive
            assert sorted(retried.accepted) == [0, 1]

    asyncio.run(scenario())


@pytest.mark.parametrize("fault", ["garbage", "truncated", "reset", "failed"])
def test_a_request_without_verdict_ends_the_round_and_refuses_nothing(fault: str) -> None:
    """The values of a request that failed in transit may or may not be stored: they get no
    verdict (never counted as refused, so they never age), and no further request is sent in
    that round (issue 17: up to 40 connections per round against a failing server)."""

    async def scenario() -> None:
        async with fake_zabbix() as server:
            dest = destination(server, batch_size=2, concurrency=2)
            keys = [f"k{i}" for i in range(16)]
            await dest.deliver(spool(readings("h", keys)))  # keys now known: 8 requests of 2
            sent_before, stored_before = len(server.requests), len(server.stored)
            server.faults += ["", fault]
            outcome = await dest.deliver(spool(readings("h", keys)))
            assert outcome.unreachable is not None
            assert not outcome.retry and not outcome.rejected
            assert dest.stats.values_failed == 0
            # Two lanes: the failing request and at most the ones the other lane sent before it
            # learnt of the failure; the accepted values are exactly those the server stored.
            assert len(server.requests) - sent_before <= 3
            assert len(outcome.accepted) == len(server.stored) - stored_before

    asyncio.run(scenario())


def test_unreachable_server_sets_unreachable() -> None:
    async def scenario() -> Delivery:
        dest = ZabbixDestination("down", ClusterClient([Endpoint("127.0.0.1", free_port())], timeout=1))
        return await dest.deliver(spool(readings("h", ["a"])))

    outcome = asyncio.run(scenario())
    assert outcome.unreachable is not None and "cannot connect" in outcome.unreachable
    assert not outcome.retry and not outcome.accepted


def test_requests_run_concurrently_up_to_the_limit() -> None:
    async def scenario() -> None:
        async with fake_zabbix(delay=0.2) as server:
            dest = destination(server, batch_size=10, concurrency=3)
            outcome = await dest.deliver(spool(readings("h", [f"k{i}" for i in range(100)])))
            assert len(outcome.accepted) == 100
            assert server.max_busy == 3

    asyncio.run(scenario())


def test_diagnosis_is_logged_and_used_as_reason(caplog: pytest.LogCaptureFixture) -> None:
    class StubDiagnoser:
        def __init__(self) -> None:
            self.known: dict[Ident, str] = {}
            self.asked: list[set[Ident]] = []

        def cached(self, ident: Ident) -> str | None:
            return self.known.get(ident)

        async def explain(self, samples: Mapping[Ident, object]) -> None:
            self.asked.append(set(samples))
            self.known.update((i, "item 'gone' is disabled") for i in samples)

    async def scenario() -> None:
        async with fake_zabbix(accepts=lambda h, k: k != "gone") as server:
            stub = StubDiagnoser()
            dest = destination(server, diagnoser=stub)
            first = await dest.deliver(spool(readings("h", ["ok", "gone"])))
            await asyncio.sleep(0)  # let the background diagnosis run
            await dest.close()
            assert first.retry == {1: NOT_ACCEPTED}
            assert stub.asked == [{("h", "gone")}]
            second = await dest.deliver(spool(readings("h", ["ok", "gone"])))
            assert second.retry == {1: f"{NOT_ACCEPTED}: item 'gone' is disabled"}

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("host", "item", "sample", "expected"),
    [
        (None, None, "1", "host 'h' does not exist"),
        ({"status": "1"}, None, "1", "host 'h' is disabled"),
        ({"status": "0", "proxy_hostid": "10500"}, None, "1", "monitored by a proxy (id 10500)"),
        ({"status": "0", "monitored_by": "2", "proxyid": "0"}, None, "1", "monitored by a proxy"),
        ({"status": "0", "proxy_hostid": "0"}, None, "1", "item 'k' does not exist"),
        ({"status": "0"}, {"status": "1", "type": "2"}, "1", "item 'k' is disabled"),
        ({"status": "0"}, {"status": "0", "type": "0"}, "1", "not a trapper item (type Zabbix agent)"),
        (
            {"status": "0"},
            {"status": "0", "type": "2", "state": "1", "error": "Value of type"},
            "x",
            "unsupported: Value of type",
        ),
        ({"status": "0"}, {"status": "0", "type": "2", "value_type": "3"}, "1.5", "does not fit"),
        ({"status": "0"}, {"status": "0", "type": "2", "trapper_hosts": "10.0.0.1"}, "1", "trapper_hosts"),
        ({"status": "0"}, {"status": "0", "type": "2", "value_type": "0"}, "1.5", "not yet in the server's"),
    ],
)
def test_diagnosis_reasons(
    host: dict[str, str] | None, item: dict[str, str] | None, sample: str, expected: str
) -> None:
    assert expected in reason_for(("h", "k"), host, item, sample)


# -- configuration --------------------------------------------------------------


def section(data: dict[str, Any], tmp_path: Path) -> Section:
    return Section(tmp_path / "trapline.toml", "zabbix", data)


def test_build_one_destination_per_server_entry(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    token.chmod(0o600)
    dests = build_destinations(
        section(
            {
                "servers": ["a;b:10052", "[::1]:10053"],
                "batch_size": 100,
                "concurrency": 2,
                "compress": True,
                "timeout": 3,
                "api_url": "http://zabbix/api_jsonrpc.php",
                "api_token_file": "token",
            },
            tmp_path,
        )
    )
    assert [d.name for d in dests] == ["zabbix[a;b:10052]", "zabbix[[::1]:10053]"]
    first = dests[0]
    assert isinstance(first, ZabbixDestination)
    assert (first.batch_size, first.compress, first.diagnoser is not None) == (100, True, True)
    assert isinstance(first.client, ClusterClient)
    assert [str(n) for n in first.client.nodes] == ["a:10051", "b:10052"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, r"\[zabbix\].servers: missing"),
        ({"servers": []}, "at least one server"),
        ({"servers": ["a:x"]}, r"\[zabbix\].servers\[0\]: bad port"),
        ({"servers": ["a"], "batch_sise": 5}, r"batch_sise: unknown key"),
        ({"servers": ["a"], "batch_size": 0}, r"batch_size: expected an integer >= 1"),
        ({"servers": ["a"], "tls_ca_file": "nope.pem"}, r"tls_ca_file: no such file"),
        ({"servers": ["a"], "api_token_file": "t"}, r"api_token_file: given without api_url"),
        ({"servers": ["a"], "api_url": "http://z"}, r"api_token_file: missing"),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        build_destinations(section(data, tmp_path))
    assert "trapline.toml" in str(caught.value)


def test_api_password_file_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("zabbix")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        build_destinations(
            section(
                {
                    "servers": ["a"],
                    "api_url": "http://z",
                    "api_user": "Admin",
                    "api_password_file": "password",
                },
                tmp_path,
            )
        )


# -- integration: a real Zabbix server --------------------------------------------

# Recent enough for the server to keep (values older than an item's history period are not stored).
RECENT = int(time.time()) - 600


def real_destination(stack: LocalZabbix, **kwargs: Any) -> ZabbixDestination:
    return ZabbixDestination(
        f"zabbix[{stack.trapper_address}]",
        ClusterClient(parse_cluster(stack.trapper_address), timeout=10),
        **kwargs,
    )


def deliver_until_accepted(
    dest: ZabbixDestination, batch: list[Spooled], wanted: set[int], timeout: float, pause: float = 0.5
) -> Delivery:
    """Re-deliver what is still retried, like the pipeline does, until ``wanted`` is accepted."""
    merged = Delivery()
    pending = list(batch)
    deadline = time.monotonic() + timeout
    while pending:
        outcome = asyncio.run(dest.deliver(pending))
        assert outcome.unreachable is None, outcome.unreachable
        merged.accepted += outcome.accepted
        merged.retry = dict(outcome.retry)
        if wanted <= set(merged.accepted) or time.monotonic() > deadline:
            break
        pending = [s for s in pending if s.id in outcome.retry]
        time.sleep(pause)
    return merged


@pytest.mark.integration
def test_real_values_land_with_their_own_clock_and_ns(zabbix: LocalZabbix) -> None:
    host = create_trapper_host(zabbix, {"t.temp": FLOAT, "t.state": TEXT})
    items: list[Item] = [
        Reading(host.name, "t.temp", 21.5, RECENT, 111_111_111),
        Reading(host.name, "t.temp", 22, RECENT + 1, 5),
        Reading(host.name, "t.state", 'ok "quoted" é', RECENT + 2, 999_999_999),
    ]
    dest = real_destination(zabbix, compress=True)
    outcome = deliver_until_accepted(dest, spool_at(items), {0, 1, 2}, timeout=10)
    assert sorted(outcome.accepted) == [0, 1, 2]
    api = zabbix.api()
    temps = wait_until(
        lambda: len(rows := history(api, host.itemids["t.temp"], FLOAT)) == 2 and rows,
        what="two float values in history",
    )
    assert [(r["clock"], r["ns"], float(r["value"])) for r in temps] == [
        (str(RECENT), "111111111", 21.5),
        (str(RECENT + 1), "5", 22.0),
    ]
    texts = wait_until(lambda: history(api, host.itemids["t.state"], TEXT), what="the text value")
    assert [(r["clock"], r["ns"], r["value"]) for r in texts] == [
        (str(RECENT + 2), "999999999", 'ok "quoted" é')
    ]


@pytest.mark.integration
def test_real_missing_keys_are_retried_and_the_rest_stored_once(zabbix: LocalZabbix) -> None:
    host = create_trapper_host(zabbix, {f"t.k{i}": FLOAT for i in range(8)})
    keys = [f"t.k{i}" for i in range(8)] + ["t.later", "t.never"]
    items = [Reading(host.name, k, n, RECENT + n, n) for n in range(3) for k in keys]
    items.append(Reading(unique_name("no-such-host"), "t.k0", 1, RECENT, 0))
    batch = spool_at(items)
    refused = {
        s.id
        for s in batch
        if isinstance(s.item, Reading) and (s.item.key in ("t.later", "t.never") or s.item.host != host.name)
    }
    dest = real_destination(zabbix, batch_size=250)
    outcome = deliver_until_accepted(dest, batch, {s.id for s in batch} - refused, timeout=10)
    assert set(outcome.retry) == refused
    assert set(outcome.accepted) == {s.id for s in batch} - refused
    # The item appears later (as after LLD): its retried values then get in.
    api = zabbix.api()
    later = api.item.create(hostid=host.hostid, name="later", key_="t.later", type=2, value_type=FLOAT)
    zabbix.config_cache_reload()
    retried = [s for s in batch if s.id in refused]
    wanted = {s.id for s in retried if isinstance(s.item, Reading) and s.item.key == "t.later"}
    again = deliver_until_accepted(dest, retried, wanted, timeout=10)
    assert set(again.accepted) == wanted
    # Nothing accepted was sent twice: history holds each value once.
    rows = wait_until(lambda: len(r := history(api, later["itemids"][0], FLOAT)) == 3 and r, what="t.later")
    assert [r["clock"] for r in rows] == [str(RECENT + n) for n in range(3)]
    for itemid in host.itemids.values():
        got = wait_until(lambda i=itemid: history(api, i, FLOAT), what="values")
        assert len(got) == 3, [(r["clock"], r["ns"], r["value"]) for r in got]


def create_lld_host(stack: LocalZabbix) -> tuple[TrapperHost, Any]:
    api = stack.api()
    host = create_trapper_host(stack, {}, api=api, reload=False)
    rule = api.discoveryrule.create(
        hostid=host.hostid, name="things", key_="t.discovery", type=2, lifetime="1d"
    )
    api.itemprototype.create(
        hostid=host.hostid,
        ruleid=rule["itemids"][0],
        name="value of {#NAME}",
        key_="t.value[{#NAME}]",
        type=2,
        value_type=FLOAT,
    )
    stack.config_cache_reload()
    return host, api


def lld_batch(host: str) -> list[Spooled]:
    return spool_at(
        [
            Reading(host, "t.value[a]", 1.5, RECENT, 1),
            Discovery(host, "t.discovery", ({"{#NAME}": "a"}, {"{#NAME}": "b"}), RECENT),
            Reading(host, "t.value[b]", 2.5, RECENT, 2),
        ]
    )


def discovered(api: Any, hostid: str) -> bool:
    return len(api.item.get(hostids=[hostid], search={"key_": "t.value["}, output=["itemid"])) == 2


@pytest.mark.integration
def test_real_lld_then_data_after_a_reload(zabbix: LocalZabbix) -> None:
    host, api = create_lld_host(zabbix)
    dest = real_destination(zabbix)
    batch = lld_batch(host.name)
    first = deliver_until_accepted(dest, batch, {1}, timeout=10)
    assert 1 in first.accepted and set(first.retry) == {0, 2}  # data before its items exist
    wait_until(lambda: discovered(api, host.hostid), what="LLD to create the items")
    zabbix.config_cache_reload()
    retried = [s for s in batch if s.id in first.retry]
    assert sorted(deliver_until_accepted(dest, retried, {0, 2}, timeout=10).accepted) == [0, 2]


@pytest.mark.integration
def test_real_lld_data_arrives_after_the_default_60s_config_sync(zabbix60: LocalZabbix) -> None:
    """No reload: the retried values get in once the server's own sync (60 s) sees the new items."""
    assert zabbix60.cache_update_frequency == 60
    host, api = create_lld_host(zabbix60)
    dest = real_destination(zabbix60)
    batch = lld_batch(host.name)
    first = deliver_until_accepted(dest, batch, {1}, timeout=10)
    assert 1 in first.accepted and set(first.retry) == {0, 2}
    retried = [s for s in batch if s.id in first.retry]
    later = deliver_until_accepted(dest, retried, {0, 2}, timeout=90, pause=2.0)
    assert sorted(later.accepted) == [0, 2]
    rows = wait_until(
        lambda: history(
            api, api.item.get(hostids=[host.hostid], filter={"key_": "t.value[a]"})[0]["itemid"], FLOAT
        ),
        what="t.value[a] in history",
    )
    assert [(r["clock"], r["ns"]) for r in rows] == [(str(RECENT), "1")]


@pytest.mark.integration
def test_real_diagnosis_through_the_api(zabbix: LocalZabbix, caplog: pytest.LogCaptureFixture) -> None:
    host = create_trapper_host(zabbix, {"t.ok": FLOAT, "t.off": FLOAT}, reload=False)
    api = zabbix.api()
    api.item.update(itemid=host.itemids["t.off"], status=1)
    api.item.create(
        hostid=host.hostid, name="calc", key_="t.calc", type=15, params="1+1", delay="1h", value_type=FLOAT
    )
    zabbix.config_cache_reload()
    ghost = unique_name("ghost")
    diagnoser = ApiDiagnoser(zabbix.api_url, user="Admin", password=Secret("zabbix"))
    dest = real_destination(zabbix, diagnoser=diagnoser)
    batch = spool_at(
        [Reading(host.name, k, 1, RECENT, 0) for k in ("t.ok", "t.off", "t.calc", "t.none")]
        + [Reading(ghost, "t.ok", 1, RECENT, 0)]
    )

    async def scenario() -> Delivery:
        first = await dest.deliver(batch)
        await asyncio.gather(*dest._diagnoses)  # wait for the background diagnosis
        return first

    with caplog.at_level(logging.WARNING):
        deliver_until_accepted(dest, batch[:1], {0}, timeout=10)  # the config sync race of a fresh host
        first = asyncio.run(scenario())
    assert set(first.retry) == {1, 2, 3, 4}
    assert "item 't.off' is disabled" in (diagnoser.cached((host.name, "t.off")) or "")
    assert "not a trapper item (type calculated)" in (diagnoser.cached((host.name, "t.calc")) or "")
    assert "item 't.none' does not exist" in (diagnoser.cached((host.name, "t.none")) or "")
    assert "does not exist" in (diagnoser.cached((ghost, "t.ok")) or "")
    assert f"host {host.name}, keys t.off: item 't.off' is disabled" in caplog.text
    second = asyncio.run(dest.deliver(batch[1:2]))
    assert second.retry == {1: f"{NOT_ACCEPTED}: item 't.off' is disabled"}


# Item keys as the Zabbix key grammar allows them ("Item key format" in the manual): a name,
# then bracketed parameters, quoted ones holding commas, quotes and any Unicode.
_PARAM = st.text(st.characters(exclude_categories=("Cs",), exclude_characters='"\\'), max_size=6)
_KEYS = st.lists(
    st.tuples(st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True), _PARAM).map(
        lambda parts: f'{parts[0]}["{parts[1]}",x]'
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(
    keys=_KEYS,
    refused=st.sets(st.integers(0, 24), max_size=5),
    faults=st.lists(st.booleans(), max_size=40),
    batch_size=st.integers(1, 6),
    concurrency=st.integers(1, 4),
)
def test_property_transport_faults_never_refuse_and_never_double(
    keys: list[str], refused: set[int], faults: list[bool], batch_size: int, concurrency: int
) -> None:
    """Whatever calls fail in transit (``faults``, one per request, True = no reply): a value
    is only ever in ``retry`` if the server counted it failed, no request starts in a round
    after more than the other lanes' in-flight ones, and repeating rounds until every value
    is settled stores each exactly once."""
    refused_keys = {keys[i] for i in refused if i < len(keys)}
    stored: list[tuple[str, int]] = []
    calls_after_fault: list[int] = []

    class FlakyServer:
        async def send(self, framed: bytes) -> Reply:
            await asyncio.sleep(0)  # let the lanes interleave like real I/O
            if calls_after_fault:
                calls_after_fault[-1] += 1
            if faults and faults.pop(0):
                calls_after_fault.append(0)
                raise SendError("connection closed without a reply")
            data = json.loads(unpack_frame(framed, 1 << 30))["data"]
            failed = sum(v["key"] in refused_keys for v in data)
            stored.extend((v["key"], v["ns"]) for v in data if v["key"] not in refused_keys)
            total = len(data)
            info = f"processed: {total - failed}; failed: {failed}; total: {total}; seconds spent: 0"
            return parse_reply(json.dumps({"response": "success", "info": info}).encode())

    readings_ = [Reading("h", k, n, CLOCK, n) for n, k in enumerate(keys * 2)]
    pending = [Spooled(n, r, CLOCK, 0) for n, r in enumerate(readings_)]
    dest = ZabbixDestination("prop", FlakyServer(), batch_size=batch_size, concurrency=concurrency,
                             resend_delay=0)
    accepted: list[int] = []
    for _ in range(60):  # each round settles something once the faults run out
        calls_after_fault.clear()
        outcome = asyncio.run(dest.deliver(pending))
        assert all(pending_item.item.key in refused_keys
                   for pending_item in pending if pending_item.id in outcome.retry)
        assert (outcome.unreachable is not None) == bool(calls_after_fault)
        if calls_after_fault:
            assert calls_after_fault[0] <= concurrency - 1
        accepted += outcome.accepted
        pending = [s for s in pending if s.id not in outcome.accepted and s.id not in outcome.retry]
        if not pending:
            break
    assert not pending
    expected = [(r.key, r.ns) for r in readings_ if r.key not in refused_keys]
    assert sorted(stored) == sorted(expected)  # each stored once: nothing lost, nothing doubled
    assert sorted(accepted) == sorted(n for n, r in enumerate(readings_) if r.key not in refused_keys)
