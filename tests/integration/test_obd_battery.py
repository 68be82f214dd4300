"""The battery guard and the cranking dip against the real ELM327-emulator, its
AT RV answer (and RPM answer) set by the test."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.elm_fixtures import obd_section, request_log
from tests.support.outbox import ListOutbox, run_collector_until
from tests.support.zabbix_fixtures import wait_until
from trapline.collectors.obd import build

pytestmark = pytest.mark.integration

LIMIT = 40.0
VOLTAGE_ANSWERS = ("AT_R_VOLT", "ELM_VOLTAGE")  # the emulator's entries that may answer AT RV


def set_voltage(emu: Any, elm_module: Any, volts: float) -> None:
    for name in VOLTAGE_ANSWERS:
        emu.answer[name] = elm_module.obd_message.ST(f"{volts:.1f}V")


def set_rpm(emu: Any, elm_module: Any, data: str) -> None:
    msg = elm_module.obd_message
    emu.answer["RPM"] = msg.HD(msg.ECU_R_ADDR_E) + msg.SZ("04") + msg.DT("41 0C " + data)


def test_a_parked_van_with_a_low_battery_lets_the_adapter_sleep_until_it_recovers(
    emulator: tuple[Any, int], elm_module: Any, tmp_path: Path
) -> None:
    emu, port = emulator
    emu.set_sorted_obd_msg("engineoff")
    set_voltage(emu, elm_module, 11.2)
    requests = request_log(emu)
    guard = {"battery_guard_voltage": 11.8, "battery_guard_after": 0.5, "battery_guard_resume": 12.4,
             "battery_guard_probe": 0.5, "idle_interval": 0.1}
    collector = build("car", obd_section(port, tmp_path, **guard))
    out = ListOutbox()

    def guarded_twice(o: ListOutbox) -> bool:
        return requests.count("ATLP") >= 2

    run_collector_until(collector, out, guarded_twice, LIMIT)
    assert 1 in out.values("obd.battery.guard")
    # asleep means silent: after each ATLP the next word to the adapter is a new connection's reset
    for at, line in enumerate(requests):
        if line == "ATLP" and at + 1 < len(requests):
            assert requests[at + 1] == "ATZ", requests[at:at + 4]

    # the battery is charged again: the next probe resets the guard and the idle polling resumes
    set_voltage(emu, elm_module, 12.6)
    requests.clear()
    out = ListOutbox()

    def reset_and_polling(o: ListOutbox) -> bool:
        return 0 in o.values("obd.battery.guard") and requests.count("ATRV") >= 5

    run_collector_until(collector, out, reset_and_polling, LIMIT)
    assert "ATLP" not in requests
    assert out.values("obd.battery.guard")[-1] == 0
    # every connection's worker thread ended, those of the asleep adapter's probes included
    wait_until(lambda: not any(t.name == "obd-car" for t in threading.enumerate()), 5.0, 0.05,
               "the connections' worker threads to end")


def test_the_voltage_dip_of_an_engine_start_is_reported(
    emulator: tuple[Any, int], elm_module: Any, tmp_path: Path
) -> None:
    emu, port = emulator
    set_rpm(emu, elm_module, "00 00")  # ignition on, engine off
    set_voltage(emu, elm_module, 12.5)
    out = ListOutbox()
    step = ["parked"]

    def drive(o: ListOutbox) -> bool:
        """The start, one step at a time, within one connection."""
        volts = o.values("obd.voltage")
        if step[0] == "parked" and len(volts) >= 5:
            set_voltage(emu, elm_module, 9.4)  # the starter turns
            step[0] = "cranking"
        elif step[0] == "cranking" and 9.4 in volts:
            set_voltage(emu, elm_module, 14.1)
            set_rpm(emu, elm_module, "1A F8")  # running
            step[0] = "running"
        return bool(o.values("obd.battery.crank_voltage"))

    run_collector_until(build("car", obd_section(port, tmp_path)), out, drive, LIMIT)
    assert out.values("obd.battery.crank_voltage") == [9.4]
    assert len(out.values("obd.protocol")) == 1, "one connection throughout"
    # The ECU answered all along (link state 2), the engine turned only at the end.
    running = out.values("obd.engine.running")
    assert running[0] == 0 and running[-1] == 1 and sorted(set(running)) == [0, 1]
    assert running == sorted(running), "off, then on: no flicker"
    assert set(out.values("obd.state")) == {2}
    assert all(v == 0 for v in out.values("obd.battery.guard"))
