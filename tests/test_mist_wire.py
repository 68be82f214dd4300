"""The Mist stream's own frame reading (wire.framing_connection) against the websockets library's.

Both connection classes get the same server byte stream, cut into reads at
random points, and must hand over the same messages, write the same frames
back (pongs, close) and end in the same state.  The streams mix what the
library alone must handle (pings, pongs, fragments, close) with faults
(masked frames, bad reserved bits, unknown opcodes, oversized and broken
deflate payloads, a message that inflates past the limit).
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Protocol, Side, State
from websockets.uri import parse_uri

from tests.recording_transport import RecordingTransport
from trapline.collectors.mist.wire import dispatching_connection, framing_connection

MAX_SIZE = 2000


def client_frames(written: bytes) -> list[tuple[Opcode, bytes]]:
    """The frames a client wrote (masked, as a client must), read back."""
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    server.receive_data(written)
    return [(e.opcode, bytes(e.data)) for e in server.events_received()]


# One step of what the server sends: (kind, payload).
steps = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=300)),
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.just("large"), st.binary(min_size=200, max_size=MAX_SIZE)),  # 16-bit lengths
    st.tuples(st.just("plain"), st.binary(max_size=300)),  # not deflated, even with deflate on
    st.tuples(st.just("fragments"), st.lists(st.text(max_size=80), min_size=1, max_size=4)),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
    st.tuples(st.just("pong"), st.binary(max_size=125)),
    st.tuples(
        st.sampled_from(
            ["masked", "rsv2", "opcode", "oversized", "oversized64", "broken-deflate", "bomb", "close"]
        ),
        st.just(b""),
    ),
)


def server_stream(deflate: tuple[bool, int] | None, script: list[tuple[str, Any]]) -> bytes:
    """The bytes a server sends for ``script``; with ``deflate`` = (no context takeover, window bits)."""
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    if deflate is not None:
        server.extensions = [PerMessageDeflate(False, deflate[0], 15, deflate[1])]
    wire = bytearray()

    def raw(frame: bytes) -> None:
        """A frame built by hand, after what the server queued so far."""
        wire.extend(b"".join(server.data_to_send()))
        wire.extend(frame)

    def plain(frame: Frame) -> None:
        raw(frame.serialize(mask=False, extensions=[]))

    def by_hand(first_byte: int, payload: bytes) -> None:  # for what Frame.serialize refuses to write
        raw(bytes([first_byte, len(payload)]) + payload)

    for kind, payload in script:
        if kind == "text":
            server.send_text(payload.encode())
        elif kind in ("binary", "large"):
            server.send_binary(payload)
        elif kind == "plain":
            plain(Frame(Opcode.BINARY, payload))
        elif kind == "fragments":
            *first, last = payload
            for index, part in enumerate(first):
                (server.send_continuation if index else server.send_text)(part.encode(), fin=False)
            (server.send_continuation if first else server.send_text)(last.encode(), fin=True)
        elif kind == "ping":
            server.send_ping(payload)
        elif kind == "pong":
            server.send_pong(payload)
        elif kind == "masked":
            raw(Frame(Opcode.TEXT, b"{}").serialize(mask=True, extensions=[]))
        elif kind == "rsv2":
            by_hand(0xA1, b"{}")  # FIN, RSV2, text
        elif kind == "opcode":
            raw(b"\x83\x02{}")
        elif kind == "oversized":
            plain(Frame(Opcode.BINARY, b"x" * (MAX_SIZE + 1)))
        elif kind == "oversized64":  # a 64-bit length: the library stops at the header
            raw(b"\x82\x7f" + (2**40).to_bytes(8, "big") + b"xyz")
        elif kind == "broken-deflate":
            by_hand(0xC1, b"\xff\xfe\xfd")  # FIN, RSV1, text
        elif kind == "bomb":  # small on the wire, past MAX_SIZE once inflated
            squeezer = zlib.compressobj(wbits=-15)
            body = squeezer.compress(b"a" * (MAX_SIZE * 4)) + squeezer.flush(zlib.Z_SYNC_FLUSH)
            by_hand(0xC2, body[:-4])  # FIN, RSV1, binary
        elif kind == "close":
            server.send_close(1000, "bye")
            break  # nothing may follow
    wire.extend(b"".join(server.data_to_send()))
    return bytes(wire)


def open_connection(
    factory: type[ClientConnection], deflate: tuple[bool, int] | None
) -> tuple[ClientConnection, RecordingTransport]:
    """A connection of ``factory`` just past the handshake (call it inside an event loop)."""
    protocol = ClientProtocol(parse_uri("ws://mist.test/"), state=State.OPEN, max_size=MAX_SIZE)
    if deflate is not None:
        protocol.extensions = [PerMessageDeflate(deflate[0], False, deflate[1], 15)]
    connection = factory(protocol, ping_interval=None, ping_timeout=None, close_timeout=None)
    transport = RecordingTransport()
    connection.connection_made(transport)
    connection.response = Response(101, "Switching Protocols", Headers())  # the handshake is over
    return connection, transport


async def feed(
    factory: type[ClientConnection], deflate: tuple[bool, int] | None, reads: list[bytes], eof: bool
) -> tuple[list[tuple[Opcode, bytes]], tuple[Any, ...]]:
    connection, transport = open_connection(factory, deflate)
    protocol = connection.protocol
    for data in reads:
        if protocol.state is not State.CLOSED:
            connection.data_received(data)
    if eof:
        connection.connection_lost(None)
    close = (protocol.state, _close(protocol.close_sent), _close(protocol.close_rcvd), transport.eof_written)
    return client_frames(bytes(transport.written)), close


def _close(close: Close | None) -> tuple[int, str] | None:
    return None if close is None else (close.code, close.reason)



def cut(wire: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(wire) + 1) for p in points} | {0, len(wire)})
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=500, deadline=None)
@given(
    deflate=st.one_of(st.none(), st.tuples(st.booleans(), st.integers(9, 15))),
    script=st.lists(steps, max_size=12),
    points=st.lists(st.integers(0, 10**6), max_size=12),
    eof=st.booleans(),
)
def test_framing_matches_the_library(
    deflate: tuple[bool, int] | None, script: list[tuple[str, Any]], points: list[int], eof: bool
) -> None:
    wire = server_stream(deflate, script)
    reads = cut(wire, points)
    outcomes = []
    for make in (dispatching_connection, lambda handle: framing_connection(handle, MAX_SIZE)):
        messages: list[bytes] = []
        factory = make(messages.append)
        written, close = asyncio.run(feed(factory, deflate, reads, eof))
        outcomes.append((messages, written, close))
    assert outcomes[1] == outcomes[0]


def test_frames_the_library_began_are_left_to_it() -> None:
    """Bytes that came with the handshake response may leave the library inside a frame: it reads on."""
    wire = server_stream(None, [("text", "first"), ("text", "second"), ("binary", b"third")])

    async def run() -> list[bytes]:
        messages: list[bytes] = []
        connection, _ = open_connection(framing_connection(messages.append, MAX_SIZE), None)
        ClientConnection.data_received(connection, wire[:4])  # as the handshake's read would leave it
        for index in range(4, len(wire), 3):
            connection.data_received(wire[index : index + 3])
        return messages

    assert asyncio.run(run()) == [b"first", b"second", b"third"]
