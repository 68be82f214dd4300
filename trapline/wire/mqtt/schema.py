"""The wire format between vehicles and the centre, version 1 (documented in exporters/MQTT.md).

One message carries the readings and discoveries of one Zabbix host::

    {"version": 1, "agent": "van-17", "host": "Van 17", "id": "5f0c...",
     "items": [{"key": "obd.rpm", "value": 812, "clock": 1718000000, "ns": 5, "unit": "rpm"},
               {"rule": "obd.dtc.discovery", "rows": [{"{#DTC}": "P0301"}], "clock": 1718000000}]}

The encoder splits a host's items into messages no larger than ``max_payload``;
the decoder validates a message completely or refuses it as a whole, with a
reason, so that the bridge can dead-letter it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from trapline.core.model import Discovery, Item, Reading

VERSION = 1
_NS_PER_S = 1_000_000_000
# A Zabbix host name cannot contain the MQTT separators (/ + #), so it is a topic level as is.
_HOST_RE = re.compile(r"^[A-Za-z0-9 ._\-]{1,128}$")
_ID_LIMIT = 128  # characters of a message id (ours are 32): the bridge keeps recent ids in memory
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class BadMessage(ValueError):
    """A payload that is not a valid version-1 message; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names under one prefix (``trapline`` by default)."""

    prefix: str

    def data(self, host: str) -> str:
        return f"{self.prefix}/v{VERSION}/{host}/data"

    def data_filter(self) -> str:
        return f"{self.prefix}/v{VERSION}/+/data"

    def status(self, agent: str) -> str:
        return f"{self.prefix}/v{VERSION}/{agent}/status"

    def status_filter(self) -> str:
        return f"{self.prefix}/v{VERSION}/+/status"

    def agent_of(self, topic: str) -> str | None:
        """The client id of a status topic, else None."""
        head, tail = f"{self.prefix}/v{VERSION}/", "/status"
        agent = topic[len(head):-len(tail)] if topic.startswith(head) and topic.endswith(tail) else ""
        return agent if _HOST_RE.match(agent) else None

    def deadletter(self) -> str:
        return f"{self.prefix}/v{VERSION}/deadletter"

    def host_of(self, topic: str) -> str:
        """The host level of a data topic; raises BadMessage for any other topic."""
        head, tail = f"{self.prefix}/v{VERSION}/", "/data"
        host = topic[len(head):-len(tail)] if topic.startswith(head) and topic.endswith(tail) else ""
        if not _HOST_RE.match(host):
            raise BadMessage(f"not a data topic of this version: {topic[:200]!r}")
        return host


def valid_host(host: str) -> bool:
    return bool(_HOST_RE.match(host))


# -- encoding (edge) ---------------------------------------------------------------


def _item_fields(item: Item) -> dict[str, Any]:
    fields: dict[str, Any]
    if isinstance(item, Discovery):
        fields = {"rule": item.rule, "rows": [dict(r) for r in item.rows], "clock": item.clock}
    else:
        fields = {"key": item.key, "value": item.value, "clock": item.clock}
        if item.unit:
            fields["unit"] = item.unit
        if item.labels:
            fields["labels"] = dict(item.labels)
    if item.ns:
        fields["ns"] = item.ns
    return fields


def encode_item(item: Item) -> bytes:
    """One entry of ``items``; raises ValueError for a value JSON cannot carry (NaN, infinity)."""
    return _encode_json(_item_fields(item)).encode()


def _head(agent: str, host: str, message_id: str) -> bytes:
    envelope = _encode_json({"version": VERSION, "agent": agent, "host": host, "id": message_id})
    return envelope[:-1].encode() + b',"items":['


def _message_id(agent: str, host: str, parts: list[bytes]) -> str:
    """Derived from the content, so a resent chunk (lost PUBACK) keeps its id and can be dropped."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (agent.encode(), host.encode(), *parts):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


_TAIL = b"]}"


@dataclass(slots=True)
class Chunks:
    """A host's items split into messages; ``messages`` pairs each payload with its item tags."""

    messages: list[tuple[list[int], bytes]]
    refused: dict[int, str]  # tag -> why the item cannot travel at all


def encode_chunks(agent: str, host: str, items: Iterable[tuple[int, Item]], max_payload: int) -> Chunks:
    """Pack tagged items (tag = spool id) of one host into messages of at most ``max_payload`` bytes."""
    head_size = len(_head(agent, host, _message_id("", "", []))) + len(_TAIL)
    chunks = Chunks([], {})
    tags: list[int] = []
    parts: list[bytes] = []
    size = head_size

    def close() -> None:
        if parts:
            head = _head(agent, host, _message_id(agent, host, parts))
            chunks.messages.append((tags.copy(), head + b",".join(parts) + _TAIL))
            tags.clear()
            parts.clear()

    for tag, item in items:
        try:
            part = encode_item(item)
        except ValueError as exc:
            chunks.refused[tag] = f"cannot encode as JSON: {exc}"
            continue
        if head_size + len(part) > max_payload:
            chunks.refused[tag] = f"larger than max_payload ({len(part)} bytes)"
            continue
        if size + len(part) + (1 if parts else 0) > max_payload:
            close()
            size = head_size
        size += len(part) + (1 if parts else 0)
        tags.append(tag)
        parts.append(part)
    close()
    return chunks


# -- decoding (centre) -------------------------------------------------------------


def _refuse_constant(name: str) -> None:
    raise BadMessage(f"JSON constant {name} is not a number")


def _text(entry: Mapping[str, Any], field: str, where: str, default: str | None = None) -> str:
    value = entry.get(field, default)
    if not isinstance(value, str):
        raise BadMessage(f"{where}.{field}: expected a string")
    return value


def _integer(entry: Mapping[str, Any], field: str, where: str, bounds: tuple[int, int],
             default: int = 0) -> int:
    low, high = bounds
    value = entry.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadMessage(f"{where}.{field}: expected an integer in {low}..{high}")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadMessage(f"{where}: expected an object of strings")
    return value


def _decode_item(host: str, entry: object, where: str) -> Item:
    if not isinstance(entry, dict):
        raise BadMessage(f"{where}: expected an object")
    clock = _integer(entry, "clock", where, (0, 2**40), default=-1)
    ns = _integer(entry, "ns", where, (0, _NS_PER_S - 1))
    if "rule" in entry:
        rows = entry.get("rows")
        if not isinstance(rows, list):
            raise BadMessage(f"{where}.rows: expected a list")
        checked = tuple(_string_map(r, f"{where}.rows[{i}]") for i, r in enumerate(rows))
        item: Item = Discovery(host, _text(entry, "rule", where), checked, clock, ns)
    else:
        value = entry.get("value")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BadMessage(f"{where}.value: expected a string or a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadMessage(f"{where}.value: not a finite number")
        labels = _string_map(entry.get("labels", {}), f"{where}.labels")
        item = Reading(host, _text(entry, "key", where), value, clock, ns,
                       _text(entry, "unit", where, ""), labels)
    return item


@dataclass(frozen=True, slots=True)
class Message:
    agent: str  # the sender's client id
    id: str  # unique per message; a redelivered copy has the same
    items: list[Item]


def decode_message(topic_host: str, payload: bytes) -> list[Item]:
    """Validate one message published on ``topic_host``'s data topic; raises BadMessage."""
    return decode_envelope(topic_host, payload).items


class _WireItem(msgspec.Struct, gc=False):
    """One entry of ``items`` as it travels: a reading (``key``) or a discovery (``rule``)."""

    clock: Annotated[int, msgspec.Meta(ge=0, le=2**40)]
    ns: Annotated[int, msgspec.Meta(ge=0, le=_NS_PER_S - 1)] = 0
    key: str | None = None
    value: str | int | float | None = None
    unit: str = ""
    labels: dict[str, str] = {}
    rule: str | None = None
    rows: list[dict[str, str]] | None = None


class _WireMessage(msgspec.Struct, gc=False):
    version: int
    agent: str
    host: str
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=_ID_LIMIT)]
    items: list[_WireItem]


_decode_wire = msgspec.json.Decoder(_WireMessage).decode


def decode_envelope(topic_host: str, payload: bytes) -> Message:
    """Like decode_message, with the sender and the message id.

    One typed pass (msgspec) takes a valid message straight to its items.  A
    message it refuses goes through the step-by-step check below, which says
    why, and whose verdict stands: it accepts a few shapes the typed pass does
    not (a version of 1.0, an integer beyond 64 bits).
    """
    try:
        wire = _decode_wire(payload)
    except (msgspec.DecodeError, RecursionError):
        return _decode_checked(topic_host, payload)
    items = _items_of(topic_host, wire) if wire.version == VERSION and wire.host == topic_host else None
    if items is None:
        return _decode_checked(topic_host, payload)
    return Message(wire.agent, wire.id, items)


def _items_of(host: str, wire: _WireMessage) -> list[Item] | None:
    """The items of a typed message; None when one of them is not valid."""
    items: list[Item] = []
    keep = items.append
    for entry in wire.items:
        if entry.rule is not None:
            if entry.rows is None:
                return None
            keep(Discovery(host, entry.rule, tuple(entry.rows), entry.clock, entry.ns))
            continue
        value, key = entry.value, entry.key
        # msgspec never gives a bool for str | int | float; a float may still be infinite (1e999).
        if key is None or value is None or (isinstance(value, float) and not math.isfinite(value)):
            return None
        keep(Reading(host, key, value, entry.clock, entry.ns, entry.unit, entry.labels))
    return items


def _decode_checked(topic_host: str, payload: bytes) -> Message:
    """The step-by-step decoder: slower, and names what is wrong."""
    try:
        doc = json.loads(payload, parse_constant=_refuse_constant)
    except BadMessage:
        raise
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadMessage(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise BadMessage("expected a JSON object")
    if doc.get("version") != VERSION:
        raise BadMessage(f"unsupported version {str(doc.get('version'))[:20]!r} (expected {VERSION})")
    host = _text(doc, "host", "message")
    if host != topic_host:
        raise BadMessage(f"host {host[:80]!r} does not match the topic's host {topic_host!r}")
    agent = _text(doc, "agent", "message")
    message_id = _text(doc, "id", "message")
    if not 0 < len(message_id) <= _ID_LIMIT:
        raise BadMessage(f"message.id: expected 1-{_ID_LIMIT} characters")
    items = doc.get("items")
    if not isinstance(items, list):
        raise BadMessage("message.items: expected a list")
    decoded = [_decode_item(host, entry, f"items[{i}]") for i, entry in enumerate(items)]
    return Message(agent, message_id, decoded)


def hosts_in_order(batch: Sequence[tuple[int, Item]]) -> dict[str, list[tuple[int, Item]]]:
    """Group tagged items by host, keeping each host's items in spool order."""
    by_host: dict[str, list[tuple[int, Item]]] = {}
    for tag, item in batch:
        by_host.setdefault(item.host, []).append((tag, item))
    return by_host
