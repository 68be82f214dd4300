"""Framing and reply parsing of the Zabbix sender protocol."""

from __future__ import annotations

import contextlib
import json
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trapline.core.model import Reading
from trapline.exporters.zabbix.protocol import (
    HEADER_SIZE,
    ProtocolError,
    data_entries_by_item,
    encode_request,
    frame,
    parse_header,
    parse_info,
    parse_reply,
    request_json,
    unpack_frame,
    value_text,
)

texts = st.text(min_size=0, max_size=40)
# Every value type a Reading may carry; nan and inf go as the strings "nan" and "inf"
# (Zabbix refuses them as numbers, but the request itself must stay valid JSON).
values = st.one_of(texts, st.integers(-(2**63), 2**64), st.floats(), st.booleans())
readings = st.builds(
    Reading,
    host=texts,
    key=texts,
    value=values,
    clock=st.integers(0, 2**32),
    ns=st.integers(0, 999_999_999),
)


@given(st.lists(readings, max_size=30), st.integers(0, 2**32), st.integers(0, 999_999_999), st.booleans())
def test_request_round_trips_through_json_and_frame(
    batch: list[Reading], clock: int, ns: int, compress: bool
) -> None:
    raw = frame(encode_request(batch, clock, ns), compress)
    doc = json.loads(unpack_frame(raw, max_size=1 << 30))
    assert doc["request"] == "sender data"
    assert (doc["clock"], doc["ns"]) == (clock, ns)
    assert doc["data"] == [
        {"host": r.host, "key": r.key, "value": value_text(r.value), "clock": r.clock, "ns": r.ns}
        for r in batch
    ]


@given(st.lists(st.tuples(texts, texts, st.lists(values, min_size=1, max_size=5)), max_size=10))
def test_values_grouped_by_item_encode_like_json(items: list[tuple[str, str, list[object]]]) -> None:
    """Values grouped per item parse back to exactly what was sent, in order."""
    grouped = [
        ((host, key), [Reading(host, key, v, 7, n) for n, v in enumerate(vs)]) for host, key, vs in items
    ]
    doc = json.loads(request_json(data_entries_by_item(grouped), 1, 2))
    assert doc["data"] == [
        {"host": r.host, "key": r.key, "value": value_text(r.value), "clock": 7, "ns": r.ns}
        for _, readings in grouped
        for r in readings
    ]


def test_values_go_as_strings_that_keep_their_number() -> None:
    assert value_text(0.1) == "0.1"
    assert float(value_text(1e-300)) == 1e-300
    assert value_text(2**64) == "18446744073709551616"
    assert value_text(True) == "1"
    assert value_text('é\n"x"') == 'é\n"x"'


def test_lone_surrogate_does_not_crash_encoding() -> None:
    data = encode_request([Reading("h", "k", "bad \udcff byte", 1, 2)], 1, 2)
    assert json.loads(data)["data"][0]["value"] == "bad ? byte"


def test_header_layout_plain_and_compressed() -> None:
    body = b'{"request":"sender data","data":[]}'
    plain = frame(body)
    assert plain[:5] == b"ZBXD\x01"
    assert struct.unpack("<II", plain[5:13]) == (len(body), 0)
    packed = frame(body, compress=True)
    assert packed[:5] == b"ZBXD\x03"
    length, reserved = struct.unpack("<II", packed[5:13])
    assert reserved == len(body)
    assert zlib.decompress(packed[13:]) == body and length == len(packed) - HEADER_SIZE


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"HTTP/1.1 400 Bad", "not a Zabbix frame"),
        (b"ZBXD\x00" + struct.pack("<II", 2, 0), "unknown frame flags"),
        (b"ZBXD\x05" + struct.pack("<II", 2, 0), "large-packet"),
        (b"ZBXD\x01" + struct.pack("<II", 2**31, 0), "exceeds"),
        (b"ZBXD\x03" + struct.pack("<II", 10, 2**31), "inflates"),
        (b"ZBXD\x01\x00", "short header"),
    ],
)
def test_bad_headers_are_refused(raw: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        parse_header(raw[:HEADER_SIZE])


def test_truncated_and_lying_frames_are_refused() -> None:
    good = frame(b'{"response":"success"}')
    with pytest.raises(ProtocolError, match="truncated"):
        unpack_frame(good[:-3])
    packed = zlib.compress(b"x" * 100)
    lying = b"ZBXD\x03" + struct.pack("<II", len(packed), 50) + packed
    with pytest.raises(ProtocolError, match="inflates to"):
        unpack_frame(lying)
    with pytest.raises(ProtocolError, match="bad zlib"):
        unpack_frame(b"ZBXD\x03" + struct.pack("<II", 4, 10) + b"nope")


def test_success_reply_counts() -> None:
    reply = parse_reply(
        b'{"response":"success","info":"processed: 3; failed: 2; total: 5; seconds spent: 0.000052"}'
    )
    assert reply.ok and (reply.processed, reply.failed, reply.total) == (3, 2, 5)
    assert reply.seconds == pytest.approx(0.000052)
    assert reply.redirect is None


def test_compressed_reply_is_read() -> None:
    body = b'{"response":"success","info":"processed: 1; failed: 0; total: 1; seconds spent: 0.1"}'
    assert parse_reply(unpack_frame(frame(body, compress=True))).processed == 1


def test_failed_and_redirect_replies() -> None:
    failed = parse_reply(b'{"response":"failed","info":"cannot parse as a valid JSON object"}')
    assert not failed.ok and "cannot parse" in failed.info
    moved = parse_reply(b'{"response":"failed","redirect":{"revision":7,"address":"10.0.0.2:10052"}}')
    assert moved.redirect is not None
    redirect = moved.redirect
    assert (redirect.address, redirect.revision, redirect.reset) == ("10.0.0.2:10052", 7, False)
    reset = parse_reply(b'{"redirect":{"reset":true}}')
    assert reset.redirect is not None and reset.redirect.reset and not reset.ok


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"response":"maybe"}',
        b'{"response":"success","info":"processed: x"}',
        b'{"response":"success","info":"processed: 1; failed: 1; total: 5; seconds spent: 0.1"}',
        b'{"response":"failed","redirect":{"revision":1}}',
        b'{"response":"failed","redirect":"somewhere"}',
        b"\xff\xfe",
    ],
)
def test_garbage_replies_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    for attempt in (lambda: parse_reply(data), lambda: unpack_frame(data)):
        with contextlib.suppress(ProtocolError):
            attempt()


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.floats(0, 1e4))
def test_info_round_trip(processed: int, failed: int, seconds: float) -> None:
    total = processed + failed
    info = f"processed: {processed}; failed: {failed}; total: {total}; seconds spent: {seconds:f}"
    got = parse_info(info)
    assert got[:3] == (processed, failed, processed + failed)
    assert got[3] == pytest.approx(seconds, abs=1e-6)
