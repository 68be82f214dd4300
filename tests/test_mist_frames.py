"""Decoding of Mist stream frames: the envelope, the JSON string inside, every way it can be wrong."""

from __future__ import annotations

import json

import pytest

from trapline.collectors.mist.frames import (
    DataFrame,
    FrameError,
    Subscribed,
    SubscribeFailed,
    decode_frame,
    device_stats_channel,
    parse_payload,
    site_of_channel,
)

LIMIT = 1 << 20
CHANNEL = "/sites/4ac1dcf4-9d8b-7211-65c4-057819f0862b/stats/devices"


def test_data_is_handed_on_as_the_json_text_mist_sent() -> None:
    text = json.dumps({"mac": "5c5b35000001"})
    frame = json.dumps({"event": "data", "channel": CHANNEL, "data": text})
    assert decode_frame(frame, LIMIT) == DataFrame(CHANNEL, text)
    assert parse_payload(text) == {"mac": "5c5b35000001"}


def test_data_sent_as_an_object_is_used_as_it_is() -> None:
    frame = json.dumps({"event": "data", "channel": CHANNEL, "data": {"mac": "5c5b35000001"}})
    assert decode_frame(frame, LIMIT) == DataFrame(CHANNEL, {"mac": "5c5b35000001"})
    assert parse_payload({"mac": "5c5b35000001"}) == {"mac": "5c5b35000001"}


def test_bytes_frames_are_decoded_too() -> None:
    frame = json.dumps({"event": "channel_subscribed", "channel": CHANNEL}).encode()
    assert decode_frame(frame, LIMIT) == Subscribed(CHANNEL)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_a_data_frame_as_raw_utf8_gives_the_same_event_as_its_text(wrap: type) -> None:
    """The websocket may hand over a frame's payload undecoded, in any bytes-like object."""
    text = json.dumps({"mac": "5c5b35000001", "name": "é"}, ensure_ascii=False)
    frame = json.dumps({"event": "data", "channel": CHANNEL, "data": text}, ensure_ascii=False)
    assert decode_frame(wrap(frame.encode()), LIMIT) == decode_frame(frame, LIMIT) == DataFrame(CHANNEL, text)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"{", "not JSON"),
        (b"[1]", "JSON list, not an object"),
        (b'{"a": NaN}', "not JSON"),
    ],
)
def test_bad_raw_frames_raise_a_reason_whatever_holds_them(wrap: type, payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_frame(wrap(payload), LIMIT)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_what_only_the_standard_library_reads_is_read_from_any_bytes(wrap: type) -> None:
    """UTF-16 (orjson reads UTF-8 only) and a lone surrogate escape go the standard library's way."""
    utf16 = json.dumps({"event": "channel_subscribed", "channel": CHANNEL}).encode("utf-16")
    assert decode_frame(wrap(utf16), LIMIT) == Subscribed(CHANNEL)
    surrogate = json.dumps({"event": "data", "channel": CHANNEL, "data": "\ud800"}).encode()
    assert decode_frame(wrap(surrogate), LIMIT) == DataFrame(CHANNEL, "\ud800")


def test_subscribe_failed_keeps_the_detail() -> None:
    frame = json.dumps({"event": "subscribe_failed", "channel": CHANNEL, "detail": "forbidden"})
    assert decode_frame(frame, LIMIT) == SubscribeFailed(CHANNEL, "forbidden")
    bare = json.dumps({"event": "subscribe_failed", "channel": CHANNEL})
    assert decode_frame(bare, LIMIT) == SubscribeFailed(CHANNEL, "")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "JSON list, not an object"),
        ('{"channel": "/x"}', "no event name"),
        ('{"event": "data"}', "no channel"),
        ('{"event": "data", "channel": "/x", "data": [1]}', "JSON list, not an object"),
        ('{"event": "data", "channel": "/x", "data": 5}', "JSON int, not an object"),
        ('{"event": "data", "channel": "/x"}', "JSON NoneType, not an object"),
        ('{"event": "surprise", "channel": "/x"}', "unknown event 'surprise'"),
        ("[" * 100_000, "not JSON"),
    ],
)
def test_bad_frames_raise_a_reason(frame: str | bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode_frame(frame, LIMIT)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{broken", "is not valid JSON"),
        ("[1]", "JSON list, not an object"),
        ('{"a": NaN}', "is not valid JSON"),
        ("[" * 100_000, "is not valid JSON"),
    ],
)
def test_bad_device_updates_raise_a_reason(data: str, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        parse_payload(data)


def test_huge_frames_are_refused_before_parsing() -> None:
    frame = json.dumps({"event": "data", "channel": CHANNEL, "data": "x" * 2000})
    with pytest.raises(FrameError, match="exceeds max_frame_bytes=1024"):
        decode_frame(frame, 1024)


def test_reasons_never_quote_much_of_the_frame() -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(json.dumps({"event": "e" * 5000, "channel": "/x"}), LIMIT)
    assert len(str(caught.value)) < 200


def test_channel_names_round_trip() -> None:
    assert site_of_channel(device_stats_channel("abc-1")) == "abc-1"
    assert site_of_channel("/sites/abc/stats/clients") is None
    assert site_of_channel("/sites/a/b/stats/devices") is None
    assert site_of_channel(device_stats_channel("a" * 64)) == "a" * 64
    assert site_of_channel(device_stats_channel("a" * 65)) is None
