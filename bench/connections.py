"""One mosquitto, many vans: memory and CPU per connected and per parked van (issue 22's large fleets).

The fleet bench (bench/fleet.py) measured the broker's CPU per reading; what a fleet of
100,000 vans asks of a broker beyond that is holding the connections and the sessions.
This bench connects N vans to a fresh mosquitto (tests/support, as bench.fleet runs it),
each exactly as bench.fleet's vans (and so the edge) connect: own client id, MQTT 5,
persistent session (one day), retained Last Will ``offline``, then ``online`` retained.
It reads the broker's resident memory, CPU time and open sockets (/proc) at four points:

1. started, no client;
2. all N connected (connect rate: bench.fleet's 500 a second);
3. after ``--hold`` seconds idle: every van sends one PINGREQ once all are connected
   (the broker drops a client silent for 1.5 keep-alives, 90 s, and connecting 18,000
   vans takes 36 s), so keep ``--hold`` below 90;
4. after every van dropped its connection without DISCONNECT, as a van does when the
   ignition cuts its power: the broker publishes each Will and keeps each session
   (a parked van), so this is what a fleet that is mostly parked costs.

    flock /tmp/trapline-bench.lock python3 -m bench.connections [--vans 18000] [--hold 60]

The vans' file limit is the bench's: one socket per van here and one in mosquitto
(which inherits the limit), so N stops at the hard limit (``ulimit -Hn``) less 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._util import machine, table
from bench.fleet import Tally, Van, VanState, connect_all, raise_file_limit
from bench.mqtt import Broker, process_table
from bench.rss import status_mb

SETTLE = 2.0  # seconds for the broker to finish publishing Wills before it is read
CLOSE_WAIT = "08"  # /proc/net/tcp states: the peer closed, this side has not yet
LISTEN = "0A"
PINGREQ = bytes([0xC0, 0x00])  # MQTT 5.0, 3.12: no variable header, no payload


@dataclass(frozen=True)
class BrokerState:
    when: str
    rss_mb: float
    cpu_seconds: float
    sockets: int


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except FileNotFoundError:  # closed while the folder was read
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def broker_state(pid: int, when: str) -> BrokerState:
    return BrokerState(when, status_mb(pid)[0], process_table()[pid][1], len(socket_inodes(pid)))


def unsettled_connections(pid: int) -> int:
    """Connections the broker has yet to finish with.

    Those its peer closed that it still holds (CLOSE_WAIT), and those waiting in its
    listening socket's accept queue (for a listening socket, /proc/net/tcp's rx_queue).
    """
    inodes = socket_inodes(pid)
    count = 0
    for table_file in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table_file).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] not in inodes:
                continue
            if fields[3] == CLOSE_WAIT:
                count += 1
            elif fields[3] == LISTEN:
                count += int(fields[4].split(":")[1], 16)
    return count


async def settled_state(pid: int, when: str) -> BrokerState:
    """The broker's state once it has accepted and closed what its peers closed, so the count is exact.

    Before the first van, the port probe that saw the broker ready may still be queued or
    open on the broker's side; after the drop, so may some of the vans' connections.
    """
    for _ in range(200):  # 10 s at most; it is milliseconds on a quiet machine
        if not unsettled_connections(pid):
            break
        await asyncio.sleep(0.05)
    return broker_state(pid, when)


async def measure(broker: Broker, vans: int, hold: float) -> list[BrokerState]:
    assert broker.process is not None
    pid = broker.process.pid
    rng = random.Random(vans)
    fleet = [Van(VanState(i, rng), broker.port, Tally(), sampled=False) for i in range(vans)]
    states = [await settled_state(pid, "started, no van")]
    began = time.monotonic()
    try:
        await connect_all(fleet)
        print(f"{vans} vans connected in {time.monotonic() - began:.0f}s", flush=True)
        states.append(broker_state(pid, "all connected"))
        for van in fleet:
            assert van.writer is not None
            van.writer.write(PINGREQ)  # the answer, PINGRESP, is read and passed over by the van
        await asyncio.sleep(hold)
        states.append(broker_state(pid, f"after {hold:.0f}s idle"))
    finally:
        for van in fleet:
            van.close()  # no DISCONNECT: the broker publishes the Will and keeps the session
    await asyncio.sleep(SETTLE)
    states.append(await settled_state(pid, "all dropped: Wills sent, sessions kept"))
    return states


def report(states: list[BrokerState], vans: int) -> str:
    empty = states[0]
    rows = [
        [
            s.when,
            f"{s.rss_mb:,.1f}",
            f"{(s.rss_mb - empty.rss_mb) * 1024 * 1024 / vans:,.0f}",
            f"{s.cpu_seconds - empty.cpu_seconds:.2f}",
            s.sockets,
        ]
        for s in states
    ]
    return table(["broker", "RSS MB", "bytes per van over empty", "CPU s since start", "sockets"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vans", type=int, default=18_000)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds idle; keep below 90 (keep-alive)")
    args = parser.parse_args()
    raise_file_limit(args.vans)
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="trapline-bench-connections-") as tmp:
        broker = Broker(Path(tmp), inflight=20, queued=0)
        broker.start()
        try:
            states = asyncio.run(measure(broker, args.vans, args.hold))
        finally:
            broker.stop()
    print(report(states, args.vans))
    print(machine())


if __name__ == "__main__":
    main()
