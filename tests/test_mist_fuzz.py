"""Hypothesis: no frame, however broken, crashes the collector; every unusable one is counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.mist_server import ap_full
from tests.support.outbox import ListOutbox
from trapline.collectors.mist import MistCollector, build
from trapline.collectors.mist.fleet import (
    LLD_KEY,
    MAX_TEXT,
    RAW_KEY,
    STALE_KEY,
    FieldSchema,
    SiteInfo,
    _identity,
    _struct_identity,
    encode_json,
)
from trapline.collectors.mist.frames import DataFrame, FrameError, decode_frame, parse_payload
from trapline.collectors.mist.stream import StreamConnection
from trapline.core.config import Section
from trapline.core.model import Discovery, Reading

COUNTER_KEYS = {key for members in FieldSchema.load().counters.values() for key in members.values()}
SITE = "4ac1dcf4-9d8b-7211-65c4-057819f0862b"
CHANNEL = f"/sites/{SITE}/stats/devices"
MAX_FRAME = 4096


def make_connection(tmp: Path) -> tuple[MistCollector, StreamConnection, ListOutbox]:
    token = tmp / "token"
    if not token.exists():
        token.write_text("fuzz-token")
        token.chmod(0o600)
    data = {
        "type": "mist",
        "host": "Mist discovery",
        "sites": [SITE],
        "token_file": str(token),
        "max_frame_bytes": MAX_FRAME,
        "lld_min_interval": 0,
    }
    collector = build("fuzz", Section(tmp / "t.toml", "collectors.fuzz", data))
    collector.fleet.set_sites({SITE: SiteInfo.unnamed(SITE)})
    out = ListOutbox()
    connection = StreamConnection(
        "fuzz",
        collector.settings,
        collector._token,
        frozenset({CHANNEL}),
        on_data=lambda event: collector.accept(event, out),
        out=out,
    )
    return collector, connection, out


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["id", "mac", "name", "type", "model", "num_clients", "radio_stat", "port_stat", "env_stat", "x"]
)
ap_like = st.dictionaries(field_names, json_values, max_size=8) | st.builds(
    lambda mac, extra: ap_full(mac, "ap") | extra,
    st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
    st.dictionaries(field_names, json_values, max_size=3),
)
data_field = json_values | ap_like.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=30)
envelopes = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["data", "channel_subscribed", "subscribe_failed"]) | st.text(max_size=10),
        "channel": st.just(CHANNEL) | st.text(max_size=30),
    },
    optional={"data": data_field, "detail": json_values},
).map(json.dumps)
frames = (
    envelopes
    | envelopes.map(lambda text: memoryview(text.encode()))  # as the websocket may hand a payload over
    | st.binary(max_size=200)
    | st.binary(max_size=200).map(bytearray)
    | st.text(max_size=200)
    | json_values.map(json.dumps)
    | st.just("x" * (MAX_FRAME + 1))
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(frames, min_size=1, max_size=10))
def test_no_frame_crashes_and_bad_ones_are_counted(
    tmp_path: Path, batch: list[str | bytes | bytearray | memoryview]
) -> None:
    _, connection, out = make_connection(tmp_path)
    for frame in batch:
        errors_before = len(out.errors)
        connection.handle(frame)  # must never raise
        try:
            event = decode_frame(frame, MAX_FRAME)
            if isinstance(event, DataFrame) and event.channel == CHANNEL:
                parse_payload(event.data)
        except FrameError:
            assert len(out.errors) == errors_before + 1  # one bad frame, one counted error
    for item in out.items:
        if isinstance(item, Discovery):
            assert item.rule == LLD_KEY
            json.loads(str(item.as_reading().value))
        else:
            assert isinstance(item, Reading)
            assert item.host.startswith("mist-ap-")
            if item.key == RAW_KEY:
                assert isinstance(json.loads(str(item.value)), dict)
            elif item.key != STALE_KEY:  # a counter sample: a number, under a key the template has
                assert item.key.split("[")[0] in COUNTER_KEYS, item.key
                assert type(item.value) in (int, float)


# Values at and beyond the limits the careful path checks (text length, 64-bit integers).
edge_values = (
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1])
    | st.integers(MAX_TEXT - 1, MAX_TEXT + 1).map(lambda n: "é" * n)
    | st.dictionaries(
        st.integers(63, 65).map(lambda n: "e" * n), st.dictionaries(st.text(max_size=3), json_values)
    )
)
updates = st.dictionaries(field_names, json_values | edge_values, max_size=8) | st.builds(
    lambda mac, extra: ap_full(mac, "ap") | extra,
    st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
    st.dictionaries(field_names | st.just("version"), json_values | edge_values, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(update=updates)
def test_one_pass_reading_keeps_exactly_what_the_careful_path_keeps(update: dict[str, Any]) -> None:
    assert_same_state(update)


@pytest.mark.parametrize(
    "value", [2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, "é" * MAX_TEXT, "é" * (MAX_TEXT + 1)]
)
def test_values_at_the_limits_give_the_same_state_both_ways(value: object) -> None:
    update = ap_full("5c5b35000001", "ap-1") | {"uptime": value, "env_stat": {"cpu_temp": value}}
    update["radio_stat"]["band_5"]["channel"] = value
    assert_same_state(update)


def assert_same_state(update: dict[str, Any]) -> None:
    """decode_kept either gives the careful path's state, byte for byte, or declines."""
    schema = FieldSchema.load()
    text = json.dumps(update)
    fast = schema.decode_kept(text)
    try:
        careful, problems = schema.filter(parse_payload(text))
    except FrameError:  # e.g. Infinity, which json.dumps writes: not JSON for either path
        assert fast is None
        return
    if fast is not None:
        assert problems == []
        assert encode_json(fast) == encode_json(careful)
        assert_struct_shape(schema, fast)


def assert_struct_shape(schema: FieldSchema, kept: Any) -> None:
    """struct_shape is the shape of the struct's dicts, or None when it cannot be the one compared with."""
    fields = msgspec.to_builtins(kept)
    shape = schema.shape(fields)
    assert schema.struct_shape(kept, shape) == shape
    assert schema.struct_shape(kept, None) is None
    assert schema.struct_shape(kept, ((*shape[0], "more"),)) is None  # another number of fields


@pytest.mark.parametrize(
    "dropped", ["", "env_stat.humidity", "radio_stat.band_5.power", "uptime", "port_stat"]
)
def test_struct_shape_of_updates_missing_a_member(dropped: str) -> None:
    update = ap_full("5c5b35000001", "ap-1")
    *path, last = dropped.split(".")
    parent = update
    for name in path:
        parent = parent[name]
    parent.pop(last, None)
    schema = FieldSchema.load()
    assert_struct_shape(schema, schema.decode_kept(json.dumps(update)))


def test_identity_missing_from_a_struct_reads_as_none_as_from_a_dict() -> None:
    schema = FieldSchema.load()
    update = ap_full("5c5b35000001", "ap-1")
    del update["name"], update["model"]
    kept = schema.decode_kept(json.dumps(update))
    assert _struct_identity(kept) == _identity(update) == ("ap", None, None)


def test_well_formed_updates_take_the_one_pass_path() -> None:
    schema = FieldSchema.load()
    update = ap_full("5c5b35000001", "ap-1") | {"unknown": {"deep": [1, 2, {"x": None}]}}
    kept = schema.decode_kept(json.dumps(update))
    assert kept is not None
    fast = msgspec.to_builtins(kept)
    assert "unknown" not in fast and fast["radio_stat"]["band_24"]["channel"] == 6
    assert encode_json(fast) == encode_json(schema.filter(update)[0])


def test_good_aps_keep_flowing_between_bad_frames(tmp_path: Path) -> None:
    _, connection, out = make_connection(tmp_path)
    good: list[dict[str, Any]] = [ap_full(f"5c5b350000{i:02x}", f"ap-{i}") for i in range(5)]
    for update in good:
        connection.handle("garbage{")
        connection.handle(json.dumps({"event": "data", "channel": CHANNEL, "data": json.dumps(update)}))
        connection.handle(json.dumps({"event": "data", "channel": CHANNEL, "data": '{"mac": 1}'}))
    assert len(out.errors) == 10
    assert sorted(r.host for r in out.readings(RAW_KEY)) == [f"mist-ap-5c5b350000{i:02x}" for i in range(5)]
