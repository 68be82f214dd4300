"""Edge destination -> real mosquitto -> bridge collector -> pipeline, including the bad days."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import Mosquitto, running_mosquitto
from trapline.collectors.mqtt_bridge.collector import MqttBridge, build
from trapline.core.config import Section
from trapline.core.model import Discovery, Item, Reading
from trapline.core.plugin import Delivery, Spooled
from trapline.exporters.mqtt import MqttDestination, build_destinations
from trapline.middleware.filters import Filters
from trapline.middleware.pipeline import Pipeline
from trapline.middleware.settings import AgentSettings, SpoolSettings
from trapline.middleware.spool import Spool
from trapline.wire.mqtt.schema import encode_chunks

pytestmark = pytest.mark.integration

CLOCK = 1_718_000_000


def edge(broker: Mosquitto, tmp_path: Path, **extra: object) -> MqttDestination:
    data = {"host": "127.0.0.1", "port": broker.port, "client_id": "van-17", "max_payload": 2048,
            "timeout": 3, **extra}
    [dest] = build_destinations(Section(tmp_path / "t.toml", "mqtt", data))
    assert isinstance(dest, MqttDestination)
    return dest


def bridge(broker: Mosquitto, tmp_path: Path, client_id: str = "centre-1") -> MqttBridge:
    data = {"type": "mqtt_bridge", "host": "127.0.0.1", "port": broker.port, "client_id": client_id}
    section = Section(tmp_path / "t.toml", "collectors.fleet", data)
    section.text("type")  # read by the settings loader before build()
    return build("fleet", section)


def spooled(items: Sequence[Item], first_id: int = 1) -> list[Spooled]:
    return [Spooled(first_id + i, item, 0.0, 0) for i, item in enumerate(items)]


def readings(host: str, count: int, start: int = 0) -> list[Item]:
    return [Reading(host, f"obd.pid[{i % 7}]", i, CLOCK + i, i) for i in range(start, start + count)]


class ListDestination:
    name = "list"
    needs_labels = True

    def __init__(self) -> None:
        self.items: list[Item] = []

    async def deliver(self, batch: Sequence[Spooled]) -> Delivery:
        self.items += [s.item for s in batch]
        return Delivery(accepted=[s.id for s in batch])

    async def close(self) -> None:
        pass


def centre(tmp_path: Path, collector: MqttBridge, dest: ListDestination,
           spool: str = "centre.db") -> Pipeline:
    agent = AgentSettings(host=None, self_interval=3600, flush_interval=0.05, shutdown_timeout=1)
    spool_settings = SpoolSettings(tmp_path / spool, 100_000, "normal", 3600, 0.05, 0.1, 500)
    return Pipeline(agent=agent, spool_settings=spool_settings, spool=Spool(spool_settings.path),
                    filters=Filters.from_config(Section(tmp_path / "t.toml", "filters", {})),
                    collectors=[collector], destinations=[dest])


async def until(predicate: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def subscribed(collector: MqttBridge) -> None:
    await until(lambda: collector.link is not None and collector.link.subscribed.is_set(), "bridge SUBACK")


@contextlib.asynccontextmanager
async def serving(pipeline: Pipeline, collector: MqttBridge) -> AsyncIterator[None]:
    """The centre pipeline running, its bridge subscribed; stopped (and drained) on the way out."""
    running = asyncio.create_task(pipeline.run(install_signal_handlers=False))
    try:
        await subscribed(collector)
        yield
    finally:
        pipeline.stop()
        await running


class Watcher:
    """A plain paho client on the side: records what arrives on some topics, publishes raw payloads."""

    def __init__(self, broker: Mosquitto, *topics: str, auth: tuple[str, str] | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{id(self)}",
                                  protocol=mqtt.MQTTv5)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._ready.set()
        self.client.on_connect = lambda client, *args: client.subscribe([(t, 1) for t in topics])
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self._ready.wait(5), "watcher not subscribed"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def identity(items: Sequence[Item]) -> set[tuple[object, ...]]:
    return {(i.host, i.key, i.value, i.clock, i.ns) if isinstance(i, Reading) else (i.host, i.rule, i.clock)
            for i in items}


def test_every_reading_goes_from_the_edge_through_the_broker_into_the_centre_pipeline(tmp_path: Path) -> None:
    sent = readings("Van 17", 300) + readings("Van 18", 40) + [
        Discovery("Van 17", "obd.dtc.discovery", ({"{#DTC}": "P0301"},), CLOCK)]

    async def scenario(broker: Mosquitto) -> None:
        watcher = Watcher(broker, "trapline/v1/van-17/status")
        collector, received = bridge(broker, tmp_path), ListDestination()
        pipeline = centre(tmp_path, collector, received)
        async with serving(pipeline, collector):
            dest = edge(broker, tmp_path)
            delivery = await dest.deliver(spooled(sent))
            assert (delivery.retry, delivery.rejected, delivery.unreachable) == ({}, {}, None)
            assert sorted(delivery.accepted) == list(range(1, len(sent) + 1))
            await until(lambda: len(received.items) >= len(sent), "all readings at the centre")
            assert identity(received.items) == identity(sent) and len(received.items) == len(sent)
            assert pipeline.stats.collector("fleet").errors == 0
            def statuses() -> list[bytes]:
                return [m.payload for m in watcher.on("trapline/v1/van-17/status")]

            await until(lambda: statuses() == [b"online"], "online status")
            await dest.close()
            await until(lambda: statuses()[-1:] == [b"offline"],
                        "offline status (the will, sent on a clean close too)")
        watcher.close()

    with running_mosquitto(tmp_path) as broker:
        asyncio.run(scenario(broker))


def test_malformed_messages_go_to_the_dead_letter_topic_and_the_bridge_keeps_going(tmp_path: Path) -> None:
    good = {"version": 1, "agent": "x", "host": "Van 1", "id": "1",
            "items": [{"key": "speed", "value": 3, "clock": CLOCK}]}
    bad = [
        ("trapline/v1/Van 1/data", b"\x00 not json"),
        ("trapline/v1/Van 2/data", json.dumps(good).encode()),  # host differs from the topic
        ("trapline/v1/Van 1/data", json.dumps({**good, "version": 9}).encode()),
    ]

    async def scenario(broker: Mosquitto) -> None:
        watcher = Watcher(broker, "trapline/v1/deadletter")
        collector, received = bridge(broker, tmp_path), ListDestination()
        pipeline = centre(tmp_path, collector, received)
        async with serving(pipeline, collector):
            for topic, payload in bad:
                await asyncio.to_thread(watcher.publish, topic, payload)
            await asyncio.to_thread(watcher.publish, "trapline/v1/Van 1/data", json.dumps(good).encode())
            await until(lambda: len(received.items) == 1, "the good message")
            await until(lambda: len(watcher.on("trapline/v1/deadletter")) == 3, "three dead letters")
            letters = watcher.on("trapline/v1/deadletter")
            assert [m.payload for m in letters] == [payload for _, payload in bad]
            reasons = [dict(m.properties.UserProperty)["reason"] for m in letters]  # type: ignore[union-attr]
            assert "not JSON" in reasons[0] and "does not match" in reasons[1] and "version" in reasons[2]
            assert pipeline.stats.collector("fleet").errors == 3
            assert collector.dead_letters == 3
        watcher.close()

    with running_mosquitto(tmp_path) as broker:
        asyncio.run(scenario(broker))


def test_broker_restart_keeps_rows_unacknowledged_then_delivery_resumes(tmp_path: Path) -> None:
    async def scenario(broker: Mosquitto) -> None:
        collector, received = bridge(broker, tmp_path), ListDestination()
        pipeline = centre(tmp_path, collector, received)
        async with serving(pipeline, collector):
            dest = edge(broker, tmp_path)
            first = await dest.deliver(spooled(readings("Van 17", 20)))
            assert len(first.accepted) == 20

            broker.stop()
            await until(lambda: not dest.connected, "the edge to notice")
            # ... and the bridge: else its SUBACK flag of the old connection still stands below.
            await until(lambda: collector.link is not None and not collector.link.subscribed.is_set(),
                        "the bridge to notice")
            down = await dest.deliver(spooled(readings("Van 17", 20, start=20), first_id=21))
            assert down.accepted == [] and down.unreachable is not None

            broker.start()  # same port, same persistence directory
            # mosquitto 2.0.11 does not restore shared subscriptions: until the bridge subscribes
            # again the edge hears "no matching subscribers" and keeps its rows (exporters/MQTT.md).
            await subscribed(collector)
            batch = spooled(readings("Van 17", 20, start=20), first_id=21)
            for _ in range(60):  # paho reconnects with its own backoff (1 s, doubling, max 30 s)
                resumed = await dest.deliver(batch)
                if resumed.accepted:
                    break
                await asyncio.sleep(0.5)
            assert sorted(resumed.accepted) == list(range(21, 41)) and resumed.unreachable is None
            # The bridge's session survived the restart: it receives what was published after it.
            await until(lambda: len(identity(received.items)) == 40, "readings after the restart")
            await dest.close()

    with running_mosquitto(tmp_path) as broker:
        asyncio.run(scenario(broker))


def test_bridge_acknowledges_only_committed_messages(tmp_path: Path) -> None:
    """A bridge that dies before its spool commit gets the message again from the broker."""

    async def scenario(broker: Mosquitto) -> None:
        dest = edge(broker, tmp_path)
        # First bridge: readings reach the intake, but no flush ever commits them.
        first = bridge(broker, tmp_path)
        uncommitted = centre(tmp_path, first, ListDestination(), spool="lost.db")
        task = asyncio.create_task(first.run(uncommitted.outbox("fleet")))
        await subscribed(first)
        delivery = await dest.deliver(spooled(readings("Van 17", 10)))
        assert len(delivery.accepted) == 10
        await until(lambda: uncommitted.stats.collector("fleet").readings == 10, "the intake")
        task.cancel()  # dies without committing: no acknowledgement went to the broker
        await asyncio.gather(task, return_exceptions=True)
        assert uncommitted.spool.depth() == 0

        # The same bridge identity comes back: the broker delivers the message again.
        second, received = bridge(broker, tmp_path), ListDestination()
        pipeline = centre(tmp_path, second, received)
        running = asyncio.create_task(pipeline.run(install_signal_handlers=False))
        await until(lambda: len(received.items) == 10, "the redelivered readings")
        assert identity(received.items) == identity(readings("Van 17", 10))
        await dest.close()
        pipeline.stop()
        await running

    with running_mosquitto(tmp_path) as broker:
        asyncio.run(scenario(broker))


def test_username_and_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("right horse\n")
    secret.chmod(0o600)
    monkeypatch.setenv("TRAPLINE_TEST_MQTT_WRONG", "wrong")

    async def scenario(broker: Mosquitto) -> None:
        listener = Watcher(broker, "trapline/v1/+/data", auth=("van", "right horse"))
        good = edge(broker, tmp_path, username="van", password_file=str(secret))
        assert len((await good.deliver(spooled(readings("Van 17", 3)))).accepted) == 3
        assert "connected" in await good.check()
        await good.close()
        wrong = edge(broker, tmp_path, username="van", password_env="TRAPLINE_TEST_MQTT_WRONG",
                     client_id="van-18", timeout=1)
        refused = await wrong.deliver(spooled(readings("Van 18", 3)))
        assert refused.accepted == [] and "refused the connection" in str(refused.unreachable)
        assert "wrong" not in str(refused.unreachable)
        await wrong.close()
        listener.close()

    with running_mosquitto(tmp_path, users={"van": "right horse"}) as broker:
        asyncio.run(scenario(broker))


def test_a_message_no_one_subscribed_to_stays_in_the_spool(tmp_path: Path) -> None:
    """mosquitto answers "no matching subscribers" (e.g. after a restart, before the bridges subscribe)."""

    async def scenario(broker: Mosquitto) -> None:
        dest = edge(broker, tmp_path)
        nobody = await dest.deliver(spooled(readings("Van 17", 5)))
        assert nobody.accepted == [] and "no subscriber" in str(nobody.unreachable)
        collector, received = bridge(broker, tmp_path), ListDestination()
        pipeline = centre(tmp_path, collector, received)
        async with serving(pipeline, collector):
            again = await dest.deliver(spooled(readings("Van 17", 5)))
            assert sorted(again.accepted) == [1, 2, 3, 4, 5] and again.unreachable is None
            await until(lambda: len(received.items) == 5, "the readings at the centre")
            await dest.close()

    with running_mosquitto(tmp_path) as broker:
        asyncio.run(scenario(broker))


def test_a_message_published_twice_is_forwarded_once(tmp_path: Path) -> None:
    """The same message id again (a resend after a lost PUBACK): one copy forwarded, both acknowledged."""
    [(_, payload)] = encode_chunks("van-17", "Van 17", enumerate(readings("Van 17", 3)), 4096).messages

    async def scenario(broker: Mosquitto) -> None:
        watcher = Watcher(broker, "trapline/v1/deadletter")
        collector, received = bridge(broker, tmp_path), ListDestination()
        pipeline = centre(tmp_path, collector, received)
        async with serving(pipeline, collector):
            for _ in range(2):
                await asyncio.to_thread(watcher.publish, "trapline/v1/Van 17/data", payload)
            await until(lambda: collector.counters.duplicates == 1, "the copy to be dropped")
            await asyncio.to_thread(watcher.publish, "trapline/v1/Van 17/data", json.dumps(
                {"version": 1, "agent": "x", "host": "Van 17", "id": "other",
                 "items": [{"key": "k", "value": 1, "clock": CLOCK}]}).encode())
            await until(lambda: len(received.items) == 4, "the next message")  # the acks did not jam
            assert identity(received.items[:3]) == identity(readings("Van 17", 3))
        watcher.close()

    with running_mosquitto(tmp_path) as broker:
        asyncio.run(scenario(broker))


def test_a_cleanly_stopped_bridge_leaves_the_group_to_the_others(tmp_path: Path) -> None:
    """Without leaving, mosquitto would queue half of the new messages for the stopped bridge."""

    async def scenario(broker: Mosquitto) -> None:
        stays, leaves = bridge(broker, tmp_path, "centre-1"), bridge(broker, tmp_path, "centre-2")
        received, elsewhere = ListDestination(), ListDestination()
        staying = centre(tmp_path, stays, received, spool="stays.db")
        leaving = centre(tmp_path, leaves, elsewhere, spool="leaves.db")
        tasks = [asyncio.create_task(p.run(install_signal_handlers=False)) for p in (staying, leaving)]
        await subscribed(stays)
        await subscribed(leaves)
        leaving.stop()
        await tasks[1]
        dest = edge(broker, tmp_path, max_payload=1024)
        delivery = await dest.deliver(spooled(readings("Van 17", 100)))
        assert len(delivery.accepted) == 100
        await until(lambda: len(received.items) == 100, "every reading at the bridge that stayed")
        assert elsewhere.items == []
        await dest.close()
        staying.stop()
        await tasks[0]

    with running_mosquitto(tmp_path) as broker:
        asyncio.run(scenario(broker))
