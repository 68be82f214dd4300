"""MQTT bridge (centre side): vehicle messages from the broker into this agent's pipeline.

Sample configuration::

    [collectors.vehicles]
    type = "mqtt_bridge"
    host = "broker.example.net"
    client_id = "centre-1"           # stable: the broker keeps this session while the bridge is away
    group = "trapline"               # shared subscription: bridges in one group split the messages
    username = "centre"
    password_file = "/etc/trapline/mqtt.password"   # mode 0600 (or password_env)
    tls_ca_file = "/etc/trapline/mqtt-ca.pem"
    # port, topic_prefix, qos, keepalive, session_expiry: as in [mqtt] (exporters/mqtt)

It subscribes ``$share/<group>/<prefix>/v1/+/data`` (MQTT v5 shared
subscription) and validates every message (exporters/MQTT.md).  A valid
message's readings and discoveries go to the pipeline; an invalid one is
counted as a collector error and republished unchanged to
``<prefix>/v1/deadletter`` with the reason in a user property.

At least once, end to end: a message is acknowledged to the broker only after
its readings are committed to the spool (or it reached the dead-letter topic).
Acknowledgements go out in the order the messages came, as MQTT requires.  A
message whose acknowledgement was not sent before a disconnect is delivered
again by the broker, so a value can arrive twice, never zero times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from trapline.exporters.mqtt.link import (
    BrokerSettings,
    MqttLink,
    PublishFailed,
    PublishRefused,
    default_client_id,
    parse_broker,
)
from trapline.exporters.mqtt.schema import BadMessage, decode_message
from trapline.middleware.config import Section
from trapline.middleware.plugin import CommittingOutbox, Outbox

log = logging.getLogger(__name__)

# (connection generation, message id, qos, resolves when the message may be acknowledged)
_PendingAck = tuple[int, int, int, Awaitable[None]]
_REASON_LIMIT = 200  # characters of a rejection reason kept in the dead letter's user property


class MqttBridge:
    def __init__(self, name: str, settings: BrokerSettings, group: str) -> None:
        self.name = name
        self.settings = settings
        self.subscription = f"$share/{group}/{settings.topics.data_filter()}"
        self.dead_letters = 0
        self.link: MqttLink | None = None  # while running

    async def run(self, out: Outbox) -> None:
        if not isinstance(out, CommittingOutbox):
            raise TypeError("the MQTT bridge needs an outbox that confirms spool commits")
        incoming: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
        pending_acks: asyncio.Queue[_PendingAck] = asyncio.Queue()
        link = MqttLink(self.settings, manual_ack=True, on_message=incoming.put_nowait,
                        on_connected=lambda: link.subscribe(self.subscription, self.settings.qos))
        self.link = link
        link.start()
        acknowledger = asyncio.create_task(self._acknowledge(link, pending_acks))
        try:
            while True:
                message = await incoming.get()
                ready = self._take(link, out, message)
                pending_acks.put_nowait((link.generation, message.mid, message.qos, ready))
        finally:
            acknowledger.cancel()
            await asyncio.gather(acknowledger, return_exceptions=True)
            await link.close()
            self.link = None

    def _take(self, link: MqttLink, out: CommittingOutbox, message: mqtt.MQTTMessage) -> Awaitable[None]:
        """Pass one message on; returns what must complete before it may be acknowledged."""
        try:
            host = self.settings.topics.host_of(message.topic)
            items = decode_message(host, bytes(message.payload))
        except BadMessage as why:
            out.error(f"bad message on {message.topic[:100]!r}: {why}")
            self.dead_letters += 1
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = [("reason", str(why)[:_REASON_LIMIT]),
                                       ("topic", message.topic[:_REASON_LIMIT])]
            return link.publish(self.settings.topics.deadletter(), bytes(message.payload), self.settings.qos,
                                properties=properties)
        for item in items:
            out.put(item)
        return out.committed()

    @staticmethod
    async def _acknowledge(link: MqttLink, pending: asyncio.Queue[_PendingAck]) -> None:
        while True:
            generation, mid, qos, ready = await pending.get()
            try:
                await ready
            except PublishRefused as exc:
                # The dead-letter topic refused it (an ACL?): the message is counted and
                # dropped; holding it unacknowledged would block the in-flight window.
                log.error("dead letter not accepted, dropping the message: %s", exc)
            except PublishFailed:
                continue  # connection lost: the broker delivers the message again
            except Exception:
                # Not in the spool (disk error): without an ack the broker resends it on reconnect.
                log.exception("readings of message %d were not committed; not acknowledging", mid)
                continue
            # An id from an earlier connection may now name another message: never ack it.
            if qos > 0 and generation == link.generation and link.connected.is_set():
                link.ack(mid, qos)


def build(name: str, section: Section) -> MqttBridge:
    settings = parse_broker(section, default_client_id("bridge"))
    group = section.text("group", "trapline")
    if not group or any(c in group for c in "/+#\0"):
        raise section.error("group", "expected a name without / + #")
    section.done()
    return MqttBridge(name, settings, group)
