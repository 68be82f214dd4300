"""The systemd watchdog's decisions, its sd_notify messages on a real socket, and the pipeline's hooks.

The message format and the socket addresses follow sd_notify(3): newline-separated
KEY=value assignments in one datagram; ``$NOTIFY_SOCKET`` is a file system path or,
with a leading ``@``, a Linux abstract socket name. ``$WATCHDOG_USEC`` and
``$WATCHDOG_PID`` follow sd_watchdog_enabled(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapline.core.config import Section
from trapline.core.model import Reading
from trapline.core.plugin import Delivery, Destination, Outbox, Spooled
from trapline.middleware import pipeline as pipeline_module
from trapline.middleware.filters import Filters
from trapline.middleware.pipeline import Pipeline
from trapline.middleware.settings import AgentSettings, SpoolSettings
from trapline.middleware.spool import Spool
from trapline.middleware.watchdog import (
    Notifier,
    Progress,
    Sample,
    Watchdog,
    socket_address,
    watchdog_interval,
)

# -- decisions -------------------------------------------------------------------------


def test_a_part_that_moves_is_never_stuck() -> None:
    progress = Progress()
    for step in range(100):
        assert progress.stuck(step * 10.0, [Sample("collector a", step, 5.0)]) == []


def test_a_part_still_past_its_limit_is_named_with_its_silence() -> None:
    progress = Progress()
    assert progress.stuck(0.0, [Sample("collector a", 7, 30.0), Sample("spool commits", 0, 60.0)]) == []
    assert progress.stuck(30.0, [Sample("collector a", 7, 30.0), Sample("spool commits", 1, 60.0)]) == []
    assert progress.stuck(31.0, [Sample("collector a", 7, 30.0), Sample("spool commits", 2, 60.0)]) == [
        "collector a: no progress for 31.0s (limit 30s)"
    ]


def test_a_part_no_longer_sampled_is_forgotten() -> None:
    # A collector whose run() returned is not sampled: when a part of that name comes
    # back (a restart of the same collector), its silence counts from then.
    progress = Progress()
    progress.stuck(0.0, [Sample("collector a", 1, 5.0)])
    assert progress.stuck(100.0, []) == []
    assert progress.stuck(101.0, [Sample("collector a", 1, 5.0)]) == []
    assert progress.stuck(107.0, [Sample("collector a", 1, 5.0)]) == [
        "collector a: no progress for 6.0s (limit 5s)"
    ]


@settings(max_examples=300, deadline=None)
@given(
    limit=st.floats(min_value=0.5, max_value=1000.0),
    steps=st.lists(st.tuples(st.floats(min_value=0.0, max_value=500.0), st.booleans()), max_size=40),
)
def test_stuck_exactly_when_the_marker_stood_still_past_the_limit(
    limit: float, steps: list[tuple[float, bool]]
) -> None:
    # A reference model: the time of the last change is tracked here independently.
    progress, now, marker, changed_at = Progress(), 0.0, 0, 0.0
    progress.stuck(now, [Sample("p", marker, limit)])
    for gap, moved in steps:
        now += gap
        if moved:
            marker, changed_at = marker + 1, now
        stuck = progress.stuck(now, [Sample("p", marker, limit)])
        assert bool(stuck) == (now - changed_at > limit)


@given(usec=st.integers(min_value=-(2**63), max_value=2**64))
def test_watchdog_interval_is_half_of_watchdog_usec(usec: int) -> None:
    interval = watchdog_interval({"WATCHDOG_USEC": str(usec)}, 42)
    assert interval == (usec / 2e6 if usec > 0 else None)


@pytest.mark.parametrize("value", ["", "30s", "1e6", " ", "0x10"])
def test_watchdog_usec_that_is_no_number_asks_for_nothing(value: str) -> None:
    assert watchdog_interval({"WATCHDOG_USEC": value}, 42) is None


def test_watchdog_for_another_process_is_not_ours() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "42"}, 42) == 2.0
    assert watchdog_interval({}, 42) is None


# -- notification on a real socket -----------------------------------------------------


@contextmanager
def listener(name: str | None = None) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket as systemd's notify socket; yields ($NOTIFY_SOCKET value, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(10)
    value = "@" + (name if name is not None else f"trapline-test-{uuid.uuid4().hex}")
    sock.bind(b"\0" + value[1:].encode())
    try:
        yield value, sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every message waiting on ``sock``, without blocking."""
    messages = []
    sock.setblocking(False)
    while True:
        try:
            messages.append(sock.recv(4096, socket.MSG_DONTWAIT).decode())
        except BlockingIOError:
            return messages


# Abstract names are any bytes after the NUL; these are the printable ones an environment
# variable can carry, up to the 107 bytes sockaddr_un leaves after the NUL.
@settings(max_examples=50, deadline=None)
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=30))
def test_messages_reach_an_abstract_socket(name: str) -> None:
    with listener(name + uuid.uuid4().hex[:8]) as (value, sock):
        address = socket_address(value)
        assert address is not None
        Notifier(address).send("READY=1", "STATUS=running: 2 collectors")
        assert sock.recv(4096) == b"READY=1\nSTATUS=running: 2 collectors"


def test_messages_reach_a_path_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="tw") as short:  # sockaddr_un holds 108 bytes
        path = os.path.join(short, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            address = socket_address(path)
            assert address == path
            Notifier(address).send("WATCHDOG=1")
            assert sock.recv(4096) == b"WATCHDOG=1"
        finally:
            sock.close()


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "notify", "relative/path"])
def test_unsupported_notify_socket_sends_nothing(value: str) -> None:
    assert Watchdog.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"}) is None


def test_no_notify_socket_no_watchdog() -> None:
    assert Watchdog.from_environ({"WATCHDOG_USEC": "1000000"}) is None


def test_a_missing_listener_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    name = f"trapline-test-{uuid.uuid4().hex}"
    notifier = Notifier(b"\0" + name.encode())
    with caplog.at_level(logging.INFO, logger="trapline.middleware.watchdog"):
        for _ in range(3):
            notifier.send("WATCHDOG=1")
        with listener(name) as (_, sock):
            notifier.send("WATCHDOG=1")
            assert sock.recv(4096) == b"WATCHDOG=1"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("cannot notify systemd (WATCHDOG)")
    assert lines[1] == "notifying systemd works again"


# -- the pipeline's hooks --------------------------------------------------------------


class Stalling:
    """Puts ``before`` readings, one per ``pause``, then awaits forever: a stuck collector."""

    def __init__(self, name: str, before: int, pause: float) -> None:
        self.name, self.before, self.pause = name, before, pause

    async def run(self, out: Outbox) -> None:
        for i in range(self.before):
            out.put(Reading("h", f"k.{self.name}", i, 1_700_000_000 + i, 0))
            await asyncio.sleep(self.pause)
        await asyncio.Event().wait()


class Finishing:
    """Puts one reading and returns: done, never stuck."""

    name = "once"

    async def run(self, out: Outbox) -> None:
        out.put(Reading("h", "k.once", 1, 1_700_000_000, 0))


def pipeline_with(
    tmp_path: Path, watchdog: Watchdog, stall: float, *collectors: Stalling | Finishing,
    destination: Destination | None = None,
) -> Pipeline:
    agent = AgentSettings(host=None, self_interval=3600, flush_interval=0.01, shutdown_timeout=1,
                          stall_timeout=stall)
    spool_settings = SpoolSettings(tmp_path / "s.db", 100_000, "normal", 3600, 0.01, 0.02, 500)
    filters = Filters.from_config(Section(Path("t"), "filters", {}))
    return Pipeline(agent=agent, spool_settings=spool_settings, spool=Spool(spool_settings.path),
                    filters=filters, collectors=collectors, watchdog=watchdog,
                    destinations=[destination] if destination else [])


def run_until_stuck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, *collectors: Stalling | Finishing,
    destination: Destination | None = None,
) -> tuple[list[str], list[str]]:
    """Run a pipeline pinging every 0.5 s until it declares a part stuck (2 s still), then stop it.

    Returns the messages systemd would have got and the watchdog's error lines.
    """
    with listener() as (value, sock):
        sock.setblocking(False)
        # Intervals far above a loaded machine's scheduling delays: the thread that watches the
        # loop must not see it late, which would add a line.
        watchdog = Watchdog.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
        assert watchdog is not None and watchdog.interval == 0.5
        pipeline = pipeline_with(tmp_path, watchdog, 2.0, *collectors, destination=destination)
        seen: list[str] = []

        async def scenario() -> None:
            running = asyncio.create_task(pipeline.run(install_signal_handlers=False))
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(30):  # a failure, not a hung test
                while not any(m.startswith("STATUS=stuck") for m in seen):
                    seen.append((await loop.sock_recv(sock, 4096)).decode())
            pipeline.stop()
            await running

        with caplog.at_level(logging.ERROR, logger="trapline.middleware.watchdog"):
            asyncio.run(scenario())
        seen += received(sock)
    return seen, [r.getMessage() for r in caplog.records]


def test_pipeline_pings_while_collectors_move_then_names_the_stuck_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen, errors = run_until_stuck(tmp_path, caplog, Stalling("steady", 10**9, 0.02),
                                   Stalling("stalls", 20, 0.02), Finishing())
    assert seen[0] == "READY=1\nSTATUS=running; collectors: 3"
    stuck = next(i for i, m in enumerate(seen) if m.startswith("STATUS=stuck"))
    assert seen[stuck].startswith("STATUS=stuck: collector stalls: no progress for")
    assert "WATCHDOG=1" in seen[1:stuck]
    assert seen[stuck + 1:] == ["STOPPING=1\nSTATUS=stopping"]  # no ping after the verdict
    assert len(errors) == 1 and "collector stalls: no progress" in errors[0], errors
    assert "steady" not in errors[0] and "once" not in errors[0]


class Hanging:
    """A destination whose first round never ends (a request without a timeout)."""

    name = "hangs"
    needs_labels = False

    async def deliver(self, batch: Sequence[Spooled]) -> Delivery:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


def test_a_delivery_round_that_never_ends_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "_DELIVERY_STALL", 0.5)  # 300 s in production
    _, errors = run_until_stuck(tmp_path, caplog, Stalling("steady", 10**9, 0.02), destination=Hanging())
    assert len(errors) == 1 and errors[0].startswith("watchdog: delivery to hangs: no progress for"), errors


def test_without_watchdog_usec_ready_and_stopping_only(tmp_path: Path) -> None:
    with listener() as (value, sock):
        watchdog = Watchdog.from_environ({"NOTIFY_SOCKET": value})
        assert watchdog is not None and watchdog.interval is None
        pipeline = pipeline_with(tmp_path, watchdog, 0.01, Stalling("stalls", 0, 0))

        async def scenario() -> None:
            running = asyncio.create_task(pipeline.run(install_signal_handlers=False))
            await asyncio.sleep(0.2)
            pipeline.stop()
            await running

        asyncio.run(scenario())
        assert received(sock) == ["READY=1\nSTATUS=running; collectors: 1", "STOPPING=1\nSTATUS=stopping"]


def test_a_failing_progress_check_ends_the_pings_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with listener() as (value, sock):
        watchdog = Watchdog.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "200000"})
        assert watchdog is not None

        def broken() -> list[Sample]:
            raise KeyError("a bug")

        with caplog.at_level(logging.ERROR, logger="trapline.middleware.watchdog"):
            asyncio.run(watchdog.run(broken))  # returns: no ping will follow
        assert received(sock) == ["STATUS=stuck: progress check failed: KeyError"]
    assert [r.getMessage() for r in caplog.records] == [
        "watchdog: the progress check failed",
        "watchdog: progress check failed: KeyError; no more pings, systemd restarts the agent",
    ]


def test_a_blocked_event_loop_is_logged_with_where_it_blocks(caplog: pytest.LogCaptureFixture) -> None:
    with listener() as (value, _):
        watchdog = Watchdog.from_environ({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "1000000"})
        assert watchdog is not None  # pings every 0.5 s; the thread reports a loop 0.75 s late

        def blocking_call_in_the_loop() -> None:
            time.sleep(3.0)  # what a collector must never do: the loop cannot turn

        async def scenario() -> None:
            heartbeat = asyncio.create_task(watchdog.run(list))
            await asyncio.sleep(1.0)
            blocking_call_in_the_loop()
            await asyncio.sleep(1.0)
            heartbeat.cancel()

        with caplog.at_level(logging.WARNING, logger="trapline.middleware.watchdog"):
            asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("watchdog: event loop blocked for ")
    assert lines[0].endswith(f"{__file__}:{blocking_call_in_the_loop.__code__.co_firstlineno + 1}"
                             " in blocking_call_in_the_loop; no pings while it is")
    assert lines[1] == "watchdog: the event loop turns again"
