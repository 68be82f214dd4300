"""The bridge's pipelining: arrivals, spool commits and acknowledgements overlap, safely.

The messages are the wire format of exporters/MQTT.md, made by the edge's own encoder
(``encode_chunks``); the spool is the real one (tests/test_pipeline.py's pipeline), and
only the broker connection is a stand-in that records the PUBACKs the bridge sends.
The broker's side follows MQTT v5: message ids are per connection, and after a
reconnection the broker sends every unacknowledged message again under a new id
(the real broker's redelivery is tested in tests/integration/test_mqtt_broker.py).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_mqtt_dedup import CommitOutbox, data, make_bridge, message
from tests.test_pipeline import ScriptedDestination, make_pipeline
from trapline.core.config import ConfigError
from trapline.core.model import Reading
from trapline.middleware.pipeline import Pipeline
from trapline.middleware.settings import AgentSettings
from trapline.wire.mqtt.link import MqttLink
from trapline.wire.mqtt.schema import encode_chunks

HOST = "Van 17"


@dataclass
class Sent:
    """One message as the edge published it."""

    content: int  # which edge message (a resend by the edge keeps its content and id)
    payload: bytes
    readings: int


@dataclass
class FakeBroker:
    """The broker's view of one bridge connection: what is in flight and which PUBACKs came back."""

    generation: int = 1
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: dict[int, Sent] = field(default_factory=dict)  # mid -> message, this connection
    acked: list[tuple[int, int]] = field(default_factory=list)  # (generation, mid)
    acked_contents: list[int] = field(default_factory=list)
    next_mid: int = 1
    # Readings the spool must hold before the ack of each content: all contents before it, in order.
    needed: dict[int, int] = field(default_factory=dict)
    spooled: int = 0  # readings spooled by all contents taken so far, in order of first arrival
    pipeline: Pipeline | None = None
    violations: list[str] = field(default_factory=list)  # an assert in ack() would only end the bridge's task

    def deliver(self, sent: Sent, incoming: asyncio.Queue[tuple[int, mqtt.MQTTMessage] | None]) -> None:
        msg = message(f"trapline/v1/{HOST}/data", sent.payload)
        msg.mid, self.next_mid = self.next_mid, self.next_mid + 1
        self.in_flight[msg.mid] = sent
        if sent.content not in self.needed:
            self.spooled += sent.readings
            self.needed[sent.content] = self.spooled
        incoming.put_nowait((self.generation, msg))  # as the bridge's on_message stamps it

    def ack(self, mid: int, qos: int) -> None:
        """What MqttLink.ack would send; checks that the readings are in the spool first."""
        assert self.pipeline is not None
        sent = self.in_flight.pop(mid, None)
        if sent is None:
            self.violations.append(f"PUBACK for {mid}, which is not in flight on this connection")
            return
        depth = self.pipeline.spool.depth()
        if depth < self.needed[sent.content]:
            self.violations.append(f"message {sent.content} acknowledged with {depth} readings in the "
                                   f"spool, {self.needed[sent.content]} needed")
        self.acked.append((self.generation, mid))
        self.acked_contents.append(sent.content)

    def reconnect(self, incoming: asyncio.Queue[tuple[int, mqtt.MQTTMessage] | None]) -> None:
        """A new connection: the unacknowledged messages come again, under new ids."""
        waiting = list(self.in_flight.values())
        self.in_flight.clear()
        self.generation += 1
        for sent in waiting:
            self.deliver(sent, incoming)


def run_then_close(pipeline: Pipeline, scenario: Coroutine[object, object, None]) -> None:
    try:
        asyncio.run(scenario)
    finally:
        pipeline.spool.close()


async def cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def edge_message(content: int, readings: int) -> Sent:
    items = enumerate(Reading(HOST, "obd.rpm", content * 100 + i, 1_718_000_000 + content)
                      for i in range(readings))
    [(_, payload)] = encode_chunks("van-17", HOST, items, 1 << 16).messages
    return Sent(content, payload, readings)


steps = st.lists(st.one_of(
    st.tuples(st.just("arrive"), st.integers(1, 5)),  # a new edge message of 1-5 readings
    st.tuples(st.just("resend"), st.integers(0, 50)),  # the edge sends an earlier message again
    st.just(("commit", 0)),  # the pipeline's intake commits to the spool
    st.just(("turn", 0)),  # the event loop runs what is ready
    st.just(("reconnect", 0)),
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(steps)
def test_no_ack_before_the_spool_holds_the_message_and_each_ack_exactly_once(
        schedule: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        check_schedule(Path(tmp), schedule)


def check_schedule(tmp: Path, schedule: list[tuple[str, int]]) -> None:
    pipeline = make_pipeline(tmp, ScriptedDestination())
    bridge = make_bridge(tmp, receive_maximum=4)
    broker = FakeBroker(pipeline=pipeline)

    async def turn() -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def scenario() -> None:
        broker.connected.set()
        link = cast(MqttLink, broker)
        incoming: asyncio.Queue[tuple[int, mqtt.MQTTMessage] | None] = asyncio.Queue()
        serving = asyncio.create_task(bridge._serve(link, pipeline.outbox("bridge"), incoming))
        sent: list[Sent] = []
        for step, arg in schedule:
            if step == "arrive":
                sent.append(edge_message(len(sent), arg))
                broker.deliver(sent[-1], incoming)
            elif step == "resend" and sent:
                broker.deliver(sent[arg % len(sent)], incoming)
            elif step == "commit":
                pipeline.flush_intake()
            elif step == "reconnect":
                broker.reconnect(incoming)
            elif step == "turn":
                await turn()
        # Then the pipeline commits as it does every flush_interval, until all is settled.
        for _ in range(len(schedule) + 2):
            await turn()
            pipeline.flush_intake()
            await turn()
        assert not broker.violations, broker.violations
        assert not broker.in_flight, f"never acknowledged: {sorted(broker.in_flight)}"
        assert len(set(broker.acked)) == len(broker.acked), "a message id acknowledged twice"
        assert set(broker.acked_contents) == {s.content for s in sent}
        assert pipeline.spool.depth() == sum(s.readings for s in sent), "a message spooled twice or not"
        await cancelled(serving)

    run_then_close(pipeline, scenario())


class SoonOutbox(CommitOutbox):
    """Records whether each commit was asked for at once."""

    def __init__(self) -> None:
        super().__init__()
        self.soon: list[bool] = []

    def committed(self, soon: bool = False) -> asyncio.Future[None]:
        self.soon.append(soon)
        return super().committed(soon)


def test_half_the_window_waiting_asks_for_the_commit_at_once(tmp_path: Path) -> None:
    bridge = make_bridge(tmp_path, receive_maximum=4)
    link = MqttLink(bridge.settings)

    async def scenario() -> None:
        out = SoonOutbox()
        bridge._take(link, out, data(1))
        bridge._take(link, out, data(2))  # two of four waiting
        assert out.soon == [False, True]
        for commit in out.commits:
            commit.set_result(None)
        await asyncio.sleep(0)
        bridge._take(link, out, data(3))  # the window emptied: back to the regular flush
        assert out.soon == [False, True, False]

    asyncio.run(scenario())


def test_a_commit_asked_for_at_once_does_not_wait_for_the_flush_interval(tmp_path: Path) -> None:
    pipeline = make_pipeline(tmp_path, ScriptedDestination())
    pipeline.agent = AgentSettings(host=None, self_interval=3600, flush_interval=3600, shutdown_timeout=1)

    async def scenario() -> None:
        out = pipeline.outbox("bridge")
        intake = asyncio.create_task(pipeline._intake_loop())
        await asyncio.sleep(0)  # the intake now waits out its hour
        out.put(Reading(HOST, "obd.rpm", 1, 1_718_000_000))
        regular = out.committed()
        async with asyncio.timeout(30):  # a guard against hanging, not a measure of speed
            await out.committed(soon=True)
        assert regular.done() and pipeline.spool.depth() == 1
        await cancelled(intake)

    run_then_close(pipeline, scenario())


@pytest.mark.parametrize("value", [0, 65536])
def test_receive_maximum_must_fit_mqtt(tmp_path: Path, value: int) -> None:
    # MQTT v5 section 3.1.2.11.3: a two-byte integer, and 0 is a protocol error.
    with pytest.raises(ConfigError, match="receive_maximum"):
        make_bridge(tmp_path, receive_maximum=value)
