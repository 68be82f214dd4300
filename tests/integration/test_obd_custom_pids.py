"""Operator-defined PIDs against the real ELM327-emulator: answers we add to its
table (a mode 22 PID of one ECU behind ``AT SH``, a mode 01 PID the shipped
catalogue lacks, a PID the ECU refuses) reach the outbox as readings, named in
the PID discovery, while the shipped PIDs go on being polled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.elm_fixtures import obd_section, request_log
from tests.support.outbox import ListOutbox, run_collector_until
from trapline.collectors.obd import build

pytestmark = pytest.mark.integration

LIMIT = 40.0
BMS = "7E4"  # the ECU the mode 22 PID lives on; the emulator only answers it when addressed

CUSTOM_PIDS = [
    {"key": "EV_SOC", "name": "EV battery state of charge", "header": BMS, "request": "22B002",
     "formula": "(A*256+B)/10", "unit": "%", "tier": "fast"},
    {"key": "CYL_FUEL_RATE", "name": "Cylinder fuel rate", "request": "01A2",
     "formula": "(A*256+B)/32", "unit": "mg"},
    {"key": "LOCKED", "name": "A PID the ECU refuses", "header": BMS, "request": "22B0FF",
     "formula": "A", "tier": "fast"},
]


def emulated_car(emu: Any, elm_module: Any) -> list[str]:
    """Teach the emulator our PIDs (a scenario of its own: its tables are module globals);
    returns the list that collects every request line it handles."""
    msg = elm_module.obd_message
    footer = msg.ELM_FOOTER
    entries = {
        "EV_SOC": {"Request": "^22B002" + footer, "Descr": "EV SOC", "Header": BMS,
                   "Response": msg.PA("02 F1")},  # 0x02F1 = 753 -> 75.3 %
        "CYL_FUEL_RATE": {"Request": "^01A2" + footer, "Descr": "cylinder fuel rate",
                          # 0x0190 = 400 -> 12.5 mg
                          "Response": msg.HD(msg.ECU_R_ADDR_E) + msg.SZ("04") + msg.DT("41 A2 01 90")},
        "LOCKED": {"Request": "^22B0FF" + footer, "Descr": "refused", "Header": BMS,
                   "Response": msg.NA("33")},  # security access denied
    }
    emu.ObdMessage = {**emu.ObdMessage, "custom": {**emu.ObdMessage["car"], **entries}}
    emu.set_sorted_obd_msg("custom")
    return request_log(emu)


def test_custom_pids_are_discovered_polled_and_isolated(
    emulator: tuple[Any, int], elm_module: Any, tmp_path: Path
) -> None:
    emu, port = emulator
    requests = emulated_car(emu, elm_module)
    out = ListOutbox()
    collector = build("car", obd_section(port, tmp_path, custom_pids=CUSTOM_PIDS))
    run_collector_until(collector, out, lambda o: len(o.readings("obd.pid[EV_SOC]")) >= 5
                        and bool(o.readings("obd.pid[CYL_FUEL_RATE]")), LIMIT)

    rows = out.discoveries("obd.pid.discovery")[0].rows
    assert {"{#PID}": "EV_SOC", "{#NAME}": "EV battery state of charge", "{#UNIT}": "%"} in rows
    assert {"{#PID}": "CYL_FUEL_RATE", "{#NAME}": "Cylinder fuel rate", "{#UNIT}": "mg"} in rows
    assert {"{#PID}": "SPEED", "{#NAME}": "Vehicle Speed", "{#UNIT}": "km/h"} in rows

    soc = out.readings("obd.pid[EV_SOC]")
    assert {r.value for r in soc} == {75.3}
    assert soc[0].unit == "%" and soc[0].labels == {"pid": "EV_SOC"}
    assert out.values("obd.pid[CYL_FUEL_RATE]")[0] == 12.5
    assert not out.readings("obd.pid[LOCKED]")
    refused = [e for e in out.errors if "LOCKED" in e]
    assert refused and "refused 22B0FF (code 33)" in refused[0]
    # the refusal is no link fault: the shipped PIDs kept coming on one connection
    assert len(out.readings("obd.pid[SPEED]")) >= 5
    assert [r.value for r in out.readings("obd.state")] == [2] * len(out.readings("obd.state"))

    # each request went out with the header its PID names: the BMS for the mode 22 ones,
    # the broadcast header (set back after them) for every mode 01 request
    header = "none set"
    addressed: dict[str, set[str]] = {}
    for line in requests:
        if line.startswith("ATSH"):
            header = line[4:]
        elif line[:2] in ("01", "22"):
            addressed.setdefault(line[:2], set()).add(header)
    assert addressed["22"] == {BMS}
    assert addressed["01"] == {"none set", "7DF"}
