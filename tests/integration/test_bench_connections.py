"""bench/connections.py against a real mosquitto: the broker holds what the bench says it connected.

The socket counts come from the broker's own file descriptors (/proc), not from the
bench's vans, so a van that never connected, or a connection the bench did not drop,
shows here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest

from bench.connections import broker_state, measure, report, settled_state
from bench.mqtt import Broker
from tests.support.zabbix_fixtures import wait_until

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


@pytest.mark.integration
def test_the_baseline_waits_for_a_probe_the_broker_has_not_finished_with(tmp_path: Path) -> None:
    """The CI failure this guards: a port probe still open in the broker made 'no van' read 3 sockets."""
    broker = Broker(tmp_path, inflight=20, queued=0)
    broker.start()
    assert broker.process is not None
    pid = broker.process.pid
    try:
        quiet = asyncio.run(settled_state(pid, "quiet")).sockets  # start()'s own port probe closed
        probe = socket.create_connection(("127.0.0.1", broker.port))
        accepted = quiet + 1  # the broker holds its end
        wait_until(lambda: broker_state(pid, "accepted").sockets == accepted, what="the probe accepted")
        os.kill(pid, signal.SIGSTOP)  # so the broker cannot close its end when the probe closes
        probe.close()
        queued = socket.create_connection(("127.0.0.1", broker.port))  # and this one waits to be accepted
        queued.close()
        assert broker_state(pid, "stopped").sockets == accepted

        async def resume_later() -> int:
            asyncio.get_running_loop().call_later(0.5, os.kill, pid, signal.SIGCONT)
            return (await settled_state(pid, "settled")).sockets

        assert asyncio.run(resume_later()) == quiet
    finally:
        os.kill(pid, signal.SIGCONT)
        broker.stop()
