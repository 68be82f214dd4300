"""The fleet bench's own MQTT packets and messages (bench/fleet.py): what a van puts on the wire.

The packets are compared byte for byte with what paho-mqtt (the edge's client)
sends for the same settings, captured on a plain socket, and with the examples
of the MQTT 5.0 specification (OASIS, section 1.5.5); the data message is read
back with the bridge's own decoder.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.fleet import (
    MARKER,
    MAX_PAYLOAD,
    PUBLISH,
    TOPICS,
    Outcome,
    VanState,
    Window,
    compare,
    connect_packet,
    puback_of,
    publish_packet,
    read_packet,
    sizing,
    van_keys,
    varint,
)
from trapline.core.model import Reading
from trapline.wire.mqtt.link import OFFLINE, ONLINE
from trapline.wire.mqtt.schema import decode_envelope, encode_chunks

AGENT = "van-00017"


@pytest.fixture
def paho_on_socket() -> Iterator[tuple[mqtt.Client, socket.socket]]:
    """A paho client connected as the edge connects (exporters/MQTT.md), and the server side of its socket."""
    server = socket.create_server(("127.0.0.1", 0))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=AGENT, protocol=mqtt.MQTTv5)
    client.will_set(TOPICS.status(AGENT), OFFLINE, qos=1, retain=True)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 86400
    client.connect("127.0.0.1", server.getsockname()[1], keepalive=60, clean_start=False,
                   properties=properties)
    peer, _ = server.accept()
    peer.settimeout(5)
    try:
        yield client, peer
    finally:
        client.disconnect()
        peer.close()
        server.close()


def test_connect_is_the_edges(paho_on_socket: tuple[mqtt.Client, socket.socket]) -> None:
    _, peer = paho_on_socket
    sent_by_paho = peer.recv(65536)
    assert connect_packet(AGENT, TOPICS.status(AGENT), OFFLINE, 60, 86400) == sent_by_paho


def test_publish_is_the_edges(paho_on_socket: tuple[mqtt.Client, socket.socket]) -> None:
    client, peer = paho_on_socket
    peer.recv(65536)  # CONNECT
    peer.sendall(bytes([0x20, 3, 0, 0, 0]))  # CONNACK: no session present, success, no properties
    client.loop(timeout=1)
    payload = b"x" * 300  # a remaining length of two bytes
    data = client.publish(TOPICS.data(AGENT), payload, qos=1)
    assert publish_packet(TOPICS.data(AGENT), payload, data.mid) == peer.recv(65536)
    status = client.publish(TOPICS.status(AGENT), ONLINE, qos=1, retain=True)
    assert publish_packet(TOPICS.status(AGENT), ONLINE, status.mid, retain=True) == peer.recv(65536)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [  # MQTT 5.0, table 1-1 "Size of Variable Byte Integer": the bounds of each length
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integer(value: int, encoded: bytes) -> None:
    assert varint(value) == encoded


def test_read_packet_takes_one_packet_at_a_time() -> None:
    async def read_two() -> list[tuple[int, bytes]]:
        reader = asyncio.StreamReader()
        reader.feed_data(publish_packet("t", b"y" * 20_000, 7) + bytes([0x40, 2, 0, 7]))
        return [await read_packet(reader), await read_packet(reader)]

    (kind, body), (ack_kind, ack) = asyncio.run(read_two())
    assert kind == PUBLISH and body.endswith(b"y" * 20_000) and len(body) == 2 + 1 + 2 + 1 + 20_000
    assert (ack_kind, puback_of(ack)) == (4, (7, 0))


def test_puback_reason_codes() -> None:
    # MQTT 5.0, 3.4.2.1: no reason code byte means 0 (success); 0x10 "No matching subscribers".
    assert puback_of(b"\x01\x02") == (258, 0)
    assert puback_of(b"\x01\x02\x10\x00") == (258, 0x10)
    assert puback_of(b"\x00\x05\x87") == (5, 0x87)


def test_a_round_is_one_edge_message_the_bridge_accepts() -> None:
    van = VanState(17, random.Random(1))
    now_ns = 1_800_000_000_123_456_789
    for round_no in range(3):
        readings = van.round(now_ns + round_no * 10**10)
        chunks = encode_chunks(van.host, van.host, enumerate(readings), MAX_PAYLOAD)
        [(tags, payload)] = chunks.messages
        message = decode_envelope(van.host, payload)
        assert message.agent == van.host and message.items == readings and len(tags) == len(readings)
        newest = readings[-1]
        assert isinstance(newest, Reading) and newest.key == MARKER
        assert newest.clock * 10**9 + newest.ns == now_ns + round_no * 10**10
        assert all(r.clock <= newest.clock for r in readings)
        # 10 s of the sample config: 4 fast PIDs every second, 2 GPS fixes, the slow tier every third.
        assert sum(r.key.startswith("obd.pid[") for r in readings) == 40 + (5 if round_no == 0 else 0)
    assert {r.key for r in readings} <= set(van_keys())


def _outcome(cpu: dict[str, float], latencies: list[float], stored_per_second: float = 1000.0) -> Outcome:
    window = Window(seconds=10.0, offered=stored_per_second, stored=stored_per_second, cpu=cpu)
    readings = int(stored_per_second * 10)
    return Outcome(100, 2.0, latencies, window, readings, readings, 0)


def _cells(markdown: str) -> dict[str, str]:
    """The last row of a Markdown table, by heading."""
    lines = markdown.splitlines()
    headings, row = ([c.strip() for c in line.strip("|").split("|")] for line in (lines[0], lines[-1]))
    return dict(zip(headings, row, strict=True))


def test_sizing_uses_a_measured_proxy_and_marks_an_assumed_one() -> None:
    # 10,000 readings in the window: 0.05 CPU s is 5 us per reading.
    base = {"edge": 0.01, "broker": 0.001, "bridges": 0.05, "zabbix": 0.1, "api": 0.01}
    assumed = _cells(sizing(_outcome(base, [1.0]), fleets=(1000,)))
    measured = _cells(sizing(_outcome(base | {"proxy": 0.02}, [1.0]), fleets=(1000,)))
    # 1,000 vans at the run's 10 readings/s per van: 10,000/s; without a proxy in the run, a
    # proxy is taken to cost what the server did (10 us): 0.1 cores.
    assert assumed["proxy cores"] == "0.10 (assumed)"
    # Measured at 2 us per reading: 0.02 cores; the server's own figure stays apart.
    assert measured["proxy cores"] == "0.02"
    assert assumed["server + DB cores"] == measured["server + DB cores"] == "0.10"
    assert assumed["bridge cores"] == "0.05"


def test_compare_pairs_each_run_of_b_with_the_run_of_a_in_its_pair() -> None:
    a = [_outcome({"bridges": 0.10}, [1.0, 2.0]), _outcome({"bridges": 0.20}, [1.0, 2.0])]
    b = [_outcome({"bridges": 0.05}, [1.0, 2.0]), _outcome({"bridges": 0.20}, [1.0, 2.0])]
    ratios = _cells(compare(a, b))
    # bridge us/reading B/A: 0.5 in the first pair, 1.0 in the second: median 0.75.
    assert ratios["tree"] == "B/A"
    assert ratios["bridge us/reading"] == "0.75 (0.50-1.00)"
    assert ratios["readings/s stored"] == "1.00 (1.00-1.00)"
