"""The Zabbix sender ("trapper") wire protocol: framing, requests, replies.

A frame is ``b"ZBXD"``, one flags byte, then two little-endian uint32: the
length of the data that follows and a reserved field, which with zlib
(flag 0x02) carries the uncompressed length.  The data is one JSON object.

Nothing here does I/O; :mod:`.client` moves the bytes.  Every malformed input
raises :class:`ProtocolError` with a reason fit for a log line.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import orjson

from trapline.core.model import Reading

MAGIC: Final = b"ZBXD"
FLAG_PROTOCOL: Final = 0x01
FLAG_ZLIB: Final = 0x02
FLAG_LARGE: Final = 0x04  # 64-bit lengths; only the server sends such frames, never to a sender
HEADER = struct.Struct("<4sBII")
HEADER_SIZE: Final = HEADER.size  # 13

# The server accepts frames up to 1 GB; a sender reply is a few hundred bytes,
# so anything much larger is garbage and must not make us allocate it.
DEFAULT_MAX_REPLY: Final = 1 << 20
MAX_PACKET: Final = 1 << 30


class ProtocolError(Exception):
    """Bytes that are not a valid Zabbix frame or sender reply."""


# -- encoding ----------------------------------------------------------------

def value_text(value: str | int | float) -> str:
    """The string form Zabbix gets: it parses numbers from text itself."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # bool is an int: send 1/0, not True/False
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


DataEntry = dict[str, str | int]


def data_entries_by_item(items: Iterable[tuple[tuple[str, str], Iterable[Reading]]]) -> list[DataEntry]:
    """The entries of the request's ``data`` array from ((host, key), values of that item) pairs."""
    return [
        {
            "host": host,
            "key": key,
            "value": value if type(value := r.value) is str else value_text(value),
            "clock": r.clock,
            "ns": r.ns,
        }
        for (host, key), readings in items
        for r in readings
    ]


def data_entries(readings: Iterable[Reading]) -> list[DataEntry]:
    """The entries of the request's ``data`` array for values of any items."""
    return data_entries_by_item(((r.host, r.key), (r,)) for r in readings)


def request_json(entries: list[DataEntry], clock: int, ns: int) -> bytes:
    """A complete ``sender data`` JSON request around ``entries`` (from :func:`data_entries`).

    orjson over plain dicts: the escaping of long text values (a Mist AP's JSON
    state, ~1.6 KB) is most of the cost, and orjson's is the fastest at hand,
    ~2x faster than the stdlib's; the dicts cost less than building the text by
    hand and converting it to bytes afterwards.
    """
    request = {"request": "sender data", "data": entries, "clock": clock, "ns": ns}
    try:
        return orjson.dumps(request)
    except orjson.JSONEncodeError:  # a lone surrogate (UTF-8 cannot carry it), an int beyond 64 bits
        # "replace": a badly decoded source must not crash the sender; it gets "?".
        text = json.dumps(request, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", "replace")


def encode_request(readings: Iterable[Reading], clock: int, ns: int) -> bytes:
    """A complete ``sender data`` JSON request (not yet framed)."""
    return request_json(data_entries(readings), clock, ns)


def frame(data: bytes, compress: bool = False) -> bytes:
    """Wrap JSON bytes in a ZBXD frame, zlib-compressed if asked."""
    if compress:
        packed = zlib.compress(data, 1)  # level 1: most of the gain for little CPU
        if len(packed) > MAX_PACKET:
            raise ProtocolError(f"request of {len(packed)} bytes exceeds the 1 GB packet limit")
        return HEADER.pack(MAGIC, FLAG_PROTOCOL | FLAG_ZLIB, len(packed), len(data)) + packed
    if len(data) > MAX_PACKET:
        raise ProtocolError(f"request of {len(data)} bytes exceeds the 1 GB packet limit")
    return HEADER.pack(MAGIC, FLAG_PROTOCOL, len(data), 0) + data


# -- decoding ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameHeader:
    flags: int
    length: int  # bytes that follow the header
    reserved: int  # uncompressed length when compressed

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_ZLIB)


def parse_header(raw: bytes, max_size: int = DEFAULT_MAX_REPLY) -> FrameHeader:
    """Validate the 13 header bytes; refuse lengths above ``max_size``."""
    if len(raw) != HEADER_SIZE:
        raise ProtocolError(f"short header ({len(raw)} of {HEADER_SIZE} bytes)")
    magic, flags, length, reserved = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"not a Zabbix frame (starts with {raw[:4]!r})")
    if not flags & FLAG_PROTOCOL:
        raise ProtocolError(f"unknown frame flags 0x{flags:02x}")
    if flags & FLAG_LARGE:
        raise ProtocolError("large-packet frame (flag 0x04) is not expected in a sender reply")
    if length > max_size:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_size}-byte limit")
    header = FrameHeader(flags, length, reserved)
    if header.compressed and reserved > max_size:
        raise ProtocolError(f"frame inflates to {reserved} bytes, above the {max_size}-byte limit")
    return header


def unpack_body(header: FrameHeader, body: bytes) -> bytes:
    """The JSON bytes of a frame, inflated if the frame is compressed."""
    if len(body) != header.length:
        raise ProtocolError(f"truncated frame ({len(body)} of {header.length} bytes)")
    if not header.compressed:
        return body
    inflater = zlib.decompressobj()
    try:
        # max_length guards against a zip bomb: never inflate past the announced size.
        data = inflater.decompress(body, header.reserved + 1)
    except zlib.error as exc:
        raise ProtocolError(f"bad zlib data ({exc})") from None
    if len(data) != header.reserved or not inflater.eof:
        raise ProtocolError(f"zlib data inflates to {len(data)} bytes, header announced {header.reserved}")
    return data


def unpack_frame(raw: bytes, max_size: int = DEFAULT_MAX_REPLY) -> bytes:
    """The JSON bytes of one complete frame held in memory (tests, fake servers)."""
    header = parse_header(raw[:HEADER_SIZE], max_size)
    return unpack_body(header, raw[HEADER_SIZE:])


@dataclass(frozen=True, slots=True)
class Redirect:
    """A 7.0 proxy-group redirect: go to ``address``, or (``reset``) back to the configured nodes."""

    address: str | None
    reset: bool
    revision: int | None


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed sender reply.  ``ok`` only means the server parsed the request."""

    ok: bool
    info: str
    processed: int = 0
    failed: int = 0
    total: int = 0
    seconds: float = 0.0
    redirect: Redirect | None = None


_INFO = re.compile(
    r"processed:\s*(\d+);\s*failed:\s*(\d+);\s*total:\s*(\d+);\s*seconds spent:\s*([0-9.eE+-]+)"
)


def parse_info(info: str) -> tuple[int, int, int, float]:
    """``processed: N; failed: M; total: T; seconds spent: S`` -> (N, M, T, S)."""
    match = _INFO.search(info)
    if match is None:
        raise ProtocolError(f"unexpected info text {info[:200]!r}")
    processed, failed, total = (int(g) for g in match.groups()[:3])
    try:
        seconds = float(match.group(4))
    except ValueError:
        raise ProtocolError(f"bad 'seconds spent' in {info[:200]!r}") from None
    if processed + failed != total:
        raise ProtocolError(f"inconsistent counts in {info[:200]!r}")
    return processed, failed, total, seconds


def _parse_redirect(raw: object) -> Redirect:
    if not isinstance(raw, dict):
        raise ProtocolError(f"redirect is not an object: {raw!r:.200}")
    if raw.get("reset") is True:
        return Redirect(None, True, None)
    address = raw.get("address")
    if not isinstance(address, str) or not address:
        raise ProtocolError(f"redirect without an address: {raw!r:.200}")
    revision = raw.get("revision")
    return Redirect(address, False, revision if isinstance(revision, int) else None)


def _json_object(data: bytes) -> dict[str, object]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"reply is not JSON ({exc}): {data[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"reply is not a JSON object: {data[:200]!r}")
    return doc


def parse_reply(data: bytes) -> Reply:
    """Interpret the JSON of a sender reply."""
    doc = _json_object(data)
    response = doc.get("response")
    info = doc.get("info", "")
    if not isinstance(info, str):
        info = str(info)
    redirect = _parse_redirect(doc["redirect"]) if "redirect" in doc else None
    if response == "success":
        processed, failed, total, seconds = parse_info(info)
        return Reply(True, info, processed, failed, total, seconds, redirect)
    if response == "failed" or redirect is not None:
        return Reply(False, info, redirect=redirect)
    raise ProtocolError(f"unknown response {response!r} in {data[:200]!r}")


# -- active agent autoregistration -------------------------------------------


# The agent protocol version an active checks request claims; 7.0's documentation makes
# the field mandatory, and "6.0" gets the plain (not incremental) answer from 6.0 and 7.0.
AGENT_PROTOCOL_VERSION: Final = "6.0"


def active_checks_request(host: str, host_metadata: str) -> bytes:
    """The JSON of an active agent's ``active checks`` request (not yet framed).

    The server (or proxy) answers it for a known host; for an unknown one it
    answers ``failed`` and runs its autoregistration actions on ``host_metadata``.
    """
    return orjson.dumps({
        "request": "active checks",
        "host": host,
        "version": AGENT_PROTOCOL_VERSION,
        "host_metadata": host_metadata,
    })


@dataclass(frozen=True, slots=True)
class ActiveChecksReply:
    """Whether the server knows the host; ``info`` is its reason when it does not.

    ``keys`` are the keys of the host's active agent items, user macros resolved."""

    known: bool
    info: str = ""
    keys: tuple[str, ...] = ()


def parse_active_checks_reply(data: bytes) -> ActiveChecksReply:
    """Interpret the reply to :func:`active_checks_request`.

    ``success`` (with the host's active items, if it has any) means the host exists;
    ``failed`` carries why not, e.g. ``host [van-17] not found`` while
    the autoregistration action has not created it yet.
    """
    doc = _json_object(data)
    response = doc.get("response")
    info = str(doc.get("info", ""))
    if response == "success":
        checks = doc.get("data")
        if not isinstance(checks, list):
            return ActiveChecksReply(True)  # no list: no active items
        return ActiveChecksReply(True, keys=tuple(
            check["key"] for check in checks if isinstance(check, dict) and isinstance(check.get("key"), str)
        ))
    if response == "failed":
        return ActiveChecksReply(False, info or "no reason given")
    raise ProtocolError(f"unknown response {response!r} in {data[:200]!r}")
