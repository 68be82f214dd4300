"""The OBD collector against the real ELM327-emulator (in-process, or as a process
where the test kills it), over TCP like a WiFi adapter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.elm_fixtures import HOST
from tests.support.elm_fixtures import obd_section as section
from tests.support.outbox import ListOutbox
from tests.support.peers import free_port, missing_peer, need_binary, wait_port
from trapline.collectors.obd import build
from trapline.core.config import Section

pytestmark = pytest.mark.integration

# Generous limits: a test that hangs fails here instead of stalling the suite.
LIMIT = 40.0


def states(out: ListOutbox) -> list[int]:
    """obd.state values with consecutive repeats folded."""
    folded: list[int] = []
    for reading in out.readings("obd.state"):
        if not folded or folded[-1] != reading.value:
            folded.append(int(reading.value))
    return folded


_waiting_for = [""]


async def until(what: str, condition: Callable[[], bool]) -> None:
    _waiting_for[0] = what
    while not condition():  # noqa: ASYNC110 - the conditions watch a list the collector appends to
        await asyncio.sleep(0.05)


def run_collector(
    sec: Section, scenario: Callable[[ListOutbox], Awaitable[None]]
) -> ListOutbox:
    """Run the collector while ``scenario`` drives the peer; fail if it takes beyond LIMIT."""
    out = ListOutbox()

    async def main() -> None:
        task = asyncio.create_task(build("car", sec).run(out))
        try:
            async with asyncio.timeout(LIMIT):
                await scenario(out)
        except TimeoutError:
            pytest.fail(f"gave up after {LIMIT:g} s waiting for {_waiting_for[0]}; errors: {out.errors[-3:]}")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not task.done() or task.cancelled(), "the collector must run until cancelled"

    asyncio.run(main())
    return out


def test_supported_pids_are_discovered_and_polled(emulator: tuple[Any, int], tmp_path: Path) -> None:
    _, port = emulator

    async def scenario(out: ListOutbox) -> None:
        await until("values", lambda: len(out.readings("obd.pid[OIL_TEMP]")) == 0
                    and len(out.readings("obd.pid[FUEL_LEVEL]")) >= 2)

    out = run_collector(section(port, tmp_path), scenario)
    rows = out.discoveries("obd.pid.discovery")[0].rows
    # OIL_TEMP is configured but the emulated car does not support it: neither discovered nor polled
    assert [r["{#PID}"] for r in rows] == ["SPEED", "RPM", "THROTTLE_POS", "COOLANT_TEMP", "INTAKE_TEMP",
                                           "FUEL_LEVEL"]
    assert {"{#PID}": "SPEED", "{#NAME}": "Vehicle Speed", "{#UNIT}": "km/h"} in rows
    speed = out.readings("obd.pid[SPEED]")[0]
    assert speed.host == HOST and speed.unit == "km/h" and speed.labels == {"pid": "SPEED"}
    assert 0 <= time.time() - (speed.clock + speed.ns / 1e9) < LIMIT  # stamped when the answer came
    assert out.readings("obd.vin")[0].value == "WP0ZZZ99ZTS390000"  # python-OBD would say ...TS39
    assert out.readings("obd.state")[0].value == 2
    assert 10 <= float(out.readings("obd.voltage")[0].value) <= 16


def test_multi_pid_requests_and_fallback_to_single(emulator: tuple[Any, int], tmp_path: Path) -> None:
    emu, port = emulator
    requests: list[str] = []
    original = emu.multi_pid_answer

    def spy(cmd: str, header: str) -> Any:
        requests.append(cmd)
        return original(cmd, header)

    emu.multi_pid_answer = spy

    async def multi(out: ListOutbox) -> None:
        await until("multi", lambda: len(out.readings("obd.pid[THROTTLE_POS]")) >= 5)

    run_collector(section(port, tmp_path), multi)
    multi_requests = [r for r in requests if r.startswith("01") and len(r) > 4]
    assert "010D0C11" in multi_requests  # the fast tier in one request

    # An adapter that refuses multi-PID requests (answers "?" / NO DATA): single PIDs take over.
    requests.clear()
    emu.multi_pid_answer = lambda cmd, header: (requests.append(cmd), None)[1]

    async def refused(out: ListOutbox) -> None:
        await until("singles", lambda: len(out.readings("obd.pid[THROTTLE_POS]")) >= 10)

    out = run_collector(section(port, tmp_path), refused)
    assert len(out.readings("obd.pid[SPEED]")) >= 10
    multi_requests = [r for r in requests if r.startswith("01") and len(r) > 4]
    assert len(multi_requests) == 2, "multi-PID is given up after two refusals"


def test_multi_pid_can_be_switched_off(emulator: tuple[Any, int], tmp_path: Path) -> None:
    emu, port = emulator
    requests: list[str] = []
    emu.multi_pid_answer = lambda cmd, header: (requests.append(cmd), None)[1]

    async def scenario(out: ListOutbox) -> None:
        await until("values", lambda: len(out.readings("obd.pid[RPM]")) >= 3)

    run_collector(section(port, tmp_path, multi_pid=False), scenario)
    assert all(len(r) == 4 for r in requests if r.startswith("01"))


def test_injected_dtc_seen_then_cleared(emulator: tuple[Any, int], elm_module: Any, tmp_path: Path) -> None:
    _, port = emulator
    dtcs = elm_module.obd_message.DTC_STORED

    def codes(out: ListOutbox) -> list[str]:
        found = out.discoveries("obd.dtc.discovery")
        return [r["{#DTC}"] for r in found[-1].rows] if found else ["none yet"]

    async def scenario(out: ListOutbox) -> None:
        await until("clean", lambda: codes(out) == [])
        # the emulator leaves out the CAN count byte: give it first
        dtcs.extend(["02", "0143", "C234"])
        await until("seen", lambda: codes(out) == ["P0143", "U0234"])
        dtcs.clear()
        await until("cleared", lambda: codes(out) == [])

    out = run_collector(section(port, tmp_path), scenario)
    seen = next(d for d in out.discoveries("obd.dtc.discovery") if d.rows)
    p0143_row = {"{#DTC}": "P0143", "{#DESCRIPTION}": "O2 Sensor Circuit Low Voltage", "{#STATE}": "stored"}
    assert p0143_row in seen.rows
    p0143 = [r.value for r in out.readings("obd.dtc[P0143,stored]")]
    assert p0143[0] == 1 and p0143[-1] == 0
    assert [r.value for r in out.readings("obd.dtc.count[stored]")][-1] == 0
    assert 2 in [r.value for r in out.readings("obd.dtc.count[stored]")]
    assert out.readings("obd.mil")


def test_dtc_cleared_while_the_agent_was_stopped_gets_its_zero(
    emulator: tuple[Any, int], elm_module: Any, tmp_path: Path
) -> None:
    _, port = emulator
    dtcs = elm_module.obd_message.DTC_STORED
    memory = tmp_path / "obd-car.dtcs.json"

    async def before_the_stop(out: ListOutbox) -> None:
        await until("P0143 reported", lambda: 1 in out.values("obd.dtc[P0143,stored]"))
        await until("P0143 remembered", lambda: memory.exists() and "P0143" in memory.read_text())

    dtcs.extend(["01", "0143"])
    first = run_collector(section(port, tmp_path), before_the_stop)
    assert 0 not in first.values("obd.dtc[P0143,stored]")

    dtcs.clear()  # a mechanic clears the code while the agent is stopped

    async def after_the_restart(out: ListOutbox) -> None:
        await until("P0143 resolved", lambda: 0 in out.values("obd.dtc[P0143,stored]"))

    second = run_collector(section(port, tmp_path), after_the_restart)
    assert 1 not in second.values("obd.dtc[P0143,stored]")
    assert json.loads(memory.read_text())["reported"] == []
    assert second.errors == []


def test_ignition_cycle_followed_without_restart(emulator: tuple[Any, int], tmp_path: Path) -> None:
    emu, port = emulator
    emu.set_sorted_obd_msg("engineoff")

    async def scenario(out: ListOutbox) -> None:
        await until("ignition off", lambda: states(out) == [1] and len(out.readings("obd.voltage")) >= 2)
        assert not out.readings("obd.pid[SPEED]")
        emu.set_sorted_obd_msg("car")
        await until("running", lambda: states(out) == [1, 2] and out.readings("obd.pid[SPEED]"))
        emu.set_sorted_obd_msg("engineoff")
        await until("off again", lambda: states(out) == [1, 2, 1])

    run_collector(section(port, tmp_path, unusable_max=3), scenario)


def test_hung_adapter_is_cut_off_by_the_deadline(emulator: tuple[Any, int], tmp_path: Path) -> None:
    emu, port = emulator

    async def scenario(out: ListOutbox) -> None:
        await until("running", lambda: len(out.readings("obd.pid[SPEED]")) >= 2)
        emu.threadState = emu.THREAD.PAUSED  # the adapter stops answering mid-session
        await until("deadline", lambda: any("deadline" in e for e in out.errors))
        speed_before = len(out.readings("obd.pid[SPEED]"))
        emu.threadState = emu.THREAD.ACTIVE
        await until("back", lambda: len(out.readings("obd.pid[SPEED]")) > speed_before + 2)

    out = run_collector(section(port, tmp_path, call_timeout=1.0, connect_timeout=3.0), scenario)
    assert any("abandoning the connection" in e for e in out.errors)


def test_killed_and_restarted_emulator_is_survived(elm_module: Any, tmp_path: Path) -> None:
    elm_bin = need_binary("elm")
    port = free_port()
    env = os.environ | {"ELM_LOG_CFG": "/nonexistent"}

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([elm_bin, "-s", "car", "-n", str(port), "-d", "-b", os.devnull],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(port):
            proc.kill()
            missing_peer("elm did not open its TCP port")
        return proc

    proc = start()
    try:
        async def scenario(out: ListOutbox) -> None:
            nonlocal proc
            await until("running", lambda: len(out.readings("obd.pid[SPEED]")) >= 2)
            proc.kill()  # adapter unplugged
            proc.wait()
            await until("no adapter", lambda: states(out)[-1:] == [0])
            await until("retrying", lambda: [r.value for r in out.readings("obd.state")][-3:] == [0, 0, 0])
            speed_before = len(out.readings("obd.pid[SPEED]"))
            proc = await asyncio.to_thread(start)
            await until("back", lambda: len(out.readings("obd.pid[SPEED]")) > speed_before + 2)

        out = run_collector(section(port, tmp_path), scenario)
        assert states(out) == [2, 0, 2]
    finally:
        proc.kill()
        proc.wait()
