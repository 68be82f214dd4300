"""``make demo`` (``python3 -m devtools.demo``) as a user runs it: a child process, watched through
the Zabbix API and its Prometheus endpoint, then stopped by a signal.  Also the
drive it writes for gpsfake (no peer needed).

The test process makes itself a child subreaper, so that any process the demo
leaves behind becomes the test's child when the demo exits, where it is found."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import itertools
import math
import operator
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pyzabbix.api import ZabbixAPI

from devtools.demo import load_scenario, write_nmea
from tests.support.peers import missing_peer, need_binary
from tests.support.zabbix_fixtures import wait_until

PR_SET_CHILD_SUBREAPER = 36
# Limits that turn a hang into a failure; none of them is a speed expectation.
START_LIMIT = 240.0  # the first Zabbix start on a machine loads the schema
DATA_LIMIT = 120.0
STOP_LIMIT = 90.0
SCENARIO = load_scenario()


class Demo:
    """``python3 -m devtools.demo`` in a child process, its output collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.demo", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, limit: float = START_LIMIT) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            match = next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)
            if match is None and self.proc.poll() is not None:
                pytest.fail(f"demo exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                            f"{self.output}")
            return match

        match: re.Match[str] = wait_until(found, limit, 0.2, f"{pattern!r} in the demo's output")
        return match

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(STOP_LIMIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"demo did not stop within {STOP_LIMIT:g} s of {sig.name}:\n{self.output}")
        self._reader.join(10)
        return code


def _children(pid: int) -> dict[int, tuple[str, str]]:
    """{pid: (state, command line)} of the processes whose parent is ``pid``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found[int(proc.name)] = (fields[0], cmdline.strip())
    return found


@pytest.fixture
def subreaper() -> Iterator[dict[int, tuple[str, str]]]:
    """Adopt the demo's orphans; yield the children this process had before."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        missing_peer(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    before = _children(os.getpid())
    try:
        yield before
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def assert_nothing_left(before: dict[int, tuple[str, str]]) -> None:
    def left() -> dict[int, tuple[str, str]]:
        return {pid: c for pid, c in _children(os.getpid()).items() if pid not in before}

    def all_ended() -> bool:
        return all(state == "Z" for state, _ in left().values())

    try:
        wait_until(all_ended, 10, 0.2, "the demo's processes to end")  # a SIGKILLed group may lag a moment
    except pytest.fail.Exception:
        running = left()
        for pid in running:  # ours now: end them so that a failed test leaves nothing either
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # and its group, when it leads one
            os.waitpid(pid, 0)
        pytest.fail(f"the demo left processes running: {running}")
    for pid in left():
        os.waitpid(pid, os.WNOHANG)  # adopted zombies: reap them


@pytest.fixture
def tools() -> None:
    need_binary("gpsfake")
    if importlib.util.find_spec("elm") is None:
        missing_peer("ELM327-emulator is not installed (pip install ELM327-emulator)")


def _vehicle(api: Any) -> dict[str, Any]:
    hosts = api.host.get(filter={"host": [SCENARIO.vehicle_host]}, output=["hostid"],
                         selectInventory=["location_lat", "location_lon"])
    assert hosts, f"no host {SCENARIO.vehicle_host} in Zabbix"
    host: dict[str, Any] = hosts[0]
    return host


@pytest.mark.integration
def test_demo_brings_the_car_into_zabbix_and_stops_cleanly(
    tools: None, subreaper: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    demo = Demo("--workdir", str(tmp_path / "demo"), "--duration", "600", "--dtc-after", "5")
    try:
        url = demo.wait_for(r"^Zabbix frontend:\s+(http://\S+)").group(1)
        metrics_url = demo.wait_for(r"^Prometheus:\s+(http://\S+)").group(1)
        api = ZabbixAPI(url, timeout=30)
        api.login("Admin", "zabbix")
        hostid = _vehicle(api)["hostid"]

        def live_items() -> set[str]:
            items = api.item.get(hostids=[hostid], output=["key_", "lastclock"])
            return {i["key_"] for i in items if int(i["lastclock"])}

        wanted = {"obd.state", "obd.voltage", "obd.pid[SPEED]", "obd.pid[RPM]",
                  "gps.fix.mode", "gps.latitude", "gps.longitude", "gps.speed"}
        wait_until(lambda: wanted <= live_items(), DATA_LIMIT, 1.0, f"values of {sorted(wanted)}")

        inventory = wait_until(lambda: (i := _vehicle(api)["inventory"]) and i["location_lat"] and i,
                               DATA_LIMIT, 1.0, "the inventory location")
        assert 56.9 < float(inventory["location_lat"]) < 57.0  # the drive through Riga
        assert 24.0 < float(inventory["location_lon"]) < 24.2

        def dtc_problems() -> list[str]:
            names = [p["name"] for p in api.problem.get(hostids=[hostid], output=["name"])]
            return [n for n in names if any(code in n for code in SCENARIO.dtcs)]

        problems = wait_until(lambda: len(dtc_problems()) == len(SCENARIO.dtcs) and dtc_problems(),
                              DATA_LIMIT, 1.0, f"problems for {SCENARIO.dtcs}")
        assert any("P0143" in name and "O2 Sensor" in name for name in problems)

        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        assert f'trapline_obd_state{{host="{SCENARIO.vehicle_host}"' in metrics
        demo.wait_for(r"DTCs: P0143 P0300 \| Zabbix problems: [1-9]", DATA_LIMIT)  # the live summary
    finally:
        code = demo.stop(signal.SIGINT)
    assert code == 0, demo.output
    assert "stopped; nothing left running" in demo.lines[-1]
    assert_nothing_left(subreaper)


@pytest.mark.integration
def test_sigterm_while_zabbix_starts_leaves_nothing(
    tools: None, subreaper: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    demo = Demo("--workdir", str(tmp_path / "demo"))
    demo.wait_for(r"^starting Zabbix")
    code = demo.stop(signal.SIGTERM)
    assert code == 0, demo.output
    assert "interrupted" in demo.lines and "Zabbix is up" not in demo.output, demo.output
    assert_nothing_left(subreaper)


def _degrees(field: str, hemisphere: str) -> float:
    whole, minutes = divmod(float(field), 100)
    return (whole + minutes / 60) * (-1 if hemisphere in "SW" else 1)


def test_the_drive_is_valid_nmea_in_one_second_epochs_without_a_jump(tmp_path: Path) -> None:
    route = SCENARIO.route
    nmea = tmp_path / "route.nmea"
    start = datetime(2026, 12, 31, 23, 59, 0, tzinfo=UTC)
    seconds = 900  # more than two laps, across midnight
    per_epoch = write_nmea(route, nmea, start, seconds)
    lines = nmea.read_bytes().split(b"\r\n")
    assert lines.pop() == b""
    assert len(lines) == seconds * per_epoch

    fixes = []
    for raw in lines:
        body, _, checksum = raw.decode("ascii").removeprefix("$").partition("*")
        assert int(checksum, 16) == functools.reduce(operator.xor, body.encode(), 0), raw
        fields = body.split(",")
        if fields[0] == "GPRMC":
            lat, lon = _degrees(fields[3], fields[4]), _degrees(fields[5], fields[6])
            fixes.append((fields[1], fields[9], lat, lon, float(fields[7]) / 3600 * 1852))
    assert [line[:6] for line in lines[::per_epoch]] == [b"$GPRMC"] * seconds  # RMC opens every epoch
    assert fixes[0][:2] == ("235900.00", "311226") and fixes[61][:2] == ("000001.00", "010127")

    fastest = max(w.speed for w in route.waypoints) / 3.6
    for (_, _, lat1, lon1, _), (_, _, lat2, lon2, speed) in itertools.pairwise(fixes):
        north = (lat2 - lat1) * 111_195
        east = (lon2 - lon1) * 111_195 * math.cos(math.radians(lat1))
        assert math.hypot(north, east) <= fastest * 1.01 + 0.5  # lap after lap, no teleport
        assert speed <= fastest * 1.01
    assert any(speed == 0 for *_, speed in fixes)  # it stops at traffic lights
    assert all(56.9 < lat < 57.0 and 24.0 < lon < 24.2 for _, _, lat, lon, _ in fixes)
