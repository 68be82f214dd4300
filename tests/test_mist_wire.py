"""The Mist stream connection on the websockets library's public API, against the library's own server.

A real websocket server (``websockets.asyncio.server``, with and without
permessage-deflate) acks the subscription, then plays a random mix of what
RFC 6455 lets a server send between data messages: text and binary messages
(any Unicode, any bytes), fragmented messages, pings it waits to see answered.
The connection must hand over every message whole and in order, answer every
ping, and end as the server ended it: a clean close ends the session quietly,
a message above the library's size limit fails it with close code 1009.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError

from devtools.mist_server import WAIT_LIMIT
from tests.support.outbox import ListOutbox
from trapline.collectors.mist import build
from trapline.collectors.mist.stream import StreamConnection
from trapline.core.config import Section

CHANNEL = "/sites/s1/stats/devices"
MAX_FRAME = 1024  # the collector's own limit; the library's is _LIBRARY_SIZE_FACTOR times that
LIBRARY_MAX = MAX_FRAME * 8

steps = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=300)),
    st.tuples(st.just("binary"), st.binary(max_size=300)),
    st.tuples(st.just("large"), st.binary(min_size=126, max_size=LIBRARY_MAX)),  # 16-bit frame lengths
    st.tuples(st.just("fragments"), st.lists(st.text(max_size=80), min_size=1, max_size=4)),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
)


class Recording(StreamConnection):
    """The real connection, noting each message as it reaches the frame handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[str | bytes] = []

    def handle(self, frame: str | bytes) -> None:
        self.messages.append(frame)
        super().handle(frame)


def connection_to(tmp: Path, url: str, compression: str) -> tuple[Recording, ListOutbox]:
    token = tmp / "token"
    token.write_text("wire-token")
    token.chmod(0o600)
    data = {
        "type": "mist",
        "host": "Mist discovery",
        "sites": ["s1"],
        "token_file": str(token),
        "stream_url": url,
        "max_frame_bytes": MAX_FRAME,
        "compression": compression,
        "subscribe_timeout": WAIT_LIMIT,
    }
    collector = build("wire", Section(tmp / "t.toml", "collectors.wire", data))
    out = ListOutbox()
    connection = Recording(
        "wire", collector.settings, collector._token, frozenset({CHANNEL}), on_data=lambda _: None, out=out
    )
    return connection, out


async def play(tmp: Path, compression: str, script: list[tuple[str, Any]], ending: str) -> tuple[Any, ...]:
    """Run one session against a server playing ``script``; what the client got and how it ended."""
    sent: list[bytes] = []
    pongs = 0

    async def serve_one(ws: ServerConnection) -> None:
        nonlocal pongs
        assert json.loads(await ws.recv()) == {"subscribe": CHANNEL}
        ack = json.dumps({"event": "channel_subscribed", "channel": CHANNEL})
        await ws.send(ack)
        sent.append(ack.encode())
        for kind, payload in script:
            if kind == "text":
                await ws.send(payload)
                sent.append(payload.encode())
            elif kind in ("binary", "large"):
                await ws.send(payload)
                sent.append(payload)
            elif kind == "fragments":
                await ws.send(iter(payload))
                sent.append("".join(payload).encode())
            else:
                await (await ws.ping(payload))  # never answered: the client's timeout below fails the test
                pongs += 1
        if ending == "oversized":
            await ws.send(b"x" * (LIBRARY_MAX + 1))
            await ws.wait_closed()
        else:
            await ws.close(1000, "bye")

    server_compression = "deflate" if compression == "deflate" else None
    async with serve(serve_one, "127.0.0.1", 0, compression=server_compression, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        connection, _ = connection_to(tmp, f"ws://127.0.0.1:{port}/", compression)
        failure: tuple[int | None, int | None] | None = None
        async with asyncio.timeout(WAIT_LIMIT):
            try:
                await connection._session([])
            except ConnectionClosedError as exc:
                failure = (exc.sent.code if exc.sent else None, exc.rcvd.code if exc.rcvd else None)
    return connection.messages, sent, pongs, failure, connection.subscribed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    compression=st.sampled_from(["deflate", "none"]),
    script=st.lists(steps, max_size=10),
    ending=st.sampled_from(["close", "oversized"]),
)
def test_every_message_arrives_whole_and_in_order(
    tmp_path: Path, compression: str, script: list[tuple[str, Any]], ending: str
) -> None:
    received, sent, pongs, failure, subscribed = asyncio.run(play(tmp_path, compression, script, ending))
    assert received == sent
    assert pongs == sum(kind == "ping" for kind, _ in script)
    assert subscribed == {CHANNEL}
    # 1009: the client refused the message as too big and told the server so.
    assert failure == (None if ending == "close" else (1009, None))


@pytest.mark.parametrize("compression", ["deflate", "none"])
def test_frames_are_handed_over_as_utf8_bytes(tmp_path: Path, compression: str) -> None:
    """The handler gets text frames undecoded: the JSON decoder reads the bytes themselves."""
    received, *_ = asyncio.run(play(tmp_path, compression, [("text", 'Zürich, "AP" ✓')], "close"))
    assert received[-1] == 'Zürich, "AP" ✓'.encode()
    assert all(type(message) is bytes for message in received)
