"""The ELM327 line protocol: answer lines -> one message per ECU, and the serial side.

Frame shapes come from the ELM327 datasheet (headers on: the CAN id, then the
ISO-TP bytes; on the older protocols three header bytes, data, a check byte)
and ISO 15765-2/-4 (single frame ``0L``, first frame ``1L LL``, consecutive
frames ``2N`` with N wrapping after F, frames padded to 8 bytes or not).
Hypothesis builds the messages, cuts them into frames, interleaves the ECUs
and sprinkles the adapter's status lines in; python-OBD's public protocol
parsers, an independent reading of the same standards, must agree.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from obd.protocols import ISO_9141_2, ISO_15765_4_11bit_500k, ISO_15765_4_29bit_500k

from tests.support.peers import free_port
from trapline.collectors.obd.adapter import Adapter, Reach
from trapline.collectors.obd.elm327 import Elm327, LinkLost, ecu_payloads, engine_answer, split_lines

STATUS_LINES = ["SEARCHING...", "BUS INIT: ...OK", "NO DATA", "CAN ERROR", "?", "STOPPED"]
# any message but a service 03 answer, whose count byte trims it (tested on its own);
# beyond 111 bytes the consecutive frames' sequence number wraps from F to 0
messages = st.one_of(st.binary(min_size=1, max_size=40), st.binary(min_size=100, max_size=300)).filter(
    lambda m: m[0] != 0x43
)


def can_frames(message: bytes, pad: int | None) -> list[bytes]:
    """ISO-TP frames (PCI byte first) of one message; ``pad`` fills short frames to 8 bytes."""
    if len(message) <= 7:
        frames = [bytes([len(message)]) + message]
    else:
        frames = [bytes([0x10 | len(message) >> 8, len(message) & 0xFF]) + message[:6]]
        rest = message[6:]
        for index in range(0, len(rest), 7):
            frames.append(bytes([0x20 | (index // 7 + 1) & 0x0F]) + rest[index : index + 7])
    return [f + bytes([pad]) * (8 - len(f)) if pad is not None else f for f in frames]


def can_line(header: str, frame: bytes, spaced: bool) -> str:
    return f"{header} {frame.hex(' ').upper()}" if spaced else header.replace(" ", "") + frame.hex().upper()


@st.composite
def can_answer(draw: st.DrawFn, bits: int) -> tuple[list[str], dict[int, bytes]]:
    senders = st.integers(0x7E8, 0x7EF) if bits == 11 else st.integers(0x00, 0xFF)
    answer = draw(st.dictionaries(senders, messages, min_size=1, max_size=3))
    pad = draw(st.sampled_from([None, 0x00, 0x55, 0xAA]))
    spaced = draw(st.booleans())
    queues = {
        sender: [
            can_line(f"{sender:03X}" if bits == 11 else f"18 DA F1 {sender:02X}", frame, spaced)
            for frame in can_frames(message, pad)
        ]
        for sender, message in answer.items()
    }
    lines = draw(st.lists(st.sampled_from(STATUS_LINES), max_size=2))
    while queues:  # ECUs talk at once: their frames interleave, each ECU's in order
        sender = draw(st.sampled_from(sorted(queues)))
        lines.append(queues[sender].pop(0))
        if not queues[sender]:
            del queues[sender]
    return lines, answer


def python_obd(parser: type, lines: list[str]) -> list[bytes]:
    return [bytes(m.data) for m in parser([])(lines) if m.parsed()]


@pytest.mark.parametrize(
    ("bits", "protocol", "parser"), [(11, "6", ISO_15765_4_11bit_500k), (29, "7", ISO_15765_4_29bit_500k)]
)
@given(data=st.data())
def test_can_answers_reassemble_per_ecu(bits: int, protocol: str, parser: type, data: st.DataObject) -> None:
    lines, answer = data.draw(can_answer(bits))
    ours = ecu_payloads(lines, protocol)
    assert ours == sorted(answer.items())
    assert [m for _, m in ours] == python_obd(parser, lines)


@given(can_answer(11), st.data())
def test_an_ecu_missing_a_frame_gives_nothing_others_still_count(
    case: tuple[list[str], dict[int, bytes]], data: st.DataObject
) -> None:
    lines, answer = case
    multi = [i for i, line in enumerate(lines) if line.startswith("7") and line.replace(" ", "")[3] == "2"]
    assume(multi)  # an ECU with a consecutive frame to lose
    dropped = lines.pop(data.draw(st.sampled_from(multi)))
    broken = int(dropped.replace(" ", "")[:3], 16)
    assert ecu_payloads(lines, "6") == sorted((s, m) for s, m in answer.items() if s != broken)


@given(st.lists(st.text("0123456789ABCDEF ", max_size=40) | st.sampled_from(STATUS_LINES), max_size=12),
       st.sampled_from("123456789A"))
def test_any_hex_lines_on_any_protocol_never_raise(lines: list[str], protocol: str) -> None:
    for sender, message in ecu_payloads(lines, protocol):
        assert isinstance(sender, int) and message


def test_service_03_on_can_is_cut_to_its_count() -> None:
    # two codes announced, the rest of the frame is another code's worth of filler
    assert ecu_payloads(["7E8 10 08 43 02 01 43 01", "7E8 21 96 00 00 00 00 00 00"], "6") == [
        (0x7E8, bytes.fromhex("430201430196"))
    ]


def test_frames_that_do_not_fit_are_ignored() -> None:
    lines = ["7E8 03 41 0D", "7E8 30 00 00", "7E8 034", "7E9 03 41 0D 33"]  # short SF, flow control, odd
    assert ecu_payloads(lines, "6") == [(0x7E9, bytes.fromhex("410d33"))]


@st.composite
def legacy_answer(draw: st.DrawFn) -> tuple[list[str], dict[int, bytes]]:
    answer: dict[int, bytes] = {}
    lines: list[str] = []
    for sender in draw(st.sets(st.integers(0x10, 0x1F), min_size=1, max_size=3)):
        check = draw(st.integers(0, 0xFF))  # the ELM327 has checked it; never read here
        if draw(st.booleans()):  # a one-frame answer: service, PID, up to 5 bytes
            data = bytes([draw(st.integers(0x41, 0x4A).filter(lambda b: b != 0x43))])
            data += draw(st.binary(min_size=1, max_size=6))
            frames = [data]
            answer[sender] = data
        else:  # numbered frames of 4 data bytes, as the VIN comes (49 02 NN ....)
            chunks = draw(st.lists(st.binary(min_size=4, max_size=4), min_size=2, max_size=5))
            frames = [bytes([0x49, 0x02, n + 1]) + c for n, c in enumerate(chunks)]
            frames = draw(st.permutations(frames))
            answer[sender] = bytes([0x49, 0x02]) + b"".join(chunks)
        lines += [(bytes([0x48, 0x6B, sender]) + f + bytes([check])).hex(" ").upper() for f in frames]
    return draw(st.permutations(lines)), answer


@given(legacy_answer())
def test_legacy_answers_reassemble_per_ecu(case: tuple[list[str], dict[int, bytes]]) -> None:
    lines, answer = case
    ours = ecu_payloads(lines, "3")
    assert ours == sorted(answer.items())
    assert [m for _, m in ours] == python_obd(ISO_9141_2, list(lines))


def test_legacy_dtcs_get_a_count_byte_like_can() -> None:
    lines = ["48 6B 10 43 01 43 01 96 00 00 5A", "48 6B 10 43 00 00 00 00 00 00 11"]
    assert ecu_payloads(lines, "3") == [(0x10, bytes.fromhex("4300014301960000") + bytes(6))]


def test_legacy_frames_from_two_requests_are_refused() -> None:
    assert ecu_payloads(["48 6B 10 41 0D 33 00", "48 6B 10 49 02 01 00 00"], "3") == []


def test_engine_is_7e8_else_the_ecu_claiming_most() -> None:
    bitmaps = [(0x7E8, bytes.fromhex("4100 00000001")), (0x7E9, bytes.fromhex("4100 FFFFFFFF"))]
    assert engine_answer(bitmaps, "6") == bitmaps[0][1]
    assert engine_answer([*bitmaps[1:], (0x7EA, bytes.fromhex("4100 0F000000"))], "6") == bitmaps[1][1]
    assert engine_answer([], "6") is None


@given(st.lists(st.sampled_from(["41 0D 33", "NO DATA", "12.6V", " OK ", ""]), max_size=5),
       st.sampled_from(["\r", "\r\n", "\n\r"]), st.binary(max_size=5))
def test_split_lines_drops_prompt_blanks_nuls_and_what_follows_the_prompt(
    lines: list[str], newline: str, after: bytes
) -> None:
    raw = newline.join(lines).encode() + newline.encode() * 2 + b">" + after
    assert split_lines(raw.replace(b" ", b"\x00 ", 1)) == [line.strip() for line in lines if line.strip()]


# -- the serial side, over a real socket --------------------------------------


@pytest.fixture
def silent_adapter() -> Iterator[int]:
    """A TCP peer that accepts and never answers: a hung adapter."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    yield server.getsockname()[1]
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.timeout(8)  # far below the 10 s of silence that would end the read on its own
def test_abort_from_another_thread_ends_a_hung_request(silent_adapter: int) -> None:
    elm = Elm327.open(f"socket://127.0.0.1:{silent_adapter}", 38400)
    assert elm is not None
    threading.Timer(0.2, elm.abort).start()  # most likely while send() waits for the prompt
    with pytest.raises(LinkLost):
        elm.send("0100")
    with pytest.raises(LinkLost):  # and it stays closed
        elm.send("0100")


@pytest.mark.timeout(8)
def test_adapter_aborted_while_connecting_reaches_nothing(silent_adapter: int) -> None:
    adapter = Adapter(f"socket://127.0.0.1:{silent_adapter}", 38400, "6")
    threading.Timer(0.2, adapter.abort).start()
    assert adapter.connect() is Reach.NOTHING
    assert adapter.request("0100").lost


def test_no_adapter_at_the_address_reaches_nothing() -> None:
    assert Adapter(f"socket://127.0.0.1:{free_port()}", 38400, "6").connect() is Reach.NOTHING
