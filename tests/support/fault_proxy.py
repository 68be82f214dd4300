"""A TCP proxy in front of a Zabbix trapper that misbehaves when the test says so.

It speaks just enough of the framing (``ZBXD``, flags, two little-endian uint32
lengths: see trapline/exporters/zabbix/protocol.py and the Zabbix "Header and
data length" page) to know where a request and a reply end, so it can fail a
connection at a chosen point of the exchange:

* ``pass``: forward the request, return the whole reply;
* ``drop``: every connection reads the request and closes without forwarding it
  (a server that is down, as the sender sees it: no verdict, nothing stored);
* ``drop-every-other``: every second connection reads the request and closes
  without forwarding it (the sender sees "closed without a reply"; the server
  never saw the values);
* ``cut-every-other``: every second connection forwards the request, waits for
  the server's whole reply and passes only its first half before closing (the
  server stored the values; the sender cannot know);
* ``hold``: forward the request and hold the reply ``hold_seconds`` before
  passing it (a delivery round stays in flight, e.g. across a SIGTERM).

The proxy runs its own event loop in a thread, so a synchronous test can drive
the agent process and the Zabbix API beside it.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

_HEADER = struct.Struct("<4sBII")
MODES = ("pass", "drop", "drop-every-other", "cut-every-other", "hold")


@dataclass
class ProxyCounts:
    connections: int = 0
    forwarded: int = 0  # requests the server received
    dropped: int = 0  # requests closed without forwarding
    cut: int = 0  # replies cut mid-frame after the server answered
    held: int = 0
    values: int = 0  # values forwarded to the server
    # (host, key) -> every value text forwarded for that item: what the server was given.
    given: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # Values of requests the server answered with "failed: 0" (it stored all of them),
    # and how often each such value reached the server afterwards again.
    accepted: set[tuple[str, str, int, int]] = field(default_factory=set)  # (host, key, clock, ns)
    resent: int = 0

    def __str__(self) -> str:
        return (
            f"connections={self.connections} forwarded={self.forwarded} dropped={self.dropped} "
            f"cut={self.cut} held={self.held} values={self.values} resent={self.resent}"
        )


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(_HEADER.size)
    magic, _flags, length, _reserved = _HEADER.unpack(header)
    if magic != b"ZBXD":
        raise ConnectionError(f"not a Zabbix frame: {header[:4]!r}")
    return header + await reader.readexactly(length)


def _json(frame: bytes) -> Any:
    body = frame[_HEADER.size :]
    return json.loads(zlib.decompress(body) if frame[4] & 0x02 else body)


def _values(request: bytes) -> list[tuple[str, str, int, int, str]]:
    """The (host, key, clock, ns, value) of each value of a ``sender data`` frame."""
    return [
        (v["host"], v["key"], int(v["clock"]), int(v["ns"]), str(v["value"]))
        for v in _json(request).get("data", [])
    ]


def _all_stored(reply: bytes) -> bool:
    """Whether a sender reply says the server processed every value ("failed: 0")."""
    doc = _json(reply)
    return doc.get("response") == "success" and "failed: 0;" in str(doc.get("info", ""))


class FaultProxy:
    """``address`` forwards to ``target_host:target_port``; set ``mode`` at any time."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.hold_seconds = 2.0
        self.counts = ProxyCounts()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        with self._lock:
            self.mode = mode

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            mode, number = self.mode, self.counts.connections
            self.counts.connections += 1
        odd = number % 2 == 1
        try:
            request = await _read_frame(reader)
            if mode == "drop" or (mode == "drop-every-other" and odd):
                self.counts.dropped += 1
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            try:
                up_writer.write(request)
                await up_writer.drain()
                self.counts.forwarded += 1
                entries = _values(request)
                values = [entry[:4] for entry in entries]
                self.counts.values += len(values)
                self.counts.resent += sum(1 for v in values if v in self.counts.accepted)
                for host, key, _, _, text in entries:
                    self.counts.given.setdefault((host, key), set()).add(text)
                reply = await _read_frame(up_reader)
            finally:
                up_writer.close()
            if _all_stored(reply):
                self.counts.accepted.update(values)
            if mode == "cut-every-other" and odd:
                self.counts.cut += 1
                reply = reply[: len(reply) // 2]
            elif mode == "hold":
                self.counts.held += 1
                await asyncio.sleep(self.hold_seconds)
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the sender or the server went away: that is theirs to report
        finally:
            writer.close()
