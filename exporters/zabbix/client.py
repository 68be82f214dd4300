"""Moving sender requests to a Zabbix server or proxy over asyncio streams.

One request per connection, as the server expects (it closes after replying).
A *cluster* is the ``;``-separated list of HA nodes of one server: standby
nodes do not listen, so failover is by connection failure, and the node that
answered last is tried first next time.

TLS: certificates on any Python; a pre-shared key (PSK) from Python 3.13 on,
the first whose :mod:`ssl` has PSK callbacks.  On older Pythons a PSK-only
server or proxy is reached through a local Zabbix proxy (which speaks PSK
upstream), or with certificates.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeVar

from trapline.core.config import Secret, parse_host_port
from trapline.exporters.zabbix.protocol import (
    DEFAULT_MAX_REPLY,
    HEADER_SIZE,
    FrameHeader,
    ProtocolError,
    Reply,
    parse_header,
    parse_reply,
    unpack_body,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 10051
# Python adds the PSK callbacks only from 3.13, and only when its OpenSSL has PSK.
PSK_SUPPORTED: Final = hasattr(ssl.SSLContext, "set_psk_client_callback")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``host``, ``host:port``, ``[v6addr]`` or ``[v6addr]:port``, like the agent's ``ServerActive``."""
    if not text.strip():
        raise ValueError("empty address")
    return Endpoint(*parse_host_port(text, DEFAULT_PORT))


def parse_cluster(entry: str) -> list[Endpoint]:
    """One ``servers`` entry: HA nodes of one cluster separated by ``;``."""
    nodes = [parse_endpoint(part) for part in entry.split(";")]
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"the same node twice in {entry!r}")
    return nodes


class TlsMode(Protocol):
    """How connections to the server are encrypted: certificates or a PSK."""

    @property
    def server_name(self) -> str | None: ...

    def context(self) -> ssl.SSLContext: ...

    def describe_failure(self, node: Endpoint, exc: OSError) -> str: ...


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Certificate TLS towards the server."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx

    def describe_failure(self, node: Endpoint, exc: OSError) -> str:
        return _cannot_connect(node, exc)


@dataclass(frozen=True, slots=True)
class PskSettings:
    """TLS with a pre-shared key, as a Zabbix agent's ``TLSConnect=psk`` (Python 3.13+).

    ``key`` is the hex text Zabbix takes (a secret: never logged); the identity is not
    secret, the server logs it too.
    """

    identity: str
    key: Secret
    server_name: str | None = None

    def context(self) -> ssl.SSLContext:
        register = getattr(ssl.SSLContext, "set_psk_client_callback", None)
        if register is None:
            raise RuntimeError("this Python's ssl has no TLS-PSK (needs Python 3.13 or later)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # The key authenticates both ends, and a PSK cipher suite carries no certificate.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        # TLS 1.2 PSK suites, which Zabbix offers by default; Python's PSK callbacks are
        # documented and tested for TLS 1.2, TLS 1.3 PSK goes through another OpenSSL hook.
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("PSK")
        identity, key = self.identity, bytes.fromhex(self.key.reveal())
        register(ctx, lambda _hint: (identity, key))
        return ctx

    def describe_failure(self, node: Endpoint, exc: OSError) -> str:
        if isinstance(exc, ssl.SSLError | ConnectionResetError):
            # A wrong key or identity shows as a handshake alert or a dropped connection.
            return (
                f"{node}: TLS-PSK handshake failed with identity {self.identity!r} ({_describe(exc)}); "
                "the server refused the identity or the key, or takes no PSK from this host: "
                "compare tls_psk_identity and tls_psk_file with the server's PSK for this host "
                "(or its autoregistration PSK)"
            )
        return _cannot_connect(node, exc)


class SendError(Exception):
    """A request whose fate is unknown or negative; ``str()`` is the reason to log and retry with."""


class _ConnectError(SendError):
    """Could not even connect: safe to try the next HA node."""


class ClusterClient:
    """Sends framed requests to one cluster, following HA failover and 7.0 redirects."""

    def __init__(
        self,
        nodes: list[Endpoint],
        timeout: float = 10.0,
        tls: TlsMode | None = None,
        max_reply: int = DEFAULT_MAX_REPLY,
    ) -> None:
        if not nodes:
            raise ValueError("a cluster needs at least one node")
        self.nodes = list(nodes)
        self.timeout = timeout
        self._tls = tls
        self._ssl = tls.context() if tls is not None else None
        self._max_reply = max_reply
        self._active = 0  # index of the node that answered last

    @property
    def active_node(self) -> Endpoint:
        return self.nodes[self._active]

    async def send(self, framed: bytes) -> Reply:
        """Deliver one framed request and return the server's reply.

        Raises :class:`SendError` for anything but a parsed reply: no node
        reachable, timeout, reset, garbage, or a second redirect.
        """
        reply = await self._send_to_cluster(framed, parse_reply)
        followed = reset = False
        # A proxy of a 7.0 proxy group that does not own the host answers with
        # the proxy that does; like the C sender we follow that once.  The owner
        # answers "reset" when it has lost the server for the group's failover
        # delay (the server may have moved its hosts): start over from the
        # configured nodes, where one more redirect may follow.
        while (redirect := reply.redirect) is not None:
            if redirect.reset and not reset:
                reset, followed = True, False
                log.info("zabbix %s asked to reset its redirect; resending to the configured nodes", self)
                reply = await self._send_to_cluster(framed, parse_reply)
                continue
            if redirect.reset or followed:
                raise SendError(f"redirected twice (last to {redirect.address or 'reset'}); giving up")
            assert redirect.address is not None
            try:
                target = parse_endpoint(redirect.address)
            except ValueError as exc:
                raise SendError(f"unusable redirect address {redirect.address!r}: {exc}") from None
            log.info("zabbix %s redirected to %s", self.active_node, target)
            followed = True
            reply = await self._exchange(target, framed, parse_reply)
        return reply

    async def request(self, framed: bytes, parse: Callable[[bytes], _T]) -> _T:
        """Deliver a request other than sender data and return ``parse`` of the reply's JSON.

        HA failover as for :meth:`send`; proxy-group redirects are not followed.  Raises
        :class:`SendError` as :meth:`send` does.
        """
        return await self._send_to_cluster(framed, parse)

    async def _send_to_cluster(self, framed: bytes, parse: Callable[[bytes], _T]) -> _T:
        failures: list[str] = []
        count = len(self.nodes)
        for step in range(count):
            index = (self._active + step) % count
            try:
                reply = await self._exchange(self.nodes[index], framed, parse)
            except _ConnectError as exc:
                failures.append(str(exc))
                continue
            if index != self._active:
                log.warning("zabbix cluster failover: now sending to %s", self.nodes[index])
                self._active = index
            return reply
        raise SendError("; ".join(failures))

    async def _exchange(self, node: Endpoint, framed: bytes, parse: Callable[[bytes], _T]) -> _T:
        """One connection: connect, write, read one reply frame, close."""
        loop = asyncio.get_running_loop()
        server_name = None
        if self._ssl is not None:
            server_name = (self._tls.server_name if self._tls else None) or node.host
        reader = _ReplyReader(loop, self._max_reply)
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await loop.create_connection(
                    lambda: reader, node.host, node.port, ssl=self._ssl, server_hostname=server_name
                )
        except TimeoutError:
            raise _ConnectError(f"{node}: connect timed out after {self.timeout:g} s") from None
        except OSError as exc:
            detail = self._tls.describe_failure(node, exc) if self._tls else _cannot_connect(node, exc)
            raise _ConnectError(detail) from None
        try:
            async with asyncio.timeout(self.timeout):
                transport.write(framed)  # the transport sends it in the background
                body = await reader.reply
        except TimeoutError:
            raise SendError(f"{node}: no answer within {self.timeout:g} s while {reader.stage}") from None
        except _ClosedEarly as exc:
            if exc.stage == "waiting for the reply":
                raise SendError(f"{node}: connection closed without a reply") from None
            raise SendError(f"{node}: truncated reply (connection closed while {exc.stage})") from None
        except ProtocolError as exc:
            raise SendError(f"{node}: bad reply: {exc}") from None
        except OSError as exc:
            raise SendError(f"{node}: connection failed while {reader.stage} ({_describe(exc)})") from None
        finally:
            reader.settle()
            transport.close()
        try:
            return parse(body)
        except ProtocolError as exc:
            raise SendError(f"{node}: bad reply: {exc}") from None

    def __str__(self) -> str:
        return ";".join(str(n) for n in self.nodes)


def _cannot_connect(node: Endpoint, exc: OSError) -> str:
    return f"{node}: cannot connect ({_describe(exc)})"


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class _ClosedEarly(Exception):
    """The server closed the connection before a whole reply frame arrived."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


class _ReplyReader(asyncio.Protocol):
    """Collects the one reply frame of a request connection into the future ``reply``.

    A protocol rather than asyncio streams: a request costs about half the CPU
    (no reader/writer objects, no drain and no wait_closed round trips), which
    is a third of a sender's CPU per value at 250 values per request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_reply: int) -> None:
        self.reply: asyncio.Future[bytes] = loop.create_future()
        self._max_reply = max_reply
        self._buffer = bytearray()
        self._header: FrameHeader | None = None
        self._transport: asyncio.BaseTransport | None = None

    @property
    def stage(self) -> str:
        """What the connection was doing, for error messages."""
        transport = self._transport
        if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size():
            return "sending"
        return "reading the reply" if self._buffer else "waiting for the reply"

    def settle(self) -> None:
        """Leave the connection: no verdict may arrive later, and none is left unread."""
        if not self.reply.done():
            self.reply.cancel()
        elif not self.reply.cancelled():
            self.reply.exception()  # marks an error that lost the race with a timeout as seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return
        self._buffer += data
        try:
            if self._header is None:
                if len(self._buffer) < HEADER_SIZE:
                    return
                self._header = parse_header(bytes(self._buffer[:HEADER_SIZE]), self._max_reply)
            end = HEADER_SIZE + self._header.length
            if len(self._buffer) >= end:
                self.reply.set_result(unpack_body(self._header, bytes(self._buffer[HEADER_SIZE:end])))
        except ProtocolError as exc:
            self.reply.set_exception(exc)

    def eof_received(self) -> bool:
        if not self.reply.done():
            self.reply.set_exception(_ClosedEarly(self.stage))
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply.done():
            return
        if exc is None:
            self.reply.set_exception(_ClosedEarly(self.stage))
        else:
            self.reply.set_exception(exc if isinstance(exc, OSError) else ConnectionError(repr(exc)))
