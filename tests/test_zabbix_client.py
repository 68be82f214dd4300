"""The asyncio sender client against a small fake server.

The fake exists only for what a real Zabbix cannot be made to do: answer
garbage, cut a reply short, hang, reset, redirect.  Real-server behaviour is
covered by the integration tests in test_zabbix_destination.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.support.peers import free_port
from trapline.core.model import Reading
from trapline.exporters.zabbix.client import (
    ClusterClient,
    Endpoint,
    SendError,
    TlsSettings,
    parse_cluster,
    parse_endpoint,
)
from trapline.exporters.zabbix.protocol import HEADER_SIZE, encode_request, frame, parse_header, unpack_body

Accepts = Callable[[str, str], bool]


class FakeZabbix:
    """A trapper that counts values like Zabbix does, or misbehaves on demand.

    ``faults`` is consumed one entry per connection: "garbage", "truncated",
    "hang", "reset", "failed", "redirect:<host:port>", "reset-redirect".
    Without a fault it answers like a server: values whose (host, key)
    ``accepts`` are processed (and stored), the others counted as failed.
    An ``active checks`` request is kept in ``active_checks`` and answered as
    the server answers it: success for a host in ``known_hosts``, else
    "host [H] not found" (the server's text, src/zabbix_server/trapper/active.c).
    """

    def __init__(self, accepts: Accepts = lambda host, key: True, delay: float = 0.0) -> None:
        self.accepts = accepts
        self.delay = delay
        self.faults: list[str] = []
        self.requests: list[list[dict[str, object]]] = []
        self.active_checks: list[dict[str, object]] = []
        self.known_hosts: set[str] = set()
        self.stored: list[tuple[str, str, str, int, int]] = []
        self.busy = 0
        self.max_busy = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._ssl: ssl.SSLContext | None = None

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> FakeZabbix:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            header = parse_header(await reader.readexactly(HEADER_SIZE), 1 << 30)
            doc = json.loads(unpack_body(header, await reader.readexactly(header.length)))
            if doc["request"] == "active checks":
                self.active_checks.append(doc)
                await self._answer_active_checks(str(doc["host"]), writer)
                return
            self.requests.append(doc["data"])
            await asyncio.sleep(self.delay)
            fault = self.faults.pop(0) if self.faults else ""
            await self._answer(fault, doc["data"], header.compressed, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.busy -= 1
            writer.close()

    async def _answer_active_checks(self, host: str, writer: asyncio.StreamWriter) -> None:
        if host in self.known_hosts:
            writer.write(frame(b'{"response":"success","data":[]}'))
        else:
            unknown = {"response": "failed", "info": f"host [{host}] not found"}
            writer.write(frame(json.dumps(unknown).encode()))
        await writer.drain()

    async def _answer(
        self, fault: str, data: list[dict[str, object]], compress: bool, writer: asyncio.StreamWriter
    ) -> None:
        if fault == "garbage":
            writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        elif fault == "truncated":
            writer.write(b"ZBXD\x01" + struct.pack("<II", 100, 0) + b'{"respo')
        elif fault == "hang":
            await asyncio.sleep(3600)
        elif fault == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        elif fault == "failed":
            writer.write(frame(b'{"response":"failed","info":"cannot parse as a valid JSON object"}'))
        elif fault.startswith("redirect:"):
            address = fault.removeprefix("redirect:")
            moved = {"response": "failed", "redirect": {"revision": 3, "address": address}}
            writer.write(frame(json.dumps(moved).encode()))
        elif fault == "reset-redirect":
            writer.write(frame(b'{"response":"failed","redirect":{"reset":true}}'))
        else:
            processed = 0
            for v in data:
                host, key = str(v["host"]), str(v["key"])
                if self.accepts(host, key):
                    processed += 1
                    self.stored.append((host, key, str(v["value"]), int(str(v["clock"])), int(str(v["ns"]))))
            failed = len(data) - processed
            info = f"processed: {processed}; failed: {failed}; total: {len(data)}; seconds spent: 0.000100"
            writer.write(frame(json.dumps({"response": "success", "info": info}).encode(), compress))
        await writer.drain()


@contextlib.asynccontextmanager
async def fake_zabbix(**kwargs: object) -> AsyncIterator[FakeZabbix]:
    server = await FakeZabbix(**kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        await server.stop()


def one_request(n: int = 3, compress: bool = False) -> bytes:
    readings = [Reading("host", f"key{i}", i, 1_700_000_000 + i, i) for i in range(n)]
    return frame(encode_request(readings, 1_700_000_000, 0), compress)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


# -- addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("zabbix", Endpoint("zabbix", 10051)),
        ("zabbix:10052", Endpoint("zabbix", 10052)),
        (" 10.0.0.1:1 ", Endpoint("10.0.0.1", 1)),
        ("[::1]", Endpoint("::1", 10051)),
        ("[::1]:10052", Endpoint("::1", 10052)),
        ("fe80::1", Endpoint("fe80::1", 10051)),
    ],
)
def test_endpoints_parse_like_the_agent(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:0", "host:70000", "host:x", "[::1", "[::1]x", ":10051"])
def test_bad_endpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_cluster_nodes_split_on_semicolon() -> None:
    expected = [Endpoint("a", 10051), Endpoint("b", 10052), Endpoint("::1", 3)]
    assert parse_cluster("a;b:10052;[::1]:3") == expected
    with pytest.raises(ValueError, match="twice"):
        parse_cluster("a;a:10051")
    assert str(Endpoint("::1", 3)) == "[::1]:3"


# -- conversations --------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_success_reply_is_counted(compress: bool) -> None:
    async def scenario() -> None:
        async with fake_zabbix(accepts=lambda h, k: k != "key1") as server:
            reply = await ClusterClient([server.endpoint], timeout=5).send(one_request(3, compress))
            assert (reply.processed, reply.failed, reply.total) == (2, 1, 3)
            assert [v["key"] for v in server.requests[0]] == ["key0", "key1", "key2"]

    run(scenario())


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("garbage", "bad reply: not a Zabbix frame"),
        ("truncated", "truncated reply"),
        ("hang", "no answer within 0.3 s"),
        ("reset", "connection"),
    ],
)
def test_faults_become_send_errors_with_a_reason(fault: str, reason: str) -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            server.faults.append(fault)
            with pytest.raises(SendError, match=reason) as caught:
                await ClusterClient([server.endpoint], timeout=0.3).send(one_request())
            assert str(server.port) in str(caught.value)

    run(scenario())


def test_failed_response_is_returned_not_raised() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            server.faults.append("failed")
            reply = await ClusterClient([server.endpoint]).send(one_request())
            assert not reply.ok and "cannot parse" in reply.info

    run(scenario())


def test_unreachable_cluster_names_every_node() -> None:
    ports = [free_port(), free_port()]
    nodes = [Endpoint("127.0.0.1", p) for p in ports]
    with pytest.raises(SendError) as caught:
        run(ClusterClient(nodes, timeout=2).send(one_request()))
    assert all(str(p) in str(caught.value) for p in ports)
    assert "cannot connect" in str(caught.value)


def test_ha_failover_remembers_the_node_that_answered() -> None:
    async def scenario() -> None:
        first = await FakeZabbix().start()
        second = await FakeZabbix().start()
        client = ClusterClient([first.endpoint, second.endpoint], timeout=2)
        await first.stop()  # the standby that took over is the second node
        assert (await client.send(one_request())).processed == 3
        assert client.active_node == second.endpoint and len(second.requests) == 1
        await second.stop()
        await first.start(first.port)  # failover back: tried after the remembered node fails
        assert (await client.send(one_request())).processed == 3
        assert client.active_node == first.endpoint and len(first.requests) == 1
        await first.stop()

    run(scenario())


def test_redirect_is_followed_once() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as owner, fake_zabbix() as other:
            other.faults.append(f"redirect:127.0.0.1:{owner.port}")
            client = ClusterClient([other.endpoint], timeout=2)
            assert (await client.send(one_request())).processed == 3
            assert len(owner.requests) == 1 and len(owner.stored) == 3
            other.faults.append(f"redirect:127.0.0.1:{owner.port}")
            owner.faults.append(f"redirect:127.0.0.1:{other.port}")
            with pytest.raises(SendError, match="redirected twice"):
                await client.send(one_request())

    run(scenario())


def test_redirect_reset_resends_to_the_configured_node() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            server.faults.append("reset-redirect")
            assert (await ClusterClient([server.endpoint]).send(one_request())).processed == 3
            assert len(server.requests) == 2

    run(scenario())


def test_reset_from_the_redirect_target_starts_over_from_the_configured_nodes() -> None:
    # A 7.0 proxy that owns the host but has lost the server for the group's failover
    # delay answers the redirected request with reset (tests/integration/test_proxy_group.py
    # provokes it for real); starting over, the configured proxy redirects again.
    async def scenario() -> None:
        async with fake_zabbix() as owner, fake_zabbix() as other:
            other.faults += [f"redirect:127.0.0.1:{owner.port}"] * 2
            owner.faults.append("reset-redirect")
            client = ClusterClient([other.endpoint], timeout=2)
            assert (await client.send(one_request())).processed == 3
            assert (len(other.requests), len(owner.requests), len(owner.stored)) == (2, 2, 3)
            other.faults += [f"redirect:127.0.0.1:{owner.port}"] * 2
            owner.faults += ["reset-redirect"] * 2  # a second reset in one send: give up for now
            with pytest.raises(SendError, match="redirected twice"):
                await client.send(one_request())

    run(scenario())


# -- TLS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=zabbix.test",
            "-addext",
            "subjectAltName=DNS:zabbix.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_with_certificates(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async def scenario() -> None:
        server = await FakeZabbix().start(tls=server_tls)
        try:
            named = TlsSettings(ca_file=cert, server_name="zabbix.test")
            good = ClusterClient([server.endpoint], timeout=5, tls=named)
            assert (await good.send(one_request())).processed == 3
            wrong_name = ClusterClient([server.endpoint], timeout=5, tls=TlsSettings(ca_file=cert))
            with pytest.raises(SendError, match="cannot connect"):
                await wrong_name.send(one_request())
        finally:
            await server.stop()

    run(scenario())
