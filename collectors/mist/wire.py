"""Websocket connection classes that hand each complete data message to a callback.

``dispatching_connection`` leaves all framing to the ``websockets`` library and
only takes over its per-event hook.  ``framing_connection`` also reads the one
frame a Mist stream is made of, a whole unmasked text or binary message
(deflated or not), itself: the library's generator-based parser costs about
5 us per frame on top of the inflate, about a tenth of what a Mist update
costs end to end (bench/RESULTS.md section 4).

Every other frame (pings, pongs, close, fragments, anything malformed or too
big) goes to the library whole and at a frame boundary, so its parser sees a
well-formed stream and answers pings, runs the closing handshake and fails the
connection on protocol errors exactly as it would alone.  The library reads
everything itself during the handshake, the closing handshake and a fragmented
message, and when an extension other than permessage-deflate was negotiated.
``tests/test_mist_wire.py`` feeds both classes the same byte streams, cut at
random points, and checks they deliver the same messages and send the same frames.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, Protocol, State

MessageHandler = Callable[[bytes], None]

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT

# First header byte of a whole data message: FIN set, opcode text or binary; RSV1
# set on top of that marks a deflated one (RFC 7692).  Anything else is not ours.
_WHOLE_MESSAGE = frozenset({0x81, 0x82})
_WHOLE_DEFLATED_MESSAGE = frozenset({0xC1, 0xC2})
_DEFLATED = 0x40
_MASKED = 0x80
# RFC 7692 7.2.2: the sender strips this tail off every message; the reader puts it back.
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


def dispatching_connection(handle: MessageHandler) -> type[ClientConnection]:
    """A connection class that calls ``handle`` with every complete data message.

    It overrides ``process_event``, the library's per-event hook (websockets
    14-17; pinned in pyproject.toml): control frames and the handshake still take
    the library's own path, so keepalive pings and the closing handshake work
    as before.
    """

    class DispatchingConnection(ClientConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._fragments: list[bytes] = []  # of a message split over several frames

        def process_event(self, event: Event) -> None:
            if type(event) is not Frame:  # the handshake response
                super().process_event(event)
                return
            opcode = event.opcode  # compared by identity: an Enum's hash runs Python code
            if event.fin and (opcode is _TEXT or opcode is _BINARY):  # a whole message: the usual case
                handle(bytes(event.data))  # no copy when it is bytes already
            elif opcode is _TEXT or opcode is _BINARY:  # the first fragment of a message
                self._fragments = [bytes(event.data)]
            elif opcode is _CONT:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    message, self._fragments = b"".join(self._fragments), []
                    handle(message)
            else:  # control frames: pings, pongs, close
                super().process_event(event)

    return DispatchingConnection


def framing_connection(handle: MessageHandler, max_size: int) -> type[ClientConnection]:
    """As :func:`dispatching_connection`, reading whole data messages itself.

    ``max_size`` must be the ``max_size`` given to ``connect``: a message above
    it fails the connection (close code 1009), as the library would.
    """

    def _handle_all(messages: list[bytes]) -> None:
        for message in messages:
            handle(message)
        messages.clear()

    class FramingConnection(dispatching_connection(handle)):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._partial = bytearray()  # the start of a frame whose end has not arrived yet
            self._awaited = 0  # the bytes that frame takes, as far as its header is known

        def data_received(self, data: bytes) -> None:
            if self._partial:
                if len(self._partial) + len(data) < self._awaited:
                    self._partial += data  # a large frame in many reads: gathered, not copied per read
                    return
                data, self._partial = bytes(self._partial) + data, bytearray()
            if not _reading_frames(self.protocol):
                super().data_received(data)  # the handshakes, or bytes of a frame the library began
                return
            # Messages are handled once the whole read is parsed, as the library does:
            # inflating frame after frame keeps zlib's state in the CPU cache, where
            # handling each in between would evict it (~6 us per frame, bench/mist.py).
            messages: list[bytes] = []
            try:
                self._read_frames(data, messages)
            finally:
                _handle_all(messages)

        def _read_frames(self, data: bytes, messages: list[bytes]) -> None:
            """Append the messages of the whole data frames in ``data``; the library gets the rest."""
            deflate = self._readable()
            pos, end = 0, len(data)
            self._awaited = 2
            while end - pos >= 2:
                head, size = data[pos], data[pos + 1]
                start = pos + 2
                if size & 0x7F >= 126:  # a 16- or 64-bit length follows
                    start += 2 if size & 0x7F == 126 else 8
                    if start > end:
                        self._awaited = start - pos
                        break
                    length = int.from_bytes(data[pos + 2 : start], "big")
                else:
                    length = size & 0x7F
                if size & _MASKED:  # a server must not mask: the library refuses the frame
                    start += 4
                if length > max_size:  # the library refuses it from its header alone
                    super().data_received(data[pos:])
                    return
                stop = start + length
                if stop > end:
                    self._awaited = stop - pos
                    break
                if deflate is None or size & _MASKED or not (
                    head in _WHOLE_MESSAGE or (head in _WHOLE_DEFLATED_MESSAGE and deflate is not False)
                ):
                    # One whole frame: the library's parser stays between frames.
                    _handle_all(messages)  # first what came before it
                    super().data_received(data[pos:stop])
                    if self.protocol.state is not State.OPEN:  # a close frame, or a fault, ended it
                        super().data_received(data[stop:])
                        return
                    deflate = self._readable()  # it may have begun or ended a fragmented message
                elif head & _DEFLATED:
                    inflated = self._inflate(deflate, data[start:stop])
                    if inflated is None:
                        return  # the connection failed: nothing after this is read
                    messages.append(inflated)
                else:
                    messages.append(data[start:stop])
                pos = stop
            self._partial = bytearray(memoryview(data)[pos:])

        def _readable(self) -> PerMessageDeflate | Literal[False] | None:
            """Which data frames this class may read now, by the extension that decodes them.

            The extension when permessage-deflate was negotiated, False when
            nothing was (no frame may be deflated), None when the library must
            read every frame (inside a fragmented message, other extensions).
            """
            if self._fragments:
                return None
            extensions = self.protocol.extensions
            if not extensions:
                return False
            if len(extensions) == 1 and type(extensions[0]) is PerMessageDeflate:
                return extensions[0]
            return None

        def _inflate(self, deflate: PerMessageDeflate | Literal[False], payload: bytes) -> bytes | None:
            """The inflated message, or None after failing the connection as the library would."""
            assert isinstance(deflate, PerMessageDeflate)  # the caller checked the frame may be deflated
            # The extension's own inflater carries the context from message to message,
            # so the library can go on where this left off (and the other way round).
            if deflate.remote_no_context_takeover:
                inflater = zlib.decompressobj(wbits=-deflate.remote_max_window_bits)
            else:
                inflater = deflate.decoder
            try:
                message = inflater.decompress(payload + _DEFLATE_TAIL, max_size)
            except zlib.error:
                self._fail(CloseCode.PROTOCOL_ERROR, ProtocolError("decompression failed"))
                return None
            if inflater.unconsumed_tail:
                self._fail(CloseCode.MESSAGE_TOO_BIG, PayloadTooBig(None, max_size))
                return None
            return message

        def _fail(self, code: CloseCode, exc: Exception) -> None:
            protocol = self.protocol
            protocol.fail(code, str(exc))
            protocol.parser_exc = exc
            super().data_received(b"")  # the library sends the close frame and sets its deadline

    return FramingConnection


def _reading_frames(protocol: Protocol) -> bool:
    """Whether the connection is open and the library's parser waits for the first byte of a frame.

    Between frames it waits in ``StreamReader.at_eof()``, inside one in
    ``read_exact()`` (websockets 14-17), having already taken the header from its
    buffer.  Any other answer reads as "inside a frame", which costs only speed:
    the library then reads the bytes itself.
    """
    if protocol.state is not State.OPEN:  # the handshakes: the library reads everything
        return False
    waiting: Any = protocol.parser
    while (inner := getattr(waiting, "gi_yieldfrom", None)) is not None:
        waiting = inner
    return getattr(waiting, "__name__", None) == "at_eof"
