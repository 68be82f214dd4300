"""One websocket connection to the Mist stream, carrying a fixed set of channels.

It connects, subscribes every channel, waits for each ack, then feeds frames
to the collector until the connection ends; then it reconnects after a capped,
jittered exponential backoff and subscribes everything again.  A fault that
repeats (a refused token, an unreachable host) is reported once, not per try.

Frames are read with the library's public connection API (``recv``), one
task per connection, and used at once; while the collector is busy nothing
is read, so the library's bounded receive queue and TCP flow control hold the
server back instead of a queue of ours growing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus, WebSocketException

from trapline.collectors.mist.frames import (
    DataFrame,
    FrameError,
    Subscribed,
    SubscribeFailed,
    decode_frame,
)
from trapline.collectors.mist.settings import MistSettings
from trapline.core.backoff import Backoff
from trapline.core.config import Secret
from trapline.core.plugin import Outbox

logger = logging.getLogger(__name__)

# Frames above max_frame_bytes are dropped and counted; the websocket library's
# own limit, far above, only guards memory (it closes the connection).
_LIBRARY_SIZE_FACTOR = 8


class AckTimeout(Exception):
    pass


def _some(channels: Iterable[str], limit: int = 3) -> str:
    names = sorted(channels)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class StreamConnection:
    def __init__(
        self,
        label: str,
        settings: MistSettings,
        token: Secret,
        channels: frozenset[str],
        *,
        on_data: Callable[[DataFrame], None],
        out: Outbox,
    ) -> None:
        self.label = label
        self.settings = settings
        self._token = token
        self.channels = channels
        self._on_data = on_data
        self._out = out
        self.backoff = Backoff(settings.retry_min, settings.retry_max)
        self.attempts = 0  # connection attempts, successful or not
        self.sessions = 0  # connections that completed the websocket upgrade
        self.subscribed: set[str] = set()  # acked on the current connection
        self.refused: dict[str, str] = {}  # channel -> detail of subscribe_failed
        self._awaiting: set[str] = set()
        self._all_acked = asyncio.Event()
        self._max_library_size = settings.max_frame_bytes * _LIBRARY_SIZE_FACTOR
        self._down = f"{label} down"  # the condition key of this connection's outage

    def __repr__(self) -> str:
        return f"StreamConnection({self.label!r}, {len(self.channels)} channels)"

    # -- frames --------------------------------------------------------------
    def handle(self, frame: str | bytes) -> None:
        """Use one frame; a bad frame is counted and reported, never raised.

        It runs in the connection's read loop, which an exception would end:
        even a bug costs only the frame at hand.
        """
        try:
            self._use(frame)
        except Exception as exc:
            logger.debug("%s: a frame failed", self.label, exc_info=True)
            self._out.error(f"{self.label}: frame dropped: unexpected {type(exc).__name__}")

    def _use(self, frame: str | bytes) -> None:
        try:
            event = decode_frame(frame, self.settings.max_frame_bytes)
        except FrameError as exc:
            self._out.error(f"{self.label}: {exc}")
            return
        if isinstance(event, DataFrame):
            self._on_data(event)
        elif isinstance(event, Subscribed):
            self._acknowledged(event.channel)
            self.subscribed.add(event.channel)
        elif isinstance(event, SubscribeFailed):
            self._acknowledged(event.channel)
            self.refused[event.channel] = event.detail
            detail = f" ({event.detail})" if event.detail else ""
            self._out.error(f"{self.label}: Mist refused the subscription to {event.channel}{detail}")

    def _acknowledged(self, channel: str) -> None:
        self._awaiting.discard(channel)
        if not self._awaiting:
            self._all_acked.set()

    # -- connection ----------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe, receive; forever, until cancelled."""
        while True:
            self.attempts += 1
            healthy_since: list[float] = []
            try:
                await self._session(healthy_since)
                problem = "the server closed the stream"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    problem = f"Mist refused the API token (HTTP {status})"
                else:
                    problem = f"the stream upgrade was refused with HTTP {status}"
            except AckTimeout as exc:
                problem = str(exc)
            except ConnectionClosed as exc:
                problem = f"the stream was closed ({exc})"
            except (OSError, TimeoutError, WebSocketException) as exc:
                problem = f"cannot connect: {type(exc).__name__}: {exc}"
            except Exception as exc:  # survive anything; the traceback goes to the debug log
                logger.debug("%s: unexpected failure", self.label, exc_info=True)
                problem = f"unexpected {type(exc).__name__}: {exc}"
            self.subscribed.clear()  # nothing is subscribed until the next session's acks
            if healthy_since and time.monotonic() - healthy_since[0] >= self.settings.retry_max:
                self.backoff.reset()  # only a connection that stayed up earns a quick retry
            delay = self.backoff.next_delay()
            self._report(problem, delay, was_healthy=bool(healthy_since))
            await asyncio.sleep(delay)

    def _report(self, problem: str, delay: float, was_healthy: bool) -> None:
        line = f"{self.label}: {problem}; reconnecting in {delay:.3g}s"
        if was_healthy:
            logger.warning("%s", line)  # servers drop long-lived streams now and then
        else:
            self._out.error(line, self._down)

    async def _session(self, healthy_since: list[float]) -> None:
        settings = self.settings
        async with connect(
            settings.stream_url,
            additional_headers={"Authorization": f"Token {self._token.reveal()}"},
            user_agent_header="trapline",
            open_timeout=settings.subscribe_timeout,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_size=self._max_library_size,
            compression="deflate" if settings.compression else None,
        ) as ws:
            self.sessions += 1
            self.subscribed.clear()
            self.refused.clear()
            self._awaiting = set(self.channels)
            self._all_acked.clear()
            reader = asyncio.ensure_future(self._read(ws))  # acks may arrive during the sends
            try:
                for channel in sorted(self.channels):
                    await ws.send(json.dumps({"subscribe": channel}))
                await self._acks_or_close(ws)
                if not self._awaiting:
                    healthy_since.append(time.monotonic())
                    self._out.resolved(self._down, f"{self.label}: connected again")
                    subscribed, wanted = len(self.subscribed), len(self.channels)
                    logger.info("%s: subscribed %d of %d channels", self.label, subscribed, wanted)
                await reader
            finally:
                reader.cancel()
        # The reader stops at any close; only a clean one ends the session quietly.
        if not isinstance(ws.protocol.close_exc, ConnectionClosedOK):
            raise ws.protocol.close_exc

    async def _read(self, ws: ClientConnection) -> None:
        """Use every frame until the connection ends (how it ended is judged by the caller)."""
        try:
            while True:
                # Undecoded: the JSON decoder takes UTF-8 bytes as they are, no str copy first.
                self.handle(await ws.recv(decode=False))
        except ConnectionClosed:
            return

    async def _acks_or_close(self, ws: ClientConnection) -> None:
        """Wait until every channel is acked or the connection ends; AckTimeout after subscribe_timeout."""
        if not self._awaiting:
            return
        acked = asyncio.ensure_future(self._all_acked.wait())
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            done, _ = await asyncio.wait(
                (acked, closed), timeout=self.settings.subscribe_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            acked.cancel()
            closed.cancel()
        if not done:
            raise AckTimeout(
                f"no subscribe ack within {self.settings.subscribe_timeout:g}s for {_some(self._awaiting)}"
            )
