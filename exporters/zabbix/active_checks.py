"""Hand collectors the host items that Zabbix resolved for them, from ``active checks`` requests.

An active agent asks its server (or proxy) which active items its host has; the
reply holds each key with the user macros in it resolved.  That is how a van, which
has no API token, reads a host macro an admin set in Zabbix: the vehicle template's
active item ``trapline.geofences["{$VEHICLE.GEOFENCES}"]``.  The poller asks at start
and every ``active_checks_interval`` seconds (``[zabbix]``, 60 by default); the server
itself reloads its configuration every ``CacheUpdateFrequency`` (60 s by default), a
proxy at its own ``ProxyConfigFrequency``.

The item never receives a value: nothing is sent for it, so nothing is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from trapline.core.keys import split_params
from trapline.core.plugin import ActiveCheckFollower, Collector, Destination, Outbox
from trapline.exporters.zabbix.autoregistration import RequestClient, host_metadata
from trapline.exporters.zabbix.client import ClusterClient, SendError
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.exporters.zabbix.protocol import (
    ActiveChecksReply,
    ProtocolError,
    active_checks_request,
    frame,
    parse_active_checks_reply,
)


def key_params(keys: Sequence[str], name: str) -> list[str] | None:
    """The parameters of the first key named ``name`` (``name[...]``), or None if none is."""
    for key in keys:
        if key == name:
            return []
        if key.startswith(f"{name}[") and key.endswith("]"):
            return split_params(key[len(name) + 1 : -1])
    return None


class ActiveChecksPoller:
    """A collector of nothing: it asks for active checks and tells each follower its item."""

    def __init__(
        self,
        client: RequestClient,
        followers: Sequence[ActiveCheckFollower],
        metadata: str,
        interval: float,
    ) -> None:
        self.name = "zabbix-active-checks"
        self._client = client
        self._followers = list(followers)
        self._metadata = metadata
        self.interval = interval

    async def run(self, out: Outbox) -> None:
        while True:
            for host in sorted({f.active_check()[0] for f in self._followers}):
                await self._ask(out, host)
            await asyncio.sleep(self.interval)

    async def _ask(self, out: Outbox, host: str) -> None:
        condition = f"active checks of {host}"
        request = frame(active_checks_request(host, self._metadata))
        try:
            reply: ActiveChecksReply = await self._client.request(request, parse_active_checks_reply)
        except (SendError, ProtocolError) as exc:
            out.error(f"{condition}: {exc}; the last answer stays in force", condition)
            return
        if not reply.known:
            out.error(f"{condition}: {reply.info[:200]}; the last answer stays in force", condition)
            return
        out.resolved(condition, f"{condition}: answered again")  # also its progress, for the watchdog
        for follower in self._followers:
            followed_host, name = follower.active_check()
            if followed_host == host:
                follower.active_check_params(key_params(reply.keys, name))


def active_checks_poller(
    destinations: Sequence[Destination], followers: Sequence[ActiveCheckFollower]
) -> Collector | None:
    """The poller for ``followers``, asking the first Zabbix destination; None if none is needed or possible.

    It sends the autoregistration's host metadata when that is configured, so the server
    sees one agent with one metadata, not two.
    """
    if not followers:
        return None
    for destination in destinations:
        if isinstance(destination, ZabbixDestination) and isinstance(destination.client, ClusterClient):
            registration = destination.registration
            metadata = registration.metadata if registration is not None else host_metadata("vehicle")
            interval = destination.active_checks_interval
            return ActiveChecksPoller(destination.client, followers, metadata, interval)
    return None
