"""One MQTT v5 connection (paho-mqtt 2.x) as seen from asyncio, shared by the edge and the bridge.

paho-mqtt runs its network loop (connect, keepalive, resend, reconnect) in a
thread of its own: that is the library's design, and it is the only thread
here.  Its callbacks arrive on that thread and are handed to the event loop
with ``call_soon_threadsafe``; every other method runs on the loop, so the
bookkeeping (pending publishes, connection state) needs no lock.

The session is persistent (``clean_start=False`` plus a session expiry): a
broker restart or a short outage does not lose subscriptions or messages in
flight.  The agent's status topic carries ``online`` (retained) while it is
connected and ``offline`` (the Last Will, also retained) once it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from trapline.core.config import Secret, Section, TlsFiles
from trapline.core.logutil import ThrottledLog
from trapline.wire.mqtt.schema import Topics, valid_host

log = logging.getLogger(__name__)

ONLINE, OFFLINE = b"online", b"offline"
_DISCONNECT_WITH_WILL = 4  # MQTT v5 reason code: the broker publishes the Will (our "offline")
# MQTT v5 PUBACK reason code (a success code): the broker took the message but no
# subscription matched, so nobody will ever get it.  mosquitto 2.0 sends it, e.g.
# after a restart, until the bridges have subscribed again (exporters/MQTT.md).
_NO_MATCHING_SUBSCRIBERS = 16


class PublishFailed(Exception):
    """A publish that got no positive acknowledgement; ``str()`` says why."""


class PublishRefused(PublishFailed):
    """The broker answered with a failure reason code (not authorized, quota exceeded...)."""


class NoSubscriber(PublishFailed):
    """The broker acknowledged a message that no subscription matched: it went nowhere."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    client_id: str
    username: str | None
    password: Secret | None
    tls: bool
    tls_files: TlsFiles
    keepalive: int
    session_expiry: int  # seconds the broker keeps the session after a disconnect
    qos: int
    topics: Topics

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_broker(section: Section, default_client_id: str) -> BrokerSettings:
    """The connection keys both the ``[mqtt]`` destination and the bridge collector read."""
    host = section.host("host")
    tls_files = section.tls_files()
    tls = section.boolean("tls", tls_files.any)
    if tls_files.any and not tls:
        raise section.error("tls", "false, but TLS certificate files are given")
    port = section.port("port", 8883 if tls else 1883)
    client_id = section.text("client_id", default_client_id)
    if not valid_host(client_id):
        raise section.error("client_id", "expected 1-128 characters from A-Z a-z 0-9 space . _ -")
    username = section.text("username") if section.has("username") else None
    password = section.secret("password", required=False)
    if password is not None and username is None:
        raise section.error("password_file", "a password needs a username")
    prefix = section.text("topic_prefix", "trapline")
    wildcard = any(c in prefix for c in "+#\0")
    if not prefix or wildcard or prefix.startswith(("/", "$")) or prefix.endswith("/"):
        raise section.error("topic_prefix", "expected topic levels without wildcards, e.g. 'trapline'")
    qos = section.integer("qos", 1, minimum=1)
    if qos > 2:
        raise section.error("qos", "expected 1 or 2 (QoS 0 has no acknowledgement)")
    return BrokerSettings(
        host=host, port=port, client_id=client_id, username=username, password=password,
        tls=tls, tls_files=tls_files,
        # MQTT puts both in fixed-width fields: keepalive 16 bits, session expiry 32 bits.
        keepalive=section.integer("keepalive", 60, minimum=5, maximum=65535),
        session_expiry=section.integer("session_expiry", 86400, minimum=0, maximum=2**32 - 1),
        qos=qos, topics=Topics(prefix),
    )


def default_client_id(role: str) -> str:
    """Stable across restarts (a persistent session is found by its client id)."""
    name = "".join(c if valid_host(c) else "-" for c in socket.gethostname())[:100]
    return f"trapline-{role}-{name}"


class MqttLink:
    def __init__(
        self,
        settings: BrokerSettings,
        *,
        manual_ack: bool = False,
        announce: bool = True,
        on_connected: Callable[[], None] | None = None,
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        receive_maximum: int | None = None,
    ) -> None:
        self.settings = settings
        # MQTT v5 Receive Maximum: unacknowledged QoS 1/2 messages the broker may send at once.
        self._receive_maximum = receive_maximum
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()  # set at the first granted SUBACK of a connection
        self.last_error = "not connected yet"
        # A refused CONNACK is followed by a disconnect event; the refusal is the useful reason.
        self._refusal: str | None = None
        self._closing = False
        # Bumped at every successful connect: message ids of an older connection are void.
        self.generation = 0
        self._manual_ack = manual_ack
        self._announce = announce  # online/offline on the status topic (not for a one-off check)
        self._on_connected = on_connected
        self._on_message = on_message
        self._on_lost = on_lost
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # mid -> (resolves at the acknowledgement, whether "no matching subscribers" is a failure)
        self._pending: dict[int, tuple[asyncio.Future[None], bool]] = {}
        self._unsubscribing: dict[int, asyncio.Future[None]] = {}  # mid -> resolves at the UNSUBACK
        self._throttled = ThrottledLog(log)
        self._paho_error: str | None = None  # paho's thread only: its last error-level log line

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting in the background (idempotent); must run on the event loop."""
        if self._client is not None:
            return
        s = self.settings
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=s.client_id,
            protocol=mqtt.MQTTv5, manual_ack=self._manual_ack,
        )
        if s.username is not None:
            client.username_pw_set(s.username, s.password.reveal() if s.password else None)
        if s.tls:
            files = s.tls_files
            client.tls_set(
                ca_certs=str(files.ca_file) if files.ca_file else None,
                certfile=str(files.cert_file) if files.cert_file else None,
                keyfile=str(files.key_file) if files.key_file else None,
            )
        if self._announce:
            client.will_set(s.topics.status(s.client_id), OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_log = self._paho_log
        client.on_disconnect = self._paho_disconnect
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        client.on_unsubscribe = self._paho_unsubscribe
        client.on_message = self._paho_message
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = s.session_expiry
        if self._receive_maximum is not None:
            connect_props.ReceiveMaximum = self._receive_maximum
        client.connect_async(s.host, s.port, keepalive=s.keepalive, clean_start=False,
                             properties=connect_props)
        client.loop_start()
        self._client = client

    async def wait_connected(self, within: float) -> bool:
        self.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.connected.wait()
        return self.connected.is_set()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._closing = True
        if self.connected.is_set() and self._announce:
            # A normal disconnect discards the Will; this reason code asks the broker to send it.
            client.disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL))
        else:
            client.disconnect()
        # loop_stop joins paho's thread, which can take up to its 1 s select timeout.
        await asyncio.to_thread(client.loop_stop)
        self.connected.clear()
        self._fail_pending("connection closed")

    # -- publishing and acknowledging (event loop) ------------------------------
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False,
                properties: Properties | None = None, *,
                need_subscriber: bool = False) -> asyncio.Future[None]:
        """Resolves when the broker acknowledged (PUBACK/PUBCOMP); fails with PublishFailed.

        With ``need_subscriber`` an acknowledgement saying that no subscription
        matched fails with NoSubscriber: the message reached no one.
        """
        assert self._loop is not None and self._client is not None, "start() first"
        done: asyncio.Future[None] = self._loop.create_future()
        # A caller that stopped waiting (timeout, shutdown) must not leave an unread exception behind.
        done.add_done_callback(_retrieve)
        if not self.connected.is_set():
            done.set_exception(PublishFailed(self.last_error))
            return done
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            done.set_exception(PublishFailed(f"publish failed: {mqtt.error_string(info.rc)}"))
        elif qos == 0:
            done.set_result(None)
        else:
            # paho's callback for this mid reaches the loop only after this method returns.
            self._pending[info.mid] = (done, need_subscriber)
        return done

    def subscribe(self, topic_filters: str | Sequence[str], qos: int) -> None:
        """One SUBSCRIBE for all filters, so that ``subscribed`` means all of them."""
        if self._client is not None:
            names = [topic_filters] if isinstance(topic_filters, str) else topic_filters
            self._client.subscribe([(name, SubscribeOptions(qos=qos)) for name in names])

    async def unsubscribe(self, topic_filter: str, within: float) -> bool:
        """Unsubscribe and wait for the broker's UNSUBACK; False when not connected or not in time."""
        if self._client is None or self._loop is None or not self.connected.is_set():
            return False
        rc, mid = self._client.unsubscribe(topic_filter)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return False
        done: asyncio.Future[None] = self._loop.create_future()
        self._unsubscribing[mid] = done  # paho's callback reaches the loop only after this
        try:
            async with asyncio.timeout(within):
                await done
        except TimeoutError:
            return False
        finally:
            self._unsubscribing.pop(mid, None)
        return True

    def ack(self, mid: int, qos: int) -> None:
        if self._client is not None:
            self._client.ack(mid, qos)

    # -- paho callbacks (paho's thread) -> event loop --------------------------
    def _post(self, callback: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
            loop.call_soon_threadsafe(callback, *args)

    def _paho_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                      reason: ReasonCode, properties: Properties | None) -> None:
        self._post(self._connected, str(reason), reason.is_failure, flags.session_present)

    def _paho_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this inside its ``except OSError``: the error says why (refused, certificate...).
        error = sys.exc_info()[1]
        why = f": {error}" if error is not None else ""
        self._post(self._lost, f"cannot connect to {self.settings.address}{why}")

    def _paho_log(self, client: mqtt.Client, userdata: object, level: int, text: str) -> None:
        # A TLS alert after the handshake (e.g. "certificate required") reaches only paho's log,
        # just before its disconnect event, which reports a bare "Unspecified error".
        if level == mqtt.MQTT_LOG_ERR:
            self._paho_error = text

    def _paho_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                         reason: ReasonCode, properties: Properties | None) -> None:
        detail, self._paho_error = self._paho_error, None
        why = f"{reason} ({detail})" if detail else str(reason)
        self._post(self._lost, f"connection to {self.settings.address} lost: {why}")

    def _paho_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: ReasonCode,
                      properties: Properties | None) -> None:
        self._post(self._settle, mid, reason.value, str(reason))

    def _paho_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                        reasons: list[ReasonCode], properties: Properties | None) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self._post(self._report, f"subscription refused by {self.settings.address}: {refused[0]}")
        else:
            self._post(self.subscribed.set)

    def _paho_unsubscribe(self, client: mqtt.Client, userdata: object, mid: int,
                          reasons: list[ReasonCode], properties: Properties | None) -> None:
        self._post(self._unsubscribed, mid)

    def _paho_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._post(self._on_message, message)

    # -- the same events, on the loop --------------------------------------------
    def _connected(self, reason: str, failed: bool, session_present: bool) -> None:
        if failed:
            self._refusal = f"{self.settings.address} refused the connection: {reason}"
            self._lost(self._refusal)
            return
        self._refusal = None
        self.generation += 1
        self.connected.set()
        self._throttled.resolved("connect", "%s reachable again", self.settings.address)
        log.info("connected to MQTT broker %s as %s (session %s)", self.settings.address,
                 self.settings.client_id, "resumed" if session_present else "new")
        if self._announce:
            self.publish(self.settings.topics.status(self.settings.client_id), ONLINE, qos=1, retain=True)
        if self._on_connected is not None:
            self._on_connected()

    def _lost(self, why: str) -> None:
        self.last_error = why if self.connected.is_set() else self._refusal or why
        if self._closing:
            log.debug("%s (closing)", why)
        elif self.connected.is_set():
            log.warning("%s; paho reconnects on its own", why)
        else:
            self._throttled.warning("connect", "%s; retrying", why)
        self.connected.clear()
        self.subscribed.clear()
        self._fail_pending(why)
        if self._on_lost is not None and not self._closing:
            self._on_lost(why)

    def _settle(self, mid: int, code: int, reason: str) -> None:
        done, need_subscriber = self._pending.pop(mid, (None, False))
        if done is None or done.done():
            return  # a message of a connection we already gave up on
        if code >= 0x80:  # MQTT v5: reason codes from 0x80 up are failures
            done.set_exception(PublishRefused(f"refused by the broker: {reason}"))
        elif code == _NO_MATCHING_SUBSCRIBERS and need_subscriber:
            done.set_exception(NoSubscriber(f"{self.settings.address} has no subscriber for it (no bridge?)"))
        else:
            done.set_result(None)

    def _unsubscribed(self, mid: int) -> None:
        done = self._unsubscribing.get(mid)
        if done is not None and not done.done():
            done.set_result(None)

    def _report(self, why: str) -> None:
        self._throttled.error("subscription", "%s", why)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for done, _ in pending.values():
            if not done.done():
                done.set_exception(PublishFailed(why))


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()
