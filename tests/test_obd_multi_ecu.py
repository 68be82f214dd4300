"""Mode 01 answers from more than one ECU (engine + transmission) are data, not garbage.

The unit tests feed raw ELM327 lines (headers on, as the adapter is set up)
through the collector's frame parser, which gives one message per
transmitting ECU, and decode them the way the collector does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.elm_fixtures import obd_section
from tests.support.outbox import ListOutbox
from trapline.collectors.obd import build
from trapline.collectors.obd.elm327 import ecu_payloads as parse
from trapline.collectors.obd.payload import pids_from_ecus

SIZES = {0x0C: 2, 0x0D: 1, 0x04: 1, 0x05: 1}  # RPM, SPEED, ENGINE_LOAD, COOLANT_TEMP


def ecu_payloads(*lines: str, protocol: str = "6") -> list[bytes]:
    """One reassembled payload per ECU, in the order the adapter hands them to the collector."""
    return [message for _, message in parse(lines, protocol)]


def decode(*lines: str, protocol: str = "6") -> tuple[dict[int, bytes], list[str]]:
    return pids_from_ecus(ecu_payloads(*lines, protocol=protocol), SIZES)


@pytest.mark.parametrize(
    "lines",
    [
        ("7E8 03 41 04 00", "7E9 03 41 04 33"),
        ("7E9 03 41 04 33", "7E8 03 41 04 00"),  # the transmission's frame arrives first
    ],
)
def test_single_pid_answered_by_two_ecus_takes_the_engines(lines: tuple[str, ...]) -> None:
    assert decode(*lines) == ({0x04: b"\x00"}, [])


def test_29_bit_can_engine_is_preferred_too() -> None:
    # 18DAF1xx: xx is the sender, engine 10, transmission 18
    values, rejected = decode("18 DA F1 18 03 41 04 33", "18 DA F1 10 03 41 04 00",
                              protocol="7")
    assert (values, rejected) == ({0x04: b"\x00"}, [])


def test_multi_pid_answer_split_over_two_ecus() -> None:
    # The engine answers four PIDs in two ISO-TP frames; the transmission, interleaved,
    # answers speed (also answered by the engine) and nothing else.
    values, rejected = decode(
        "7E8 10 0A 41 0C 14 5F 0D 0A", "7E9 03 41 0D 0B", "7E8 21 05 5F 04 FF",
    )
    assert rejected == []
    assert values == {0x0C: b"\x14\x5f", 0x0D: b"\x0a", 0x05: b"\x5f", 0x04: b"\xff"}


def test_pid_only_the_second_ecu_answers_is_kept() -> None:
    values, rejected = decode("7E8 04 41 0C 14 5F", "7E9 03 41 0D 0B")
    assert (values, rejected) == ({0x0C: b"\x14\x5f", 0x0D: b"\x0b"}, [])


def test_two_ecu_answers_merged_into_one_message() -> None:
    # What ELM327-emulator sends for 010D0C04 when ENGINE_LOAD comes from two ECUs:
    # the second ECU's "41 04 00" appended to the engine's answer.
    (payload,) = ecu_payloads("7E8 10 0B 41 0D 33 0C 35 CB", "7E8 21 04 00 41 04 00")
    assert pids_from_ecus([payload], SIZES) == ({0x0D: b"\x33", 0x0C: b"\x35\xcb", 0x04: b"\x00"}, [])
    # ... and with the engine's value first when they differ
    assert pids_from_ecus([bytes.fromhex("41040041045a")], SIZES) == ({0x04: b"\x00"}, [])


def test_pid_41_requested_is_still_read_as_a_pid() -> None:
    sizes = {0x41: 4, 0x0D: 1}
    payloads = [bytes.fromhex("410d3341000007a1"), bytes.fromhex("4141000007a10d33")]
    values, rejected = pids_from_ecus(payloads, sizes)
    assert rejected == []
    assert values == {0x0D: b"\x33", 0x41: b"\x00\x00\x07\xa1"}


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (("7E8 03 41 04 00", "7E9 03 41 42 00"), "unrequested PID 42"),
        (("7E8 03 41 04 00", "7E9 02 41 0C"), "truncated"),
        (("7E8 03 41 04 00", "7E9 05 41 0D 0B 0D 0C"), "repeats PID 0D"),
        (("7E8 03 41 04 00", "7E9 03 7F 01 12"), "does not start with 41"),
    ],
)
def test_garbled_second_ecu_is_rejected_engine_still_used(lines: tuple[str, ...], reason: str) -> None:
    values, rejected = decode(*lines)
    assert values == {0x04: b"\x00"}
    assert len(rejected) == 1 and reason in rejected[0]


def test_garbage_from_the_only_ecu_gives_no_values() -> None:
    values, rejected = decode("7E8 05 41 04 00 41 0C")
    assert values == {}
    assert len(rejected) == 1 and "truncated" in rejected[0]


@pytest.mark.integration
@pytest.mark.parametrize("multi_pid", [True, False], ids=["multi-pid", "single-pid"])
def test_emulator_engine_load_from_two_ecus_no_error(
    emulator: tuple[Any, int], multi_pid: bool, tmp_path: Path
) -> None:
    """ELM327-emulator's ENGINE_LOAD answers from 7E8 and 7EA once per cycle of its values."""
    emu, port = emulator
    two_ecu_answers = [0]
    handle_request = emu.handle_request

    def counting(cmd: str, do_write: bool = False) -> Any:
        answer = handle_request(cmd, do_write)
        if answer[2] and "7EA" in answer[2]:
            two_ecu_answers[0] += 1
        return answer

    emu.handle_request = counting
    sec = obd_section(port, tmp_path, multi_pid=multi_pid, tiers={"fast": {"interval": 0.05,
                                                                 "pids": ["SPEED", "RPM", "ENGINE_LOAD"]}})
    out = ListOutbox()

    async def main() -> None:
        task = asyncio.create_task(build("car", sec).run(out))
        try:
            async with asyncio.timeout(40):
                while two_ecu_answers[0] < 2 or len(out.readings("obd.pid[ENGINE_LOAD]")) < 30:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert out.errors == []
    assert 0.0 in out.values("obd.pid[ENGINE_LOAD]")  # the value both ECUs gave
    assert len(out.readings("obd.pid[SPEED]")) >= 25
