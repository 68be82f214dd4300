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
    dedup_window = 10000             # message ids remembered to drop redelivered copies (0 = off)
    self_host = "trapline-centre"    # Zabbix host for the bridge's own counters (unset = none)
    self_interval = 60               # seconds between two reports of those counters
    peers = ["centre-2"]             # client ids of the other bridges of the group (see below)
    adopt_after = 30                 # seconds a peer stays offline before this bridge takes over
    receive_maximum = 256            # unacknowledged messages the broker may have in flight to us
    # port, tls_cert_file, tls_key_file, topic_prefix, qos, keepalive, session_expiry:
    # as in [mqtt] (exporters/mqtt)

It subscribes ``$share/<group>/<prefix>/v1/+/data`` (MQTT v5 shared
subscription) and validates every message (exporters/MQTT.md).  A valid
message's readings and discoveries go to the pipeline; an invalid one is
counted as a collector error and republished unchanged to
``<prefix>/v1/deadletter`` with the reason in a user property.  It also
follows every agent's retained ``<prefix>/v1/<client_id>/status`` (online, or
offline from the Last Will) for its self-monitoring.

At least once, end to end: a message is acknowledged to the broker only after
its readings are committed to the spool (or it reached the dead-letter topic).
Acknowledgements go out in the order the messages came, as MQTT requires.
The work overlaps: the broker keeps up to ``receive_maximum`` messages in
flight (MQTT v5 Receive Maximum), the bridge decodes the next ones while the
spool commits earlier ones and the delivery loop sends older ones to Zabbix,
and once half that window waits for a commit it asks the spool to commit now
rather than at the end of ``flush_interval`` (the broker sends nothing more
once the window is full).  A
message whose acknowledgement was not sent before a disconnect is delivered
again by the broker; this bridge remembers the ids of its last
``dedup_window`` messages and forwards such a copy only once (counted as a
duplicate).  Another bridge does not share that memory: exporters/MQTT.md says
what is and is not de-duplicated.

A bridge that dies keeps its persistent session on the broker, and mosquitto
holds that bridge's unacknowledged messages and its share of new ones there
until the same client id returns.  So each bridge watches the status of its
``peers``: once one has been offline (its Last Will) for ``adopt_after``
seconds, this bridge connects with the peer's client id, serves the messages
waiting in its session, and keeps doing so until the peer comes back (the
broker then hands the session back to it and drops this second connection).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, replace

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from trapline.core.config import Section
from trapline.core.keys import quote_param
from trapline.core.model import Discovery, Item, Reading, now_clock
from trapline.core.plugin import CommittingOutbox, Outbox
from trapline.wire.mqtt.link import (
    ONLINE,
    BrokerSettings,
    MqttLink,
    PublishFailed,
    PublishRefused,
    default_client_id,
    parse_broker,
)
from trapline.wire.mqtt.schema import BadMessage, decode_envelope

log = logging.getLogger(__name__)

# (connection generation, message id, qos, resolves when the message may be acknowledged)
_PendingAck = tuple[int, int, int, Awaitable[None]]
# A message and the generation of the connection it came on, stamped on arrival: the link may
# reconnect before the bridge takes it from the queue, and its id is void on the new connection.
_Arrival = tuple[int, mqtt.MQTTMessage]
_RECEIVE_MAXIMUM = 256
_REASON_LIMIT = 200  # characters of a rejection reason kept in the dead letter's user property
_LEAVE_TIMEOUT = 2.0  # seconds to wait for the UNSUBACK, then for the last commit, on a clean stop
_AGENT_LIMIT = 10_000  # agents tracked for self-monitoring; beyond, the least recently heard is forgotten
BRIDGE_RULE = "trapline.bridge.discovery"
AGENT_RULE = "trapline.bridge.agent.discovery"


class RecentIds:
    """What became of the last ``size`` messages taken: (agent, id) -> the wait before their ack.

    Bounded like an LRU: memory stays at ``size`` entries however long the bridge runs.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], asyncio.Future[None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> asyncio.Future[None] | None:
        ready = self._entries.get(key)
        if ready is not None:
            self._entries.move_to_end(key)
        return ready

    def add(self, key: tuple[str, str], ready: asyncio.Future[None]) -> None:
        if self.size <= 0:
            return
        self._entries[key] = ready
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        # A copy that never reached the spool must not make the next copy look like a duplicate.
        ready.add_done_callback(lambda done: self._forget_failed(key, done))

    def _forget_failed(self, key: tuple[str, str], done: asyncio.Future[None]) -> None:
        if (done.cancelled() or done.exception() is not None) and self._entries.get(key) is done:
            del self._entries[key]


class Acknowledger:
    """Acknowledges the messages of one connection in the order they came, each once it is safe."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self._pending: asyncio.Queue[_PendingAck] = asyncio.Queue()

    def add(self, arrival: _Arrival, ready: Awaitable[None]) -> None:
        """``ready`` completes when the message may be acknowledged (its readings are committed)."""
        generation, message = arrival
        self._pending.put_nowait((generation, message.mid, message.qos, ready))

    async def settled(self) -> None:
        """Returns once every message added so far was acknowledged or given up."""
        await self._pending.join()

    async def run(self) -> None:
        while True:
            generation, mid, qos, ready = await self._pending.get()
            try:
                await self._settle(generation, mid, qos, ready)
            finally:
                self._pending.task_done()

    async def _settle(self, generation: int, mid: int, qos: int, ready: Awaitable[None]) -> None:
        link = self.link
        try:
            await ready
        except PublishRefused as exc:
            # The dead-letter topic refused it (an ACL?): the message is counted and
            # dropped; holding it unacknowledged would block the in-flight window.
            log.error("dead letter not accepted, dropping the message: %s", exc)
        except PublishFailed:
            return  # connection lost: the broker delivers the message again
        except Exception:
            # Not in the spool (disk error): without an ack the broker resends it on reconnect.
            log.exception("readings of message %d were not committed; not acknowledging", mid)
            return
        # An id from an earlier connection may now name another message: never ack it.
        if qos > 0 and generation == link.generation and link.connected.is_set():
            link.ack(mid, qos)


@dataclass(slots=True)
class AgentSeen:
    online: bool = False  # from the retained status topic (the Last Will says offline)
    last_data: float = 0.0  # epoch seconds of the last valid data message from it, 0 = none yet


@dataclass(slots=True)
class BridgeCounters:
    received: int = 0  # messages on the data topics, valid or not
    forwarded: int = 0  # readings and discoveries passed to the pipeline
    dead_letters: int = 0  # invalid messages (sent to the dead-letter topic)
    duplicates: int = 0  # redelivered messages dropped by id


class MqttBridge:
    def __init__(self, name: str, settings: BrokerSettings, group: str, *, dedup_window: int = 10_000,
                 self_host: str | None = None, self_interval: float = 60.0,
                 peers: tuple[str, ...] = (), adopt_after: float = 30.0,
                 receive_maximum: int = _RECEIVE_MAXIMUM) -> None:
        self.name = name
        self.settings = settings
        self.subscription = f"$share/{group}/{settings.topics.data_filter()}"
        self.counters = BridgeCounters()
        self.agents: OrderedDict[str, AgentSeen] = OrderedDict()
        self.recent = RecentIds(dedup_window)
        self.self_host = self_host
        self.self_interval = self_interval
        self.link: MqttLink | None = None  # while running
        self.peers = peers
        self.adopt_after = adopt_after
        self._adoptions: dict[str, asyncio.Task[None]] = {}  # peer -> serving its session while it is away
        self._out: CommittingOutbox | None = None  # while running
        self.receive_maximum = receive_maximum
        self._uncommitted = 0  # data messages taken whose commit is awaited

    @property
    def dead_letters(self) -> int:
        return self.counters.dead_letters

    async def run(self, out: Outbox) -> None:
        if not isinstance(out, CommittingOutbox):
            raise TypeError("the MQTT bridge needs an outbox that confirms spool commits")
        incoming: asyncio.Queue[_Arrival | None] = asyncio.Queue()
        filters = [self.subscription, self.settings.topics.status_filter()]
        link = MqttLink(self.settings, manual_ack=True,
                        on_message=lambda message: incoming.put_nowait((link.generation, message)),
                        on_connected=lambda: link.subscribe(filters, self.settings.qos),
                        receive_maximum=self.receive_maximum)
        self.link, self._out = link, out
        link.start()
        helpers = [asyncio.create_task(self._report(out, self.self_host))] if self.self_host else []
        try:
            await self._serve(link, out, incoming, leave=True)
        finally:
            for task in [*helpers, *self._adoptions.values()]:
                task.cancel()
            await asyncio.gather(*helpers, *self._adoptions.values(), return_exceptions=True)
            self._adoptions.clear()
            await link.close()
            self.link = self._out = None

    async def _serve(self, link: MqttLink, out: CommittingOutbox,
                     incoming: asyncio.Queue[_Arrival | None], *, leave: bool = False) -> None:
        """Take messages until a None arrives (an adopted session's connection ended).

        With ``leave``, a stop leaves the shared group and settles what was taken first.
        """
        acks = Acknowledger(link)
        acknowledging = asyncio.create_task(acks.run())
        try:
            while (arrival := await incoming.get()) is not None:
                acks.add(arrival, self._take(link, out, arrival[1]))
        finally:
            if leave:
                await self._leave(link, out, incoming, acks)
            acknowledging.cancel()
            await asyncio.gather(acknowledging, return_exceptions=True)

    def _peer_status(self, peer: str, online: bool) -> None:
        running = self._adoptions.get(peer)
        if online or self._out is None or (running is not None and not running.done()):
            return
        self._adoptions[peer] = asyncio.create_task(self._adopt(peer, self._out))

    async def _adopt(self, peer: str, out: CommittingOutbox) -> None:
        """Serve a dead peer's session until the peer is back online."""
        while True:
            await asyncio.sleep(self.adopt_after)
            if self._agent(peer).online:
                return
            log.warning("bridge %s has been offline for %.0f s: serving its session", peer,
                        self.adopt_after)
            await self._serve_session_of(peer, out)
            log.info("stopped serving the session of bridge %s", peer)

    async def _serve_session_of(self, peer: str, out: CommittingOutbox) -> None:
        """One connection as the peer, until it ends (the peer came back and took its session)."""
        incoming: asyncio.Queue[_Arrival | None] = asyncio.Queue()
        # No Will and no status of its own: this connection stands in for the peer.
        link = MqttLink(replace(self.settings, client_id=peer), manual_ack=True, announce=False,
                        on_message=lambda message: incoming.put_nowait((link.generation, message)),
                        on_lost=lambda _why: incoming.put_nowait(None),
                        receive_maximum=self.receive_maximum)
        link.start()
        try:
            await self._serve(link, out, incoming)
        finally:
            # Closed at once, before paho reconnects and takes the session back from the peer.
            await link.close()

    async def _leave(self, link: MqttLink, out: CommittingOutbox,
                     incoming: asyncio.Queue[_Arrival | None], acks: Acknowledger) -> None:
        """A clean stop leaves the shared group, then settles what it took, before disconnecting.

        Otherwise the broker keeps queueing this bridge's share of new messages in
        its persistent session until it returns (exporters/MQTT.md); unsubscribed,
        the other bridges get them.  Messages already here go to the intake, and
        everything taken is acknowledged once the spool committed it (the pipeline's
        intake still runs while the collectors stop).  What is not committed within
        ``_LEAVE_TIMEOUT`` stays unacknowledged: the pipeline commits it after the
        collectors stopped, and if this bridge comes back the broker sends it again
        and it is forwarded twice (the memory of message ids did not survive the restart).
        """
        if await link.unsubscribe(self.subscription, within=_LEAVE_TIMEOUT):
            log.info("left the shared subscription %s", self.subscription)
        while not incoming.empty():
            if (arrival := incoming.get_nowait()) is not None:
                acks.add(arrival, self._take(link, out, arrival[1]))
        try:
            async with asyncio.timeout(_LEAVE_TIMEOUT):
                await out.committed(soon=True)  # the flush that settles them, without waiting a round
                await acks.settled()
        except TimeoutError:
            log.warning("stopping before every message taken was committed: the broker sends those again")
        except Exception as exc:  # the commit failed: nothing was acknowledged
            log.warning("last commit before stopping failed (%s): the broker sends those messages again", exc)

    def _take(self, link: MqttLink, out: CommittingOutbox, message: mqtt.MQTTMessage) -> Awaitable[None]:
        """Pass one message on; returns what must complete before it may be acknowledged."""
        agent = self.settings.topics.agent_of(message.topic)
        if agent is not None:
            online = self._agent(agent).online = bytes(message.payload) == ONLINE
            if agent in self.peers:
                self._peer_status(agent, online)
            settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            settled.set_result(None)  # nothing to commit before the ack
            return settled
        self.counters.received += 1
        try:
            host = self.settings.topics.host_of(message.topic)
            decoded = decode_envelope(host, bytes(message.payload))
        except BadMessage as why:
            return self._dead_letter(link, out, message, why)
        key = (decoded.agent, decoded.id)
        earlier = self.recent.get(key)
        if earlier is not None:
            # Redelivered (our ack did not reach the broker) or resent by the edge (its
            # PUBACK was lost): acknowledge once the first copy is safe, forward nothing.
            self.counters.duplicates += 1
            return earlier
        self._agent(decoded.agent).last_data = time.time()
        for item in decoded.items:
            out.put(item)
        self.counters.forwarded += len(decoded.items)
        self._uncommitted += 1
        # Half the broker's window waiting: commit now, before the window fills and the broker stalls.
        ready = asyncio.ensure_future(out.committed(soon=self._uncommitted * 2 >= self.receive_maximum))
        ready.add_done_callback(self._one_committed)
        self.recent.add(key, ready)
        return ready

    def _one_committed(self, _ready: asyncio.Future[None]) -> None:
        self._uncommitted -= 1

    def _dead_letter(self, link: MqttLink, out: CommittingOutbox, message: mqtt.MQTTMessage,
                     why: BadMessage) -> Awaitable[None]:
        out.error(f"bad message on {message.topic[:100]!r}: {why}")
        self.counters.dead_letters += 1
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = [("reason", str(why)[:_REASON_LIMIT]),
                                   ("topic", message.topic[:_REASON_LIMIT])]
        return link.publish(self.settings.topics.deadletter(), bytes(message.payload), self.settings.qos,
                            properties=properties)

    def _agent(self, agent: str) -> AgentSeen:
        seen = self.agents.get(agent)
        if seen is None:
            seen = self.agents[agent] = AgentSeen()
            while len(self.agents) > _AGENT_LIMIT:
                self.agents.popitem(last=False)
        self.agents.move_to_end(agent)
        return seen

    def self_readings(self, host: str) -> list[Item]:
        """The bridge's counters and what it knows of each agent, as items for ``host``."""
        clock, ns = now_clock()
        bridge = quote_param(self.name)
        counters = self.counters

        def r(key: str, value: int | float) -> Reading:
            return Reading(host, key, value, clock, ns)

        items: list[Item] = [
            Discovery(host, BRIDGE_RULE, ({"{#BRIDGE}": self.name},), clock, ns),
            Discovery(host, AGENT_RULE, tuple({"{#BRIDGE}": self.name, "{#AGENT}": agent}
                                              for agent in sorted(self.agents)), clock, ns),
            r(f"trapline.bridge.received[{bridge}]", counters.received),
            r(f"trapline.bridge.forwarded[{bridge}]", counters.forwarded),
            r(f"trapline.bridge.deadletters[{bridge}]", counters.dead_letters),
            r(f"trapline.bridge.duplicates[{bridge}]", counters.duplicates),
        ]
        for agent, seen in sorted(self.agents.items()):
            params = f"{bridge},{quote_param(agent)}"
            items += [r(f"trapline.bridge.agent.online[{params}]", int(seen.online)),
                      r(f"trapline.bridge.agent.lastseen[{params}]", int(seen.last_data))]
        return items

    async def _report(self, out: Outbox, host: str) -> None:
        while True:
            await asyncio.sleep(self.self_interval)
            for item in self.self_readings(host):
                out.put(item)


def build(name: str, section: Section) -> MqttBridge:
    settings = parse_broker(section, default_client_id("bridge"))
    group = section.text("group", "trapline")
    if not group or any(c in group for c in "/+#\0"):
        raise section.error("group", "expected a name without / + #")
    dedup_window = section.integer("dedup_window", 10_000, minimum=0)
    self_host = section.text("self_host") if section.has("self_host") else None
    self_interval = section.number("self_interval", 60.0, minimum=1.0)
    peers = tuple(section.strings("peers", []))
    if settings.client_id in peers:
        raise section.error("peers", f"lists this bridge's own client_id {settings.client_id!r}")
    adopt_after = section.number("adopt_after", 30.0, minimum=0.0)
    # MQTT carries it in 16 bits, and 0 is a protocol error.
    receive_maximum = section.integer("receive_maximum", _RECEIVE_MAXIMUM, minimum=1, maximum=65535)
    section.done()
    return MqttBridge(name, settings, group, dedup_window=dedup_window, self_host=self_host,
                      self_interval=self_interval, peers=peers, adopt_after=adopt_after,
                      receive_maximum=receive_maximum)
