"""The real agent under a real systemd that enforces the shipped unit's watchdog (issue 20 item 3).

PID 1 here is not systemd, but a systemd user manager (``systemd --user``) runs as an
ordinary process once it finds ``/run/systemd/system``, its sign of a system booted
with systemd. It gets that in a private mount namespace (``unshare``), on a tmpfs over
``/run/systemd``: the host's ``/run`` is not touched. The unit it runs takes ``Type=``,
``NotifyAccess=``, ``WatchdogSignal=``, ``Restart=`` and ``RestartPreventExitStatus=``
from ``deploy/raspberrypi/trapline.service`` as they are; ``WatchdogSec=``,
``RestartSec=`` and ``TimeoutStopSec=`` are scaled down; the sandbox is left out (a user
manager cannot apply ``User=`` or a device policy; tests/test_systemd_units.py checks it).

The faults and the spool checks are those of test_watchdog_listener.py, whose
``watchdog_test`` collector freezes the event loop or hangs on the agent's first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_watchdog_listener import UNIT, agent_files, counted, refusing_port
from tests.support.peers import missing_peer, need_binary
from tests.support.zabbix_fixtures import wait_until
from tests.test_systemd_units import unit_keys

SYSTEMD = Path("/lib/systemd/systemd")
SERVICE = "trapline-watchdog-test.service"
COPIED = ("Type", "NotifyAccess", "WatchdogSignal", "Restart", "RestartPreventExitStatus")
WATCHDOG_SEC = 4  # the unit's 60 s, scaled down
WAIT = 120.0


class UserManager:
    """``systemd --user`` in its own mount namespace, and ``systemctl --user`` to talk to it."""

    def __init__(self, runtime: Path, log: Path) -> None:
        self.runtime, self.log = runtime, log
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
        self._systemctl = need_binary("systemctl")
        script = ("mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system"
                  f" && exec {SYSTEMD} --user --log-target=console")
        with log.open("ab") as out:
            self.proc = subprocess.Popen([need_binary("unshare"), "--mount", "--propagation", "private",
                                          "sh", "-c", script], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: (runtime / "systemd" / "private").exists() or self.proc.poll() is not None,
                   timeout=WAIT, what="the user manager's socket")
        if self.proc.poll() is not None:
            missing_peer(f"systemd --user did not start: {log.read_text(errors='replace')[-2000:]}")

    def systemctl(self, *args: str) -> str:
        result = subprocess.run([self._systemctl, "--user", *args], env=self.env, capture_output=True,
                                text=True, timeout=60, check=True)
        return result.stdout

    def show(self) -> dict[str, str]:
        text = self.systemctl("show", SERVICE, "-p", "ActiveState,MainPID,NRestarts,Result,StatusText,"
                              "WatchdogTimestampMonotonic")
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def close(self) -> None:
        self.proc.terminate()  # the manager stops its units, then exits
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def user_manager(tmp_path: Path) -> Iterator[UserManager]:
    if os.geteuid() != 0 or not SYSTEMD.exists():
        missing_peer(f"a systemd user manager needs root (for its mount namespace) and {SYSTEMD}")
    runtime = Path(tempfile.mkdtemp(prefix="tw-sd-"))  # short: it holds the manager's sockets
    manager = UserManager(runtime, tmp_path / "systemd.log")
    try:
        yield manager
    finally:
        manager.close()
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def closed_port() -> Iterator[int]:
    with refusing_port() as port:
        yield port


def start_agent(manager: UserManager, tmp_path: Path, port: int,
                collectors: dict[str, dict[str, str | int | float]]) -> None:
    command, env = agent_files(tmp_path, port, collectors)
    shipped = unit_keys(UNIT)
    lines = ["[Service]", *(f"{key}={shipped[key][0]}" for key in COPIED),
             f"WatchdogSec={WATCHDOG_SEC}", "RestartSec=1", "TimeoutStopSec=10",
             f"ExecStart={' '.join(command)}", f"WorkingDirectory={tmp_path}",
             f"StandardOutput=append:{tmp_path / 'agent.log'}", "StandardError=inherit",
             f"Environment=PYTHONPATH={env['PYTHONPATH']} PYTHONUNBUFFERED=1",
             # How each run ended, in systemd's words: the user manager has no journal to ask.
             "ExecStopPost=/bin/sh -c 'echo $$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS >> results'"]
    units = manager.runtime / "systemd" / "user"
    units.mkdir(parents=True, exist_ok=True)
    (units / SERVICE).write_text("\n".join(lines) + "\n")
    manager.systemctl("daemon-reload")
    manager.systemctl("start", SERVICE)  # returns once the agent said READY=1 (Type=notify)


def stop_agent(manager: UserManager) -> None:
    manager.systemctl("stop", SERVICE)
    assert manager.show()["ActiveState"] in ("inactive", "failed")


def pings_of(manager: UserManager, pid: str, count: int) -> None:
    """Wait until systemd took ``count`` new pings from the agent ``pid``, with no restart meanwhile."""
    stamps: set[str] = set()

    def enough() -> bool:
        state = manager.show()
        assert state["MainPID"] == pid, state
        stamps.add(state["WatchdogTimestampMonotonic"])
        return len(stamps) > count

    wait_until(enough, timeout=WAIT, interval=0.5, what=f"{count} pings from {pid}")


def ends(tmp_path: Path) -> list[str]:
    """How each run of the agent ended: systemd's $SERVICE_RESULT $EXIT_CODE $EXIT_STATUS."""
    results = tmp_path / "results"
    return results.read_text().splitlines() if results.exists() else []


def restarted_by_the_watchdog(manager: UserManager, tmp_path: Path) -> list[str]:
    """systemd stopped the first agent for its silence, started a second, which pings; how runs ended."""
    first = manager.show()["MainPID"]
    state = wait_until(lambda: (s := manager.show())["NRestarts"] == "1" and s["ActiveState"] == "active"
                       and s["MainPID"] not in ("0", first) and s, timeout=WAIT, interval=0.5,
                       what=f"a restart; agent log:\n{(tmp_path / 'agent.log').read_text(errors='replace')}")
    pings_of(manager, state["MainPID"], 2)
    stop_agent(manager)
    return ends(tmp_path)


def test_systemd_keeps_a_healthy_agent(user_manager: UserManager, tmp_path: Path, closed_port: int) -> None:
    start_agent(user_manager, tmp_path, closed_port, {"steady": {"fail": "never"}})
    state = user_manager.show()
    assert state["ActiveState"] == "active" and state["StatusText"] == "running; collectors: 1", state
    pings_of(user_manager, state["MainPID"], 4)
    stop_agent(user_manager)
    assert user_manager.show()["NRestarts"] == "0"
    assert ends(tmp_path) == ["success exited 0"]
    values, last = counted(tmp_path, closed_port, "steady", 1)
    assert values == list(range(1, last + 1))


def test_systemd_restarts_a_frozen_agent(user_manager: UserManager, tmp_path: Path, closed_port: int) -> None:
    start_agent(user_manager, tmp_path, closed_port,
                {"frozen": {"fail": "freeze"}, "steady": {"fail": "never"}})
    # The frozen loop cannot act on the watchdog's SIGTERM: killed after TimeoutStopSec.
    assert restarted_by_the_watchdog(user_manager, tmp_path) == ["watchdog killed KILL", "success exited 0"]
    log = (tmp_path / "agent.log").read_text(errors="replace")
    assert log.count("watchdog: event loop blocked") == 1, log
    values, last = counted(tmp_path, closed_port, "frozen", 1)
    assert values == list(range(1, last + 1)) and last == 10


def test_systemd_restarts_an_agent_with_a_stuck_collector(
    user_manager: UserManager, tmp_path: Path, closed_port: int
) -> None:
    start_agent(user_manager, tmp_path, closed_port,
                {"stuck": {"fail": "hang"}, "steady": {"fail": "never"}})
    # The loop still turns: the watchdog's SIGTERM is a clean stop.
    assert restarted_by_the_watchdog(user_manager, tmp_path) == ["watchdog exited 0", "success exited 0"]
    log = (tmp_path / "agent.log").read_text(errors="replace")
    named = [line for line in log.splitlines() if "watchdog: " in line]
    assert len(named) == 1 and "collector stuck: no progress for" in named[0], log
    for collector in ("stuck", "steady"):  # SIGTERM from the watchdog: a clean stop, nothing lost
        values, last = counted(tmp_path, closed_port, collector, 1)
        assert values == list(range(1, last + 1)), collector
