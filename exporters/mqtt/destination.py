"""The MQTT destination (vehicle side): spool batches become QoS 1 messages, PUBACKs become verdicts.

A row counts as accepted only when the message that carried it was
acknowledged by the broker.  A broker that cannot be reached, or a connection
lost before the acknowledgement, leaves the rows in the spool as
``unreachable`` (they do not age); a publish the broker refuses with a reason
code (not authorized, quota exceeded) goes to ``retry``.  A PUBACK saying "no
matching subscribers" (no bridge has subscribed, e.g. just after a broker
restart) means the message reached no one: those rows stay too, as
``unreachable``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from trapline.core.plugin import Delivery, Spooled
from trapline.wire.mqtt.link import BrokerSettings, MqttLink, PublishRefused
from trapline.wire.mqtt.schema import encode_chunks, hosts_in_order, valid_host


class MqttDestination:
    needs_labels = True  # the message schema carries them to the centre

    def __init__(self, settings: BrokerSettings, max_payload: int, timeout: float) -> None:
        self.name = f"mqtt[{settings.address}]"
        self.settings = settings
        self.max_payload = max_payload
        self.timeout = timeout  # seconds to wait for a connection, and then for the acknowledgements
        self._link = MqttLink(settings)

    @property
    def connected(self) -> bool:
        return self._link.connected.is_set()

    async def deliver(self, batch: Sequence[Spooled]) -> Delivery:
        if not await self._link.wait_connected(self.timeout):
            return Delivery(unreachable=self._link.last_error)
        delivery = Delivery()
        sent: list[tuple[list[int], asyncio.Future[None]]] = []
        for host, tagged in hosts_in_order([(s.id, s.item) for s in batch]).items():
            if not valid_host(host):  # normalize() already refuses these; never build a bad topic
                delivery.rejected.update((tag, "host name is not an MQTT topic level") for tag, _ in tagged)
                continue
            chunks = encode_chunks(self.settings.client_id, host, tagged, self.max_payload)
            delivery.rejected.update(chunks.refused)
            topic = self.settings.topics.data(host)
            sent += [(ids, self._link.publish(topic, payload, self.settings.qos, need_subscriber=True))
                     for ids, payload in chunks.messages]
        if sent:
            await asyncio.wait([done for _, done in sent], timeout=self.timeout)
        for ids, done in sent:
            problem = done.exception() if done.done() else None
            if not done.done():
                delivery.unreachable = f"no acknowledgement within {self.timeout}s"
            elif isinstance(problem, PublishRefused):
                delivery.retry.update((tag, str(problem)) for tag in ids)
            elif problem is not None:
                delivery.unreachable = str(problem)
            else:
                delivery.accepted += ids
        return delivery

    async def check(self) -> str:
        """Connect once with a separate, throw-away session (never the agent's own)."""
        probe = dataclasses.replace(self.settings, client_id=f"{self.settings.client_id}-check",
                                    session_expiry=0)
        link = MqttLink(probe, announce=False)
        try:
            if not await link.wait_connected(self.timeout):
                raise ConnectionError(link.last_error)
            return f"connected to {self.settings.address}"
        finally:
            await link.close()

    async def close(self) -> None:
        await self._link.close()
