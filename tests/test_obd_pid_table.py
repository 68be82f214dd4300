"""pids.toml's own J1979 scaling agrees with python-OBD's decoders, value for value.

The formulas come from SAE J1979 (mode 01 PID definitions); python-OBD is an
independent implementation of the same tables, so each row is decoded both
ways: every value of each data byte (the other byte at its edges: 00, 7F, 80,
FF, which exercises the sign) and, by hypothesis, arbitrary byte pairs.
python-OBD is driven through its public API only: one of its protocol parsers
turns an ELM327 line into messages, and the command object decodes them.
"""

from __future__ import annotations

import math
import subprocess
import sys
from functools import cache
from itertools import product
from pathlib import Path
from typing import Any

import obd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from obd.protocols import ISO_15765_4_11bit_500k

from trapline.collectors.obd.catalog import DecodeError, PidSpec, pid_table

# Rows python-OBD has no command for are checked against J1979 alone, below.
REPO = Path(__file__).resolve().parents[1]
OWN_ROWS = {"ODOMETER"}
TABLE = {name: spec for name, spec in pid_table().items() if name not in OWN_ROWS}
TWO_BYTE = [spec for spec in TABLE.values() if spec.size == 2]

# the pint unit python-OBD's value is converted to before comparing; "" is dimensionless
PINT_UNIT = {
    "%": "percent", "°C": "degC", "Pa": "pascal", "rpm": "rpm", "km/h": "kph", "°": "degree",
    "g/s": "gram/second", "s": "second", "m": "meter", "V": "volt", "L/h": "liter/hour",
}
# python-OBD rounds J1979's 2/65536 to 0.0000305 (0.06 % low); the table keeps the exact ratio
ROUNDED_FACTOR = {"COMMANDED_EQUIV_RATIO": 1e-3}
EDGES = (0x00, 0x7F, 0x80, 0xFF)


@cache
def _parser() -> Any:
    return ISO_15765_4_11bit_500k([])


def python_obd_value(spec: PidSpec, data: bytes) -> float:
    line = f"7E8 {len(data) + 2:02X} 41 {spec.code} {data.hex(' ').upper()}"
    (message,) = _parser()([line])
    quantity = obd.commands[spec.name]([message]).value  # a command object decodes messages
    if spec.unit == "":
        return float(quantity.magnitude)
    return float(quantity.to(PINT_UNIT[spec.unit]).magnitude)


def check(spec: PidSpec, data: bytes) -> None:
    ours, theirs = spec.decode(data), python_obd_value(spec, data)
    if spec.name == "EVAP_VAPOR_PRESSURE" and data[1] >= 0x80:
        # J1979 reads A,B as one signed 16-bit number; python-OBD also makes B
        # negative on its own, which puts it 256/4 Pa low whenever B >= 80
        assert ours - theirs == 64.0, data.hex()
        return
    rel_tol = ROUNDED_FACTOR.get(spec.name, 1e-12)
    assert math.isclose(ours, theirs, rel_tol=rel_tol, abs_tol=1e-9), (spec.name, data.hex(), ours, theirs)


def test_numbers_and_sizes_match_python_obd() -> None:
    for name, spec in TABLE.items():
        command = obd.commands[name]
        assert (command.mode, command.pid, command.bytes - 2) == (1, spec.pid, spec.size), name
        assert spec.unit == "" or spec.unit in PINT_UNIT, name


@pytest.mark.parametrize("spec", TABLE.values(), ids=lambda spec: spec.name)
def test_every_byte_value_decodes_as_python_obd_does(spec: PidSpec) -> None:
    if spec.size == 1:
        cases = [bytes([a]) for a in range(256)]
    else:
        cases = [bytes(pair) for edge, a in product(EDGES, range(256)) for pair in ((a, edge), (edge, a))]
    for data in cases:
        check(spec, data)


@given(st.sampled_from(TWO_BYTE), st.binary(min_size=2, max_size=2))
def test_any_two_byte_answer_decodes_as_python_obd_does(spec: PidSpec, data: bytes) -> None:
    check(spec, data)


def test_descriptions_are_python_obds_so_item_names_stay_as_they_were() -> None:
    # The table holds them so that the agent need not import python-OBD; LLD names items by them.
    for name, spec in TABLE.items():
        assert spec.description == obd.commands[name].desc, name


def test_polling_imports_no_python_obd() -> None:
    # python-OBD loads a unit library that is about a third of an idle agent's memory
    # (bench/RESULTS.md): the collector may import it only to describe a trouble code.
    code = (
        "import sys\n"
        "from trapline.collectors.obd import collector, payload\n"
        "collector.pid_table()\n"
        "assert 'obd' not in sys.modules, 'polling imported python-OBD'\n"
        "assert 'Misfire' in payload.describe_dtc('P0301')\n"
        "assert 'obd' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_rows_python_obd_lacks_are_exactly_the_listed_ones() -> None:
    assert {name for name in pid_table() if name not in obd.commands} == OWN_ROWS


@given(st.binary(min_size=4, max_size=4))
def test_odometer_is_four_bytes_of_a_tenth_of_a_km(data: bytes) -> None:
    # J1979 PID A6: (A*2^24 + B*2^16 + C*2^8 + D) / 10 km; here in metres
    a, b, c, d = data
    expected_km = (a * 2**24 + b * 2**16 + c * 2**8 + d) / 10
    spec = pid_table()["ODOMETER"]
    assert (spec.pid, spec.unit) == (0xA6, "m")
    assert math.isclose(spec.decode(data), expected_km * 1000, rel_tol=1e-12, abs_tol=1e-9)


@given(st.sampled_from(list(pid_table().values())), st.binary(max_size=8))
def test_wrong_length_is_refused_not_guessed(spec: PidSpec, data: bytes) -> None:
    if len(data) == spec.size:
        assert isinstance(spec.decode(data), float)
    else:
        with pytest.raises(DecodeError):
            spec.decode(data)
