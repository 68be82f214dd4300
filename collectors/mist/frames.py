"""Decoding of Mist stream frames.

Every frame is a JSON object with ``event`` and ``channel``.  ``data`` frames
carry the device update as a JSON *string* inside the JSON envelope; that
string is left to the fleet, which reads only the fields it keeps
(:meth:`~trapline.collectors.mist.fleet.FieldSchema.decode_kept`) and falls back
to :func:`parse_payload` for anything unusual.  Anything that does not fit
raises :class:`FrameError` with a short reason that is safe to log (it never
quotes more than a few characters of the frame).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import msgspec
import orjson

_SITE_DEVICE_STATS = re.compile(r"/sites/([0-9A-Za-z-]{1,64})/stats/devices")


class FrameError(ValueError):
    """A frame that cannot be used; ``str()`` is the reason."""


# Structs, not dataclasses: one is built per frame, and a frozen dataclass is several
# times dearer to build (bench/RESULTS.md, "Code shapes").  They hold decoded JSON, which has no cycles: the
# garbage collector need not track them.
class Subscribed(msgspec.Struct, frozen=True, gc=False):
    channel: str


class SubscribeFailed(msgspec.Struct, frozen=True, gc=False):
    channel: str
    detail: str


class DataFrame(msgspec.Struct, frozen=True, gc=False):
    channel: str
    data: str | dict[str, Any]  # the device update: JSON text, as Mist sends it, or an object


Event = Subscribed | SubscribeFailed | DataFrame


def device_stats_channel(site_id: str) -> str:
    return f"/sites/{site_id}/stats/devices"


def site_of_channel(channel: str) -> str | None:
    """The site id of a ``/sites/<id>/stats/devices`` channel, else None."""
    # Every data frame names its channel, and a fleet has few (one per site): the answer
    # is cached, only for names short enough to be such a channel, so the cache stays small.
    return _cached_site_of_channel(channel) if len(channel) <= _LONGEST_CHANNEL else None


_LONGEST_CHANNEL = len(device_stats_channel("x" * 64))  # the longest site id _SITE_DEVICE_STATS takes


@functools.lru_cache(maxsize=4096)
def _cached_site_of_channel(channel: str) -> str | None:
    match = _SITE_DEVICE_STATS.fullmatch(channel)
    return match.group(1) if match else None


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Zabbix would refuse them downstream.
    raise ValueError(f"non-standard JSON constant {name}")


# Built once: json.loads with an option makes a new decoder on every call.
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(text: str | bytes | bytearray | memoryview) -> Any:
    """Strict JSON (no NaN/Infinity); raises ValueError or RecursionError.

    orjson reads a stats frame several times faster than the standard library;
    what orjson refuses is read again by the standard library, which also
    accepts integers beyond 64 bits, UTF-16/32 bytes and lone surrogates, so
    the result never depends on which parser answered.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if not isinstance(text, str):  # as json.loads does: UTF-8/16/32, detected from the bytes
        raw = bytes(text)  # a websocket payload may come as a memoryview or bytearray
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    return _STRICT_JSON.decode(text)


def decode_frame(frame: str | bytes | bytearray | memoryview, max_bytes: int) -> Event:
    """The event of one frame (text, or its UTF-8 bytes); raises FrameError with the reason it is unusable."""
    if len(frame) > max_bytes:
        raise FrameError(f"frame of {len(frame)} bytes exceeds max_frame_bytes={max_bytes}")
    try:
        envelope = parse_json(frame)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
        raise FrameError("frame is not JSON") from None
    # A device update is nearly every frame: recognised first, in as few steps as possible.
    if type(envelope) is dict and envelope.get("event") == "data":
        channel, data = envelope.get("channel"), envelope.get("data")
        if type(channel) is str and type(data) is str:
            return DataFrame(channel, data)
    return _other_event(envelope)


def _other_event(envelope: object) -> Event:
    """Every frame but a well-formed device update: acks, refusals, objects as data, and every fault."""
    if not isinstance(envelope, dict):
        raise FrameError(f"frame is a JSON {type(envelope).__name__}, not an object")
    event, channel = envelope.get("event"), envelope.get("channel")
    if not isinstance(event, str):
        raise FrameError("frame has no event name")
    if not isinstance(channel, str):
        raise FrameError(f"{_short(event)} frame has no channel")
    if event == "channel_subscribed":
        return Subscribed(channel)
    if event == "subscribe_failed":
        detail = next(
            (v for k in ("detail", "reason", "message") if isinstance(v := envelope.get(k), str)), ""
        )
        return SubscribeFailed(channel, detail[:200])
    if event != "data":
        raise FrameError(f"unknown event {_short(event)} on channel {_short(channel)}")
    data = envelope.get("data")
    if not isinstance(data, str | dict):
        raise FrameError(f"data on {_short(channel)} is a JSON {type(data).__name__}, not an object")
    return DataFrame(channel, data)


def parse_payload(data: str | dict[str, Any]) -> dict[str, Any]:
    """The device update of a data frame as an object; raises FrameError when it is none."""
    if isinstance(data, dict):
        return data
    try:
        payload = parse_json(data)
    except (ValueError, RecursionError):
        raise FrameError("data is not valid JSON") from None
    if not isinstance(payload, dict):
        raise FrameError(f"data is a JSON {type(payload).__name__}, not an object")
    return payload
