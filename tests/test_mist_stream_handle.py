"""StreamConnection.handle runs inside the websocket's data_received: it must never raise."""

from __future__ import annotations

import json
from pathlib import Path

from devtools.mist_server import ap_full
from tests.test_mist_fuzz import CHANNEL, make_connection
from trapline.collectors.mist.fleet import RAW_KEY
from trapline.collectors.mist.frames import DataFrame
from trapline.collectors.mist.stream import StreamConnection


def data_frame(mac: str) -> bytes:
    return json.dumps({"event": "data", "channel": CHANNEL, "data": json.dumps(ap_full(mac, mac))}).encode()


def test_frames_arrive_as_utf8_bytes(tmp_path: Path) -> None:
    _, connection, out = make_connection(tmp_path)
    connection.handle(data_frame("5c5b35000001"))
    connection.handle(data_frame("5c5b35000002")[:-1])  # cut short: not JSON
    assert [r.host for r in out.readings(RAW_KEY)] == ["mist-ap-5c5b35000001"]
    assert out.errors == ["fuzz: frame is not JSON"]


def test_a_failing_consumer_costs_one_frame_not_the_connection(tmp_path: Path) -> None:
    collector, fuzz_connection, out = make_connection(tmp_path)
    seen: list[str] = []

    def on_data(event: DataFrame) -> None:
        if not seen:
            seen.append("failed")
            raise RuntimeError("secret-looking detail")
        collector.accept(event, out)

    connection = StreamConnection(
        "ws", collector.settings, collector._token, fuzz_connection.channels, on_data=on_data, out=out
    )
    connection.handle(data_frame("5c5b35000001"))
    connection.handle(data_frame("5c5b35000002"))
    assert out.errors == ["ws: frame dropped: unexpected RuntimeError"]  # the type, never the text
    assert [r.host for r in out.readings(RAW_KEY)] == ["mist-ap-5c5b35000002"]

