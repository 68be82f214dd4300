"""MQTT end to end: readings/s edge -> mosquitto -> bridge(s) -> a real Zabbix 6.0 trapper.

Every run starts from scratch: a mosquitto broker (tests/support/mosquitto.py, plus the
limits under test), then one or two bridge processes as deployed
(``python3 -m trapline run`` with an ``mqtt_bridge`` collector in one shared
subscription group and a ``[zabbix]`` destination, default spool and flush
settings), ready once the broker logged their subscription.  A warm-up round
(every key, two messages per bridge) lets each bridge learn its keys.  Then
this process, as the edge (the real ``MqttDestination``), publishes
``--readings`` readings in messages of ``--per-message`` readings, and the clock
stops when Zabbix has STORED all of them: the history rows of the run's clock
are counted through the API until the count reaches the total (the history
syncer writes about once a second, so a run ends up to ~1 s late; 200,000
readings per run dilute that).  A control run sends the same readings from the
edge straight to the trapper (ZabbixDestination, no MQTT) and counts them alike.
The server runs ``--db-syncers`` history syncers (default 4, Zabbix's own
default; the test stack starts 1).

Runs are interleaved (1 bridge, 2 bridges, control, then the reverse order), so
the scaling ratio comes from pairs of runs in the same round.  CPU time is read
from /proc per part: the edge (this process while it publishes), the broker, the
bridges, and the Zabbix stack (server, PostgreSQL, the frontend answering the
count queries).

A second table keeps one bridge and varies the broker's in-flight window
(``max_inflight_messages``, default 20 unacknowledged QoS 1 messages per client)
and the readings per message; the last row uses mosquitto's default
``max_queued_messages`` (1000) with more messages than fit in it (its rate
includes a 20 s wait for rows that never come: only its stored count matters).

With ``--tree A --tree B`` it compares two source trees instead (e.g. main, exported
with ``git archive``, and a branch): one bridge per run, its code imported from the
tree, runs alternating A, B, B, A...; the figures of interest are the bridge's CPU per
reading and the B/A ratios of same-round pairs.  The edge and Zabbix stay the same.

    flock /tmp/trapline-bench.lock python3 -m bench.mqtt [--readings 200000] [--per-message 1000] [--runs 5]
        [--limit-runs 3 (0: skip the second table)] [--small-messages 2000] [--db-syncers 4]
        [--tree A --tree B]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._util import machine, median, table, wait_for_count
from bench.sender import HOST, PIPELINE_BATCH, Clocks, create_host, new_destination, wait_drained
from devtools.localzabbix import LocalZabbix
from tests.support.mosquitto import Mosquitto
from trapline.core.config import Section
from trapline.core.model import Reading
from trapline.core.plugin import Destination, Spooled
from trapline.exporters.mqtt import MqttDestination, build_destinations

HISTORY_UNSIGNED = 3
GROUP = "bench"
EDGE_WINDOW = 64  # deliver() calls in flight at the edge (paho queues beyond its own window)
STALL_LIMIT = 20.0  # seconds without a new stored row before a run is declared short
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Setup:
    """What one run varies."""

    bridges: int
    per_message: int
    readings: int
    inflight: int = 20  # mosquitto's default max_inflight_messages
    queued: int = 1000  # mosquitto's default max_queued_messages
    tree: str | None = None  # source tree the bridges import trapline from (None: this one)

    @property
    def label(self) -> str:
        if self.bridges == 0:
            return f"control: edge -> Zabbix trapper directly (no MQTT), deliver() per {self.per_message}"
        return (
            f"{self.bridges} bridge{'s' if self.bridges > 1 else ''}, {self.per_message} readings/msg, "
            f"inflight {self.inflight}, queue {self.queued}" + (f", tree {self.tree}" if self.tree else "")
        )


@dataclass
class Outcome:
    seconds: float  # first publish -> last reading stored in Zabbix
    edge_seconds: float  # first publish -> last PUBACK
    stored: int
    cpu: dict[str, float]  # part -> CPU seconds during the run


@dataclass
class Series:
    setup: Setup
    results: list[Outcome] = field(default_factory=list)


# -- processes and their CPU time ---------------------------------------------------


class Broker(Mosquitto):
    """The test fixture's broker plus the limits under test; subscriptions logged (bridges ready)."""

    def __init__(self, workdir: Path, inflight: int, queued: int) -> None:
        super().__init__(workdir)
        self.limits = [
            f"max_inflight_messages {inflight}",
            f"max_queued_messages {queued}",
            "log_type subscribe",
        ]

    def _write_config(self) -> Path:
        config = super()._write_config()
        with config.open("a") as extra:
            extra.write("\n".join(self.limits) + "\n")
        return config

    def subscribed(self, client_id: str) -> bool:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return any(client_id in line and f"$share/{GROUP}/" in line for line in text.splitlines())


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process."""
    found: dict[int, tuple[int, float]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(proc.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return found


def cpu_by_part(parts: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each part (its pids and their descendants); the rest of our descendants is 'zabbix'."""
    procs = process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)

    def tree(root: int) -> set[int]:
        seen, todo = set(), [root]
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo += children.get(pid, [])
        return seen

    claimed = {name: set().union(*(tree(pid) for pid in pids)) for name, pids in parts.items()}
    rest = tree(os.getpid()) - {os.getpid()} - set().union(*claimed.values())
    totals = {name: sum(procs[p][1] for p in pids if p in procs) for name, pids in claimed.items()}
    totals["zabbix"] = sum(procs[p][1] for p in rest)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    totals["edge"] = usage.ru_utime + usage.ru_stime
    return totals


def bridge_config(workdir: Path, index: int, broker: Broker, trapper_port: int) -> Path:
    path = workdir / f"bridge-{index}.toml"
    spool = workdir / f"bridge-{index}-{time.time_ns()}.db"
    path.write_text(
        f"""[agent]
self_interval = 3600

[spool]
path = "{spool}"

[zabbix]
servers = ["127.0.0.1:{trapper_port}"]

[collectors.fleet]
type = "mqtt_bridge"
host = "127.0.0.1"
port = {broker.port}
client_id = "bench-bridge-{index}"
group = "{GROUP}"
session_expiry = 0   # a bridge of an earlier run must not keep a share of the messages
"""
    )
    return path


def start_bridges(
    bridges: list[subprocess.Popen[bytes]], setup: Setup, workdir: Path, broker: Broker, trapper_port: int
) -> None:
    """Start the setup's bridges into `bridges` (so the caller stops them even if one fails to come up)."""
    env = os.environ | ({"PYTHONPATH": setup.tree} if setup.tree else {})
    for index in range(1, setup.bridges + 1):
        config = bridge_config(workdir, index, broker, trapper_port)
        with (workdir / f"bridge-{index}.log").open("ab") as log:
            bridges.append(
                subprocess.Popen(
                    [sys.executable, "-m", "trapline", "run", "-c", str(config), "--log-level", "warning"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=setup.tree,  # python -m puts the working directory first on the path
                )
            )
    deadline = time.monotonic() + 30
    for index, bridge in enumerate(bridges, start=1):
        while not broker.subscribed(f"bench-bridge-{index}"):
            if bridge.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / f"bridge-{index}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"bridge {index} did not subscribe (exit {bridge.poll()}): {tail}")
            time.sleep(0.05)


def stop(bridges: list[subprocess.Popen[bytes]]) -> None:
    for bridge in bridges:
        bridge.send_signal(signal.SIGTERM)
    for bridge in bridges:
        try:
            bridge.wait(30)
        except subprocess.TimeoutExpired:
            bridge.kill()
            bridge.wait()


# -- the edge and the count in Zabbix ----------------------------------------------


def edge(broker: Broker, workdir: Path, per_message: int) -> MqttDestination:
    # Room for one delivery per message: a reading is ~70 bytes of JSON here.
    data = {
        "host": "127.0.0.1",
        "port": broker.port,
        "client_id": "bench-edge",
        "max_payload": max(131072, per_message * 200),
        "timeout": 60,
    }
    [dest] = build_destinations(Section(workdir / "edge.toml", "mqtt", data))
    assert isinstance(dest, MqttDestination)
    return dest


async def publish(dest: Destination, readings: list[Reading], per_message: int, window_size: int) -> None:
    window = asyncio.Semaphore(window_size)

    async def one(start: int) -> None:
        async with window:
            rows = [
                Spooled(start + i, r, 0.0, 0) for i, r in enumerate(readings[start : start + per_message])
            ]
            delivery = await dest.deliver(rows)
            if len(delivery.accepted) != len(rows):
                raise RuntimeError(f"edge delivery not accepted: {delivery}")

    await asyncio.gather(*(one(start) for start in range(0, len(readings), per_message)))


class Counter:
    def __init__(self, api: Any, hostid: str) -> None:
        self.api, self.hostid = api, hostid

    def stored(self, clock: int) -> int:
        reply = self.api.history.get(
            history=HISTORY_UNSIGNED,
            hostids=[self.hostid],
            time_from=clock,
            time_till=clock,
            countOutput=True,
        )
        return int(reply)

    def wait_for(self, clock: int, expected: int) -> int:
        """Poll until `expected` rows of `clock` are stored (or nothing new came for STALL_LIMIT s)."""
        return wait_for_count(lambda: self.stored(clock), expected, STALL_LIMIT, 0.2)


# -- one run -------------------------------------------------------------------------


@dataclass
class Bench:
    """What every run shares: the Zabbix stack, its keys, the row counter, fresh clocks, a scratch dir."""

    stack: LocalZabbix
    keys: list[str]
    counter: Counter
    clocks: Clocks
    workdir: Path

    async def run_once(self, setup: Setup) -> Outcome:
        if setup.bridges == 0:  # the control: the same readings straight into the trapper
            direct = new_destination(self.stack.trapper_port)
            try:
                return await self.measure(setup, direct, {}, window_size=1)
            finally:
                await direct.close()
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=self.workdir))  # fresh broker state and logs
        broker = Broker(workdir, setup.inflight, setup.queued).start()
        bridges: list[subprocess.Popen[bytes]] = []
        dest = edge(broker, workdir, setup.per_message)
        try:
            start_bridges(bridges, setup, workdir, broker, self.stack.trapper_port)
            assert broker.process is not None
            parts = {"broker": [broker.process.pid], "bridges": [b.pid for b in bridges]}
            return await self.measure(setup, dest, parts, window_size=EDGE_WINDOW)
        finally:
            await dest.close()
            stop(bridges)
            broker.stop()

    async def measure(
        self, setup: Setup, dest: Destination, parts: dict[str, list[int]], window_size: int
    ) -> Outcome:
        # Warm-up: two messages per bridge with every key (round robin gives each bridge every key).
        warm = self.clocks.readings(self.keys, len(self.keys) * 2 * max(setup.bridges, 1))
        await publish(dest, warm, len(self.keys), window_size)
        if self.counter.wait_for(warm[0].clock, len(warm)) != len(warm):
            raise RuntimeError("warm-up readings did not all reach Zabbix")
        wait_drained(self.stack)

        readings = self.clocks.readings(self.keys, setup.readings)
        before = cpu_by_part(parts)
        started = time.perf_counter()
        await publish(dest, readings, setup.per_message, window_size)
        edge_seconds = time.perf_counter() - started
        edge_cpu = cpu_by_part(parts)["edge"] - before["edge"]
        stored = await asyncio.to_thread(self.counter.wait_for, readings[0].clock, setup.readings)
        seconds = time.perf_counter() - started
        after = cpu_by_part(parts)
        cpu = {part: after.get(part, 0.0) - before.get(part, 0.0) for part in ("broker", "bridges", "zabbix")}
        cpu["edge"] = edge_cpu
        return Outcome(seconds, edge_seconds, stored, cpu)


def describe(setup: Setup, outcome: Outcome) -> str:
    n = setup.readings
    cpu = ", ".join(f"{part} {secs / n * 1e6:.1f}" for part, secs in outcome.cpu.items())
    return (
        f"{setup.label}: {n / outcome.seconds:,.0f} readings/s stored ({outcome.stored}/{n}), "
        f"edge done in {outcome.edge_seconds:.2f}s; CPU us/reading: {cpu}; "
        f"cores busy {sum(outcome.cpu.values()) / outcome.seconds:.2f}"
    )


def summary(series: list[Series]) -> str:
    rows: list[list[object]] = []
    for s in series:
        n = s.setup.readings
        secs = [o.seconds for o in s.results]
        cpu = {part: median([o.cpu[part] / n * 1e6 for o in s.results]) for part in s.results[0].cpu}
        busy = median([sum(o.cpu.values()) / o.seconds for o in s.results])
        ok = all(o.stored == n for o in s.results)
        rows.append(
            [
                s.setup.label,
                f"{n / median(secs):,.0f}",
                f"{n / max(secs):,.0f} - {n / min(secs):,.0f}",
                f"{n / median([o.edge_seconds for o in s.results]):,.0f}",
                *(f"{cpu[p]:.1f}" for p in ("edge", "broker", "bridges", "zabbix")),
                f"{sum(cpu.values()):.1f}",
                f"{busy:.2f}",
                "/".join(str(o.stored) for o in s.results) + f" of {n}" + (" OK" if ok else " SHORT"),
            ]
        )
    return table(
        [
            "setup",
            "readings/s stored (median)",
            "range",
            "edge publish readings/s",
            "edge CPU us/rdg",
            "broker",
            "bridges",
            "Zabbix+PG",
            "total",
            "cores busy",
            "stored per run",
        ],
        rows,
    )


async def bench(stack: LocalZabbix, keys: list[str], args: argparse.Namespace, workdir: Path) -> str:
    api = stack.api()
    [host] = api.host.get(filter={"host": HOST}, output=["hostid"])
    runner = Bench(stack, keys, Counter(api, host["hostid"]), Clocks(), workdir)

    async def rounds(series: list[Series], runs: int) -> None:
        for round_no in range(runs):
            order = series if round_no % 2 == 0 else series[::-1]  # alternate who goes first
            for s in order:
                outcome = await runner.run_once(s.setup)
                s.results.append(outcome)
                print(f"run {round_no + 1} {describe(s.setup, outcome)}", flush=True)

    if args.tree:
        return await compare_trees(rounds, args)
    scaling = [Series(Setup(b, args.per_message, args.readings)) for b in (1, 2)]
    control = Series(Setup(0, PIPELINE_BATCH, args.readings))
    await rounds([*scaling, control], args.runs)
    # readings/s with two over readings/s with one, per round: the same N, so a ratio of times.
    ratios = [
        one.seconds / two.seconds for one, two in zip(scaling[0].results, scaling[1].results, strict=True)
    ]
    lines = [
        summary([*scaling, control]),
        "",
        f"scaling 2 bridges / 1 bridge (same-round pairs): median {median(ratios):.2f}, "
        f"each {', '.join(f'{r:.2f}' for r in ratios)}",
        "",
    ]

    if args.limit_runs > 0:
        small = args.small_messages
        limits = [
            Series(Setup(1, 10, 10 * small, queued=100_000)),
            Series(Setup(1, 10, 10 * small, inflight=200, queued=100_000)),
            Series(Setup(1, 1, small, queued=100_000)),
            Series(Setup(1, 1, small, inflight=200, queued=100_000)),
        ]
        await rounds(limits, args.limit_runs)
        lines += [summary(limits), ""]
        # Default queue, more messages than fit: what the broker does past max_queued_messages.
        overflow = Series(Setup(1, 1, 3 * 1000))
        await rounds([overflow], 1)
        lines += [summary([overflow])]
    return "\n".join(lines)


async def compare_trees(
    rounds: Callable[[list[Series], int], Awaitable[None]], args: argparse.Namespace
) -> str:
    """One bridge from each tree, same-round pairs; the B/A ratios of bridge CPU and of the rate."""
    # A queue that drops nothing, as in the limits table: small messages queue up by the thousand.
    trees = [
        Series(Setup(1, args.per_message, args.readings, queued=100_000, tree=tree)) for tree in args.tree
    ]
    await rounds(trees, args.runs)
    a, b = trees[0].results, trees[1].results
    cpu = [two.cpu["bridges"] / one.cpu["bridges"] for one, two in zip(a, b, strict=True)]
    rate = [one.seconds / two.seconds for one, two in zip(a, b, strict=True)]
    return "\n".join([
        summary(trees),
        "",
        f"bridge CPU per reading, B/A (same-round pairs): median {median(cpu):.2f}, "
        f"each {', '.join(f'{r:.2f}' for r in cpu)}",
        f"readings/s stored, B/A (same-round pairs): median {median(rate):.2f}, "
        f"each {', '.join(f'{r:.2f}' for r in rate)}",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--per-message", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--db-syncers", type=int, default=4, help="Zabbix StartDBSyncers (6.0 default: 4)")
    parser.add_argument(
        "--limit-runs", type=int, default=3, help="runs per setup of the limits table (0: skip it)"
    )
    parser.add_argument("--small-messages", type=int, default=2000, help="messages per small-message run")
    parser.add_argument(
        "--tree", action="append", default=[], help="source tree of the bridges; twice: compare A and B"
    )
    args = parser.parse_args()
    if len(args.tree) not in (0, 2):
        parser.error("--tree: give two trees to compare, or none")
    print(f"# MQTT end to end: {args.readings} readings over {args.items} items, {args.runs} runs each")
    print(machine(), flush=True)
    syncers = {"StartDBSyncers": str(args.db_syncers)}
    with (
        LocalZabbix("6.0", server_config=syncers) as stack,
        tempfile.TemporaryDirectory(prefix="trapline-bench-mqtt-") as tmp,
    ):
        print(f"Zabbix {stack.package_version}, trapper {stack.trapper_address}", flush=True)
        keys = create_host(stack, args.items)
        report = asyncio.run(bench(stack, keys, args, Path(tmp)))
    print()
    print(report)
    print(machine())


if __name__ == "__main__":
    main()
