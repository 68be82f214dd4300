"""A small Mist-compatible server: the websocket stream and a few REST calls (tests, benchmarks, the demo).

The Mist cloud cannot be reached from tests, so this speaks its documented
protocol on one local port:

* ``/api-ws/v1/stream``: ``Authorization: Token <t>`` checked on the upgrade (a
  bad token gets HTTP 401, as the cloud does); ``{"subscribe": ch}`` answered by
  ``channel_subscribed`` for ``/sites/<known site>/stats/devices`` and
  ``subscribe_failed`` otherwise; data as ``{"event": "data", "channel": ...,
  "data": "<JSON string>"}``.
* REST ``/api/v1/orgs/<org>``, ``/api/v1/orgs/<org>/sites`` (limit/page),
  ``/api/v1/sites/<site>``; ``rate_limit_next`` answers that many calls with 429.
* REST ``/api/v1/sites/<site>/devices`` (listSiteDevices): the site's device
  inventory from ``devices``, as the Mist API reference gives it: a JSON list of
  device configuration objects, filtered by ``type`` (``ap`` when absent, ``all``
  for every kind), paged by ``limit`` (default 100) and ``page`` (from 1).

Tests drive it: :meth:`push` sends a device update to every subscriber of a
site, :meth:`push_raw` sends any frame, :meth:`drop_all` closes every
connection from the server side.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

STREAM_PATH = "/api-ws/v1/stream"
WAIT_LIMIT = 10.0  # seconds a test waits for the collector before failing
_CHANNEL = re.compile(r"/sites/([^/]+)/stats/devices")


@dataclass
class Client:
    """One connected stream client and what it subscribed."""

    ws: ServerConnection
    channels: set[str] = field(default_factory=set)


@dataclass
class MistServer:
    token: str = "test-token"
    sites: dict[str, tuple[str, str]] = field(default_factory=dict)  # site id -> (name, org id)
    orgs: dict[str, str] = field(default_factory=dict)  # org id -> name
    silent_channels: set[str] = field(default_factory=set)  # subscribes never acked
    rate_limit_next: int = 0  # answer this many REST calls with HTTP 429
    retry_after: str = "1"
    clients: list[Client] = field(default_factory=list)  # currently connected
    upgrade_attempts: int = 0
    refused_upgrades: int = 0
    rest_calls: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)  # every subscribe ever received
    # site id -> its device inventory: the objects listSiteDevices returns, served as given
    devices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _server: Server | None = None

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        self._server = await serve(
            self._serve_client, "127.0.0.1", 0, process_request=self._process_request, max_size=None
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> MistServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{STREAM_PATH}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test controls -------------------------------------------------------
    def subscribers(self, site_id: str) -> list[Client]:
        channel = f"/sites/{site_id}/stats/devices"
        return [c for c in self.clients if channel in c.channels]

    async def push(self, site_id: str, device: dict[str, Any]) -> int:
        """Send one device update to every subscriber of the site; returns how many got it."""
        channel = f"/sites/{site_id}/stats/devices"
        frame = json.dumps({"event": "data", "channel": channel, "data": json.dumps(device)})
        return await self._send(self.subscribers(site_id), frame)

    async def push_fragmented(self, site_id: str, device: dict[str, Any], pieces: int) -> int:
        """Like :meth:`push`, the frame split into ``pieces`` websocket fragments (one message)."""
        channel = f"/sites/{site_id}/stats/devices"
        text = json.dumps({"event": "data", "channel": channel, "data": json.dumps(device)})
        size = -(-len(text) // pieces)
        fragments = [text[i : i + size] for i in range(0, len(text), size)]
        return await self._send(self.subscribers(site_id), fragments)

    async def push_raw(self, frame: str | bytes) -> int:
        """Send any frame to every connected client."""
        return await self._send(list(self.clients), frame)

    async def drop_all(self) -> None:
        """Server-side disconnect of every client (close code 1001, going away)."""
        for client in list(self.clients):
            await client.ws.close(1001, "going away")

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` about this server (or anything else) holds."""
        async with asyncio.timeout(WAIT_LIMIT):
            # Polling: what tests wait for changes in many places (server, outbox, collector).
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    # -- internals -----------------------------------------------------------
    async def _send(self, clients: list[Client], frame: str | bytes | list[str]) -> int:
        sent = 0
        for client in clients:
            try:
                await client.ws.send(frame)
                sent += 1
            except ConnectionClosed:
                pass
        return sent

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        authorized = request.headers.get("Authorization") == f"Token {self.token}"
        path = urlsplit(request.path).path
        if path == STREAM_PATH:
            self.upgrade_attempts += 1
            if not authorized:
                self.refused_upgrades += 1
                return connection.respond(HTTPStatus.UNAUTHORIZED, '{"detail":"Authentication failed"}\n')
            return None
        if not path.startswith("/api/v1/"):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        self.rest_calls.append(request.path)
        if not authorized:
            return connection.respond(HTTPStatus.UNAUTHORIZED, '{"detail":"Authentication failed"}\n')
        if self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "rate limited\n")
            response.headers["Retry-After"] = self.retry_after
            return response
        body = self._rest_reply(request.path)
        if body is None:
            return connection.respond(HTTPStatus.NOT_FOUND, '{"detail":"not found"}\n')
        headers = Headers({"Content-Type": "application/json", "Content-Length": str(len(body))})
        return Response(200, "OK", headers, body)

    def _rest_reply(self, target: str) -> bytes | None:
        parts = urlsplit(target)
        segments = parts.path.strip("/").split("/")[2:]  # after api/v1
        reply: Any = None
        if len(segments) == 2 and segments[0] == "orgs" and segments[1] in self.orgs:
            reply = {"id": segments[1], "name": self.orgs[segments[1]]}
        elif len(segments) == 3 and segments[0] == "orgs" and segments[2] == "sites":
            if segments[1] not in self.orgs:
                return None
            query = parse_qs(parts.query)
            limit = int(query.get("limit", ["100"])[0])
            page = int(query.get("page", ["1"])[0])
            sites = [
                {"id": sid, "name": name, "org_id": org}
                for sid, (name, org) in sorted(self.sites.items())
                if org == segments[1]
            ]
            reply = sites[(page - 1) * limit : page * limit]
        elif len(segments) == 2 and segments[0] == "sites" and segments[1] in self.sites:
            name, org = self.sites[segments[1]]
            reply = {"id": segments[1], "name": name, "org_id": org}
        elif segments[:1] == ["sites"] and segments[2:] == ["devices"] and segments[1] in self.sites:
            query = parse_qs(parts.query)
            kind = query.get("type", ["ap"])[0]
            limit = int(query.get("limit", ["100"])[0])
            page = int(query.get("page", ["1"])[0])
            listed = [d for d in self.devices.get(segments[1], []) if kind == "all" or d.get("type") == kind]
            reply = listed[(page - 1) * limit : page * limit]
        return None if reply is None else json.dumps(reply).encode()

    async def _serve_client(self, ws: ServerConnection) -> None:
        client = Client(ws)
        self.clients.append(client)
        try:
            async for message in ws:
                await self._on_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            self.clients.remove(client)

    async def _on_message(self, client: Client, message: str | bytes) -> None:
        try:
            request = json.loads(message)
            channel = request["subscribe"]
        except (ValueError, KeyError, TypeError):
            return  # the cloud ignores what it does not understand
        self.subscriptions.append(channel)
        if channel in self.silent_channels:
            return
        match = _CHANNEL.fullmatch(channel) if isinstance(channel, str) else None
        if match and match.group(1) in self.sites:
            client.channels.add(channel)
            await client.ws.send(json.dumps({"event": "channel_subscribed", "channel": channel}))
        else:
            reply = {"event": "subscribe_failed", "channel": channel, "detail": "no such site or no access"}
            await client.ws.send(json.dumps(reply))


def _full(mac: str, name: str, kind: str, model: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A full update of a device of ``kind``: its identity, then ``fields``."""
    return {
        "id": f"00000000-0000-0000-1000-{mac}",
        "mac": mac,
        "name": name,
        "type": kind,
        "model": model,
        "status": "connected",
        **fields,
    }


def ap_full(mac: str, name: str, **extra: Any) -> dict[str, Any]:
    """A full AP stats update as Mist sends it (with fields trapline drops)."""
    fields: dict[str, Any] = {
        "uptime": 1000,
        "last_seen": 1_700_000_000,
        "cpu_util": 3,
        "mem_used_kb": 200_000,
        "mem_total_kb": 500_000,
        "num_clients": 4,
        "lldp_stat": {"system_name": "switch-1"},  # not in fields.toml: dropped
        "port_stat": {"eth0": {"up": True, "speed": 1000, "rx_bytes": 10, "tx_bytes": 20}},
        "radio_stat": {
            "band_24": {"channel": 6, "num_clients": 1, "noise_floor": -90},
            "band_5": {"channel": 36, "num_clients": 3, "noise_floor": -95},
        },
        "env_stat": {"cpu_temp": 55, "ambient_temp": 30},
    }
    return _full(mac, name, "ap", "AP43", fields | extra)


def ap_basic(mac: str, **changes: Any) -> dict[str, Any]:
    """A partial ("basic") AP update: identity plus a few changed figures."""
    return {"id": f"00000000-0000-0000-1000-{mac}", "mac": mac, **changes}


def switch_full(mac: str, name: str, **extra: Any) -> dict[str, Any]:
    """A full switch stats update, shaped after Mist's StatsSwitch model (ports, modules as arrays)."""
    fields: dict[str, Any] = {
        "uptime": 5000,
        "version": "22.4R3",
        "cpu_stat": {"idle": 88.0, "user": 8.0, "system": 4.0, "load_avg": [0.4, 0.3, 0.2]},
        "memory_stat": {"usage": 41.5},
        "clients_stats": {"total": {"num_aps": [2], "num_wired_clients": 7}},  # not in fields.toml
        "ports": [
            {
                "port_id": "ge-0/0/0",
                "up": True,
                "speed": 1000,
                "full_duplex": True,
                "poe_on": True,
                "power_draw": 6.5,
                "rx_bytes": 1000,
                "tx_bytes": 2000,
                "rx_errors": 0,
                "tx_errors": 0,
            },
            {"port_id": "ge-0/0/1", "up": False, "speed": 0, "poe_on": False, "power_draw": 0.0},
        ],
        "module_stat": [
            {
                "fpc_idx": 0,
                "model": "EX4100-48P",
                "serial": "FC0000000001",
                "vc_role": "master",
                "vc_state": "present",
                "status": "connected",
                "temperatures": [{"name": "CPU", "celsius": 48.0, "status": "ok"}],
                "fans": [{"name": "Fan 0", "status": "ok", "airflow": "out"}],
                "psus": [{"name": "PSU 0", "status": "ok"}],
                "poe": {"max_power": 740.0, "power_draw": 6.5},
            }
        ],
    }
    return _full(mac, name, "switch", "EX4100-48P", fields | extra)


def gateway_full(mac: str, name: str, **extra: Any) -> dict[str, Any]:
    """A full gateway stats update, shaped after Mist's StatsGateway model (if_stat, tunnels, spu_stat)."""
    fields: dict[str, Any] = {
        "uptime": 7000,
        "cpu_stat": {"idle": 70.0, "usage": 30.0},
        "memory_stat": {"usage": 55.0},
        "if_stat": {
            "ge-0/0/0.0": {
                "port_id": "ge-0/0/0",
                "up": True,
                "port_usage": "wan",
                "wan_name": "wan1",
                "wan_type": "broadband",
                "rx_bytes": 5000,
                "tx_bytes": 3000,
                "ips": ["192.0.2.2/30"],
            },
            "ge-0/0/1.0": {"port_id": "ge-0/0/1", "up": True, "port_usage": "lan", "network_name": "corp"},
        },
        "tunnels": [
            {
                "tunnel_name": "hub-a",
                "up": True,
                "peer_ip": "198.51.100.7",
                "peer_host": "hub-a.example.net",
                "wan_name": "wan1",
                "protocol": "ipsec",
                "priority": "primary",
                "uptime": 3600,
            },
        ],
        "spu_stat": [
            {"spu_cpu": 12, "spu_memory": 46, "spu_current_session": 215, "spu_max_session": 131072}
        ],
    }
    return _full(mac, name, "gateway", "SRX320", fields | extra)
