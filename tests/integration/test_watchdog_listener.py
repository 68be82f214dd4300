"""The real ``python -m trapline run`` under a stand-in for systemd enforcing WatchdogSec (issue 20 item 3).

test_watchdog_systemd.py runs the agent under a real systemd; this stand-in shows what
systemd does not let a test see: every message in order (READY=1 with its STATUS first,
no ping after a part was declared stuck, STOPPING=1 at the end), the abstract ``@name``
socket address a system manager may use, and the sender of each message.
``ServiceManager`` does what systemd does for ``deploy/raspberrypi/trapline.service``,
read from that file: it owns the notify socket (``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``),
accepts messages only from the main process (``NotifyAccess=main``, checked with the
sender's SCM_CREDENTIALS), and when no ``WATCHDOG=1`` came for ``WatchdogSec`` it sends
the unit's ``WatchdogSignal``, then SIGKILL if the agent is still there after the abort
timeout, and starts it again (``Restart=on-failure``). The timeouts are scaled down; as
systemd.service(5) says of WatchdogSec=, the watchdog is active once start-up completed
(READY=1).

The faults come from a test-only collector, ``watchdog_test``, added to the registry by
a ``sitecustomize`` module on the agent's PYTHONPATH, so the agent itself runs unchanged:
``freeze`` blocks the event loop in ``time.sleep``, ``hang`` awaits forever. Each fails
on the agent's first run only, so the restarted agent is healthy. Its readings count
1, 2, 3... per run, and every value it put must be in the spool after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent_process import spooled_readings, toml_config
from tests.support.zabbix_fixtures import wait_until
from tests.test_systemd_units import DEPLOY, unit_keys
from trapline.core.config import Section
from trapline.core.model import Reading
from trapline.core.plugin import CommittingOutbox, Outbox
from trapline.middleware.watchdog import socket_address

ROOT = Path(__file__).resolve().parents[2]
UNIT = DEPLOY / "trapline.service"
HOST = "watchdog-test"
WATCHDOG_SEC = 4.0  # the unit's 60 s, scaled down
ABORT_TIMEOUT = 10.0  # TimeoutStopSec's 20 s: the agent's own stop takes shutdown_timeout (1 s) here
RESTART_SEC = 0.5
TEST_TIMEOUT = 120.0


# -- the test-only collector, run inside the agent ---------------------------------------------


class FaultyCounter:
    """Puts ``watchdog.test.count[runN]`` = 1, 2, 3...; on the first run, fails after ``fail_after``."""

    def __init__(self, name: str, state: Path, fail: str, fail_after: int, interval: float) -> None:
        self.name, self.state, self.fail = name, state, fail
        self.fail_after, self.interval = fail_after, interval

    async def run(self, out: Outbox) -> None:
        self.state.mkdir(exist_ok=True)
        runs = self.state / "runs"
        run = int(runs.read_text()) + 1 if runs.exists() else 1
        runs.write_text(str(run))
        last = self.state / f"run{run}.last"  # the last value put: the test's expectation
        count = 0
        while True:
            count += 1
            out.put(Reading.now(HOST, f"watchdog.test.count[{self.name},run{run}]", count))
            last.write_text(str(count))
            if run == 1 and count == self.fail_after:
                await self._fail(out)
            await asyncio.sleep(self.interval)

    async def _fail(self, out: Outbox) -> None:
        if self.fail == "freeze":
            # Committed first: the SIGKILL that ends a frozen agent loses what memory holds.
            assert isinstance(out, CommittingOutbox)
            await out.committed()
            # The fault: synchronous code that keeps the event loop from turning.
            time.sleep(3600)  # noqa: ASYNC251
        elif self.fail == "hang":
            await asyncio.Event().wait()  # the fault: awaits what never comes


def build_faulty_counter(name: str, section: Section) -> FaultyCounter:
    collector = FaultyCounter(
        name,
        state=Path(section.text("state")),
        fail=section.choice("fail", ("never", "freeze", "hang")),
        fail_after=section.integer("fail_after", 10, minimum=1),
        interval=section.number("interval", 0.1, minimum=0.01),
    )
    section.text("type")
    section.done()
    return collector


# -- the stand-in for systemd --------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    what: str  # a notify line (READY=1, WATCHDOG=1, STATUS=...), or start/timeout/signal/kill/exit/foreign
    pid: int


class ServiceManager:
    """Runs one command as a Type=notify service with the unit's watchdog settings, restarting it."""

    def __init__(self, command: list[str], env: dict[str, str], notify_socket: str, log: Path) -> None:
        keys = unit_keys(UNIT)
        assert keys["Type"] == ["notify"] and keys["NotifyAccess"] == ["main"]
        assert keys["Restart"] == ["on-failure"]
        self.watchdog_signal = signal.Signals[keys.get("WatchdogSignal", ["SIGABRT"])[0]]
        self.command, self.log = command, log
        self.env = {**env, "NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1e6))}
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        address = socket_address(notify_socket)
        assert address is not None
        self._sock.bind(address)
        self._thread = threading.Thread(target=self._supervise, name="service-manager", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def stop(self) -> int | None:
        """``systemctl stop``: SIGTERM, SIGKILL after the abort timeout; returns the exit status."""
        if self._stopping.is_set():
            return self._proc.returncode if self._proc else None
        self._stopping.set()
        self._thread.join(TEST_TIMEOUT)
        proc = self._proc
        code = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(ABORT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._drain()
        self._sock.close()
        return code

    def seen(self, what: str, pid: int | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.what.startswith(what) and pid in (None, e.pid)]

    def pids(self) -> list[int]:
        return [e.pid for e in self.seen("start")]

    def _record(self, what: str, pid: int) -> None:
        with self._lock:
            self.events.append(Event(what, pid))

    def _spawn(self) -> None:
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=self.env)
        self._record("start", self._proc.pid)

    def _supervise(self) -> None:
        deadline: float | None = None  # armed by READY=1, moved by every WATCHDOG=1
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            for line in self._receive(proc.pid, 0.05):
                if line in ("READY=1", "WATCHDOG=1"):
                    deadline = time.monotonic() + WATCHDOG_SEC
            if deadline is not None and time.monotonic() > deadline:
                self._record("timeout", proc.pid)
                self._abort(proc)
                deadline = None
                time.sleep(RESTART_SEC)
                self._spawn()
            elif proc.poll() is not None:
                self._record(f"exit {proc.returncode}", proc.pid)
                return  # not a watchdog restart: the test sees it in the events and fails

    def _abort(self, proc: subprocess.Popen[bytes]) -> None:
        self._record(f"signal {self.watchdog_signal.name}", proc.pid)
        proc.send_signal(self.watchdog_signal)
        try:
            proc.wait(ABORT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._record("kill", proc.pid)
            proc.kill()
            proc.wait()
        self._drain()
        self._record(f"exit {proc.returncode}", proc.pid)

    def _drain(self) -> None:
        proc = self._proc
        with contextlib.suppress(OSError):
            self._receive(proc.pid if proc else 0, 0)

    def _receive(self, main_pid: int, timeout: float) -> list[str]:
        """Messages waiting (or arriving within ``timeout``), recorded; lines from the main PID."""
        lines: list[str] = []
        while select.select([self._sock], [], [], timeout)[0]:
            timeout = 0
            data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
            sender = next(struct.unpack("iII", payload[:12])[0] for level, kind, payload in ancillary
                          if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            if sender != main_pid:  # NotifyAccess=main
                self._record("foreign", sender)
                continue
            for line in data.decode().splitlines():
                self._record(line, sender)
                lines.append(line)
        return lines


# -- the tests -----------------------------------------------------------------------------------


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A local TCP port bound but not listening: the Zabbix destination refuses, the spool keeps all."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    with refusing_port() as port:
        yield port


def agent_files(tmp_path: Path, port: int,
                collectors: dict[str, dict[str, str | int | float]]) -> tuple[list[str], dict[str, str]]:
    """Write the agent's config and the sitecustomize that registers ``watchdog_test``.

    Returns the command line and the environment (without any notify variable) to run it with.
    """
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "from trapline.collectors import REGISTRY\n"
        "from trapline.core.plugin import PluginSpec\n"
        f"REGISTRY['watchdog_test'] = PluginSpec('{__name__}:build_faulty_counter')\n"
    )
    sections: dict[str, dict[str, str | int | float | bool | list[str]]] = {
        "agent": {"flush_interval": 0.2, "shutdown_timeout": 1, "stall_timeout": 2},
        "spool": {"path": str(tmp_path / "spool.db"), "sync": "normal"},
        "zabbix": {"servers": [f"127.0.0.1:{port}"], "timeout": 1},
    }
    for name, entries in collectors.items():
        sections[f"collectors.{name}"] = {"type": "watchdog_test", "state": str(tmp_path / name), **entries}
    config = tmp_path / "agent.toml"
    config.write_text(toml_config(sections))
    env = {**os.environ, "PYTHONPATH": f"{site}:{ROOT}", "PYTHONUNBUFFERED": "1"}
    for inherited in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(inherited, None)
    return [sys.executable, "-m", "trapline", "run", "-c", str(config), "--log-level", "info"], env


@contextlib.contextmanager
def managed_agent(tmp_path: Path, port: int, notify_socket: str,
                  collectors: dict[str, dict[str, str | int | float]]) -> Iterator[ServiceManager]:
    command, env = agent_files(tmp_path, port, collectors)
    manager = ServiceManager(command, env, notify_socket, tmp_path / "agent.log")
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()


def wait_for(manager: ServiceManager, what: str, predicate: Callable[[], object]) -> None:
    wait_until(predicate, timeout=TEST_TIMEOUT, interval=0.2,
               what=f"{what}; events {manager.events}; log:\n{log_of(manager)}")


def log_of(manager: ServiceManager) -> str:
    return manager.log.read_text(errors="replace") if manager.log.exists() else ""


def counted(tmp_path: Path, port: int, collector: str, run: int) -> tuple[list[int], int]:
    """(values of one collector's run found in the spool, sorted; the last value it put)."""
    key = f"watchdog.test.count[{collector},run{run}]"
    values = sorted(int(r.value) for r in spooled_readings(tmp_path / "spool.db", f"zabbix[127.0.0.1:{port}]")
                    if r.host == HOST and r.key == key)
    return values, int((tmp_path / collector / f"run{run}.last").read_text())


def second_run_healthy(manager: ServiceManager) -> None:
    """The restarted agent said READY and pings on; then it is stopped as systemctl would."""
    wait_for(manager, "a second agent pinging", lambda: len(manager.pids()) == 2
             and len(manager.seen("WATCHDOG=1", manager.pids()[1])) >= 2)


def test_a_healthy_agent_is_kept_and_pings_regularly(tmp_path: Path, closed_port: int) -> None:
    notify = f"@trapline-watchdog-{uuid.uuid4().hex}"  # an abstract name, as systemd's own socket
    with managed_agent(tmp_path, closed_port, notify, {"steady": {"fail": "never"}}) as manager:
        wait_for(manager, "six pings", lambda: len(manager.seen("WATCHDOG=1")) >= 6)
        [pid] = manager.pids()
        code = manager.stop()
    assert code == 0, log_of(manager)
    lines = [e.what for e in manager.events if e.pid == pid and e.what != "start"]
    assert lines[:2] == ["READY=1", "STATUS=running; collectors: 1"], lines
    assert set(lines[2:-2]) == {"WATCHDOG=1"}, lines
    assert lines[-2:] == ["STOPPING=1", "STATUS=stopping"], lines
    assert not manager.seen("timeout") and not manager.seen("foreign")
    assert "watchdog:" not in log_of(manager)
    values, last = counted(tmp_path, closed_port, "steady", 1)
    assert values == list(range(1, last + 1))


def test_a_frozen_event_loop_is_restarted_and_the_spool_keeps_what_was_committed(
    tmp_path: Path, closed_port: int
) -> None:
    sock_dir = Path(f"/tmp/tw-{uuid.uuid4().hex[:12]}")  # sockaddr_un holds 108 bytes: tmp_path may not fit
    sock_dir.mkdir()
    try:
        with managed_agent(tmp_path, closed_port, str(sock_dir / "notify"),
                           {"frozen": {"fail": "freeze"}, "steady": {"fail": "never"}}) as manager:
            second_run_healthy(manager)
    finally:
        with contextlib.suppress(OSError):
            (sock_dir / "notify").unlink()
        sock_dir.rmdir()
    first = manager.pids()[0]
    what = [e.what for e in manager.events if e.pid == first]
    assert what[what.index("timeout"):] == ["timeout", "signal SIGTERM", "kill", "exit -9"], what
    log = log_of(manager)
    blocked = [line for line in log.splitlines() if "watchdog: event loop blocked" in line]
    assert len(blocked) == 1, log
    assert f"{__file__}:" in blocked[0] and " in _fail;" in blocked[0], blocked
    values, last = counted(tmp_path, closed_port, "frozen", 1)
    assert values == list(range(1, last + 1)) and last == 10
    steady, _ = counted(tmp_path, closed_port, "steady", 1)
    assert steady == list(range(1, len(steady) + 1))  # a tail lost to SIGKILL, never a hole


def test_a_stuck_collector_is_named_restarted_and_nothing_is_lost(tmp_path: Path, closed_port: int) -> None:
    notify = f"@trapline-watchdog-{uuid.uuid4().hex}"
    with managed_agent(tmp_path, closed_port, notify,
                       {"stuck": {"fail": "hang"}, "steady": {"fail": "never"}}) as manager:
        second_run_healthy(manager)
    first = manager.pids()[0]
    what = [e.what for e in manager.events if e.pid == first]
    # The loop still turns: the watchdog's SIGTERM is a clean stop, no SIGKILL needed.
    assert what[what.index("timeout"):] == [
        "timeout", "signal SIGTERM", "STOPPING=1", "STATUS=stopping", "exit 0"
    ], what
    stuck_status = [w for w in what if w.startswith("STATUS=stuck")]
    assert len(stuck_status) == 1 and stuck_status[0].startswith("STATUS=stuck: collector stuck: no progress")
    assert what.index(stuck_status[0]) > what.index("WATCHDOG=1")
    assert "WATCHDOG=1" not in what[what.index(stuck_status[0]):]
    log = log_of(manager)
    named = [line for line in log.splitlines() if "watchdog: " in line]
    assert len(named) == 1 and "collector stuck: no progress for" in named[0], log
    assert "steady" not in named[0]
    for collector in ("stuck", "steady"):  # the clean stop committed everything held in memory
        values, last = counted(tmp_path, closed_port, collector, 1)
        assert values == list(range(1, last + 1)), collector
