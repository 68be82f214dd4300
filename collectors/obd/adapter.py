"""An ELM327 adapter behind a small blocking interface (the line protocol: :mod:`.elm327`).

Every method except :meth:`Adapter.abort` blocks on the serial line and must
run in the connection's :class:`~trapline.core.blocking.BlockingWorker`.
Requests are sent as raw text and their payloads decoded by :mod:`.payload`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import IntEnum

from trapline.collectors.obd import elm327
from trapline.collectors.obd.catalog import pid_table
from trapline.collectors.obd.elm327 import Elm327, LinkLost
from trapline.collectors.obd.payload import MODE_01_ANSWER, PayloadError, parse_voltage

log = logging.getLogger(__name__)

_CAN_PROTOCOLS = frozenset("6789")  # ISO 15765-4 variants: multi-PID requests allowed
_MIN_ECU_VOLTS = 6.0  # below this the adapter is powered but not from a live OBD port
_UNABLE = "UNABLE TO CONNECT"  # the ELM327 found no protocol the car speaks


class Reach(IntEnum):
    """How far a connection attempt got."""

    NOTHING = 0  # no adapter (port missing, or it does not talk ELM327)
    ADAPTER = 1  # the adapter answers, the car does not (ignition off)
    CAR = 2  # an ECU answers


@dataclass(frozen=True, slots=True)
class Answer:
    payloads: tuple[bytes, ...]  # one reassembled message per answering ECU, engine first
    lines: tuple[str, ...]  # raw text lines (NO DATA, ?, 12.6V, ...) and frames
    lost: bool = False  # the serial link died during the request
    received_ns: int = 0  # wall clock when the answer was read (the readings' timestamp)

    @property
    def empty(self) -> bool:
        return not self.payloads


_NO_LINK = Answer((), (), lost=True)


class Adapter:
    def __init__(self, device: str, baudrate: int | None, protocol: str | None) -> None:
        self.device = device
        self.baudrate = baudrate
        self.protocol = protocol
        self._elm: Elm327 | None = None
        self._lock = threading.Lock()
        self._aborted = False
        self._protocol_id = ""  # the protocol the car answered on
        self._supported: frozenset[str] = frozenset()
        self._header: str | None = None  # set by AT SH; None: the protocol's functional header

    # -- blocking calls (worker thread) -----------------------------------
    def connect(self) -> Reach:
        elm = Elm327.open(self.device, self.baudrate)
        if elm is None:
            return Reach.NOTHING
        with self._lock:
            if self._aborted:  # the deadline passed while the port was opening
                elm.abort()
                return Reach.NOTHING
            self._elm = elm
        try:
            reach = self._set_up(elm)
        except LinkLost as exc:
            log.info("%s: %s", self.device, exc)
            return Reach.NOTHING
        if reach is Reach.NOTHING:
            elm.close()
        return reach

    def _set_up(self, elm: Elm327) -> Reach:
        elm.send("ATZ")  # reset: whatever echo/header settings were left are gone
        steps = (("ATE0", True), ("ATH1", False), ("ATL0", False))  # echo off, headers on, no LF
        for command, echo_may_remain in steps:
            lines = elm.send(command)
            ok = "OK" in lines if echo_may_remain else lines == ["OK"]
            if not ok:
                log.info("%s: %s answered %r, not OK: not an ELM327", self.device, command, lines)
                return Reach.NOTHING
        answer = elm.send("AT RV")
        try:
            volts = parse_voltage(answer[0] if len(answer) == 1 else "")
        except PayloadError as exc:
            log.info("%s: %s", self.device, exc)
            return Reach.NOTHING
        if volts < _MIN_ECU_VOLTS:
            return Reach.ADAPTER
        protocol = self._find_protocol(elm)
        if protocol is None:
            return Reach.ADAPTER
        self._protocol_id = protocol
        self._supported = self._read_bitmaps(elm)
        return Reach.CAR

    def _find_protocol(self, elm: Elm327) -> str | None:
        """The protocol an ECU answers ``0100`` on: the configured one, or the adapter's pick."""
        if self.protocol is not None:
            if self.protocol not in elm327.PROTOCOL_NAMES:
                log.error("%s: %r is not an ELM327 protocol number (1-9, A)", self.device, self.protocol)
                return None
            return self.protocol if _try_protocol(elm, "ATTP" + self.protocol) else None
        if not _try_protocol(elm, "ATSP0"):
            return None
        found = elm.send("ATDPN")  # "A6": found automatically, now 6; "A" alone is J1939
        if len(found) == 1:
            number = found[0][1:] if len(found[0]) > 1 and found[0].startswith("A") else found[0]
            if number in elm327.PROTOCOL_NAMES:
                return number
        for candidate in elm327.TRY_ORDER:
            if _try_protocol(elm, "ATTP" + candidate):
                return candidate
        return None

    def _read_bitmaps(self, elm: Elm327) -> frozenset[str]:
        """Names of the table's PIDs that the engine flags in its 0100/0120/... bitmaps."""
        flagged: set[int] = set()
        base = 0x00
        while base < 0x100:
            answers = elm327.ecu_payloads(elm.send(f"01{base:02X}"), self._protocol_id)
            bitmap = elm327.engine_answer(answers, self._protocol_id)
            if bitmap is None or len(bitmap) < 6 or bitmap[:2] != bytes((MODE_01_ANSWER, base)):
                break
            bits = int.from_bytes(bitmap[2:6], "big")
            flagged.update(base + i + 1 for i in range(32) if bits & (1 << (31 - i)))
            base += 0x20
            if base not in flagged:  # the last bit says whether the next bitmap exists
                break
        return frozenset(spec.name for spec in pid_table().values() if spec.pid in flagged)

    def request(self, command: str, header: str | None = None) -> Answer:
        """Send one request line as is, to ``header`` (None: every ECU), and return
        every ECU's answer to it.

        The header is only switched (``AT SH``) when it differs from the last
        one, so a round that puts the requests of one header together pays once.
        """
        elm = self._elm
        if elm is None:
            return _NO_LINK
        try:
            if header != self._header:
                refused = self._set_header(elm, header)
                if refused is not None:
                    return Answer((), refused, received_ns=time.time_ns())
            lines = elm.send(command)
        except LinkLost as exc:
            log.info("%s: %s", self.device, exc)
            return _NO_LINK
        received_ns = time.time_ns()
        payloads = tuple(message for _, message in elm327.ecu_payloads(lines, self._protocol_id))
        return Answer(payloads, tuple(lines), received_ns=received_ns)

    def _set_header(self, elm: Elm327, header: str | None) -> tuple[str, ...] | None:
        """Switch the request header; None, or why it cannot be switched."""
        wanted = elm327.FUNCTIONAL_HEADER.get(self._protocol_id) if header is None else header
        if wanted is None:
            return (f"no functional header known for protocol {self._protocol_id!r}",)
        lines = elm.send("ATSH" + wanted)
        if lines != ["OK"]:
            self._header = "?"  # unknown now: set it again before the next request
            return (f"ATSH{wanted}", *lines)
        self._header = header
        return None

    def supported_pids(self) -> frozenset[str]:
        """Names of the mode 01 PIDs the ECU flagged in its bitmaps at connect time."""
        return self._supported

    def protocol_name(self) -> str:
        return elm327.PROTOCOL_NAMES.get(self._protocol_id, "")

    def is_can(self) -> bool:
        return self._protocol_id in _CAN_PROTOCOLS

    def close(self) -> None:
        """Polite close (the adapter is reset); may block."""
        with self._lock:
            elm, self._elm = self._elm, None
        if elm is not None:
            elm.close()

    # -- any thread ---------------------------------------------------------
    def abort(self) -> None:
        """Cut a hung connection from outside its worker: unblock and close the port."""
        with self._lock:
            self._aborted = True
            elm, self._elm = self._elm, None
        if elm is not None:
            elm.abort()


def _try_protocol(elm: Elm327, select: str) -> bool:
    """Select a protocol and probe it with ``0100``; True unless the adapter gives up."""
    elm.send(select)
    return not any(_UNABLE in line for line in elm.send("0100"))
