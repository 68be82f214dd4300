"""Throughput into a real Zabbix 6.0 trapper: trapline's sender against the C and zabbix_utils senders.

Every sender delivers the same N values (same host, keys and value layout; only the
timestamps move from run to run so that history rows never collide) to the same
server in the same run.  Runs are interleaved (trapline, C, zabbix_utils, ...) so that
background load on the shared machine hits every sender alike, and the server's
history cache is drained before each run so that no sender pays for its predecessor.

Load is spread over ``--items`` trapper items because the history syncer writes one
value per item per pass (FACTS.md): with few items the database, not the sender, is
measured.

Every run is done twice, interleaved: with the whole machine shared (the server,
PostgreSQL and the sender float over all cores), and *pinned* (server and PostgreSQL on
CPU 0, the sender on CPU 1), so that sender and server do not take each other's CPU.
Beside values/s the bench reports the CPU each side spent per value: the sender's own
(user + system) and the server's (zabbix_server and PostgreSQL processes, from the
start of a run until the server has written everything).

    python3 -m bench.sender [--values 100000] [--items 1000] [--runs 5]

With ``--tree A --tree B`` it compares the trapline sender of two source trees
instead (e.g. a ``git archive`` of an older main and this checkout): one Zabbix,
one process per run that imports the tree's own ``bench/sender.py`` and sends
through that tree's ``trapline_sender`` (default spool batch), runs alternating
A, B, B, A...  The figures are the sender CPU per value and the B/A ratios of
same-round pairs.

    python3 -m bench.sender --tree A --tree B [--values 100000] [--items 1000] [--runs 6]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zabbix_utils import AsyncSender, ItemValue, Sender

# The tree this file is in, not whatever trapline is installed, is what gets measured.
from bench._util import machine, median, table
from devtools.localzabbix import LocalZabbix
from trapline.core.model import Reading
from trapline.core.plugin import Spooled
from trapline.exporters.zabbix.client import ClusterClient, Endpoint
from trapline.exporters.zabbix.destination import ZabbixDestination

HOST = "bench-sender"
VALUE_TYPE_UNSIGNED = 3
ITEM_TYPE_TRAPPER = 2
PIPELINE_BATCH = 2000  # [spool] batch default: rows claimed per delivery round
LARGER_CLAIM = 10_000  # a delivery round that gives each of the 4 lanes several requests
SERVER_CPU, SENDER_CPU = 0, 1  # the pinned layout
C_SENDER = "/usr/bin/zabbix_sender"
_C_REPLY = re.compile(r"processed: (\d+); failed: (\d+); total: (\d+)")


@dataclass
class Outcome:
    seconds: float
    processed: int
    failed: int
    requests: int = 0
    cpu: float = 0.0  # CPU seconds the sender itself used (user + system)
    server_cpu: float = 0.0  # CPU seconds of zabbix_server + PostgreSQL, run start until drained


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Contender:
    name: str
    run: Callable[[list[Reading]], Awaitable[Outcome]]
    pinned: bool = False
    results: list[Outcome] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} [pinned]" if self.pinned else self.name


def input_ready() -> None:
    """Take the bench's own input (all values of a run, built in advance) out of the GC's way.

    The agent holds only the batch it claimed from the spool; the bench holds every
    value of the run at once.  Frozen, those objects are not re-scanned by the cyclic
    garbage collector, so no Python sender is charged for the bench's memory.
    """
    gc.collect()
    gc.freeze()


# -- the server -----------------------------------------------------------------------


def create_host(stack: LocalZabbix, items: int) -> list[str]:
    api = stack.api()
    api.host.update(hostid="10084", status=1)  # the default host polls an agent that is not there
    group = api.hostgroup.create(name=f"bench {time.time_ns()}")["groupids"][0]
    hostid = api.host.create(host=HOST, groups=[{"groupid": group}])["hostids"][0]
    keys = [f"bench.v[{i}]" for i in range(items)]
    specs = [
        {"hostid": hostid, "name": k, "key_": k, "type": ITEM_TYPE_TRAPPER, "value_type": VALUE_TYPE_UNSIGNED}
        for k in keys
    ]
    for start in range(0, len(specs), 500):
        api.item.create(*specs[start : start + 500])
    stack.config_cache_reload()
    return keys


def _process_tree() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return parents


def server_side(stack: LocalZabbix) -> list[int]:
    """The zabbix_server and PostgreSQL processes of the stack (roots and all descendants)."""
    roots = {
        int((stack.workdir / "run" / "zabbix_server.pid").read_text().strip()),
        int((stack.workdir / "postgres" / "data" / "postmaster.pid").read_text().split()[0]),
    }
    parents = _process_tree()
    found = set(roots)
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


def cpu_of(pids: list[int]) -> float:
    """CPU seconds the live processes ``pids`` ran (schedstat: nanosecond precision)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def pin(stack: LocalZabbix, pinned: bool) -> None:
    """Server side on one CPU and this process (and the C sender it starts) on the other, or all free."""
    everywhere = set(range(os.cpu_count() or 1))
    for pid in server_side(stack):
        try:
            os.sched_setaffinity(pid, {SERVER_CPU} if pinned else everywhere)
        except OSError:
            continue  # a process that just ended
    os.sched_setaffinity(0, {SENDER_CPU} if pinned else everywhere)


def server_children(stack: LocalZabbix) -> dict[str, int]:
    """Process title prefix -> pid of the stack's zabbix_server children."""
    server_pid = int((stack.workdir / "run" / "zabbix_server.pid").read_text().strip())
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server_pid:
            found[title] = int(proc.name)
    return found


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_drained(stack: LocalZabbix, timeout: float = 120.0) -> float:
    """Wait until preprocessing and the history syncer are idle; returns seconds waited."""
    children = server_children(stack)
    watched = [pid for t, pid in children.items() if "history syncer" in t or "preprocessing manager" in t]
    started = time.monotonic()
    idle_since: float | None = None
    while time.monotonic() - started < timeout:
        titles = [title(pid) for pid in watched]
        busy = any(
            "syncing" in t or re.search(r"queued [1-9]", t) or re.search(r"processed [1-9]\d* values", t)
            for t in titles
        )
        now = time.monotonic()
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since > 1.2:  # titles refresh about every second
            return now - started
        time.sleep(0.1)
    raise RuntimeError(f"server still busy after {timeout}s: {[title(p) for p in watched]}")


# -- the senders --------------------------------------------------------------------


def trapline_sender(dest: ZabbixDestination, batch: int) -> Callable[[list[Reading]], Awaitable[Outcome]]:
    """``deliver()`` per ``batch`` rows, as the pipeline's delivery loop does per spool claim."""

    async def run(readings: list[Reading]) -> Outcome:
        spooled = [Spooled(i, r, 0.0, 0) for i, r in enumerate(readings)]
        input_ready()
        before_processed, before_failed = dest.stats.values_processed, dest.stats.values_failed
        before_requests = dest.stats.requests
        started, cpu = time.perf_counter(), cpu_seconds()
        unsettled = 0
        for start in range(0, len(spooled), batch):
            delivery = await dest.deliver(spooled[start : start + batch])
            unsettled += len(delivery.retry) + len(delivery.rejected)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        if unsettled:
            print(f"  trapline: {unsettled} values not accepted", file=sys.stderr)
        return Outcome(
            seconds,
            dest.stats.values_processed - before_processed,
            dest.stats.values_failed - before_failed,
            dest.stats.requests - before_requests,
            cpu,
        )

    return run


def c_sender(port: int, workdir: Path) -> Callable[[list[Reading]], Awaitable[Outcome]]:
    async def run(readings: list[Reading]) -> Outcome:
        path = workdir / "values.txt"
        # -T -N: "host key clock ns value" per line, so the values carry their own time like the others.
        path.write_text("".join(f"{r.host} {r.key} {r.clock} {r.ns} {r.value}\n" for r in readings))
        started, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
        proc = await asyncio.create_subprocess_exec(
            C_SENDER,
            "-v",
            "-z",
            "127.0.0.1",
            "-p",
            str(port),
            "-T",
            "-N",
            "-i",
            str(path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        seconds, cpu = time.perf_counter() - started, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu
        text = out.decode(errors="replace")
        replies = [tuple(int(g) for g in m.groups()) for m in _C_REPLY.finditer(text)]
        if proc.returncode != 0:
            print(f"  zabbix_sender exit {proc.returncode}: {text[-300:]}", file=sys.stderr)
        return Outcome(seconds, sum(r[0] for r in replies), sum(r[1] for r in replies), len(replies), cpu)

    return run


def item_values(readings: list[Reading]) -> list[ItemValue]:
    return [ItemValue(r.host, r.key, str(r.value), r.clock, r.ns) for r in readings]


def zabbix_utils_sender(port: int) -> Callable[[list[Reading]], Awaitable[Outcome]]:
    sender = Sender(server="127.0.0.1", port=port)

    async def run(readings: list[Reading]) -> Outcome:
        values = item_values(readings)  # its native input, built outside the clock like the others'
        input_ready()
        started, cpu = time.perf_counter(), cpu_seconds()
        reply = sender.send(values)  # blocking by design; nothing else runs meanwhile
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        return Outcome(seconds, reply.processed, reply.failed, reply.chunk, cpu)

    return run


def zabbix_utils_async_sender(port: int) -> Callable[[list[Reading]], Awaitable[Outcome]]:
    sender = AsyncSender(server="127.0.0.1", port=port)

    async def run(readings: list[Reading]) -> Outcome:
        values = item_values(readings)
        input_ready()
        started, cpu = time.perf_counter(), cpu_seconds()
        reply = await sender.send(values)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        return Outcome(seconds, reply.processed, reply.failed, reply.chunk, cpu)

    return run


# -- the run ------------------------------------------------------------------------


class Clocks:
    """A fresh second for every round of values: history rows (itemid, clock, ns) never repeat."""

    def __init__(self) -> None:
        self._next = int(time.time()) - 86_400

    def readings(self, keys: list[str], count: int) -> list[Reading]:
        clock = self._next
        self._next += 1
        return [Reading(HOST, keys[i % len(keys)], i, clock, i) for i in range(count)]


def new_destination(port: int, batch_size: int = 250) -> ZabbixDestination:
    return ZabbixDestination(
        "bench", ClusterClient([Endpoint("127.0.0.1", port)]), batch_size=batch_size, concurrency=4
    )


def contenders(port: int, workdir: Path, fresh: ZabbixDestination, big: ZabbixDestination) -> list[Contender]:
    senders = [
        (
            f"trapline, deliver() per {PIPELINE_BATCH} (spool batch default)",
            trapline_sender(fresh, PIPELINE_BATCH),
        ),
        (
            f"trapline, deliver() per {LARGER_CLAIM} (spool batch {LARGER_CLAIM})",
            trapline_sender(fresh, LARGER_CLAIM),
        ),
        (f"trapline, batch_size=1000, deliver() per {LARGER_CLAIM}", trapline_sender(big, LARGER_CLAIM)),
        ("C zabbix_sender -T -N -i FILE", c_sender(port, workdir)),
        ("zabbix_utils Sender", zabbix_utils_sender(port)),
        ("zabbix_utils AsyncSender", zabbix_utils_async_sender(port)),
    ]
    return [Contender(name, run, pinned) for pinned in (False, True) for name, run in senders]


async def bench(stack: LocalZabbix, keys: list[str], values: int, runs: int, workdir: Path) -> str:
    port = stack.trapper_port
    clocks = Clocks()
    lines: list[str] = []

    # First contact: a fresh destination knows no key yet, so each key goes in requests of its own.
    fresh = new_destination(port)
    wait_drained(stack)
    first = await trapline_sender(fresh, PIPELINE_BATCH)(clocks.readings(keys, values))
    lines.append(
        f"first contact (cold key cache, {len(keys)} new keys): {values / first.seconds:,.0f} values/s, "
        f"{first.requests} requests, processed {first.processed}/{values}, failed {first.failed}, "
        f"sender CPU {first.cpu / values * 1e6:.1f} us/value"
    )
    print(lines[-1], flush=True)

    # The C sender cannot put more than 250 values in a request; trapline can (batch_size).
    big = new_destination(port, batch_size=1000)
    wait_drained(stack)
    await trapline_sender(big, PIPELINE_BATCH)(clocks.readings(keys, len(keys)))  # learn the keys

    field = contenders(port, workdir, fresh, big)
    for run_index in range(runs):
        for contender in field:
            readings = clocks.readings(keys, values)
            pin(stack, contender.pinned)
            drained = wait_drained(stack)
            server = server_side(stack)
            server_cpu = cpu_of(server)
            outcome = await contender.run(readings)
            wait_drained(stack)
            outcome.server_cpu = cpu_of(server) - server_cpu
            contender.results.append(outcome)
            print(
                f"run {run_index + 1} {contender.label}: {values / outcome.seconds:,.0f} values/s, "
                f"processed {outcome.processed}, failed {outcome.failed}, requests {outcome.requests}, "
                f"CPU {outcome.cpu / values * 1e6:.1f} us/value, server CPU "
                f"{outcome.server_cpu / values * 1e6:.1f} us/value (server drained {drained:.1f}s before)",
                flush=True,
            )
    pin(stack, False)
    await fresh.close()
    await big.close()
    lines += ["", report(field, values)]
    return "\n".join(lines)


def report(field: list[Contender], values: int) -> str:
    """One row per contender; ratios against the C sender of the same layout (pinned or not)."""
    c_results = {c.pinned: c.results for c in field if c.name.startswith("C ")}
    rows: list[list[Any]] = []
    for contender in field:
        c_sender_results = c_results[contender.pinned]
        c_rate = values / median([o.seconds for o in c_sender_results])
        secs = [o.seconds for o in contender.results]
        rate = values / median(secs)
        # Same-run ratios: runs are interleaved, so a burst of background load hits a pair alike.
        paired = median(
            [c.seconds / o.seconds for o, c in zip(contender.results, c_sender_results, strict=True)]
        )
        processed = sorted({o.processed for o in contender.results})
        ok = all(o.processed == values and o.failed == 0 for o in contender.results)
        rows.append(
            [
                contender.label,
                f"{rate:,.0f}",
                f"{values / max(secs):,.0f} - {values / min(secs):,.0f}",
                f"{rate / c_rate:.2f}",
                f"{paired:.2f}",
                f"{median([o.cpu / values * 1e6 for o in contender.results]):.1f}",
                f"{median([o.server_cpu / values * 1e6 for o in contender.results]):.1f}",
                contender.results[0].requests,
                "/".join(str(p) for p in processed) + (" OK" if ok else " MISMATCH"),
            ]
        )
    return table(
        [
            "sender",
            "values/s (median)",
            "range (slowest - fastest)",
            "vs C (medians)",
            "vs C (same-run pairs, median)",
            "sender CPU us/value",
            "server CPU us/value",
            "requests/run",
            f"processed per run (of {values})",
        ],
        rows,
    )


# Run in a fresh interpreter with the tree first on sys.path, so that the tree's own
# bench/sender.py (which has known trapline's API in each version) does the sending.
# Trees from before bench/ became a package import their helpers as top-level modules,
# hence the tree's bench folder on the path too.
_TREE_WORKER = """
import asyncio, importlib.util, json, sys
tree = sys.argv[1]
port, items, values, clock = (int(a) for a in sys.argv[2:6])
sys.path[:0] = [tree, tree + "/bench"]
# By file, not by package name: an installed checkout's bench package would win over an
# older tree's bench folder, which is no package.
spec = importlib.util.spec_from_file_location("sender_under_test", tree + "/bench/sender.py")
s = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(s)
keys = [f"bench.v[{i}]" for i in range(items)]

async def run():
    dest = s.new_destination(port)
    # Learn the keys first, as the tree's own bench does before its measured runs.
    warm_up = [s.Reading(s.HOST, k, 0, clock - 1, i) for i, k in enumerate(keys)]
    await s.trapline_sender(dest, s.PIPELINE_BATCH)(warm_up)
    readings = [s.Reading(s.HOST, keys[i % items], i, clock, i) for i in range(values)]
    outcome = await s.trapline_sender(dest, s.PIPELINE_BATCH)(readings)
    await dest.close()
    return outcome

o = asyncio.run(run())
print(json.dumps({"seconds": o.seconds, "cpu": o.cpu, "processed": o.processed, "failed": o.failed}))
"""


def tree_run(stack: LocalZabbix, tree: str, items: int, values: int, clock: int) -> Outcome:
    """One measured run of ``tree``'s sender in a process of its own; server CPU measured from here."""
    wait_drained(stack)
    server = server_side(stack)
    server_cpu = cpu_of(server)
    argv = [
        sys.executable,
        "-c",
        _TREE_WORKER,
        tree,
        str(stack.trapper_port),
        str(items),
        str(values),
        str(clock),
    ]
    out = subprocess.run(
        argv, capture_output=True, text=True, check=False, env=os.environ | {"PYTHONPATH": tree}
    )
    if out.returncode:
        raise RuntimeError(f"the sender of {tree} failed: {out.stderr[-2000:]}")
    wait_drained(stack)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    outcome = Outcome(result["seconds"], result["processed"], result["failed"], cpu=result["cpu"])
    outcome.server_cpu = cpu_of(server) - server_cpu
    return outcome


def compare_trees(stack: LocalZabbix, trees: list[str], items: int, values: int, runs: int) -> str:
    """Alternate the trees' senders (A, B, B, A, ...); medians and same-round B/A ratios."""
    clock = int(time.time()) - 86_400  # two seconds per run: the warm-up's and the run's
    results: list[list[Outcome]] = [[], []]
    for run_index in range(runs):
        for side in (0, 1) if run_index % 2 == 0 else (1, 0):
            clock += 2
            outcome = tree_run(stack, trees[side], items, values, clock)
            results[side].append(outcome)
            print(
                f"run {run_index + 1} {'AB'[side]}: {values / outcome.seconds:,.0f} values/s, processed "
                f"{outcome.processed}, failed {outcome.failed}, "
                f"CPU {outcome.cpu / values * 1e6:.2f} us/value, "
                f"server CPU {outcome.server_cpu / values * 1e6:.1f} us/value",
                flush=True,
            )
    rows: list[list[Any]] = []
    for side, outcomes in enumerate(results):
        cpu = [o.cpu / values * 1e6 for o in outcomes]
        rates = [values / o.seconds for o in outcomes]
        ok = all(o.processed == values and o.failed == 0 for o in outcomes)
        rows.append(
            [
                f"{'AB'[side]}: {trees[side]}",
                f"{median(cpu):.2f}",
                f"{median(rates):,.0f}",
                f"{median([o.server_cpu / values * 1e6 for o in outcomes]):.1f}",
                "all" if ok else "MISMATCH",
            ]
        )
    cpu_ratios = [b.cpu / a.cpu for a, b in zip(*results, strict=True)]
    rate_ratios = [a.seconds / b.seconds for a, b in zip(*results, strict=True)]
    return (
        table(["tree", "sender CPU us/value", "values/s", "server CPU us/value", f"{values} stored"], rows)
        + f"\nB/A sender CPU per same-round pair: median {median(cpu_ratios):.3f} "
        f"(range {min(cpu_ratios):.3f} - {max(cpu_ratios):.3f}); "
        f"B/A values/s: median {median(rate_ratios):.3f} "
        f"(range {min(rate_ratios):.3f} - {max(rate_ratios):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tree", action="append", default=[], help="twice: compare two source trees")
    args = parser.parse_args()
    if args.tree:
        if len(args.tree) != 2:
            parser.error("--tree takes exactly two trees")
        print(f"# sender A/B: {args.values} values over {args.items} items, {args.runs} runs each")
        print(machine(), flush=True)
        with LocalZabbix("6.0") as stack:
            create_host(stack, args.items)
            print(compare_trees(stack, args.tree, args.items, args.values, args.runs))
        print(machine())
        return
    print(f"# sender throughput: {args.values} values over {args.items} items, {args.runs} runs each")
    print(machine(), flush=True)
    with LocalZabbix("6.0") as stack, tempfile.TemporaryDirectory(prefix="trapline-bench-") as tmp:
        print(f"Zabbix {stack.package_version}, trapper {stack.trapper_address}", flush=True)
        keys = create_host(stack, args.items)
        report = asyncio.run(bench(stack, keys, args.values, args.runs, Path(tmp)))
    print()
    print(report)
    print(machine())


if __name__ == "__main__":
    main()
