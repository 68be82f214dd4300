"""Resident memory of a running agent, and which imports it goes to.

Starts ``python3 -m trapline run -c CONFIG`` as a subprocess, lets it settle, and
reads VmRSS (now) and VmHWM (peak) from /proc.  The Zabbix server it points at is a
closed local port, so the destination stays unreachable and backs off, as an agent
in a dead zone would.  Target: at most 45 MB with no collectors.

Then it attributes memory to imports: every top-level module the agent imports
(from ``python3 -X importtime``) is imported alone in a fresh interpreter, and the
growth of VmRSS over a bare interpreter is reported, with the import time.

    python3 -m bench.rss [--settle 5] [--runs 3]

With ``--tree A --tree B`` it compares two source trees instead, with the vehicle
role only: an OBD collector polling an ELM327-emulator (started here, answering
as a car) and a GPS collector whose gpsd is a closed port, as in a van before its
first fix.  Agents of the two trees alternate (A, B, B, A, ...), each started from
its tree; the figures are VmRSS and VmHWM after ``--settle`` seconds and the B/A
ratios of same-round pairs.

    python3 -m bench.rss --tree A --tree B [--settle 10] [--runs 6]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# The tree this file is in, not whatever trapline is installed, is what gets measured.
from bench._util import machine, table

TARGET_MB = 45.0
AGENT = [sys.executable, "-m", "trapline", "run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config(workdir: Path, with_collector: bool) -> tuple[Path, int | None]:
    """A config whose Zabbix server is a closed port; optionally a synthetic collector + Prometheus."""
    closed = free_port()  # bound and released at once: nothing listens there
    text = (
        '[agent]\nhost = "trapline-bench"\n\n'
        f'[spool]\npath = "{workdir / ("spool-" + str(time.time_ns()) + ".db")}"\n\n'
        f'[zabbix]\nservers = ["127.0.0.1:{closed}"]\n'
    )
    metrics_port = None
    if with_collector:
        metrics_port = free_port()
        text += (
            f'\n[prometheus]\nlisten = "127.0.0.1:{metrics_port}"\n'
            '\n[collectors.demo]\ntype = "synthetic"\nhost = "trapline-demo"\nseries = 20\ninterval = 0.5\n'
        )
    path = workdir / f"agent-{time.time_ns()}.toml"
    path.write_text(text)
    return path, metrics_port


def status_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def vehicle_config(workdir: Path, elm_port: int) -> Path:
    """The vehicle role only: OBD on the emulator at ``elm_port``, GPS with no gpsd, Zabbix unreachable."""
    text = (
        '[agent]\nhost = "van-17"\n\n'
        f'[spool]\npath = "{workdir / ("spool-" + str(time.time_ns()) + ".db")}"\n\n'
        f'[zabbix]\nservers = ["127.0.0.1:{free_port()}"]\n\n'
        '[collectors.obd]\ntype = "obd"\nhost = "van-17"\n'
        f'device = "socket://127.0.0.1:{elm_port}"\nprotocol = "6"\nstate_dir = "{workdir}"\n\n'
        '[collectors.obd.tiers.fast]\ninterval = 1.0\npids = ["SPEED", "RPM", "THROTTLE_POS"]\n\n'
        '[collectors.obd.tiers.slow]\ninterval = 5.0\npids = ["COOLANT_TEMP", "FUEL_LEVEL"]\n\n'
        f'[collectors.gps]\ntype = "gps"\nhost = "van-17"\nport = {free_port()}\n'
    )
    path = workdir / f"vehicle-{time.time_ns()}.toml"
    path.write_text(text)
    return path


def run_agent(
    workdir: Path, with_collector: bool, settle: float, tree: str | None = None, elm_port: int = 0
) -> tuple[float, float]:
    """VmRSS and VmHWM of an agent after ``settle`` s; from ``tree`` with the vehicle role if given."""
    if tree is None:
        path, metrics_port = config(workdir, with_collector)
    else:
        path, metrics_port = vehicle_config(workdir, elm_port), None
    proc = subprocess.Popen(
        [*AGENT, "-c", str(path), "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tree,
        env=None if tree is None else os.environ | {"PYTHONPATH": tree},
    )
    try:
        time.sleep(settle)
        if metrics_port is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
                if b"synthetic" not in reply.read():
                    raise RuntimeError("the synthetic collector's series are not on /metrics")
            time.sleep(1.0)  # measure after a scrape too
        if proc.poll() is not None:
            raise RuntimeError(
                f"agent exited early: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}"
            )
        return status_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def imported_modules(workdir: Path, with_collector: bool) -> dict[str, int]:
    """Modules the agent imports -> cumulative import time in us (from ``-X importtime``).

    Outside trapline only top-level packages are kept (``asyncio``, not ``asyncio.events``);
    inside it, modules down to ``trapline.a.b``.
    """
    path, _ = config(workdir, with_collector)
    command = [sys.executable, "-X", "importtime", *AGENT[1:], "-c", str(path), "--log-level", "error"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3.0)  # lazy imports happen while starting up and in the first rounds
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    modules: dict[str, int] = {}
    for line in err.decode(errors="replace").splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)", line)
        if m is None:
            continue
        parts = m.group(2).split(".")
        name = ".".join(parts[:3]) if parts[0] == "trapline" else parts[0]
        modules[name] = max(modules.get(name, 0), int(m.group(1)))
    return modules


def import_cost_mb(module: str, baseline: float) -> float:
    code = (
        f"import {module}\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return float("nan")
    return int(out.stdout.strip()) / 1024 - baseline


def bare_interpreter_mb() -> float:
    code = "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def attribution(workdir: Path, with_collector: bool, min_import_ms: float = 2.0) -> str:
    modules = imported_modules(workdir, with_collector)
    baseline = bare_interpreter_mb()
    measured = [
        (name, import_cost_mb(name, baseline), us)
        for name, us in modules.items()
        if us >= min_import_ms * 1000 and not name.startswith("_")
    ]
    measured.sort(key=lambda r: -r[1])
    shown = [[n, f"{mb:.1f}", f"{us / 1000:.0f}"] for n, mb, us in measured[:20]]
    return (
        f"bare interpreter: {baseline:.1f} MB.  Each module imported ALONE in a fresh interpreter\n"
        "(RSS growth includes everything it pulls in, so rows overlap and do not add up):\n"
        + table(["module", "RSS growth MB", "import ms (cumulative, in the agent)"], shown)
    )


def compare_trees(trees: list[str], settle: float, runs: int) -> str:
    """Vehicle-role agents of two trees, alternated; medians and same-round B/A ratios."""
    os.environ["ELM_LOG_CFG"] = "/nonexistent"  # else the emulator writes elm.log into the cwd
    import elm  # noqa: PLC0415 - ELM327-emulator, only needed here

    samples: list[list[tuple[float, float]]] = [[], []]
    elm_port = free_port()
    with tempfile.TemporaryDirectory(prefix="trapline-bench-") as tmp, elm.Elm(net_port=elm_port) as emulator:
        emulator.set_sorted_obd_msg("car")
        for run in range(runs):
            for side in (0, 1) if run % 2 == 0 else (1, 0):
                samples[side].append(run_agent(Path(tmp), False, settle, trees[side], elm_port))
                print(
                    f"run {run + 1} {'AB'[side]}: VmRSS {samples[side][-1][0]:.1f} MB, "
                    f"VmHWM {samples[side][-1][1]:.1f} MB",
                    flush=True,
                )
    rows = [
        [
            f"{'AB'[side]}: {trees[side]}",
            f"{statistics.median(s[0] for s in got):.1f}",
            f"{statistics.median(s[1] for s in got):.1f}",
        ]
        for side, got in enumerate(samples)
    ]
    ratios = [b[0] / a[0] for a, b in zip(*samples, strict=True)]
    return (
        table(["tree", "VmRSS MB (median)", "VmHWM MB (median)"], rows)
        + f"\nB/A VmRSS per same-round pair: median {statistics.median(ratios):.3f} "
        f"(range {min(ratios):.3f} - {max(ratios):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before reading /proc")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="twice: compare two source trees")
    args = parser.parse_args()
    if args.tree:
        if len(args.tree) != 2:
            parser.error("--tree takes exactly two trees")
        print(f"# vehicle-role agent memory A/B: {args.runs} runs each, read after {args.settle:.0f} s")
        print(machine(), flush=True)
        print(compare_trees(args.tree, args.settle, args.runs))
        print(machine())
        return
    print(f"# agent memory: {args.runs} runs per case, read after {args.settle:.0f} s")
    print(machine(), flush=True)
    rows = []
    results: dict[bool, float] = {}
    with tempfile.TemporaryDirectory(prefix="trapline-bench-") as tmp:
        workdir = Path(tmp)
        for with_collector in (False, True):
            samples = [run_agent(workdir, with_collector, args.settle) for _ in range(args.runs)]
            rss = statistics.median(s[0] for s in samples)
            hwm = statistics.median(s[1] for s in samples)
            results[with_collector] = rss
            name = "synthetic collector (20 series) + prometheus" if with_collector else "no collectors"
            target = (
                f"<= {TARGET_MB:.0f}: {'met' if hwm <= TARGET_MB else 'MISSED'}"
                if not with_collector
                else "-"
            )
            rows.append([name, f"{rss:.1f}", f"{hwm:.1f}", target])
        print()
        print(table(["agent config", "VmRSS MB (median)", "VmHWM MB (median)", "target"], rows))
        print()
        print("## where the memory goes (agent with synthetic + prometheus)")
        print(attribution(workdir, True))
    print(machine())


if __name__ == "__main__":
    main()
