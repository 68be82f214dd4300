"""Pure decoding of ELM327/OBD-II answer payloads (no I/O).

A *payload* is one ECU's reassembled message (:mod:`.elm327` has already
joined the ISO-TP frames of a multi-frame CAN answer): the service byte (0x41, 0x43,
0x47, 0x49) followed by the data.  Every malformed payload raises
:class:`PayloadError` with a reason fit for ``out.error``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

MODE_01_ANSWER = 0x41
MODE_03_ANSWER = 0x43
MODE_07_ANSWER = 0x47
MODE_09_ANSWER = 0x49
VIN_INFOTYPE = 0x02
VIN_LENGTH = 17
MAX_PIDS_PER_REQUEST = 6  # SAE J1979 limit for one mode 01 request

_VIN_CHARS = frozenset(b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789")  # no I, O, Q
_DTC_LETTERS = "PCBU"
_HEX_LINE = re.compile(r"[0-9A-F]+")
_VOLTAGE = re.compile(r"^\s*(\d{1,2}(?:\.\d{1,2})?)\s*V?\s*$", re.IGNORECASE)


class PayloadError(ValueError):
    """An answer that cannot be decoded; ``str()`` is the reason."""


def split_pids(payload: bytes, sizes: Mapping[int, int]) -> dict[int, bytes]:
    """Split a (multi-)PID mode 01 answer into {pid: data}.

    ``sizes`` maps each *requested* PID to its data length.  The ECU may answer
    in any order and leave out PIDs it does not support.  A ``41`` where a PID
    should start (and PID 41 was not requested, or already read) opens another
    ECU's answer merged into the same message, as in ``41 04 00 41 04 00``
    (engine and transmission); the first answer of a PID wins.  An unrequested
    PID, a truncated answer or a PID repeated by one ECU makes the whole payload
    suspect, so it is rejected.
    """
    if not payload or payload[0] != MODE_01_ANSWER:
        raise PayloadError(f"mode 01 answer does not start with 41: {payload.hex()!r}")
    values: dict[int, bytes] = {}
    this_ecu: set[int] = set()
    at = 1
    while at < len(payload):
        pid = payload[at]
        if pid == MODE_01_ANSWER and (pid not in sizes or pid in this_ecu):
            this_ecu = set()  # the next ECU's answer starts here
            at += 1
            if at == len(payload):
                raise PayloadError(f"mode 01 answer ends in an empty ECU answer: {payload.hex()}")
            continue
        if pid not in sizes:
            raise PayloadError(f"mode 01 answer carries unrequested PID {pid:02X}: {payload.hex()}")
        end = at + 1 + sizes[pid]
        if end > len(payload):
            raise PayloadError(f"mode 01 answer truncated in PID {pid:02X}: {payload.hex()}")
        if pid in this_ecu:
            raise PayloadError(f"mode 01 answer repeats PID {pid:02X}: {payload.hex()}")
        this_ecu.add(pid)
        values.setdefault(pid, payload[at + 1 : end])
        at = end
    return values


def pids_from_ecus(payloads: Sequence[bytes], sizes: Mapping[int, int]) -> tuple[dict[int, bytes], list[str]]:
    """Merge the mode 01 answers of every ECU that answered one request.

    ``payloads`` holds one message per ECU, lowest transmitter id first (the
    adapter sorts them, so the engine's 7E8 comes before the transmission's 7E9).  For a
    PID answered by several ECUs the first one wins.  Returns the values and the
    reasons a payload was rejected (one per malformed ECU answer; the others are
    still used).
    """
    values: dict[int, bytes] = {}
    rejected: list[str] = []
    for payload in payloads:
        try:
            for pid, data in split_pids(payload, sizes).items():
                values.setdefault(pid, data)
        except PayloadError as exc:
            rejected.append(str(exc))
    return values, rejected


def decode_dtc(high: int, low: int) -> str:
    """Two DTC bytes -> the usual five-character code (e.g. 0x01 0x43 -> P0143)."""
    return f"{_DTC_LETTERS[high >> 6]}{(high >> 4) & 0x03}{high & 0x0F:X}{low:02X}"


def decode_dtcs(payloads: Sequence[bytes], answer_byte: int) -> list[str]:
    """The DTCs of a mode 03/07 answer from one or more ECUs, sorted and unique.

    Each payload is ``answer_byte, count, (high, low)*``: CAN ECUs send the count,
    :mod:`.elm327` puts a 0 in for the older protocols and trims service 03
    answers on CAN to the count.  ``0000`` pairs are padding.
    """
    codes: set[str] = set()
    for payload in payloads:
        if len(payload) < 2 or payload[0] != answer_byte:
            raise PayloadError(f"DTC answer does not start with {answer_byte:02X}: {payload.hex()!r}")
        pairs = payload[2:]
        if len(pairs) % 2:
            raise PayloadError(f"DTC answer has an odd number of code bytes: {payload.hex()}")
        for i in range(0, len(pairs), 2):
            if pairs[i] or pairs[i + 1]:
                codes.add(decode_dtc(pairs[i], pairs[i + 1]))
    return sorted(codes)


def describe_dtc(code: str) -> str:
    """The generic SAE description, or a hint that the code is maker-specific."""
    # python-OBD's table, imported at the first code: importing python-OBD loads its unit
    # library too, most of an idle agent's memory, which a van without codes never needs.
    from obd.codes import DTC as DTC_DESCRIPTIONS  # noqa: PLC0415

    return str(DTC_DESCRIPTIONS.get(code, "not a generic code (manufacturer specific)"))


def decode_vin(payload: bytes) -> str:
    """The VIN from a mode 09 PID 02 answer, decoded from the raw bytes.

    python-OBD's own decoder strips characters such as ``0`` from both ends of
    the VIN; here the message-count byte and padding (``00``) in front of the 17
    characters are dropped and the VIN alphabet is checked.
    """
    if len(payload) < 2 or payload[0] != MODE_09_ANSWER or payload[1] != VIN_INFOTYPE:
        raise PayloadError(f"VIN answer does not start with 4902: {payload.hex()!r}")
    body = payload[2:]
    start = 0
    while start < len(body) and body[start] not in _VIN_CHARS:
        start += 1
    vin = body[start:]
    if len(vin) != VIN_LENGTH or not all(b in _VIN_CHARS for b in vin):
        raise PayloadError(f"VIN answer is not 17 VIN characters: {payload.hex()}")
    return vin.decode("ascii")


def decode_monitor_status(data: bytes) -> tuple[bool, int]:
    """PID 01 data -> (MIL on, number of confirmed emission DTCs)."""
    if len(data) != 4:
        raise PayloadError(f"PID 01 status needs 4 bytes, got {data.hex()!r}")
    return bool(data[0] & 0x80), data[0] & 0x7F


def parse_voltage(text: str) -> float:
    """The ELM327's ``AT RV`` answer (e.g. ``12.6V``) in volts."""
    match = _VOLTAGE.match(text)
    if match is None:
        raise PayloadError(f"AT RV answer is not a voltage: {text[:40]!r}")
    return float(match.group(1))


def ecu_answered_0100(lines: Sequence[str]) -> bool:
    """Whether raw answer lines to ``0100`` contain an ECU's reply.

    Used while the ignition is off, before any protocol is known to parse
    frames by: any all-hex line holding ``4100`` means an ECU is talking again.
    """
    for line in lines:
        compact = line.replace(" ", "").upper()
        if _HEX_LINE.fullmatch(compact) and "4100" in compact:
            return True
    return False
