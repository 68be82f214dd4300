"""Fleet scale: N vans -> mosquitto -> two bridges -> Zabbix 6.0; stored readings/s, latency, CPU split.

Each van is what the edge agent is on the wire (exporters/MQTT.md): its own
client id, MQTT 5 with a persistent session (clean start 0, session expiry one
day), the Last Will ``offline`` (retained) on its status topic and ``online``
there once connected, and one QoS 1 data message every 10 s holding what one
van's OBD and GPS collectors produce in 10 s, encoded by the edge's own encoder
(``trapline.wire.mqtt.schema.encode_chunks``).  A message is counted as sent
only once its PUBACK says success (not "no matching subscribers"), as the edge
counts it.  All vans live on one asyncio loop with a minimal MQTT client of
their own (CONNECT, PUBLISH QoS 1, PUBACK): one paho client per van would be
5,000 threads.

One message (``van_round``): the sample config's fast OBD tier (4 PIDs every
second: 40 readings), its slow tier (5 PIDs every 30 s: in every third message),
battery voltage and engine state, and two GPS fixes (every 5 s) turned into
readings by the GPS collector's own functions (``fix_readings``, and
``EdgeDerivations`` with a home point and an overspeed limit): 74 readings, 79
every third message, ~7.5 KB of JSON.  The readings carry the edge's clock,
the newest (``obd.pid[SPEED]``) the moment of publishing.

The centre is one deployment for all fleet sizes: mosquitto (tests/support,
``max_queued_messages 0``, file limit raised for the connections) and two
bridges as ``bench.mqtt`` runs them, sending to a local Zabbix 6.0 with caches sized for the fleet
(``--db-syncers`` history syncers).  Each fleet size N runs in three steps:

1. connect N vans (the first N of the hosts; those of an earlier phase reconnect
   to their sessions) and let them publish ``--warmup`` rounds, then wait until
   Zabbix stored all of it: a bridge sends a (host, key) it has not seen
   accepted in a request of its own, so a new fleet costs one request per item
   and bridge until then (reported: the seconds from the last warm-up message until all was stored);
2. the measured window: ``--seconds`` of steady publishing, vans spread evenly
   over the 10 s; stored rows are counted through the API at its start and end
   (rows per second by arrival), CPU per part read from /proc at both ends;
3. the vans stop, the bench waits for the last rows and compares the rows
   stored with the readings acknowledged (counts: a loss and a copy would cancel).

Latency: Zabbix keeps the edge's clock in the history row, not the time it
arrived, so the bench polls the history of ``obd.pid[SPEED]`` (each message's
newest reading) of up to ``--sample`` vans every ``--poll`` seconds and takes
as arrival the start of the poll that first returned a row.  A latency is
thus late by up to one poll interval (0.5 s), plus the API call; older readings
in the same message are older by their age at the edge (up to 10 s, batching
by design), which is not counted.

Two more questions, two options:

- ``--tree A --tree B`` (one fleet size): the same fleet against bridges started
  from two source trees, alternating A B, B A... for ``--runs`` pairs, each run
  with a fresh broker and bridges in front of the same Zabbix; each tree's medians
  and the B/A ratios of the pairs (bridge CPU per reading, stored rate, latency).
- ``--proxy MODE``: the bridges send to a Zabbix 7.0 proxy (SQLite, ProxyBufferMode
  ``MODE``, sized as the server) that monitors the vans, with a 7.0 server behind
  it; the proxy's CPU is counted apart, and the sizing takes the proxy's cost per
  reading from it instead of assuming the server's.

    flock /tmp/trapline-bench.lock python3 -m bench.fleet [--vans 5000 1000 100] [--seconds 60]
        [--warmup 3] [--sample 200] [--poll 0.5] [--db-syncers 4] [--proxy disk|hybrid|memory]
        [--tree A --tree B --runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import resource
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench._util import machine, median, table, wait_for_count
from bench.mqtt import Broker, cpu_by_part, start_bridges, stop
from bench.mqtt import Setup as BridgeSetup
from bench.sender import C_SENDER, wait_drained
from devtools.localzabbix import LocalZabbix, log_tail
from trapline.collectors.gps.collector import fix_readings
from trapline.collectors.gps.vehicle_derived import DerivedSettings, EdgeDerivations
from trapline.collectors.obd.catalog import pid_table
from trapline.core.model import Reading
from trapline.wire.mqtt.link import OFFLINE, ONLINE
from trapline.wire.mqtt.schema import Topics, encode_chunks

ROUND = 10.0  # seconds between a van's messages
BRIDGES = 2
HISTORY_FLOAT = 0
ITEM_TYPE_TRAPPER = 2
FAST_PIDS = ("SPEED", "RPM", "ENGINE_LOAD", "THROTTLE_POS")  # trapline/collectors/obd/sample.toml
SLOW_PIDS = ("COOLANT_TEMP", "INTAKE_TEMP", "FUEL_LEVEL", "CONTROL_MODULE_VOLTAGE", "ODOMETER")
SLOW_EVERY = 3  # the slow tier's 30 s over the 10 s round
GPS_EVERY = 5.0  # the GPS collector's default interval
MARKER = "obd.pid[SPEED]"  # the newest reading of every message: its clock is the publish time
HOME = (56.9496, 24.1052)  # trapline/collectors/gps/sample.toml
FIX_AGE = timedelta(seconds=0.4)  # gpsd's fix time to the collector's poll
MAX_PAYLOAD = 131072  # the edge's default max_payload
KEEPALIVE = 60  # the edge's default; a van publishes every 10 s, which keeps the connection alive
SESSION_EXPIRY = 86400  # the edge's default
CONNECTS_PER_SECOND = 500  # a fleet coming online; mosquitto's listen backlog is not the test
STALL_LIMIT = 30.0  # seconds without a new stored row before a run is declared short
TOPICS = Topics("trapline")
CORE_BUDGET = 0.7  # sizing: the share of its core a process is planned to use
PROXY_CORES = 4  # sizing: cores of a proxy machine
PROXY_NAME = "bench-fleet-proxy"
PROXY_ACTIVE = 0  # proxy.create operating_mode (7.0 API)
MONITORED_BY_PROXY = 1  # host.create monitored_by (7.0 API)


# -- the few MQTT 5 packets a van needs (OASIS MQTT Version 5.0, chapters 1.5 and 3) ---------

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
NO_MATCHING_SUBSCRIBERS = 0x10  # PUBACK reason: a success code, but nobody got the message
SESSION_EXPIRY_INTERVAL = 0x11  # property identifier (spec 3.1.2.11.2)


def varint(value: int) -> bytes:
    """Variable Byte Integer (spec 1.5.5): 7 bits per byte, low group first, high bit = more."""
    out = bytearray()
    while True:
        value, digit = value >> 7, value & 0x7F
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def utf8(text: str) -> bytes:
    """UTF-8 Encoded String (spec 1.5.4): two-byte big-endian length, then the bytes."""
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def binary(data: bytes) -> bytes:
    """Binary Data (spec 1.5.6)."""
    return struct.pack("!H", len(data)) + data


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(
    client_id: str, will_topic: str, will: bytes, keepalive: int, session_expiry: int
) -> bytes:
    """CONNECT (spec 3.1): clean start 0, a session expiry, a QoS 1 retained Will."""
    will_flag, will_qos1, will_retain = 0x04, 0x08, 0x20
    properties = bytes([SESSION_EXPIRY_INTERVAL]) + struct.pack("!I", session_expiry)
    header = utf8("MQTT") + bytes([5, will_flag | will_qos1 | will_retain]) + struct.pack("!H", keepalive)
    payload = utf8(client_id) + varint(0) + utf8(will_topic) + binary(will)
    return packet(CONNECT, 0, header + varint(len(properties)) + properties + payload)


def publish_packet(topic: str, payload: bytes, packet_id: int, retain: bool = False) -> bytes:
    """PUBLISH (spec 3.3) at QoS 1, no properties."""
    qos1 = 0x02
    header = utf8(topic) + struct.pack("!H", packet_id) + varint(0)
    return packet(PUBLISH, qos1 | int(retain), header + payload)


def puback_of(body: bytes) -> tuple[int, int]:
    """(packet id, reason code) of a PUBACK's variable header; no reason code means 0 (spec 3.4.2.1)."""
    (packet_id,) = struct.unpack_from("!H", body)
    return packet_id, body[2] if len(body) > 2 else 0


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(packet type, body) of the next packet."""
    first = await reader.readexactly(1)
    length, shift = 0, 0
    while True:
        digit = (await reader.readexactly(1))[0]
        length |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
    return first[0] >> 4, await reader.readexactly(length)


# -- what one van publishes ---------------------------------------------------------------


class VanState:
    """One van's sensors: a drive around home at varying speed, fed through the collectors' code."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.host = f"van-{index:05d}"
        self.rng = rng
        self.rounds = 0
        self.lat, self.lon = HOME[0] + rng.uniform(-0.2, 0.2), HOME[1] + rng.uniform(-0.2, 0.2)
        self.derived = EdgeDerivations(DerivedSettings(home=HOME, overspeed_limit=90.0))
        self.pids = pid_table()

    def _fix(self, clock_ns: int, speed_kmh: float) -> dict[str, tuple[Any, str]]:
        """A gpsd POLL answer (gpsd's JSON protocol: class POLL with tpv and sky lists) -> readings."""
        self.lat += speed_kmh / 3600 * GPS_EVERY / 111.0
        when = datetime.fromtimestamp(clock_ns / 1e9, UTC)
        tpv = {
            "class": "TPV", "mode": 3, "time": when.isoformat().replace("+00:00", "Z"),
            "lat": self.lat, "lon": self.lon, "altMSL": 12.5, "speed": speed_kmh / 3.6,
            "track": 2.0, "epx": 3.1, "epy": 4.2, "epv": 6.0,
        }
        poll = {"class": "POLL", "active": 1, "tpv": [tpv], "sky": [{"class": "SKY", "uSat": 9}]}
        out = fix_readings(poll, when + FIX_AGE)
        lat, lon = float(out["gps.latitude"][0]), float(out["gps.longitude"][0])
        out.update(self.derived.update(clock_ns / 1e9, lat, lon, speed_kmh))
        return out

    def round(self, now_ns: int) -> list[Reading]:
        """What the edge's spool holds after 10 s of polling, as one delivery; the newest reading last."""
        readings: list[Reading] = []

        def put(key: str, value: float | int, unit: str, clock_ns: int, labels: dict[str, str]) -> None:
            clock, ns = divmod(clock_ns, 1_000_000_000)
            readings.append(Reading(self.host, key, value, clock, ns, unit, labels))

        speed = self.rng.uniform(20.0, 100.0)
        for age in range(int(ROUND) - 1, -1, -1):  # the fast tier, once a second
            clock_ns = now_ns - age * 1_000_000_000
            for name in reversed(FAST_PIDS):  # SPEED last: the marker is the newest reading
                value = speed if name == "SPEED" else round(self.rng.uniform(5.0, 90.0), 1)
                put(f"obd.pid[{name}]", round(value, 1), self.pids[name].unit, clock_ns, {"pid": name})
            if age % int(GPS_EVERY) == 1:
                for key, (value, unit) in self._fix(clock_ns, speed).items():
                    put(key, value, unit, clock_ns, {})
            if age == 1:
                put("obd.voltage", round(self.rng.uniform(13.6, 14.4), 1), "V", clock_ns, {})
                put("obd.engine.running", 1, "", clock_ns, {})
                if self.rounds % SLOW_EVERY == 0:
                    for name in SLOW_PIDS:
                        put(f"obd.pid[{name}]", round(self.rng.uniform(10, 90), 1), self.pids[name].unit,
                            clock_ns, {"pid": name})
        self.rounds += 1
        return readings


def van_keys() -> list[str]:
    """Every key a van sends: its first SLOW_EVERY rounds cover them all."""
    van = VanState(0, random.Random(0))
    now = time.time_ns()
    return sorted({r.key for n in range(SLOW_EVERY) for r in van.round(now + n * 10**10)})


# -- a van on the wire --------------------------------------------------------------------


@dataclass
class Tally:
    """Acknowledged messages and readings; the publish clock of every sampled message."""

    messages: int = 0
    readings: int = 0
    refused: int = 0  # PUBACK with a failure or "no matching subscribers": not sent
    first_clock: int | None = None
    last_clock: int = 0
    published: dict[tuple[str, int, int], float] = field(default_factory=dict)  # marker row -> edge time


class Van:
    def __init__(self, state: VanState, port: int, tally: Tally, sampled: bool) -> None:
        self.state, self.port, self.tally, self.sampled = state, port, tally, sampled
        self.agent = state.host  # the edge's client id; the host name is a valid one
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.acks: asyncio.Task[None] | None = None  # the loop keeps only a weak reference to a task
        self.next_id = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        status = TOPICS.status(self.agent)
        self.writer.write(connect_packet(self.agent, status, OFFLINE, KEEPALIVE, SESSION_EXPIRY))
        kind, body = await read_packet(self.reader)
        if kind != CONNACK or body[1] != 0:
            raise ConnectionError(f"{self.agent}: CONNACK {kind} {body.hex()}")
        self.acks = asyncio.get_running_loop().create_task(self._acks())
        await self.publish(status, ONLINE, retain=True)

    async def _acks(self) -> None:
        assert self.reader is not None
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await read_packet(self.reader)
                if kind == PUBACK:
                    packet_id, reason = puback_of(body)
                    done = self.pending.pop(packet_id, None)
                    if done is not None and not done.done():
                        done.set_result(reason)
        for done in self.pending.values():
            if not done.done():
                done.set_exception(ConnectionError(f"{self.agent}: connection lost"))

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """The PUBACK's reason code."""
        assert self.writer is not None
        self.next_id = self.next_id % 65535 + 1
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = done
        self.writer.write(publish_packet(topic, payload, self.next_id, retain))
        return await done

    async def send_round(self) -> None:
        now_ns = time.time_ns()
        readings = self.state.round(now_ns)
        chunks = encode_chunks(self.agent, self.state.host, enumerate(readings), MAX_PAYLOAD)
        assert not chunks.refused and len(chunks.messages) == 1, "a round fits one message"
        [(_, payload)] = chunks.messages
        reason = await self.publish(TOPICS.data(self.state.host), payload)
        tally = self.tally
        if reason >= 0x80 or reason == NO_MATCHING_SUBSCRIBERS:
            tally.refused += 1
            return
        tally.messages += 1
        tally.readings += len(readings)
        clock = min(r.clock for r in readings)
        tally.first_clock = clock if tally.first_clock is None else min(tally.first_clock, clock)
        tally.last_clock = max(tally.last_clock, now_ns // 1_000_000_000)
        if self.sampled:
            marker = readings[-1]
            tally.published[(self.state.host, marker.clock, marker.ns)] = now_ns / 1e9

    async def drive(self, start: float, until: float) -> None:
        """One message every ROUND seconds from `start` (loop time) until `until`."""
        loop = asyncio.get_running_loop()
        slot = start
        while slot < until:
            await asyncio.sleep(max(0.0, slot - loop.time()))
            await self.send_round()
            slot += ROUND

    def close(self) -> None:
        if self.acks is not None:
            self.acks.cancel()
        if self.writer is not None:
            self.writer.close()  # no DISCONNECT: the broker keeps the session, as after a van goes dark


async def connect_all(vans: list[Van]) -> None:
    for start in range(0, len(vans), CONNECTS_PER_SECOND):
        begun = time.monotonic()
        await asyncio.gather(*(v.connect() for v in vans[start : start + CONNECTS_PER_SECOND]))
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - begun)))


async def drive_all(vans: list[Van], seconds: float) -> None:
    """Every van publishes for `seconds`, their messages spread evenly over the round."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5
    spread = ROUND / len(vans)
    await asyncio.gather(*(v.drive(start + i * spread, start + seconds) for i, v in enumerate(vans)))


# -- Zabbix: hosts, counting rows, watching arrivals -----------------------------------------


@dataclass
class Fleet:
    hostids: list[str]
    markers: dict[str, str]  # itemid of a sampled van's MARKER -> host


def create_fleet(stack: LocalZabbix, vans: int, proxyid: str | None = None) -> list[str]:
    """A template of trapper items for every key a van sends, and `vans` hosts linked to it.

    With `proxyid` (7.0) the hosts are monitored by that proxy.
    """
    monitored = {} if proxyid is None else {"monitored_by": MONITORED_BY_PROXY, "proxyid": proxyid}
    api = stack.api()
    api.host.update(hostid="10084", status=1)  # the default host polls an agent that is not there
    group = api.hostgroup.create(name="bench fleet")["groupids"][0]
    # 6.2 and later keep templates in template groups of their own.
    holder = group if stack.version == "6.0" else api.templategroup.create(name="bench fleet")["groupids"][0]
    template = api.template.create(host="bench fleet van", groups=[{"groupid": holder}])["templateids"][0]
    api.item.create(*[
        {"hostid": template, "name": key, "key_": key, "type": ITEM_TYPE_TRAPPER, "value_type": HISTORY_FLOAT}
        for key in van_keys()
    ])
    hostids: list[str] = []
    for start in range(0, vans, 250):
        hosts = [
            {"host": f"van-{i:05d}", "groups": [{"groupid": group}], "templates": [{"templateid": template}],
             **monitored}
            for i in range(start, min(vans, start + 250))
        ]
        hostids += api.host.create(*hosts)["hostids"]
    stack.config_cache_reload()
    return hostids


def marker_items(stack: LocalZabbix, hostids: list[str]) -> dict[str, str]:
    items = stack.api().item.get(hostids=hostids, filter={"key_": MARKER}, output=["itemid"],
                                 selectHosts=["host"])
    return {item["itemid"]: item["hosts"][0]["host"] for item in items}


def stored_since(api: Any, clock: int) -> int:
    return int(api.history.get(history=HISTORY_FLOAT, time_from=clock, countOutput=True))


def stored_between(api: Any, first: int, last: int) -> int:
    return int(api.history.get(history=HISTORY_FLOAT, time_from=first, time_till=last, countOutput=True))


class Arrivals(threading.Thread):
    """Polls the marker items' history; the first poll that returns a row is its arrival."""

    def __init__(self, stack: LocalZabbix, markers: dict[str, str], every: float) -> None:
        super().__init__(daemon=True)
        self.api, self.markers, self.every = stack.api(), markers, every
        self.seen: dict[tuple[str, int, int], float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.time()
            rows = self.api.history.get(history=HISTORY_FLOAT, itemids=list(self.markers),
                                        time_from=int(started) - 120, output=["itemid", "clock", "ns"])
            for row in rows:
                marker = (self.markers[row["itemid"]], int(row["clock"]), int(row["ns"]))
                self.seen.setdefault(marker, started)
            self.halt.wait(max(0.0, self.every - (time.time() - started)))


def wait_stored(api: Any, first: int, last: int, expected: int) -> int:
    """Poll until `expected` rows with clocks in [first, last] are stored (or nothing new for a while)."""
    return wait_for_count(lambda: stored_between(api, first, last), expected, STALL_LIMIT, 1.0)


# -- one fleet size --------------------------------------------------------------------------


@dataclass
class Window:
    seconds: float
    offered: float  # readings/s the vans had acknowledged
    stored: float  # rows/s that arrived in Zabbix
    cpu: dict[str, float]  # part -> CPU seconds


@dataclass
class Outcome:
    vans: int
    learn_seconds: float  # warm-up: its last message until all of it was stored
    latencies: list[float]
    window: Window
    acked: int  # readings of the whole phase (window and its edges)
    stored: int
    refused: int


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Centre:
    stack: LocalZabbix
    broker: Broker
    parts: dict[str, list[int]]
    fleet: Fleet
    args: argparse.Namespace

    async def run(self, count: int) -> Outcome:
        api = self.stack.api()
        rng = random.Random(count)
        step = max(1, count // self.args.sample)
        sampled = {f"van-{i:05d}" for i in range(0, count, step)}
        tally = Tally()
        states = [VanState(i, rng) for i in range(count)]
        vans = [Van(state, self.broker.port, tally, state.host in sampled) for state in states]
        markers = {item: host for item, host in self.fleet.markers.items() if host in sampled}
        try:
            await connect_all(vans)
            learn_seconds = await self.warm_up(api, vans, tally)
            tally = Tally()
            for van in vans:
                van.tally = tally
            arrivals = Arrivals(self.stack, markers, self.args.poll)
            arrivals.start()
            try:
                window = await self.window(api, vans, tally)
                assert tally.first_clock is not None
                stored = await asyncio.to_thread(
                    wait_stored, api, tally.first_clock, tally.last_clock, tally.readings
                )
                await asyncio.sleep(2 * self.args.poll)  # the last arrivals' poll
            finally:
                arrivals.halt.set()
                arrivals.join()
        finally:
            for van in vans:
                van.close()
        seen = arrivals.seen
        latencies = [seen[row] - sent for row, sent in tally.published.items() if row in seen]
        return Outcome(count, learn_seconds, latencies, window, tally.readings, stored, tally.refused)

    async def warm_up(self, api: Any, vans: list[Van], tally: Tally) -> float:
        """Seconds from the last warm-up message until Zabbix stored all of them (the bridges learn keys)."""
        await asyncio.sleep(ROUND)  # quiet: no clock of an earlier run's readings overlaps this one's
        await drive_all(vans, self.args.warmup * ROUND)
        published = time.monotonic()
        assert tally.first_clock is not None
        warm = await asyncio.to_thread(wait_stored, api, tally.first_clock, tally.last_clock, tally.readings)
        seconds = time.monotonic() - published
        print(f"{len(vans)} vans, warm-up: {warm}/{tally.readings} stored {seconds:.0f}s after the last "
              f"message", flush=True)
        await asyncio.to_thread(wait_drained, self.stack)
        await asyncio.sleep(ROUND)
        return seconds

    async def window(self, api: Any, vans: list[Van], tally: Tally) -> Window:
        """Steady publishing; what arrived and what ran while it lasted."""
        driving = asyncio.ensure_future(drive_all(vans, self.args.seconds + 2 * ROUND))
        await asyncio.sleep(ROUND)  # every van has published once: the rate is steady
        since = int(time.time()) - 2 * int(ROUND)  # older than any reading of this phase
        before = cpu_by_part(self.parts)
        rows_before = await asyncio.to_thread(stored_since, api, since)
        started, acked_before = time.time(), tally.readings
        await asyncio.sleep(self.args.seconds)
        after = cpu_by_part(self.parts)
        rows_after = await asyncio.to_thread(stored_since, api, since)
        seconds, acked = time.time() - started, tally.readings - acked_before
        await driving
        cpu = {part: after[part] - before[part] for part in after}
        return Window(seconds, acked / seconds, (rows_after - rows_before) / seconds, cpu)


PARTS = ("edge", "broker", "bridges", "proxy", "zabbix", "api")  # "proxy" only with --proxy
HEADINGS = {"edge": "generator cores (us/rdg)", "broker": "broker", "bridges": "2 bridges", "proxy": "proxy",
            "zabbix": "Zabbix+PG", "api": "API polls"}


def parts_of(o: Outcome) -> list[str]:
    return [part for part in PARTS if part in o.window.cpu]


def latency(o: Outcome, fraction: float) -> str:
    return f"{percentile(o.latencies, fraction):.2f}" if o.latencies else "-"


def describe(o: Outcome) -> str:
    w = o.window
    return (
        f"{o.vans} vans: offered {w.offered:,.0f} readings/s, stored {w.stored:,.0f}/s, "
        f"latency p50 {latency(o, 0.5)}s p99 {latency(o, 0.99)}s ({len(o.latencies)} samples), "
        f"stored {o.stored}/{o.acked}, refused {o.refused}, warm-up {o.learn_seconds:.0f}s, CPU s: "
        + ", ".join(f"{part} {w.cpu[part]:.1f}" for part in parts_of(o))
    )


def per_reading_us(o: Outcome, part: str) -> float:
    w = o.window
    return w.cpu[part] / (w.stored * w.seconds) * 1e6


def report(outcomes: list[Outcome]) -> str:
    parts = parts_of(outcomes[0])
    rows = []
    for o in outcomes:
        w = o.window
        rows.append([
            f"{o.vans:,}",
            f"{w.offered:,.0f}",
            f"{w.stored:,.0f}",
            latency(o, 0.5),
            latency(o, 0.99),
            latency(o, 1.0),
            len(o.latencies),
            *(f"{w.cpu[p] / w.seconds:.2f} ({per_reading_us(o, p):.1f})" for p in parts),
            f"{sum(w.cpu.values()) / w.seconds:.2f}",
            f"{o.stored}/{o.acked}" + (" OK" if o.stored == o.acked else " MISMATCH"),
            f"{o.learn_seconds:.0f}",
        ])
    return table(
        [
            "vans", "readings/s offered", "readings/s stored", "latency p50 s", "p99 s", "max s", "samples",
            *(HEADINGS[p] for p in parts), "cores busy", "stored/acked", "warm-up backlog s",
        ],
        rows,
    )


def compare(a: list[Outcome], b: list[Outcome]) -> str:
    """Each tree's medians, and the B/A ratios of the pairs (A then B in one pair, B then A in the next)."""

    def figures(o: Outcome) -> dict[str, float]:
        return {
            "bridge us/reading": per_reading_us(o, "bridges"),
            "readings/s stored": o.window.stored,
            "latency p50 s": percentile(o.latencies, 0.5),
            "latency p99 s": percentile(o.latencies, 0.99),
            "warm-up backlog s": o.learn_seconds,
        }

    names = list(figures(a[0]))
    rows: list[list[object]] = []
    for label, side in (("A", a), ("B", b)):
        each = [figures(o) for o in side]
        rows.append([label, *(f"{median([f[name] for f in each]):,.2f}" for name in names),
                     " ".join("OK" if o.stored == o.acked else "MISMATCH" for o in side)])
    pairs = list(zip(a, b, strict=True))
    ratios = [[figures(two)[name] / figures(one)[name] for one, two in pairs] for name in names]
    rows.append(["B/A", *(f"{median(r):.2f} ({min(r):.2f}-{max(r):.2f})" for r in ratios), ""])
    return table(["tree", *names, "stored/acked per run"], rows)


def sizing(o: Outcome, fleets: tuple[int, ...] = (10_000, 100_000)) -> str:
    """Cores, bridges and proxies for larger fleets, scaled from one run's CPU per reading.

    Assumptions (also in bench/RESULTS.md): CPU per reading stays what it was in
    this run (bridges and Zabbix batch at least as well at higher rates); a
    process is planned at CORE_BUDGET of its core (a bridge is one Python process,
    a mosquitto node one thread); a proxy machine has PROXY_CORES cores; and there
    is one spare bridge and one spare proxy so that one can fail.  A run with a
    proxy measured the proxy's cost per reading; without one, a proxy is taken to
    spend what the server and its PostgreSQL spent (it too takes in, preprocesses
    and writes every value).
    """
    w = o.window
    per_van = w.offered / o.vans
    measured = [part for part in ("broker", "bridges", "proxy", "zabbix") if part in w.cpu]
    cost_us = {part: per_reading_us(o, part) for part in measured}
    proxy_cost_us = cost_us.get("proxy", cost_us["zabbix"])
    rows = []
    for fleet in fleets:
        rate = fleet * per_van
        cores = {part: rate * us / 1e6 for part, us in cost_us.items()}
        proxy_cores = rate * proxy_cost_us / 1e6
        rows.append([
            f"{fleet:,}",
            f"{rate:,.0f}",
            f"{fleet / ROUND:,.0f}",
            f"{cores['broker']:.2f}",
            f"{cores['bridges']:.2f}",
            f"{math.ceil(cores['bridges'] / CORE_BUDGET) + 1}",
            f"{proxy_cores:.2f}" + ("" if "proxy" in cost_us else " (assumed)"),
            f"{math.ceil(proxy_cores / (PROXY_CORES * CORE_BUDGET)) + 1}",
            f"{cores['zabbix']:.2f}",
        ])
    return table(
        [
            "vans", "readings/s", "messages/s", "broker cores", "bridge cores",
            f"bridges (at {CORE_BUDGET:.0%} of a core, +1)", "proxy cores",
            f"proxies ({PROXY_CORES} cores at {CORE_BUDGET:.0%}, +1)", "server + DB cores",
        ],
        rows,
    )


def frontend_pids() -> list[int]:
    """The PHP frontend's processes (the bench's API calls), so their CPU is not counted as Zabbix's."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "comm").read_text().startswith("php"):
                found.append(int(proc.name))
    return found


@dataclass(frozen=True)
class Uplink:
    """Where the bridges send: the server's trapper, or a proxy's (whose CPU is then counted apart)."""

    port: int
    proxy_pid: int | None = None


@contextlib.contextmanager
def centre(
    stack: LocalZabbix, workdir: Path, fleet: Fleet, args: argparse.Namespace, uplink: Uplink, *,
    tree: str | None = None,
) -> Iterator[Centre]:
    """A fresh broker and two bridges (of `tree`, or this tree) in front of the stack."""
    broker = Broker(workdir, inflight=20, queued=0)
    broker.start()
    bridges: list[subprocess.Popen[bytes]] = []
    try:
        start_bridges(bridges, BridgeSetup(BRIDGES, 0, 0, tree=tree), workdir, broker, uplink.port)
        assert broker.process is not None
        parts = {"broker": [broker.process.pid], "bridges": [b.pid for b in bridges], "api": frontend_pids()}
        if uplink.proxy_pid is not None:
            parts["proxy"] = [uplink.proxy_pid]
        yield Centre(stack, broker, parts, fleet, args)
    finally:
        stop(bridges)
        broker.stop()


def server_config(db_syncers: int) -> dict[str, str]:
    """Zabbix's defaults but the caches a fleet needs (the default 32M CacheSize ran out at 135,000 items)."""
    return {
        "StartDBSyncers": str(db_syncers),
        "CacheSize": "512M",
        "HistoryCacheSize": "128M",
        "HistoryIndexCacheSize": "64M",
        "TrendCacheSize": "64M",
    }


def proxy_config(db_syncers: int, buffer_mode: str) -> dict[str, str]:
    """The proxy sized as the server is (a proxy keeps no trends), buffering values in `buffer_mode`."""
    settings = {
        key: value for key, value in server_config(db_syncers).items() if key != "TrendCacheSize"
    } | {"StartTrappers": "5", "ProxyBufferMode": buffer_mode}
    if buffer_mode != "disk":
        settings["ProxyMemoryBufferSize"] = "256M"  # 0, the default, is refused with memory buffering
    return settings


def raise_file_limit(vans: int) -> None:
    """A socket per van here and one per van in mosquitto (which inherits this limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = vans + 1000
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"file limit {hard} is below the {needed} this fleet needs (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))


def add_fleet_proxy(stack: LocalZabbix, args: argparse.Namespace) -> tuple[str, Uplink]:
    """A 7.0 proxy for the fleet, registered on the server; its id and the uplink through it."""
    address = stack.add_proxy(PROXY_NAME, settings=proxy_config(args.db_syncers, args.proxy))
    port = address.rsplit(":", 1)[1]
    # No local address: the API takes one only for a proxy in a proxy group.
    proxyid: str = stack.api().proxy.create(name=PROXY_NAME, operating_mode=PROXY_ACTIVE)["proxyids"][0]
    return proxyid, Uplink(int(port), stack.proxy_pid(PROXY_NAME))


def wait_proxy_knows(port: int, host: str, timeout: float = 120.0) -> None:
    """Until the proxy accepts a value for `host` (it fetches the hosts from the server every second)."""
    deadline = time.monotonic() + timeout
    while True:
        sent = subprocess.run(
            [C_SENDER, "-z", "127.0.0.1", "-p", str(port), "-s", host, "-k", "obd.voltage", "-o", "13.9"],
            capture_output=True, text=True, check=False,
        )
        if "processed: 1" in sent.stdout:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy did not learn {host} in {timeout:.0f}s: {sent.stdout.strip()}")
        time.sleep(2.0)


async def bench(
    stack: LocalZabbix, fleet: Fleet, args: argparse.Namespace, workdir: Path, uplink: Uplink
) -> list[Outcome]:
    outcomes = []
    with centre(stack, workdir, fleet, args, uplink) as running:
        for count in args.vans:
            outcome = await running.run(count)
            print(describe(outcome), flush=True)
            outcomes.append(outcome)
    return outcomes


async def bench_trees(
    stack: LocalZabbix, fleet: Fleet, args: argparse.Namespace, workdir: Path, uplink: Uplink
) -> tuple[list[Outcome], list[Outcome]]:
    """One fleet size, bridges of tree A and of tree B in turn: A B, then B A, ... (`--runs` pairs).

    Each run has a centre of its own (fresh broker and bridges), so both trees start
    with bridges that know no items and with vans whose sessions are new.
    """
    results: tuple[list[Outcome], list[Outcome]] = ([], [])  # by position: an A/A run keeps two lists
    for pair in range(args.runs):
        for side in (0, 1) if pair % 2 == 0 else (1, 0):
            with centre(stack, workdir, fleet, args, uplink, tree=args.tree[side]) as running:
                outcome = await running.run(args.vans[0])
            print(f"pair {pair + 1}, tree {'AB'[side]}: {describe(outcome)}", flush=True)
            results[side].append(outcome)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(  # largest first: later phases reuse vans whose items the bridges know
        "--vans", type=int, nargs="+", default=[5000, 1000, 100]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per fleet size")
    parser.add_argument("--warmup", type=int, default=3, help="rounds of 10 s before the window")
    parser.add_argument("--sample", type=int, default=200, help="vans whose arrivals are watched")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between arrival polls")
    parser.add_argument("--db-syncers", type=int, default=4, help="Zabbix StartDBSyncers (6.0 default: 4)")
    parser.add_argument(
        "--proxy", choices=("disk", "hybrid", "memory"),
        help="send through a Zabbix 7.0 proxy with this ProxyBufferMode (a 7.0 server behind it)",
    )
    parser.add_argument(
        "--tree", action="append", default=[], help="source tree of the bridges; twice: compare A and B"
    )
    parser.add_argument("--runs", type=int, default=3, help="with --tree: A/B pairs, alternating order")
    args = parser.parse_args()
    if len(args.tree) not in (0, 2):
        parser.error("--tree: give two trees to compare, or none")
    if args.tree and len(args.vans) != 1:
        parser.error("--tree: give one fleet size (--vans N)")
    raise_file_limit(max(args.vans))
    version = "6.0" if args.proxy is None else "7.0"
    via = "" if args.proxy is None else f" through a {args.proxy}-buffered proxy"
    trees = f", bridges of A = {args.tree[0]} and B = {args.tree[1]}" if args.tree else ""
    print(f"# fleet: {args.vans} vans, one message per van every {ROUND:.0f}s, {BRIDGES} bridges{via}{trees}")
    print(machine(), flush=True)
    with (
        LocalZabbix(version, server_config=server_config(args.db_syncers)) as stack,
        tempfile.TemporaryDirectory(prefix="trapline-bench-fleet-") as tmp,
    ):
        print(f"Zabbix {stack.package_version}, trapper {stack.trapper_address}", flush=True)
        started = time.monotonic()
        proxyid, uplink = None, Uplink(stack.trapper_port)
        if args.proxy is not None:
            proxyid, uplink = add_fleet_proxy(stack, args)
        hostids = create_fleet(stack, max(args.vans), proxyid)
        fleet = Fleet(hostids, marker_items(stack, hostids))
        if proxyid is not None:
            wait_proxy_knows(uplink.port, f"van-{max(args.vans) - 1:05d}")
        print(f"{len(hostids)} hosts x {len(van_keys())} items created in {time.monotonic() - started:.0f}s",
              flush=True)
        try:
            if args.tree:
                a, b = asyncio.run(bench_trees(stack, fleet, args, Path(tmp), uplink))
            else:
                outcomes = asyncio.run(bench(stack, fleet, args, Path(tmp), uplink))
        except Exception:
            print(log_tail(stack.server_log), flush=True)  # the stack's directory goes with it
            raise
    print()
    if args.tree:
        print(f"A = {args.tree[0]}, B = {args.tree[1]}, {args.vans[0]:,} vans, {args.runs} pairs")
        print(compare(a, b))
        print()
        print(report([*a, *b]))
    else:
        print(report(outcomes))
        print()
        largest = max(outcomes, key=lambda o: o.vans)
        print(f"sizing from the {largest.vans:,}-van run:")
        print(sizing(largest))
    print(machine())


if __name__ == "__main__":
    main()
