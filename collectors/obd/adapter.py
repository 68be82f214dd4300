"""python-OBD behind a small blocking interface.

Every method except :meth:`Adapter.abort` blocks on the serial line and must
run in the connection's :class:`~trapline.middleware.blocking.BlockingWorker`.
Only python-OBD's connection setup (baud, ``ATZ``/``ATE0``/``ATH1``, protocol,
supported-PID bitmaps) and its ELM327 interface (send a line, read up to the
prompt, reassemble frames per ECU) are used; requests are sent as raw text and
their payloads decoded by :mod:`.payload`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import obd
from obd import OBDStatus

log = logging.getLogger(__name__)

_CAN_PROTOCOLS = frozenset("6789")  # ISO 15765-4 variants: multi-PID requests allowed


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
        self._conn: Any = None
        self._lock = threading.Lock()
        self._aborted = False

    # -- blocking calls (worker thread) -----------------------------------
    def connect(self) -> Reach:
        conn = obd.OBD(
            self.device, baudrate=self.baudrate, protocol=self.protocol, fast=False, check_voltage=True
        )
        with self._lock:
            if self._aborted:  # the deadline passed while python-OBD was connecting
                _close_port(conn)
                return Reach.NOTHING
            self._conn = conn
        status = conn.status()
        if status == OBDStatus.CAR_CONNECTED:
            return Reach.CAR
        if status in (OBDStatus.ELM_CONNECTED, OBDStatus.OBD_CONNECTED):
            return Reach.ADAPTER
        return Reach.NOTHING

    def request(self, command: str) -> Answer:
        """Send one request line as is and return every ECU's answer to it.

        The ELM327 interface rather than ``OBD.query``: ``query`` wants an
        ``OBDCommand`` per request and wraps its answer in a decoded response,
        work that only slows each round trip down here.  The header stays the
        engine's, as python-OBD set it at connect time, and python-OBD's
        ``fast`` mode stays off so that every ECU's answer is read.
        """
        interface = None if self._conn is None else self._conn.interface
        if interface is None:
            return _NO_LINK
        messages = interface.send_and_parse(command.encode("ascii"))
        if messages is None or interface.status() == OBDStatus.NOT_CONNECTED:  # a serial error
            return _NO_LINK
        received_ns = time.time_ns()
        payloads = tuple(bytes(m.data) for m in messages if m.parsed())
        lines = tuple(f.raw for m in messages for f in m.frames)
        return Answer(payloads, lines, received_ns=received_ns)

    def supported_pids(self) -> frozenset[str]:
        """Names of the mode 01 PIDs the ECU flagged in its bitmaps at connect time."""
        if self._conn is None:
            return frozenset()
        return frozenset(c.name for c in self._conn.supported_commands if c.mode == 1)

    def protocol_name(self) -> str:
        return "" if self._conn is None else str(self._conn.protocol_name())

    def is_can(self) -> bool:
        return self._conn is not None and str(self._conn.protocol_id()) in _CAN_PROTOCOLS

    def close(self) -> None:
        """Polite close (python-OBD resets the adapter); may block."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- any thread ---------------------------------------------------------
    def abort(self) -> None:
        """Cut a hung connection from outside its worker: unblock and close the port."""
        with self._lock:
            self._aborted = True
            conn, self._conn = self._conn, None
        if conn is not None:
            _close_port(conn)


def _close_port(conn: Any) -> None:
    # python-OBD keeps the pyserial port private (name-mangled) and its close()
    # writes ATZ first, which blocks on a hung adapter: close the port directly.
    port = getattr(conn.interface, "_ELM327__port", None) if conn.interface is not None else None
    if port is None:
        return
    for cancel in ("cancel_read", "cancel_write"):  # wakes a blocked read on POSIX serial ports
        try:
            getattr(port, cancel, lambda: None)()
        except Exception as exc:  # already broken: closing is all that is left
            log.debug("%s on hung port failed: %r", cancel, exc)
    try:
        port.close()
    except Exception as exc:
        log.debug("closing hung port failed: %r", exc)
