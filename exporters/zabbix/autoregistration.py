"""Active agent autoregistration: the van tells the server it exists.

The server answers an ``active checks`` request for an unknown host with
``failed`` and runs its autoregistration actions on the request's host
metadata; ``trapline provision --autoregistration`` creates the action that
adds the host with the vehicle and agent templates.  Until the host exists
(the action ran and the server's configuration cache has it) every value for
it would be refused, so the destination holds them in the spool and asks again
on its next round, with the pipeline's backoff (1 s doubling to 60 s).  The
first round comes at start: the agent's own metrics are queued then.  Once the
server knows the host, nothing more is asked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

import trapline
from trapline.exporters.zabbix.client import SendError
from trapline.exporters.zabbix.protocol import (
    active_checks_request,
    frame,
    parse_active_checks_reply,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def host_metadata(role: str, version: str = trapline.__version__) -> str:
    """``trapline <role> <version>``: what the autoregistration action matches on."""
    return f"trapline {role} {version}"


class RequestClient(Protocol):
    """What sends one framed request and parses its reply (a ClusterClient in production)."""

    async def request(self, framed: bytes, parse: Callable[[bytes], _T]) -> _T: ...


class AutoRegistration:
    """Asks the server about one host until it knows it; the first ask registers it."""

    def __init__(self, client: RequestClient, host: str, metadata: str) -> None:
        self._client = client
        self.host = host
        self.metadata = metadata
        self.known = False

    async def wait_reason(self) -> str | None:
        """None once the server knows the host; else why its values must wait in the spool."""
        if self.known:
            return None
        framed = frame(active_checks_request(self.host, self.metadata))
        try:
            reply = await self._client.request(framed, parse_active_checks_reply)
        except SendError as exc:
            return f"autoregistration of host {self.host}: {exc}"
        if not reply.known:
            return (
                f"host {self.host} is not in Zabbix yet ({reply.info[:200]}); asked to autoregister it "
                f"with host metadata {self.metadata!r}"
            )
        self.known = True
        log.info("zabbix knows host %s (autoregistration metadata %r)", self.host, self.metadata)
        return None
