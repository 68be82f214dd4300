"""The ELM327 line protocol: set-up, one request line at a time, answers split per ECU.

Two halves.  :func:`ecu_payloads` is pure: it turns the text lines of one
answer into one reassembled message per answering ECU.  :class:`Elm327` is the
blocking half, a thin layer over pyserial's public API (write a line, read up
to the ``>`` prompt, cancel from another thread).

Frame layouts, with headers shown (``ATH1``) as the set-up asks for:

- CAN (ISO 15765-4, protocols 6-9 and A): an 11-bit id (3 hex digits) or a
  29-bit id (4 bytes), then the ISO-TP bytes: single frame ``0L data``, first
  frame ``1L LL data`` (12-bit length), consecutive frames ``2N data`` with a
  4-bit sequence number that wraps;
- SAE J1850 / ISO 9141-2 / ISO 14230-4 (protocols 1-5): three header bytes
  (priority, target, sender), the data, one check byte.  A message longer than
  one frame repeats the service and PID and numbers its frames in byte 3.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import serial

log = logging.getLogger(__name__)

PROTOCOL_NAMES = {  # as the ELM327 datasheet lists them for AT SP / AT DPN
    "1": "SAE J1850 PWM",
    "2": "SAE J1850 VPW",
    "3": "ISO 9141-2",
    "4": "ISO 14230-4 (KWP 5BAUD)",
    "5": "ISO 14230-4 (KWP FAST)",
    "6": "ISO 15765-4 (CAN 11/500)",
    "7": "ISO 15765-4 (CAN 29/500)",
    "8": "ISO 15765-4 (CAN 11/250)",
    "9": "ISO 15765-4 (CAN 29/250)",
    "A": "SAE J1939 (CAN 29/250)",
}
# when AT DPN names nothing usable, the order in which protocols are tried:
# the common CAN ones first, slow-initialising KWP 5-baud late
TRY_ORDER = "681792345A"
_CAN_11_BIT = frozenset("68")
_CAN_29_BIT = frozenset("79A")
# the header (AT SH) a request goes out with unless one is set: the functional
# (broadcast) address of each protocol, as the ELM327 datasheet gives them
FUNCTIONAL_HEADER = {
    "1": "616AF1", "2": "686AF1", "3": "686AF1", "4": "C133F1", "5": "C133F1",
    "6": "7DF", "7": "18DB33F1", "8": "7DF", "9": "18DB33F1",
}
ENGINE = {"11": 0x7E8, "29": 0x10, "legacy": 0x10}  # the engine ECU's sender id per layout

PROMPT = b">"
READ_TIMEOUT = 10.0  # seconds of silence that end a read; a hung adapter is cut off by abort()
BAUD_PROBE_TIMEOUT = 0.1
BAUD_RATES = (38400, 9600, 230400, 115200, 57600, 19200)  # usual factory settings first
_HEX = re.compile(r"[0-9A-Fa-f]+")
_DTC_ANSWER = 0x43


class LinkLost(OSError):
    """The serial port failed or was closed under a request."""


@dataclass(frozen=True, slots=True)
class _Frame:
    sender: int
    data: bytes  # CAN: the ISO-TP bytes (PCI first); others: between header and check byte


def layout(protocol: str) -> str:
    """``"11"``/``"29"`` (CAN identifier bits) or ``"legacy"`` for the protocol number."""
    if protocol in _CAN_11_BIT:
        return "11"
    if protocol in _CAN_29_BIT:
        return "29"
    return "legacy"


def is_frame_line(line: str) -> bool:
    return bool(_HEX.fullmatch(line.replace(" ", "")))


def _frame(line: str, shape: str) -> _Frame | None:
    compact = line.replace(" ", "")
    head = {"11": 3, "29": 8}.get(shape, 6)  # hex digits before the data
    if len(compact) <= head or (len(compact) - head) % 2:
        return None
    # the sender: the whole 11-bit id, else the last header byte
    sender = int(compact[:head] if shape == "11" else compact[head - 2 : head], 16)
    data = bytes.fromhex(compact[head:])
    if shape == "legacy":
        data = data[:-1]  # the check byte (the ELM327 has checked it)
        return _Frame(sender, data) if 2 <= len(data) <= 7 else None
    return _Frame(sender, data) if 2 <= len(data) <= 8 else None


def _can_message(frames: Sequence[_Frame]) -> bytes | None:
    """ISO-TP reassembly of one ECU's frames, or None when frames are missing."""
    if len(frames) == 1:
        pci = frames[0].data[0]
        size = pci & 0x0F
        if pci >> 4 != 0 or size == 0 or size > len(frames[0].data) - 1:
            return None
        message = frames[0].data[1 : 1 + size]
    else:
        firsts = [f for f in frames if f.data[0] >> 4 == 1]
        nexts = [f for f in frames if f.data[0] >> 4 == 2]
        if len(firsts) != 1 or not nexts:
            return None
        first = firsts[0].data
        size = ((first[0] & 0x0F) << 8) | first[1]
        # the 4-bit sequence wraps (..., E, F, 0, 1): unwrap it in arrival order
        sequence = 0
        numbered: list[tuple[int, bytes]] = []
        for f in nexts:
            low = f.data[0] & 0x0F
            sequence = (sequence & ~0x0F) | low
            if numbered and sequence < numbered[-1][0] - 7:
                sequence += 0x10
            numbered.append((sequence, f.data[1:]))
        numbered.sort(key=lambda item: item[0])
        if [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
            return None
        message = first[2:] + b"".join(chunk for _, chunk in numbered)
        if size == 0 or len(message) < size:
            return None
        message = message[:size]
    if message[0] == _DTC_ANSWER and len(message) > 1:
        # service 03 on CAN gives the count first: what follows it is padding
        message = message[: 2 + 2 * message[1]]
    return message


def _legacy_message(frames: Sequence[_Frame]) -> bytes | None:
    service = frames[0].data[0]
    if any(f.data[0] != service for f in frames):
        return None  # answers to two different requests
    if service == _DTC_ANSWER:
        # three codes per frame and no count byte: a 0 stands in for the
        # count so the message reads like its CAN twin
        return bytes((_DTC_ANSWER, 0)) + b"".join(f.data[1:] for f in frames)
    if len(frames) == 1:
        return frames[0].data
    if any(len(f.data) < 3 for f in frames):
        return None
    ordered = sorted(frames, key=lambda f: f.data[2])
    if [f.data[2] for f in ordered] != list(range(1, len(ordered) + 1)):
        return None
    head = ordered[0].data
    return head[:2] + head[3:] + b"".join(f.data[3:] for f in ordered[1:])


def ecu_payloads(lines: Iterable[str], protocol: str) -> list[tuple[int, bytes]]:
    """(sender id, reassembled message) per answering ECU, lowest id first.

    Lines that are not frames (``NO DATA``, ``SEARCHING...``, ``12.6V``) and
    frames that do not fit the layout are left out; an ECU whose frames do
    not make up a whole message gives nothing.
    """
    shape = layout(protocol)
    by_sender: dict[int, list[_Frame]] = {}
    for line in lines:
        if not is_frame_line(line):
            continue
        frame = _frame(line, shape)
        if frame is not None:
            by_sender.setdefault(frame.sender, []).append(frame)
    assemble = _legacy_message if shape == "legacy" else _can_message
    answers = []
    for sender in sorted(by_sender):
        message = assemble(by_sender[sender])
        if message:
            answers.append((sender, message))
    return answers


def engine_answer(answers: Sequence[tuple[int, bytes]], protocol: str) -> bytes | None:
    """The engine's message among several ECUs' answers.

    The engine is the usual sender id of the layout; failing that, the ECU
    claiming the most (a bitmap answer with the most bits set), first on a tie.
    """
    if not answers:
        return None
    for sender, message in answers:
        if sender == ENGINE[layout(protocol)]:
            return message
    best = answers[0][1]
    for _, message in answers[1:]:
        if sum(b.bit_count() for b in message) > sum(b.bit_count() for b in best):
            best = message
    return best


def split_lines(raw: bytes) -> list[str]:
    """The text lines of one answer read up to (and without) the prompt."""
    text = raw.split(PROMPT, 1)[0].replace(b"\x00", b"").decode("ascii", "ignore")
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]


class Elm327:
    """One open ELM327 port.  :meth:`abort` may be called from any thread."""

    def __init__(self, port: serial.SerialBase) -> None:
        self._port: serial.SerialBase | None = port
        self._lock = threading.Lock()

    @classmethod
    def open(cls, device: str, baudrate: int | None) -> Elm327 | None:
        """Open ``device`` (a path or pyserial URL); None when it or its baud rate cannot be had."""
        try:
            port = serial.serial_for_url(device, timeout=READ_TIMEOUT)
        except (serial.SerialException, OSError, ValueError) as exc:
            log.info("cannot open %s: %s", device, exc)
            return None
        elm = cls(port)
        try:
            found = elm._set_baudrate(port, device, baudrate)
        except (serial.SerialException, OSError) as exc:
            log.info("%s failed while finding its baud rate: %s", device, exc)
            found = False
        if not found:
            elm.abort()
            return None
        return elm

    @staticmethod
    def _set_baudrate(port: serial.SerialBase, device: str, baudrate: int | None) -> bool:
        if baudrate is not None:
            port.baudrate = baudrate
            return True
        if device.startswith("/dev/pts"):  # a pseudo terminal has no line speed to guess
            return True
        port.timeout = BAUD_PROBE_TIMEOUT  # only the adapter talks here: short silences suffice
        try:
            for rate in BAUD_RATES:
                port.baudrate = rate
                port.reset_input_buffer()
                port.write(b"\x7f\x7f\r")  # junk the ELM327 answers with "?" and its prompt
                port.flush()
                if port.read(1024).endswith(PROMPT):
                    return True
            return False
        finally:
            port.timeout = READ_TIMEOUT

    def send(self, line: str) -> list[str]:
        """Send one command line and return the answer's lines (prompt and blanks dropped).

        Raises :class:`LinkLost` when the port fails or was aborted.  Stale
        input is dropped first so an earlier late answer cannot pose as this
        one's.
        """
        port = self._port
        if port is None:
            raise LinkLost("the port is closed")
        try:
            port.reset_input_buffer()
            port.write(line.encode("ascii") + b"\r")
            port.flush()
            buffer = bytearray()
            while PROMPT not in buffer:
                chunk = port.read(port.in_waiting or 1)
                if not chunk:  # READ_TIMEOUT of silence (or a cancelled read)
                    break
                buffer += chunk
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # pyserial raises TypeError/AttributeError when the port is closed under a read
            self.abort()
            raise LinkLost(f"serial link failed: {exc!r}") from None
        if self._port is None:
            raise LinkLost("the port was closed during the request")
        return split_lines(bytes(buffer))

    def close(self) -> None:
        """Reset the adapter (``ATZ``, not waited for) and close the port; may block."""
        with self._lock:
            port, self._port = self._port, None
        if port is None:
            return
        try:
            port.write(b"ATZ\r")
            port.flush()
        except (serial.SerialException, OSError) as exc:
            log.debug("ATZ at close failed: %r", exc)
        port.close()

    def abort(self) -> None:
        """Wake a blocked read or write and close the port, without a word to the adapter."""
        with self._lock:
            port, self._port = self._port, None
        if port is None:
            return
        for name in ("cancel_read", "cancel_write"):  # POSIX serial ports have them, sockets not
            cancel = getattr(port, name, None)
            try:
                if cancel is not None:
                    cancel()
            except (serial.SerialException, OSError) as exc:
                log.debug("%s on %s failed: %r", name, port.name, exc)
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("closing %s failed: %r", port.name, exc)
