"""bench/connections.py against a real mosquitto: the broker holds what the bench says it connected.

The socket counts come from the broker's own file descriptors (/proc), not from the
bench's vans, so a van that never connected, or a connection the bench did not drop,
shows here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.connections import measure, report
from bench.mqtt import Broker

VANS = 60


@pytest.mark.integration
def test_every_van_holds_a_broker_socket_until_it_drops(tmp_path: Path) -> None:
    broker = Broker(tmp_path, inflight=20, queued=0)
    broker.start()
    try:
        empty, connected, idle, dropped = asyncio.run(measure(broker, VANS, hold=0.2))
    finally:
        broker.stop()
    assert connected.sockets == idle.sockets == empty.sockets + VANS
    assert dropped.sockets == empty.sockets
    # Sessions are kept after the drop (a parked van): the broker does not shrink back to empty.
    assert connected.rss_mb > empty.rss_mb and dropped.rss_mb > empty.rss_mb
    assert len(report([empty, connected, idle, dropped], VANS).splitlines()) == 2 + 4
