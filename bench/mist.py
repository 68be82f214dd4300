"""Mist: AP updates per second through collector -> pipeline -> Zabbix sender, requests, memory per AP.

(a) Throughput.  A peer process runs the Mist stream (devtools/mist_server.py) and a
    minimal Zabbix trapper that answers every request with "processed: N; failed: 0".
    This process is the agent as `trapline run` builds it from a TOML file: the
    real Mist collector (websocket client, frame decoding, fleet merge), the real
    Pipeline (normalize, filter, SQLite spool with its defaults) and the real
    ZabbixDestination.  A warm-up round sends one update per AP (LLD, first
    contact with every key); then ``--updates`` full AP updates (round robin over
    ``--aps``) are pushed at once (the peer frames and compresses them before the
    clock starts, see framed()) and the clock stops when the trapper-side
    destination has acknowledged all of them.  The agent's own CPU
    time (getrusage of this process) over that window gives CPU per update.
    ``--direct`` does the same without the websocket: the same frames go straight
    into the stream connection's frame handler (decode included).
(b) Requests.  The destination's request count for the warm-up (first contact)
    and the measured round, against one request per Mist message.
(c) Memory per tracked AP: tracemalloc of the collector's fleet state after
    ``--fleet`` APs sent one full update each (LLD rows built); also the
    Prometheus series the expansion keeps per AP.

    python3 -m bench.mist [--updates 20000] [--aps 1000] [--runs 5] [--fleet 10000] [--direct]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import resource
import tempfile
import time
import timeit
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.protocol import Protocol, Side, State

from bench._util import SpoolQueue, machine, median, table
from devtools.mist_server import MistServer, ap_basic, ap_full
from trapline.app.settings import build_pipeline, load_settings
from trapline.cli import freeze_startup_objects
from trapline.collectors.mist.collector import MistCollector
from trapline.collectors.mist.fleet import FieldSchema, Fleet, FleetPolicy, SiteInfo
from trapline.collectors.mist.frames import decode_frame
from trapline.exporters.prometheus.exporter import PrometheusExporter
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.exporters.zabbix.protocol import HEADER_SIZE, encode_request, frame, parse_header, unpack_body
from trapline.middleware.filters import FilterRule, Filters
from trapline.middleware.normalize import normalize
from trapline.middleware.spool import Spool

TOKEN = "bench-token"
CLAIM_BATCH = 10_000  # the [spool] batch default
SITES = 10
WAIT_LIMIT = 300.0


def site_ids() -> list[str]:
    return [f"site-{i:03d}" for i in range(SITES)]


def mac_of(index: int) -> str:
    return f"5c5b35{index:06x}"


def _spread(index: int, salt: int, modulo: int) -> int:
    """A figure that differs from AP to AP as on a real network (fixed per AP and salt)."""
    return (index * 2654435761 + salt * 40503) % modulo


def full_update(index: int, round_no: int) -> dict[str, Any]:
    """A full AP update with every field fields.toml keeps.

    Counters differ per AP and move every round, as on a real network: a batch
    of these compresses about as well as real stats do, not as well as copies.
    """
    mac = mac_of(index)
    n = round_no
    return ap_full(
        mac,
        f"ap-{index}",
        uptime=_spread(index, 1, 10**7) + n,
        cpu_util=(_spread(index, 2, 100) + n) % 100,
        cpu_user=_spread(index, 3, 50),
        cpu_system=_spread(index, 4, 20),
        tx_bps=_spread(index, 5, 10**6) + 997 * n,
        rx_bps=_spread(index, 6, 10**6) + 1009 * n,
        tx_bytes=_spread(index, 7, 10**12) + 1_000_003 * n,
        rx_bytes=_spread(index, 8, 10**12) + 2_000_003 * n,
        version="0.14.29",
        serial=f"A{index:09d}",
        ip=f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}",
        ip_stat={"ip": f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"},
        power_src="PoE 802.3at",
        power_budget=1200,
        env_stat={
            "cpu_temp": 45 + _spread(index, 9, 20),
            "ambient_temp": 20 + _spread(index, 10, 15),
            "humidity": 30 + _spread(index, 11, 40),
            "pressure": 990 + _spread(index, 12, 40),
        },
        port_stat={
            "eth0": {
                "up": True,
                "speed": 1000,
                "full_duplex": True,
                "tx_bytes": _spread(index, 13, 10**12) + 500_009 * n,
                "rx_bytes": _spread(index, 14, 10**12) + 300_007 * n,
                "tx_pkts": _spread(index, 15, 10**9) + 401 * n,
                "rx_pkts": _spread(index, 16, 10**9) + 307 * n,
                "rx_errors": _spread(index, 17, 3),
                "tx_peak_bps": _spread(index, 18, 10**7),
                "rx_peak_bps": _spread(index, 19, 10**7),
            }
        },
        radio_stat={
            band: {
                "mac": mac,
                "channel": ch,
                "bandwidth": 20,
                "power": 8 + _spread(index, salt, 10),
                "noise_floor": -95 + _spread(index, salt + 1, 15),
                "num_clients": (_spread(index, salt + 2, 30) + n) % 40,
                "disabled": False,
                "usage": band[5:],
                "util_all": _spread(index, salt + 3, 90),
                "util_tx": _spread(index, salt + 4, 30),
                "util_rx_in_bss": _spread(index, salt + 5, 30),
                "util_rx_other_bss": _spread(index, salt + 6, 30),
                "util_unknown_wifi": _spread(index, salt + 7, 10),
                "util_non_wifi": _spread(index, salt + 8, 10),
                "tx_bytes": _spread(index, salt + 9, 10**11) + 70_001 * n,
                "rx_bytes": _spread(index, salt + 10, 10**11) + 80_021 * n,
                "tx_pkts": _spread(index, salt + 11, 10**8) + 61 * n,
                "rx_pkts": _spread(index, salt + 12, 10**8) + 127 * n,
            }
            for band, ch, salt in (("band_24", 6, 20), ("band_5", 36, 40), ("band_6", 37, 60))
        },
    )


def basic_update(index: int, round_no: int) -> dict[str, Any]:
    """A partial update: identity and the figures that move fastest."""
    n = round_no
    return ap_basic(
        mac_of(index), uptime=1000 + n, cpu_util=n % 100, num_clients=n % 7, tx_bps=8000 + n, rx_bps=16000 + n
    )


def data_frames(aps: int, count: int, first_round: int, basic: bool = False) -> list[str]:
    """``count`` stream frames, round robin over the APs, as Mist sends them (data is a JSON string)."""
    sites = site_ids()
    frames = []
    make = basic_update if basic else full_update
    for i in range(count):
        index = i % aps
        update = make(index, first_round + i // aps)
        channel = f"/sites/{sites[index % SITES]}/stats/devices"
        frames.append(json.dumps({"event": "data", "channel": channel, "data": json.dumps(update)}))
    return frames


# -- the peer process: Mist stream + minimal trapper --------------------------------


@dataclass
class TrapperCounts:
    requests: int = 0
    values: int = 0


async def serve_trapper(counts: TrapperCounts) -> asyncio.Server:
    """Answers like a Zabbix trapper that accepts everything; no database behind it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = parse_header(await reader.readexactly(HEADER_SIZE), 1 << 30)
                body = unpack_body(header, await reader.readexactly(header.length))
                n = len(json.loads(body)["data"])
                counts.requests += 1
                counts.values += n
                info = f"processed: {n}; failed: 0; total: {n}; seconds spent: 0.000100"
                writer.write(frame(json.dumps({"response": "success", "info": info}).encode()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def framed(ws: ServerConnection, frames: list[str]) -> bytes:
    """The bytes ``ws.send`` would write for ``frames``, in order, built ahead.

    Framing and permessage-deflate (with the connection's running compression
    context) are the library's own, so the agent receives exactly what a live
    send would give it; only the peer's CPU for it leaves the measured window,
    where on two cores it competed with the agent (a real Mist cloud does not).
    """
    for text in frames:
        ws.protocol.send_text(text.encode())
    return b"".join(ws.protocol.data_to_send())


def peer_main(conn: Connection) -> None:
    asyncio.run(peer(conn))


async def peer(conn: Connection) -> None:
    server = MistServer(token=TOKEN, sites={s: (s, "o1") for s in site_ids()}, orgs={"o1": "Bench org"})
    await server.start()
    counts = TrapperCounts()
    trapper = await serve_trapper(counts)
    conn.send((server.stream_url, server.rest_url, trapper.sockets[0].getsockname()[1]))
    loop = asyncio.get_running_loop()
    wire = b""
    while True:
        # The pipe is blocking; a worker thread waits on it so the servers keep running.
        command, *args = await loop.run_in_executor(None, conn.recv)
        if command == "load":  # before the agent's clock starts
            (client,) = server.clients  # 10 sites fit one connection
            wire = framed(client.ws, args[0])
            conn.send(len(wire))
        elif command == "push":
            started = time.perf_counter()
            client.ws.transport.write(wire)
            conn.send(time.perf_counter() - started)
        elif command == "counts":
            conn.send((counts.requests, counts.values))
        else:
            break
    trapper.close()
    await server.stop()


# -- the agent side ---------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_config(tmp: Path, stream_url: str, rest_url: str, trapper_port: int, compression: str) -> Path:
    token = tmp / "mist.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = tmp / "trapline.toml"
    sites = json.dumps(site_ids())
    config.write_text(
        f"""
[agent]
self_interval = 3600

[spool]
path = {json.dumps(str(tmp / "spool.db"))}

[zabbix]
servers = ["127.0.0.1:{trapper_port}"]

[collectors.mist]
type = "mist"
host = "Mist discovery"
token_file = {json.dumps(str(token))}
stream_url = {json.dumps(stream_url)}
rest_url = {json.dumps(rest_url)}
sites = {sites}
lld_min_interval = 0.5
{f"compression = {json.dumps(compression)}" if compression != "deflate" else ""}
""",
        encoding="utf-8",
    )
    return config


@dataclass
class Round:
    updates: int
    seconds: float
    cpu: float
    requests: int
    push_seconds: float
    wire_bytes: int  # what the stream sent for these updates (0 when fed directly)


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_LIMIT
    while not check():  # polls counters of several objects
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def agent_run(
    config: Path, conn: Connection, aps: int, updates: int, *, direct: bool, basic: bool
) -> tuple[Round, Round]:
    """One agent life: warm-up (one update per AP), then the measured round."""
    settings = load_settings(config)
    pipeline = build_pipeline(settings)  # the config has no [prometheus]: no observers
    spool = pipeline.spool
    (collector,) = settings.collectors
    (dest,) = settings.destinations
    assert isinstance(collector, MistCollector) and isinstance(dest, ZabbixDestination)
    freeze_startup_objects()  # as `trapline run` does
    task = asyncio.create_task(pipeline.run(install_signal_handlers=False))
    loop = asyncio.get_running_loop()
    await until(
        lambda: (
            bool(collector.connections)
            and all(c.subscribed == c.channels for c in collector.connections.values())
        ),
        "subscriptions",
    )
    connection = next(iter(collector.connections.values()))
    sent = pipeline.stats.destination(dest.name)

    async def one_round(frames: list[str], expected: int) -> Round:
        wire_bytes = 0
        if not direct:
            await loop.run_in_executor(None, conn.send, ("load", frames))
            wire_bytes = await loop.run_in_executor(None, conn.recv)
        before_sent, before_requests = sent.sent, dest.stats.requests
        started, cpu = time.perf_counter(), cpu_seconds()
        if direct:
            push_started = time.perf_counter()
            for text in frames:
                connection.handle(text)
            push = time.perf_counter() - push_started
        else:
            await loop.run_in_executor(None, conn.send, ("push",))
        await until(lambda: sent.sent - before_sent >= expected and spool.depth() == 0, "delivery")
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        if not direct:
            push = await loop.run_in_executor(None, conn.recv)
        return Round(len(frames), seconds, cpu, dest.stats.requests - before_requests, push, wire_bytes)

    try:
        # Warm-up: every AP once; raw values wait for the LLD naming their host (lld_min_interval).
        warm = await one_round(data_frames(aps, aps, 0), aps + 1)
        measured = await one_round(data_frames(aps, updates, 1, basic), updates)
    finally:
        pipeline.stop()
        await task
        spool.close()
    return warm, measured


def throughput(args: argparse.Namespace) -> str:
    ctx = multiprocessing.get_context("fork")  # before any event loop exists in this process
    parent, child = ctx.Pipe()
    peer_process = ctx.Process(target=peer_main, args=(child,), daemon=True)
    peer_process.start()
    stream_url, rest_url, trapper_port = parent.recv()
    # (name, fed directly, basic updates, compression)
    modes = [("websocket", False, False, "deflate"), ("websocket, compression off", False, False, "none")]
    if args.direct:
        modes += [("direct", True, False, "deflate"), ("direct, basic updates", True, True, "deflate")]
    results: dict[str, list[tuple[Round, Round]]] = {name: [] for name, *_ in modes}
    try:
        for run in range(args.runs):
            for name, direct, basic, compression in modes:  # interleaved, so load bursts hit all alike
                with tempfile.TemporaryDirectory(prefix="trapline-bench-mist-") as tmp:
                    config = write_config(Path(tmp), stream_url, rest_url, trapper_port, compression)
                    warm, measured = asyncio.run(
                        agent_run(config, parent, args.aps, args.updates, direct=direct, basic=basic)
                    )
                results[name].append((warm, measured))
                print(
                    f"run {run + 1} {name}: {measured.updates / measured.seconds:,.0f} updates/s wall, "
                    f"CPU {measured.cpu / measured.updates * 1e6:.1f} us/update, "
                    f"{measured.requests} requests (warm-up {warm.requests} for {warm.updates} APs), "
                    f"push {measured.push_seconds:.2f}s of {measured.seconds:.2f}s",
                    flush=True,
                )
        parent.send(("counts",))
        trapper_requests, trapper_values = parent.recv()
    finally:
        parent.send(("stop",))
        peer_process.join(10)

    rows, request_rows = [], []
    for name, pairs in results.items():
        rounds = [m for _, m in pairs]
        cpu_us = [m.cpu / m.updates * 1e6 for m in rounds]
        wall = [m.updates / m.seconds for m in rounds]
        rows.append(
            [
                f"{name}: {args.updates} updates, {args.aps} APs",
                f"{median(wall):,.0f}",
                f"{min(wall):,.0f} - {max(wall):,.0f}",
                f"{median(cpu_us):.1f}",
                f"{min(cpu_us):.1f} - {max(cpu_us):.1f}",
                f"{1e6 / median(cpu_us):,.0f}",
                f"{median([m.wire_bytes / m.updates for m in rounds]):,.0f}"
                if not name.startswith("direct")
                else "-",
            ]
        )
        if name == "websocket":
            warm, m = pairs[0]
            request_rows += [
                [
                    f"warm-up (first contact), {warm.updates} APs",
                    warm.updates,
                    warm.requests,
                    warm.updates,
                    f"{warm.updates / warm.requests:.1f}",
                ],
                [
                    f"steady, {m.updates} updates over {args.aps} APs",
                    m.updates,
                    m.requests,
                    m.updates,
                    f"{m.updates / m.requests:.1f}",
                ],
            ]
    out = [
        table(
            [
                "path",
                "updates/s wall (median)",
                "wall range",
                "agent CPU us/update (median)",
                "CPU range",
                "one-core ceiling updates/s",
                "stream bytes/update",
            ],
            rows,
        ),
        "",
        table(
            [
                "round (first run)",
                "Mist messages",
                "Zabbix requests (trapline)",
                "requests, one per message",
                "values per request",
            ],
            request_rows,
        ),
        "",
        f"trapper totals over all runs: {trapper_requests} requests, {trapper_values} values",
    ]
    return "\n".join(out)


# -- where the agent's CPU goes ------------------------------------------------------

# Stages every design that meets the issue pays per update, whatever the collector
# does: read the frame off the websocket, decode its JSON, make the value durable in
# the spool and take it out again, encode it for the trapper.
FLOOR = "[floor] "


def _deflate() -> PerMessageDeflate:
    """permessage-deflate as websockets negotiates it by default: context takeover, 15-bit window."""
    return PerMessageDeflate(False, False, 15, 15)


def stage_costs(frames: list[str], aps: int, workdir: Path) -> dict[str, float]:
    """CPU microseconds per update of each stage, run one after another on the same frames."""
    fleet = Fleet(
        FleetPolicy("Mist discovery", "mist-ap-", frozenset({"ap"}), 300.0, 0.0, 0.0, 3600.0),
        FieldSchema.load(),
    )
    fleet.set_sites({s: SiteInfo(s, s, "o1", "Bench org") for s in site_ids()})
    for index in range(aps):  # known and announced, as after the warm-up
        fleet.update(site_ids()[index % SITES], full_update(index, 0), 0.0)
    fleet.due(0.0)
    fleet.due(0.0)
    costs: dict[str, float] = {}
    count = len(frames)
    # The frames as the server puts them on the wire (permessage-deflate with context
    # takeover, as the library negotiates by default), in socket-read-sized chunks.
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    server.extensions = [_deflate()]
    for text in frames:
        server.send_text(text.encode())
    wire = b"".join(server.data_to_send())
    reads = [wire[i : i + 262144] for i in range(0, len(wire), 262144)]

    def timed_stage(name: str, action: Callable[[], Any]) -> Any:
        started = time.process_time()
        result = action()
        costs[name] = (time.process_time() - started) / count * 1e6
        return result

    def parse_wire() -> list[Any]:
        protocol = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
        protocol.extensions = [_deflate()]
        messages: list[Any] = []
        for chunk in reads:
            protocol.receive_data(chunk)
            messages += protocol.events_received()
        return messages

    parsed = timed_stage(
        FLOOR + "websocket frames parsed, deflate (the library's parser, no socket I/O)", parse_wire
    )
    assert len(parsed) == count
    events = timed_stage(
        FLOOR + "decode frame (envelope JSON)", lambda: [decode_frame(f, 1 << 20) for f in frames]
    )

    def merge() -> list[Any]:
        items: list[Any] = []
        for event in events:
            fleet.update(event.channel.split("/")[2], event.data, 1.0)
            items += fleet.due(1.0, sweep=False)
        return items

    items = timed_stage("fleet: read kept fields of the update JSON, merge, raw JSON", merge)
    filters = Filters([], FilterRule("*", 0.0, 0.0), 3600.0)
    admitted = timed_stage(
        "normalize + filter", lambda: [i for i in map(normalize, items) if filters.admit(i)]
    )
    spool = Spool(workdir / "stages.db")
    zabbix = SpoolQueue("zabbix", ZabbixDestination.needs_labels)

    def put() -> None:
        for start in range(0, len(admitted), 5000):  # the intake's high-water mark
            spool.put(admitted[start : start + 5000], [zabbix])

    timed_stage(FLOOR + "spool put (sync=full, 5000 per commit)", put)

    def drain() -> list[Any]:
        claimed = []
        while batch := spool.claim(zabbix.name, CLAIM_BATCH):
            spool.ack(s.id for s in batch)
            claimed += [s.item for s in batch]
        return claimed

    claimed = timed_stage(FLOOR + f"spool claim {CLAIM_BATCH} + ack", drain)
    spool.close()
    timed_stage(
        FLOOR + "Zabbix encode, 250 per request",
        lambda: [
            frame(encode_request(claimed[i : i + 250], 1_700_000_000, 0)) for i in range(0, len(claimed), 250)
        ],
    )
    return costs


def stages(args: argparse.Namespace) -> str:
    frames = data_frames(args.aps, args.updates, 1)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="trapline-bench-mist-") as tmp:
        for run in range(args.runs):
            runs.append(stage_costs(frames, args.aps, Path(tmp) / str(run)))
    size = median([len(f) for f in frames])
    rows = [[name, f"{median([r[name] for r in runs]):.1f}"] for name in runs[0]]
    floor = sum(median([r[n] for r in runs]) for n in runs[0] if n.startswith(FLOOR))
    total = sum(median([r[n] for r in runs]) for n in runs[0])
    rows.append(["**sum**", f"**{total:.1f}**"])
    ceiling = f"one-core ceiling {1e6 / floor:,.0f}/s"
    rows.append([f"**floor** (the {FLOOR.strip()} stages)", f"**{floor:.1f}** ({ceiling})"])
    return f"stream frame: {size:.0f} bytes (median)\n" + table(["stage", "CPU us/update (median)"], rows)


# -- does the per-update cost grow with the fleet? -------------------------------------


def fleet_round_costs(aps: int, min_interval: float) -> tuple[float, float]:
    """CPU us per update, each followed by due() as the collector does: first contact, then a round later.

    First contact: every AP once, 1 ms apart, before the next LLD value may go
    (lld_min_interval 10 s), so all of them wait for it.  Then every AP again
    after it; with a min_interval the second update of each is held.
    """
    policy = FleetPolicy("Mist discovery", "mist-ap-", frozenset({"ap"}), 300.0, min_interval, 10.0, 3600.0)
    fleet = Fleet(policy, FieldSchema.load())
    sites = site_ids()
    fleet.set_sites({s: SiteInfo(s, s, "o1", "Bench org") for s in sites})
    texts = [json.dumps(full_update(i, 0)) for i in range(aps)]
    costs = []
    for start in (0.0, aps / 1000 + 10.0):
        began = time.process_time()
        for index, text in enumerate(texts):
            now = start + index / 1000
            fleet.update(sites[index % SITES], text, now)
            fleet.due(now, sweep=False)
        costs.append((time.process_time() - began) / aps * 1e6)
    return costs[0], costs[1]


def scaling(args: argparse.Namespace) -> str:
    rows = []
    for aps in (1000, args.fleet):
        for min_interval in (0.0, 60.0):
            runs = [fleet_round_costs(aps, min_interval) for _ in range(args.runs)]
            rows.append(
                [
                    f"{aps:,}",
                    f"{min_interval:g} s",
                    f"{median([r[0] for r in runs]):.1f}",
                    f"{median([r[1] for r in runs]):.1f}",
                ]
            )
    headers = ["APs", "min_interval", "first contact (us/update)", "next round (us/update)"]
    return "fleet.update + due(sweep=False), median\n" + table(headers, rows)


# -- (c) memory per AP ---------------------------------------------------------------


def fleet_bytes(aps: int, update: Callable[[int], dict[str, Any]]) -> tuple[float, float]:
    """(fleet bytes per AP, Prometheus exporter bytes per AP) after one update of each AP."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    policy = FleetPolicy("Mist discovery", "mist-ap-", frozenset({"ap"}), 300.0, 0.0, 0.0, 3600.0)
    fleet = Fleet(policy, FieldSchema.load())
    fleet.set_sites({s: SiteInfo(s, s, "o1", "Bench org") for s in site_ids()})
    sites = site_ids()
    for index in range(aps):  # each AP at its own time, as from a stream (one float each)
        fleet.update(sites[index % SITES], update(index), index / aps)
    items = fleet.due(0.0)  # LLD rows built and cached, like a running collector
    items += fleet.due(0.0)  # the raw values, now that the LLD announced the hosts
    del items
    gc.collect()
    fleet_size = tracemalloc.get_traced_memory()[0] - before
    for index in range(aps):  # every AP once more: one raw value each
        fleet.update(sites[index % SITES], update(index), 2.0)
    raw = [normalize(i) for i in fleet.due(2.0)]
    start = tracemalloc.get_traced_memory()[0]
    exporter = PrometheusExporter("127.0.0.1", 0, 600.0)
    for item in raw:
        exporter.observe(item)
    del raw
    gc.collect()
    exporter_size = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    del exporter, fleet
    return fleet_size / aps, exporter_size / aps


def memory(args: argparse.Namespace) -> str:
    cases: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
        ("full update, every kept field (3 radios, 1 port)", lambda i: full_update(i, 1)),
        ("devtools/mist_server.py ap_full (2 radios, 1 port)", lambda i: ap_full(mac_of(i), f"ap-{i}")),
    ]
    rows = []
    for name, update in cases:
        samples = [fleet_bytes(args.fleet, update) for _ in range(args.runs)]
        fleet_per_ap = [s[0] for s in samples]
        prom_per_ap = [s[1] for s in samples]
        print(
            f"{name}: fleet {[round(x) for x in fleet_per_ap]} B/AP, "
            f"prometheus {[round(x) for x in prom_per_ap]} B/AP",
            flush=True,
        )
        rows.append(
            [
                name,
                f"{median(fleet_per_ap):,.0f}",
                f"{min(fleet_per_ap):,.0f} - {max(fleet_per_ap):,.0f}",
                f"{median(fleet_per_ap) * args.fleet / 1e6:.1f}",
                f"{median(prom_per_ap):,.0f}",
            ]
        )
    return table(
        [
            "AP update",
            f"fleet bytes/AP at {args.fleet} APs (median)",
            "range",
            "fleet MB total",
            "Prometheus series bytes/AP",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--aps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--fleet", type=int, default=10_000, help="APs for the memory measurement")
    parser.add_argument("--direct", action="store_true", help="also feed frames without the websocket")
    parser.add_argument("--only", choices=["throughput", "stages", "scaling", "memory"], default=None)
    args = parser.parse_args()
    print(f"# mist: {args.updates} updates over {args.aps} APs, {args.runs} runs; memory at {args.fleet} APs")
    print(machine(), flush=True)
    # How fast this core is right now: the machine is shared, and CPU time per update scales with it.
    reference = min(timeit.repeat("sum(range(1_000_000))", number=1, repeat=5))
    print(f"reference: sum(range(10**6)) takes {reference * 1e3:.0f} ms on this core now", flush=True)
    reports = []
    if args.only in (None, "throughput"):
        reports.append(throughput(args))
    if args.only in (None, "stages"):
        reports.append(stages(args))
    if args.only in (None, "scaling"):
        reports.append(scaling(args))
    if args.only in (None, "memory"):
        reports.append(memory(args))
    print()
    print("\n\n".join(reports))
    print(machine())


if __name__ == "__main__":
    main()
