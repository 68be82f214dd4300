"""Decoding of OBD-II answer payloads: multi-PID (incl. multi-frame ISO-TP), DTCs, VIN."""

from __future__ import annotations

import pytest

from trapline.collectors.obd.catalog import DecodeError, pid_table
from trapline.collectors.obd.elm327 import ecu_payloads
from trapline.collectors.obd.payload import (
    PayloadError,
    decode_dtc,
    decode_dtcs,
    decode_monitor_status,
    decode_vin,
    ecu_answered_0100,
    parse_voltage,
    split_pids,
)

SIZES = {0x0C: 2, 0x0D: 1, 0x05: 1, 0x04: 1, 0x0F: 1, 0x11: 1}


def can_payloads(*lines: str) -> list[bytes]:
    """Reassemble raw ELM327 CAN lines (11-bit ids) the way the collector gets them."""
    return [message for _, message in ecu_payloads(lines, "6")]


def test_multi_frame_multi_pid_answer_is_split_in_any_order() -> None:
    # 6 PIDs, 14 bytes: a first frame and two consecutive frames (ISO-TP)
    (payload,) = can_payloads("7E8 10 0E 41 0C 00 00 0D 37", "7E8 21 05 44 04 57 0F 39 11", "7E8 22 2B")
    assert split_pids(payload, SIZES) == {
        0x0C: b"\x00\x00", 0x0D: b"\x37", 0x05: b"\x44", 0x04: b"\x57", 0x0F: b"\x39", 0x11: b"\x2b",
    }


def test_consecutive_frames_arriving_out_of_order_are_reassembled() -> None:
    (payload,) = can_payloads("7E8 10 0E 41 0C 00 00 0D 37", "7E8 22 2B", "7E8 21 05 44 04 57 0F 39 11")
    assert split_pids(payload, SIZES)[0x11] == b"\x2b"


def test_four_pids_over_two_frames() -> None:
    (payload,) = can_payloads("7E8 10 0A 41 0C 14 5F 0D 0A", "7E8 21 05 5F 04 FF")
    assert split_pids(payload, SIZES)[0x04] == b"\xff"


def test_single_frame_answer_leaving_out_unsupported_pids() -> None:
    (payload,) = can_payloads("7E8 05 41 0D 0A 05 5F")
    assert split_pids(payload, SIZES) == {0x0D: b"\x0a", 0x05: b"\x5f"}


def test_missing_consecutive_frame_loses_the_message() -> None:
    assert can_payloads("7E8 10 0E 41 0C 00 00 0D 37", "7E8 22 2B") == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (bytes.fromhex("410d33420000"), "unrequested PID 42"),
        (bytes.fromhex("410d3341"), "empty ECU answer"),  # a second ECU that says nothing
        (bytes.fromhex("410d33410d"), "truncated"),  # a second ECU cut short
        (bytes.fromhex("410c14"), "truncated"),
        (bytes.fromhex("410d0a0d0b"), "repeats"),
        (bytes.fromhex("7f0112"), "does not start with 41"),
        (b"", "does not start with 41"),
    ],
)
def test_garbled_multi_pid_answers_are_rejected(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        split_pids(payload, SIZES)


def test_pid_values_in_reported_units() -> None:
    table = pid_table()
    assert table["RPM"].decode(b"\x1a\xf8") == 1726.0
    assert table["COOLANT_TEMP"].decode(b"\x7b") == 83.0
    assert table["INTAKE_PRESSURE"].decode(b"\x65") == 101_000.0  # kPa -> Pa
    assert table["RUN_TIME_MIL"].decode(b"\x00\x02") == 120.0  # minutes -> s
    with pytest.raises(DecodeError):
        table["RPM"].decode(b"\x1a")


@pytest.mark.parametrize(
    ("high", "low", "code"),
    [(0x01, 0x43, "P0143"), (0x41, 0x23, "C0123"), (0xC2, 0x34, "U0234"), (0x9A, 0xBC, "B1ABC")],
)
def test_dtc_bytes(high: int, low: int, code: str) -> None:
    assert decode_dtc(high, low) == code


def test_dtc_lists_from_several_ecus_with_padding() -> None:
    payloads = [bytes.fromhex("430201430196"), bytes.fromhex("4301c2340000"), bytes.fromhex("4300")]
    assert decode_dtcs(payloads, 0x43) == ["P0143", "P0196", "U0234"]


def test_dtc_answer_of_the_wrong_service_is_rejected() -> None:
    with pytest.raises(PayloadError):
        decode_dtcs([bytes.fromhex("470101")], 0x43)
    with pytest.raises(PayloadError, match="odd"):
        decode_dtcs([bytes.fromhex("43010143ff")], 0x43)


def test_vin_keeps_zeros_python_obd_strips() -> None:
    (payload,) = can_payloads(
        "7E8 10 14 49 02 01 57 50 30", "7E8 21 5A 5A 5A 39 39 5A 54", "7E8 22 53 33 39 30 30 30 30"
    )
    assert decode_vin(payload) == "WP0ZZZ99ZTS390000"


def test_vin_with_padding_and_garbage() -> None:
    assert decode_vin(b"\x49\x02\x00\x00" + b"1FTFW1E50NFA12345") == "1FTFW1E50NFA12345"
    with pytest.raises(PayloadError):
        decode_vin(b"\x49\x02\x01" + b"WP0ZZZ99ZTS39")  # too short
    with pytest.raises(PayloadError):
        decode_vin(b"\x49\x02\x01" + b"WP0ZZZ99ZTS39000O")  # O is not a VIN character


def test_monitor_status_and_voltage() -> None:
    assert decode_monitor_status(bytes.fromhex("8307a100")) == (True, 3)
    assert decode_monitor_status(bytes.fromhex("0007a100")) == (False, 0)
    assert parse_voltage("12.6V") == 12.6
    for garbage in ("?", "", "NO DATA", "1.2.3V"):
        with pytest.raises(PayloadError):
            parse_voltage(garbage)


def test_ecu_answer_to_0100_is_recognised_without_a_protocol() -> None:
    assert ecu_answered_0100(["7E8064100BE3FA813"])
    assert not ecu_answered_0100(["SEARCHING...", "UNABLE TO CONNECT"])
    assert not ecu_answered_0100(["NO DATA"])
