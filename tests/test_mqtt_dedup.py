"""The bridge forwards a redelivered message once: ids remembered in a bounded window, counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

from tests.support.outbox import ListOutbox
from trapline.collectors.mqtt_bridge.collector import AgentSeen, MqttBridge, RecentIds, build
from trapline.core.config import Section
from trapline.core.model import Discovery, Reading
from trapline.templates import template_dir
from trapline.wire.mqtt.link import MqttLink
from trapline.wire.mqtt.schema import encode_chunks

HOST = "Van 17"


class CommitOutbox(ListOutbox):
    """A committing outbox whose commits the test settles by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.commits: list[asyncio.Future[None]] = []

    def committed(self, soon: bool = False) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.commits.append(done)
        return done


def make_bridge(tmp_path: Path, **extra: object) -> MqttBridge:
    section = Section(tmp_path / "t.toml", "collectors.fleet",
                      {"type": "mqtt_bridge", "host": "127.0.0.1", "client_id": "centre-1", **extra})
    section.text("type")
    return build("fleet", section)


def message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid=1, topic=topic.encode())
    msg.payload = payload
    msg.qos = 1
    return msg


def data(*values: int, agent: str = "van-17") -> mqtt.MQTTMessage:
    items = enumerate(Reading(HOST, "obd.rpm", v, 1_718_000_000 + v) for v in values)
    [(_, payload)] = encode_chunks(agent, HOST, items, 1 << 16).messages
    return message(f"trapline/v1/{HOST}/data", payload)


def test_the_same_message_twice_is_forwarded_once_and_counted(tmp_path: Path) -> None:
    bridge = make_bridge(tmp_path)
    link = MqttLink(bridge.settings)  # never started: no dead letters in this test

    async def scenario() -> None:
        out = CommitOutbox()
        first = bridge._take(link, out, data(1, 2))
        again = bridge._take(link, out, data(1, 2))  # before the first copy is committed
        other = bridge._take(link, out, data(3))
        assert [r.value for r in out.readings("obd.rpm")] == [1, 2, 3]
        assert (bridge.counters.received, bridge.counters.forwarded, bridge.counters.duplicates) == (3, 3, 1)
        # The copy is acknowledged only once the first one is in the spool.
        assert len(out.commits) == 2 and not asyncio.ensure_future(again).done()
        out.commits[0].set_result(None)
        async with asyncio.timeout(1):
            await asyncio.gather(first, again)
        out.commits[1].set_result(None)
        await other
        bridge._take(link, out, data(1, 2))  # after the commit: still a duplicate
        assert bridge.counters.duplicates == 2 and len(out.items) == 3

    asyncio.run(scenario())


def test_a_copy_of_a_message_that_failed_to_commit_is_forwarded(tmp_path: Path) -> None:
    bridge = make_bridge(tmp_path)
    link = MqttLink(bridge.settings)

    async def scenario() -> None:
        out = CommitOutbox()
        bridge._take(link, out, data(1))
        out.commits[0].set_exception(OSError("disk full"))
        await asyncio.sleep(0)
        bridge._take(link, out, data(1))
        assert len(out.items) == 2 and bridge.counters.duplicates == 0

    asyncio.run(scenario())


def test_same_content_from_another_agent_is_not_a_duplicate(tmp_path: Path) -> None:
    bridge = make_bridge(tmp_path)
    link = MqttLink(bridge.settings)

    async def scenario() -> None:
        out = CommitOutbox()
        bridge._take(link, out, data(1, agent="van-17"))
        bridge._take(link, out, data(1, agent="van-18"))
        assert len(out.items) == 2 and bridge.counters.duplicates == 0

    asyncio.run(scenario())


def test_the_window_is_bounded_and_zero_turns_it_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        recent = RecentIds(3)
        for i in range(10):
            recent.add(("a", str(i)), loop.create_future())
        assert len(recent) == 3
        assert recent.get(("a", "6")) is None and recent.get(("a", "9")) is not None
        recent.get(("a", "7"))  # used again: now the most recent
        recent.add(("a", "10"), loop.create_future())
        assert recent.get(("a", "7")) is not None and recent.get(("a", "8")) is None

        off = make_bridge(tmp_path, dedup_window=0)
        out = CommitOutbox()
        link = MqttLink(off.settings)
        off._take(link, out, data(1))
        off._take(link, out, data(1))
        assert len(out.items) == 2 and off.counters.duplicates == 0

    asyncio.run(scenario())


def test_status_and_self_readings(tmp_path: Path) -> None:
    bridge = make_bridge(tmp_path)
    link = MqttLink(bridge.settings)

    async def scenario() -> None:
        out = CommitOutbox()
        await bridge._take(link, out, message("trapline/v1/van-17/status", b"online"))
        await bridge._take(link, out, message("trapline/v1/van-18/status", b"online"))
        await bridge._take(link, out, message("trapline/v1/van-18/status", b"offline"))
        bridge._take(link, out, data(1, 2))
        bridge._take(link, out, data(1, 2))
        assert out.items and bridge.counters.received == 2  # status messages are not data

    asyncio.run(scenario())
    items = bridge.self_readings("centre")
    [bridges, agents] = [i for i in items if isinstance(i, Discovery)]
    assert bridges.rows == ({"{#BRIDGE}": "fleet"},)
    assert [row["{#AGENT}"] for row in agents.rows] == ["van-17", "van-18"]
    values = {i.key: i.value for i in items if isinstance(i, Reading)}
    assert values['trapline.bridge.received["fleet"]'] == 2
    assert values['trapline.bridge.forwarded["fleet"]'] == 2
    assert values['trapline.bridge.duplicates["fleet"]'] == 1
    assert values['trapline.bridge.deadletters["fleet"]'] == 0
    assert values['trapline.bridge.agent.online["fleet","van-17"]'] == 1
    assert values['trapline.bridge.agent.online["fleet","van-18"]'] == 0
    assert values['trapline.bridge.agent.lastseen["fleet","van-17"]'] > 1_700_000_000
    assert values['trapline.bridge.agent.lastseen["fleet","van-18"]'] == 0


def test_a_resent_chunk_keeps_its_id() -> None:
    items = [(i, Reading(HOST, "k", i, 1_718_000_000)) for i in range(5)]
    first = encode_chunks("van-17", HOST, items, 1 << 16).messages
    again = encode_chunks("van-17", HOST, items, 1 << 16).messages
    changed = encode_chunks("van-17", HOST, items[:4], 1 << 16).messages
    assert first == again and first != changed


def test_the_bridge_template_has_exactly_the_keys_the_bridge_sends(tmp_path: Path) -> None:
    path = template_dir() / "trapline_agent" / "template_trapline_mqtt_bridge.yaml"
    (template,) = yaml.safe_load(path.read_text(encoding="utf-8"))["zabbix_export"]["templates"]
    rules = template["discovery_rules"]
    expected = {rule["key"]: {p["key"] for p in rule["item_prototypes"]} for rule in rules}
    bridge = make_bridge(tmp_path)
    bridge.name = "{#BRIDGE}"
    bridge.agents["{#AGENT}"] = AgentSeen()
    items = bridge.self_readings("centre")
    sent = {i.key for i in items if isinstance(i, Reading)}
    assert set(expected) == {i.rule for i in items if isinstance(i, Discovery)}
    assert set().union(*expected.values()) == sent
    assert all(key.startswith("trapline.bridge.agent.") == ("{#AGENT}" in key) for key in sent)
