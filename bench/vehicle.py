"""OBD-II polling: readings/s through a slow adapter, and the agent's memory and CPU.

Throughput: trapline's OBD collector (the real one, from ``build()``, into a counting
Outbox; multi-PID requests off and on) against python-OBD's ``Async`` loop watching
the same PIDs.  Peer: ELM327-emulator (``car`` scenario, its own ``delay`` 0) behind
a small TCP proxy that holds every request line for ``--latency`` seconds, so a
request costs one adapter/ECU round trip whatever it asks for (the emulator's own
``delay`` is slept once per PID of a multi-PID request, which no real ECU does).
Emulator, proxy and client are separate processes, restarted for every run;
clients are interleaved.  A run counts decoded PID values for ``--duration``
seconds once values flow (connection set-up is not counted); the rate is the
values over the span from the last value before the window to the last one in
it (see ``window``).

Agent: ``python3 -m trapline run -c CONFIG`` with an OBD collector (through the
same proxy, one tier of 10 PIDs every second: ~10 PIDs/s), a GPS collector on
gpsfake replaying tests/data/route.nmea, a Zabbix server on a closed port and a
Prometheus listener.  VmRSS after ``--settle`` seconds, then the process' CPU
time (all threads, /proc/PID/stat) over ``--cpu-seconds``.

    python3 -m bench.vehicle [--duration 10] [--runs 5] [--latency 0.05] [--agent-runs 3]

Internal roles (started by the benchmark itself): ``proxy``, ``client``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The tree this file is in, not whatever trapline is installed, is what gets measured.
from bench._util import machine, median, table

ROOT = Path(__file__).resolve().parent.parent
ROUTE = ROOT / "tests" / "data" / "route.nmea"
PIDS = ("RPM", "SPEED", "ENGINE_LOAD", "THROTTLE_POS", "COOLANT_TEMP", "INTAKE_TEMP")  # a fast tier
AGENT_PIDS = (*PIDS, "INTAKE_PRESSURE", "MAF", "TIMING_ADVANCE", "FUEL_LEVEL")  # 10 per second
SPEEDUP_TARGETS = {"trapline, single PID": 1.0, "trapline, multi-PID (6 per request)": 3.0}
RSS_TARGET_MB = 60.0
CPU_TARGET_PERCENT = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
FIRST_VALUE_LIMIT = 30.0  # seconds for a client to connect and decode its first value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {limit:g} s")


# -- role: the latency proxy ----------------------------------------------------------
class LatencyProxy:
    """Forwards ELM327 traffic; each request line (ends in CR) waits ``delay`` first.

    Answers go back at once.  Counts requests and mode 01 PIDs asked for; SIGUSR1
    prints the counts as a JSON line.
    """

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.requests = 0
        self.pids = 0

    def counts(self) -> str:
        return json.dumps({"requests": self.requests, "pids": self.pids})

    def _count(self, line: bytes) -> None:
        text = line.strip().upper().replace(b" ", b"")
        self.requests += 1
        if text.startswith(b"01") and len(text) >= 4:
            self.pids += (len(text) - 2) // 2  # python-OBD's fast-mode frame-count digit rounds away

    async def _requests(self, client: asyncio.StreamReader, adapter: asyncio.StreamWriter) -> None:
        pending = b""
        while chunk := await client.read(4096):
            pending += chunk
            while b"\r" in pending:
                line, pending = pending.split(b"\r", 1)
                await asyncio.sleep(self.delay)
                self._count(line)
                adapter.write(line + b"\r")
                await adapter.drain()
        adapter.close()

    @staticmethod
    async def _answers(adapter: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        while chunk := await adapter.read(4096):
            client.write(chunk)
            await client.drain()
        client.close()

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._requests(reader, up_writer), self._answers(up_reader, writer),
                             return_exceptions=True)

    async def run(self, listen: int) -> None:
        server = await asyncio.start_server(self.serve_client, "127.0.0.1", listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, lambda: print(self.counts(), flush=True))
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        async with server:
            await stop.wait()


# -- role: a polling client --------------------------------------------------------------
def run_trapline(port: int, duration: float, multi: bool, state_dir: Path) -> dict[str, float]:
    from trapline.collectors.obd import build  # noqa: PLC0415 - only the client process needs it
    from trapline.core.config import Section  # noqa: PLC0415
    from trapline.core.model import Item, Reading  # noqa: PLC0415

    class CountingOutbox:
        def __init__(self) -> None:
            self.counted = (0, 0.0)  # (values, when the last one came); one assignment: read whole
            self.errors: list[str] = []

        def put(self, item: Item) -> None:
            if isinstance(item, Reading) and item.key.startswith("obd.pid["):
                self.counted = (self.counted[0] + 1, time.perf_counter())

        def error(self, reason: str, condition: str | None = None) -> None:
            self.errors.append(reason)

        def resolved(self, condition: str, message: str) -> None:
            pass  # the bench counts errors only

    section = Section(Path("bench.toml"), "collectors.bench", {
        "type": "obd", "host": "bench", "device": f"socket://127.0.0.1:{port}", "protocol": "6",
        "multi_pid": multi, "dtc_interval": 3600.0, "idle_interval": 3600.0, "state_dir": str(state_dir),
        "tiers": {"fast": {"interval": 0.05, "pids": list(PIDS)}},
    })
    out = CountingOutbox()

    async def main() -> dict[str, float]:
        task = asyncio.create_task(build("bench", section).run(out))
        try:
            async with asyncio.timeout(FIRST_VALUE_LIMIT):
                while out.counted[0] == 0:  # noqa: ASYNC110 - the collector only counts
                    await asyncio.sleep(0.005)
            return await asyncio.to_thread(window, lambda: out.counted, duration)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    result = asyncio.run(main())
    result["errors"] = len(out.errors)
    return result


def run_python_obd(port: int, duration: float, delay_cmds: float) -> dict[str, float]:
    import obd  # noqa: PLC0415

    counted = [(0, 0.0)]  # (values, when the last one came)

    def count(response: Any) -> None:  # python-OBD's loop thread is the only writer
        if not response.is_null():
            counted[0] = (counted[0][0] + 1, time.perf_counter())

    connection = obd.Async(f"socket://127.0.0.1:{port}", baudrate=38400, protocol="6", delay_cmds=delay_cmds)
    if connection.status() != obd.OBDStatus.CAR_CONNECTED:
        raise RuntimeError(f"python-OBD did not connect: {connection.status()}")
    for name in PIDS:
        connection.watch(obd.commands[name], callback=count)
    connection.start()
    try:
        first_deadline = time.monotonic() + FIRST_VALUE_LIMIT
        while counted[0][0] == 0:
            if time.monotonic() > first_deadline:
                raise TimeoutError(f"python-OBD: no value within {FIRST_VALUE_LIMIT:g} s")
            time.sleep(0.005)
        result = window(lambda: counted[0], duration)
    finally:
        connection.stop()
        connection.close()
    result["errors"] = 0
    return result


def window(counted: Any, duration: float) -> dict[str, float]:
    """Values counted over about ``duration`` s, with the process CPU time spent.

    The span runs from the value before the window to the last value in it, not
    over the window's own length: trapline hands a round's values over together,
    and a window that ends just before a round ends would otherwise miss up to one
    round (6 values, 3% of 10 s here) for a reason that is only the measurement's.
    """
    (values, first), cpu = counted(), time.process_time()
    time.sleep(duration)
    (values_after, last), cpu_after = counted(), time.process_time()
    return {"values": values_after - values, "seconds": last - first, "cpu": cpu_after - cpu}


# -- orchestration --------------------------------------------------------------------------------
@contextmanager
def process(command: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(command, text=True, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def slow_adapter(workdir: Path, latency: float) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A fresh emulator behind the latency proxy: (proxy port, proxy process)."""
    elm_port, proxy_port = free_port(), free_port()
    env = os.environ | {"ELM_LOG_CFG": "/nonexistent"}  # else elm.log grows in the cwd
    emulator = ["elm", "-s", "car", "-n", str(elm_port), "-d", "-b", os.devnull]
    with process(emulator, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        wait_port(elm_port)
        proxy = [sys.executable, __file__, "proxy", str(proxy_port), str(elm_port), str(latency)]
        with process(proxy, stdout=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the latency proxy did not start")
            yield proxy_port, proc


CLIENTS: dict[str, list[str]] = {
    "trapline, single PID": ["trapline", "single"],
    "trapline, multi-PID (6 per request)": ["trapline", "multi"],
    "python-OBD Async, delay_cmds=0": ["python-obd", "0"],
    "python-OBD Async, delay_cmds=0.25 (default)": ["python-obd", "0.25"],
}
BASELINE = "python-OBD Async, delay_cmds=0"


def values_rate(result: dict[str, float]) -> float:
    return result["values"] / result["seconds"]


def throughput(workdir: Path, runs: int, duration: float, latency: float) -> None:
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CLIENTS}
    for run in range(runs):
        for name, role in CLIENTS.items():
            with slow_adapter(workdir, latency) as (port, _):
                command = [sys.executable, __file__, "client", *role, str(port), str(duration)]
                done = subprocess.run(command, capture_output=True, text=True, check=False,
                                      timeout=duration + 60)
                if done.returncode != 0:
                    raise RuntimeError(f"{name} failed: {done.stderr[-800:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                samples[name].append(result)
                print(
                    f"run {run + 1} {name}: {values_rate(result):.1f} values/s, "
                    f"errors {result['errors']:.0f}",
                    flush=True,
                )

    base = median([values_rate(r) for r in samples[BASELINE]])
    rows = []
    for name, results in samples.items():
        rates = [values_rate(r) for r in results]
        per_value_ms = median([1000 * r["cpu"] / max(r["values"], 1) for r in results])
        # same-run pairs: this client's run i over the baseline's run i
        pairs = median(
            [values_rate(r) / values_rate(b) for r, b in zip(results, samples[BASELINE], strict=True)]
        )
        target = SPEEDUP_TARGETS.get(name)
        met = target is not None and median(rates) / base >= target
        verdict = "-" if target is None else f">= {target:g}x: {'met' if met else 'MISSED'}"
        rows.append([name, f"{median(rates):.1f}", f"{min(rates):.1f} - {max(rates):.1f}",
                     f"{median(rates) / base:.2f}", f"{pairs:.2f}", f"{per_value_ms:.2f}",
                     f"{sum(r['errors'] for r in results):.0f}", verdict])
    print()
    print(f"{runs} runs of {duration:g} s per client, {1000 * latency:g} ms per request, {len(PIDS)} PIDs "
          f"({', '.join(PIDS)}); ceiling {1 / latency:.0f} single-PID values/s, "
          f"{len(PIDS) / latency:.0f} with {len(PIDS)} per request")
    print(table(["client", "values/s (median)", "range", f"vs {BASELINE} (medians)", "vs same run",
                 "client CPU ms/value", "errors counted", "target"], rows))


def agent_config(workdir: Path, obd_port: int, gps_port: int) -> tuple[Path, int]:
    metrics = free_port()
    closed = free_port()  # bound and released at once: nothing listens there
    pids = ", ".join(f'"{p}"' for p in AGENT_PIDS)
    text = f"""\
[agent]
host = "trapline-bench"

[spool]
path = "{workdir / f"spool-{time.time_ns()}.db"}"

[zabbix]
servers = ["127.0.0.1:{closed}"]

[prometheus]
listen = "127.0.0.1:{metrics}"

[collectors.van_obd]
type = "obd"
host = "van-bench"
device = "socket://127.0.0.1:{obd_port}"
protocol = "6"
state_dir = "{workdir}"

[collectors.van_obd.tiers.fast]
interval = 1.0
pids = [{pids}]

[collectors.van_gps]
type = "gps"
host = "van-bench"
server = "127.0.0.1"
port = {gps_port}
interval = 1.0
state_dir = "{workdir}"
"""
    path = workdir / f"agent-{time.time_ns()}.toml"
    path.write_text(text)
    return path, metrics


def status_mb(pid: int) -> tuple[float, float]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    # utime and stime are fields 14 and 15; the command name (field 2) may hold spaces
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLK_TCK


def proxy_counts(proxy: subprocess.Popen[str]) -> dict[str, int]:
    assert proxy.stdout is not None
    proxy.send_signal(signal.SIGUSR1)
    counts: dict[str, int] = json.loads(proxy.stdout.readline())
    return counts


def agent_run(workdir: Path, latency: float, settle: float, cpu_window: float) -> dict[str, float]:
    gps_port = free_port()
    gpsfake = ["gpsfake", "-P", str(gps_port), "-c", "0.2", "-n", str(ROUTE)]
    with (process(gpsfake, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
          slow_adapter(workdir, latency) as (obd_port, proxy)):
        wait_port(gps_port)
        path, metrics = agent_config(workdir, obd_port, gps_port)
        agent = [sys.executable, "-m", "trapline", "run", "-c", str(path), "--log-level", "error"]
        with process(agent, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
            time.sleep(settle)
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited: {proc.stderr.read()[-800:] if proc.stderr else ''}")
            rss, hwm = status_mb(proc.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as reply:
                body = reply.read().decode()
            missing = [s for s in ("trapline_obd_pid", "trapline_gps_latitude") if s not in body]
            if missing:
                raise RuntimeError(f"collectors not working, /metrics lacks {missing}")
            cpu_before, pids_before, started = cpu_seconds(proc.pid), proxy_counts(proxy), time.monotonic()
            time.sleep(cpu_window)
            cpu_after, pids_after = cpu_seconds(proc.pid), proxy_counts(proxy)
            elapsed = time.monotonic() - started
            _, hwm = status_mb(proc.pid)
    return {"rss": rss, "hwm": hwm, "cpu_percent": 100 * (cpu_after - cpu_before) / elapsed,
            "pids_per_s": (pids_after["pids"] - pids_before["pids"]) / elapsed,
            "requests_per_s": (pids_after["requests"] - pids_before["requests"]) / elapsed}


def agent(workdir: Path, runs: int, latency: float, settle: float, cpu_window: float) -> None:
    results = []
    for run in range(runs):
        result = agent_run(workdir, latency, settle, cpu_window)
        print(f"agent run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
        results.append(result)
    rss = median([r["rss"] for r in results])
    hwm = median([r["hwm"] for r in results])
    cpu = median([r["cpu_percent"] for r in results])
    print()
    print(f"agent: OBD ({len(AGENT_PIDS)} PIDs every 1 s, multi-PID, {1000 * latency:g} ms per request) + "
          "GPS "
          f"(gpsfake, 1 s) + Zabbix (closed port) + Prometheus; {runs} starts, medians")
    print(table(["measure", "median", "range", "target"], [
        [f"VmRSS after {settle:g} s, MB", f"{rss:.1f}",
         f"{min(r['rss'] for r in results):.1f} - {max(r['rss'] for r in results):.1f}",
         f"<= {RSS_TARGET_MB:g}: {'met' if rss <= RSS_TARGET_MB else 'MISSED'}"],
        [f"VmHWM after {settle + cpu_window:g} s, MB", f"{hwm:.1f}",
         f"{min(r['hwm'] for r in results):.1f} - {max(r['hwm'] for r in results):.1f}", "-"],
        [f"CPU over {cpu_window:g} s, % of one core", f"{cpu:.2f}",
         f"{min(r['cpu_percent'] for r in results):.2f} - {max(r['cpu_percent'] for r in results):.2f}",
         f"<= {CPU_TARGET_PERCENT:g}: {'met' if cpu <= CPU_TARGET_PERCENT else 'MISSED'}"],
        ["PIDs/s asked of the adapter (proxy count)", f"{median([r['pids_per_s'] for r in results]):.1f}",
         "", "~10"],
        ["requests/s to the adapter", f"{median([r['requests_per_s'] for r in results]):.1f}", "", "-"],
    ]))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        listen, target, delay = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        asyncio.run(LatencyProxy(target, delay).run(listen))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        kind, option, port, duration = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
        if kind == "trapline":
            with tempfile.TemporaryDirectory(prefix="trapline-bench-state-") as state_dir:
                result = run_trapline(port, duration, multi=option == "multi", state_dir=Path(state_dir))
        else:
            result = run_python_obd(port, duration, delay_cmds=float(option))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds counted per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    parser.add_argument("--agent-runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before reading VmRSS")
    parser.add_argument("--cpu-seconds", type=float, default=60.0)
    parser.add_argument("--only", choices=("throughput", "agent"))
    args = parser.parse_args()
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="trapline-bench-obd-") as tmp:
        if args.only in (None, "throughput"):
            throughput(Path(tmp), args.runs, args.duration, args.latency)
        if args.only in (None, "agent"):
            agent(Path(tmp), args.agent_runs, args.latency, args.settle, args.cpu_seconds)
    print(machine())


if __name__ == "__main__":
    main()
