"""The MQTT wire format (version 1): encode, split by size, decode and refuse bad messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trapline.app.settings import load_settings
from trapline.collectors.mqtt_bridge.collector import MqttBridge
from trapline.collectors.mqtt_bridge.collector import build as build_bridge
from trapline.core.config import ConfigError, Section
from trapline.core.model import Discovery, Item, Reading
from trapline.exporters.mqtt import MqttDestination, build_destinations
from trapline.wire.mqtt.schema import (
    BadMessage,
    Topics,
    _decode_checked,
    decode_envelope,
    decode_message,
    encode_chunks,
)

HOST = "Van 17"


def one_message(items: list[Item], max_payload: int = 1 << 20) -> bytes:
    chunks = encode_chunks("agent-1", HOST, enumerate(items), max_payload)
    assert not chunks.refused
    assert len(chunks.messages) == 1
    return chunks.messages[0][1]


def test_readings_and_discoveries_round_trip() -> None:
    items: list[Item] = [
        Reading(HOST, "obd.rpm", 812, 1_718_000_000, 5, "rpm", {"pid": "RPM"}),
        Reading(HOST, "obd.speed", 12.5, 1_718_000_001),
        Reading(HOST, "obd.vin", "WVWZZZ1JZXW000001", 1_718_000_002),
        Discovery(HOST, "obd.dtc.discovery", ({"{#DTC}": "P0301"},), 1_718_000_003, 7),
    ]
    payload = one_message(items)
    assert decode_message(HOST, payload) == items
    doc = json.loads(payload)
    assert doc["version"] == 1 and doc["agent"] == "agent-1" and doc["host"] == HOST
    assert doc["items"][1] == {"key": "obd.speed", "value": 12.5, "clock": 1_718_000_001}


def test_integers_stay_integers_and_floats_stay_floats() -> None:
    decoded = decode_message(HOST, one_message([Reading(HOST, "a", 3, 1), Reading(HOST, "b", 3.0, 1)]))
    values = [r.value for r in decoded if isinstance(r, Reading)]
    assert [type(v) for v in values] == [int, float]


def test_chunks_respect_max_payload_and_keep_every_item_once() -> None:
    items = [(i, Reading(HOST, f"key.{i}", "x" * (i % 50), 1_700_000_000 + i)) for i in range(500)]
    chunks = encode_chunks("agent-1", HOST, items, 2048)
    assert len(chunks.messages) > 5
    assert all(len(payload) <= 2048 for _, payload in chunks.messages)
    tags = [t for ids, _ in chunks.messages for t in ids]
    assert tags == list(range(500))
    decoded = [r for _, payload in chunks.messages for r in decode_message(HOST, payload)]
    assert decoded == [item for _, item in items]
    ids = {json.loads(payload)["id"] for _, payload in chunks.messages}
    assert len(ids) == len(chunks.messages)


def test_an_item_larger_than_max_payload_is_refused_alone() -> None:
    items = [(1, Reading(HOST, "small", 1, 1)), (2, Reading(HOST, "big", "x" * 5000, 1)),
             (3, Reading(HOST, "small2", 2, 1))]
    chunks = encode_chunks("agent-1", HOST, items, 1024)
    assert list(chunks.refused) == [2] and "max_payload" in chunks.refused[2]
    assert [ids for ids, _ in chunks.messages] == [[1, 3]]


def test_non_finite_value_is_refused_not_sent() -> None:
    items = [(1, Reading(HOST, "k", float("nan"), 1)), (2, Reading(HOST, "k", 1, 1))]
    chunks = encode_chunks("a", HOST, items, 4096)
    assert list(chunks.refused) == [1]
    assert [ids for ids, _ in chunks.messages] == [[2]]


values = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                   st.text(max_size=50))


@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), values, st.integers(0, 2**33),
                          st.integers(0, 999_999_999)), max_size=30))
def test_any_reading_round_trips(rows: list[tuple[str, int | float | str, int, int]]) -> None:
    items: list[Item] = [Reading(HOST, key, value, clock, ns) for key, value, clock, ns in rows]
    chunks = encode_chunks("agent", HOST, enumerate(items), 1 << 20)
    decoded = [r for _, payload in chunks.messages for r in decode_message(HOST, payload)]
    assert decoded == items


# Messages with the fields exporters/MQTT.md documents, each now and then absent, out of
# range or of another JSON type: where the typed one-pass decoder and the checked one could part.
odd = st.one_of(st.none(), st.booleans(), st.integers(-(2**65), 2**65), st.floats(), st.text(max_size=5),
                st.just([]), st.just({}))


def mostly(valid: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """The documented shape nine times in ten (a one_of repeating it drew the odd branch most often)."""
    return st.integers(0, 9).flatmap(lambda n: odd if n == 7 else valid)


rows = st.lists(st.dictionaries(st.text(max_size=5), mostly(st.text(max_size=5)), max_size=2), max_size=2)
readings = st.fixed_dictionaries(
    {"key": mostly(st.text(max_size=10)), "value": mostly(values), "clock": mostly(st.integers(-5, 2**41))},
    optional={"ns": mostly(st.integers(-5, 10**9 + 5)), "unit": mostly(st.text(max_size=5)),
              "labels": mostly(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))},
)
discoveries = st.fixed_dictionaries(
    {"rule": mostly(st.text(max_size=10)), "clock": mostly(st.integers(-5, 2**41))},
    optional={"rows": mostly(rows), "ns": mostly(st.integers(-5, 10**9 + 5)), "value": odd},
)
envelopes = st.fixed_dictionaries({
    "version": mostly(st.one_of(st.just(1), st.just(1.0))),
    "agent": mostly(st.text(max_size=5)),
    "host": mostly(st.just(HOST)),
    "id": mostly(st.text(max_size=130)),
    "items": mostly(st.lists(mostly(st.one_of(readings, discoveries)), max_size=4)),
})


@given(envelopes)
def test_the_one_pass_decoder_agrees_with_the_checked_one(doc: dict[str, object]) -> None:
    payload = json.dumps(doc).encode()  # json.dumps writes NaN and Infinity: both must refuse them
    try:
        expected = _decode_checked(HOST, payload)
    except BadMessage:
        with pytest.raises(BadMessage):
            decode_envelope(HOST, payload)
        return
    assert decode_envelope(HOST, payload) == expected


def message(**changes: object) -> bytes:
    doc: dict[str, object] = {"version": 1, "agent": "a", "host": HOST, "id": "1",
                              "items": [{"key": "k", "value": 1, "clock": 1}]}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xfe", "not JSON"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (message(version=2), "unsupported version"),
    (message(host="Van 18"), "does not match the topic"),
    (message(items={"k": 1}), "items: expected a list"),
    (message(items=[{"key": "k", "value": True, "clock": 1}]), "value: expected a string or a number"),
    (message(items=[{"key": "k", "value": None, "clock": 1}]), "value"),
    (message(items=[{"key": "k", "value": 1}]), "clock"),
    (message(items=[{"key": "k", "value": 1, "clock": 1, "ns": 10**9}]), "ns"),
    (message(items=[{"key": 5, "value": 1, "clock": 1}]), "key: expected a string"),
    (message(items=[{"key": "k", "value": 1, "clock": 1, "labels": {"a": 1}}]), "labels"),
    (message(items=[{"rule": "r", "rows": [{"{#A}": 1}], "clock": 1}]), "rows[0]"),
    (message(items=[{"rule": "r", "rows": "x", "clock": 1}]), "rows: expected a list"),
    (message(items=["x"]), "items[0]: expected an object"),
    (b'{"version": 1, "agent": "a", "host": "Van 17", "id": "1",'
     b' "items": [{"key": "k", "value": NaN, "clock": 1}]}', "NaN"),
    (b"[" * 100_000, "not JSON"),
])
def test_bad_messages_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason.replace("[", r"\[")):
        decode_message(HOST, payload)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    payload = message(sent=1.5, items=[{"key": "k", "value": 1, "clock": 1, "quality": "good"}])
    assert decode_message(HOST, payload) == [Reading(HOST, "k", 1, 1)]


def test_topics() -> None:
    topics = Topics("fleet/eu")
    assert topics.data(HOST) == "fleet/eu/v1/Van 17/data"
    assert topics.host_of("fleet/eu/v1/Van 17/data") == HOST
    assert topics.data_filter() == "fleet/eu/v1/+/data"
    assert topics.status("van-17") == "fleet/eu/v1/van-17/status"
    assert topics.deadletter() == "fleet/eu/v1/deadletter"
    for bad in ("fleet/eu/v1/a/b/data", "fleet/eu/v2/x/data", "other/v1/x/data", "fleet/eu/v1//data"):
        with pytest.raises(BadMessage):
            topics.host_of(bad)


# -- configuration -----------------------------------------------------------------


def section(tmp_path: Path, **data: object) -> Section:
    return Section(tmp_path / "trapline.toml", "mqtt", {"host": "broker", **data})


def test_defaults(tmp_path: Path) -> None:
    [dest] = build_destinations(section(tmp_path))
    assert isinstance(dest, MqttDestination)
    s = dest.settings
    assert (s.port, s.qos, s.tls, s.topics.prefix, s.session_expiry) == (1883, 1, False, "trapline", 86400)
    assert s.client_id.startswith("trapline-edge-") and dest.max_payload == 131072


def test_password_comes_from_a_private_file_and_never_shows(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    [dest] = build_destinations(section(tmp_path, username="van", password_file=str(secret),
                                        tls_ca_file=str(ca)))
    assert isinstance(dest, MqttDestination)
    assert dest.settings.password is not None and dest.settings.password.reveal() == "hunter2"
    assert dest.settings.tls and dest.settings.port == 8883
    assert "hunter2" not in repr(dest.settings)


@pytest.mark.parametrize(("data", "where"), [
    ({"qos": 0}, "qos"),
    ({"qos": 3}, "qos"),
    ({"topic_prefix": "a/+/b"}, "topic_prefix"),
    ({"topic_prefix": "a/"}, "topic_prefix"),
    ({"client_id": "van/17"}, "client_id"),
    ({"password_env": "NOPE_NOT_SET_1"}, "password_env"),
    ({"tls_ca_file": "/nonexistent/ca.pem"}, "tls_ca_file"),
    ({"max_payload": 10}, "max_payload"),
    ({"colour": "red"}, "colour"),
])
def test_config_mistakes_name_the_key(tmp_path: Path, data: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[mqtt\]\.{where}"):
        build_destinations(section(tmp_path, **data))


def test_password_without_username_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAPLINE_TEST_MQTT_PW", "x")
    with pytest.raises(ConfigError, match="needs a username"):
        build_destinations(section(tmp_path, password_env="TRAPLINE_TEST_MQTT_PW"))


def test_settings_file_builds_the_mqtt_destination_and_the_bridge(tmp_path: Path) -> None:
    config = tmp_path / "trapline.toml"
    config.write_text(
        f'[spool]\npath = "{tmp_path / "s.db"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nclient_id = "van-17"\n'
        '[collectors.fleet]\ntype = "mqtt_bridge"\nhost = "127.0.0.1"\ngroup = "centre"\n'
    )
    settings = load_settings(config)
    [dest] = settings.destinations
    assert dest.name == "mqtt[127.0.0.1:1883]"
    [bridge] = settings.collectors
    assert isinstance(bridge, MqttBridge)
    assert bridge.subscription == "$share/centre/trapline/v1/+/data"


def test_bridge_peers_are_other_bridges(tmp_path: Path) -> None:
    def bridge_section(**keys: object) -> Section:
        return Section(tmp_path / "t.toml", "collectors.fleet",
                       {"host": "127.0.0.1", "client_id": "centre-1", **keys})

    bridge = build_bridge("fleet", bridge_section(peers=["centre-2", "centre-3"], adopt_after=5))
    assert (bridge.peers, bridge.adopt_after) == (("centre-2", "centre-3"), 5.0)
    assert build_bridge("fleet", bridge_section()).peers == ()
    with pytest.raises(ConfigError, match=r"peers.*own client_id 'centre-1'"):
        build_bridge("fleet", bridge_section(peers=["centre-1"]))
