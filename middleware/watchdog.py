"""The systemd watchdog: tell the service manager the agent is ready, alive, or stopping.

The sd_notify protocol is one datagram per message on the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``), text
lines ``KEY=value``. Without ``$NOTIFY_SOCKET`` (not started by systemd, or a unit
without ``Type=notify``) nothing is ever sent. ``$WATCHDOG_USEC`` asks for a
``WATCHDOG=1`` ping at least that often: the agent pings at half of it.

A ping is sent only while the agent makes progress:

- the event loop turns: the heartbeat is a task on that loop, so a loop blocked by
  synchronous code sends nothing. A thread notices that the heartbeat is late and
  logs where the loop is blocked, since the loop itself cannot log then;
- the spool commits: the intake loop, which commits what collectors put, finishes a
  round at least every ``flush_interval``. A round whose commit failed (disk full)
  still counts: the pipeline holds those readings in memory and logs the fault, and
  a restart would lose them without freeing any space;
- every delivery loop turns: once a second when idle, after every round and after
  every backoff wait, so a destination that is down still turns it; a round that
  never ends (a request without a timeout) does not;
- every collector moves: each ``put``, ``error`` or ``resolved`` on its outbox counts.
  A polling collector (OBD, GPS, AWS, synthetic) ends every poll with one of them,
  also when it only waits: gpsd without a fix gives ``gps.fix.mode`` 0, a parked van
  its battery voltage every ``idle_interval``, an adapter or gpsd that does not
  answer an error per attempt. A stream collector moves in its housekeeping loop
  (Mist: its state every ``state_interval``; MQTT bridge: its counters every
  ``self_interval`` when ``self_host`` is set) and with every message. A collector
  whose ``run`` returned is done, not stuck. ``stall_timeout`` must be longer than
  the longest quiet spell of a healthy collector: AWS's ``max_backoff`` while
  throttled is the longest of the defaults (900 s).

When a part stops moving the agent logs one line naming it and pings no more, so
systemd stops the unit (``WatchdogSignal=``) and starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)


# -- decision (no I/O) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One part of the agent as seen now: ``marker`` changes whenever it makes progress."""

    part: str  # "spool commits", "collector obd"
    marker: int
    limit: float  # seconds without a change that mean the part is stuck


class Progress:
    """Which parts stopped moving, from successive samples."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, float]] = {}  # part -> (marker, when it last changed)

    def stuck(self, now: float, samples: Sequence[Sample]) -> list[str]:
        """A description of each part whose marker stayed the same for longer than its limit.

        A part missing from ``samples`` is forgotten (a collector that finished).
        """
        seen: dict[str, tuple[int, float]] = {}
        stuck: list[str] = []
        for sample in samples:
            marker, since = self._seen.get(sample.part, (sample.marker, now))
            if marker != sample.marker:
                since = now
            seen[sample.part] = (sample.marker, since)
            if now - since > sample.limit:
                stuck.append(f"{sample.part}: no progress for {now - since:.1f}s (limit {sample.limit:g}s)")
        self._seen = seen
        return stuck


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings that ``$WATCHDOG_USEC`` asks for (half of it), or None.

    ``$WATCHDOG_PID``, when set, names the process the request is for: a child that
    inherited the environment must not ping in its parent's name.
    """
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner != str(pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


# -- notification I/O ------------------------------------------------------------------


def socket_address(value: str) -> str | bytes | None:
    """The socket address named by ``$NOTIFY_SOCKET``; None for a form not supported (vsock:)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages; a failure is logged and never stops the agent."""

    def __init__(self, address: str | bytes) -> None:
        self._address = address
        self._failing = False

    def send(self, *fields: str) -> None:
        message = "\n".join(fields).encode()
        try:
            # A socket per message, as libsystemd's sd_notify: one every few seconds at most,
            # and nothing held open by a pipeline built only to be checked (trapline check).
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # MSG_DONTWAIT: a full socket buffer costs this message, never a blocked loop.
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot notify systemd (%s): %s", fields[0].partition("=")[0], exc)
            self._failing = True
            return
        if self._failing:
            log.info("notifying systemd works again")
        self._failing = False


# -- the heartbeat ---------------------------------------------------------------------


class Watchdog:
    """READY, STATUS, STOPPING for the pipeline's life; WATCHDOG pings while it makes progress."""

    def __init__(self, notifier: Notifier, interval: float | None) -> None:
        self.notifier = notifier
        self.interval = interval  # None: the unit asks for no watchdog
        self._last_turn = time.monotonic()
        self._ended = threading.Event()

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> Watchdog | None:
        """The watchdog systemd asked for in the environment; None when not started by it."""
        env = os.environ if env is None else env
        value = env.get("NOTIFY_SOCKET", "")
        if not value:
            return None
        address = socket_address(value)
        if address is None:
            log.warning("NOTIFY_SOCKET=%s: only a path or an @abstract name is supported;"
                        " systemd is not notified", value[:80])
            return None
        return cls(Notifier(address), watchdog_interval(env, os.getpid()))

    def ready(self, status: str) -> None:
        self.notifier.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self._ended.set()
        self.notifier.send("STOPPING=1", "STATUS=stopping")

    async def run(self, sample: Callable[[], Sequence[Sample]]) -> None:
        """Ping every ``interval`` until a part stops moving; then log it and end."""
        if self.interval is None:
            return
        watcher = threading.Thread(target=self._watch_loop, args=(threading.get_ident(), self.interval),
                                   name="watchdog-loop", daemon=True)
        watcher.start()
        progress = Progress()
        try:
            while True:
                self._last_turn = time.monotonic()
                try:
                    stuck = progress.stuck(self._last_turn, sample())
                except Exception as exc:  # a bug here: health unknown, so no ping (systemd restarts)
                    log.exception("watchdog: the progress check failed")
                    stuck = [f"progress check failed: {type(exc).__name__}"]
                if stuck:
                    log.error("watchdog: %s; no more pings, systemd restarts the agent", "; ".join(stuck))
                    self.notifier.send(f"STATUS=stuck: {stuck[0]}")
                    return
                self.notifier.send("WATCHDOG=1")
                await asyncio.sleep(self.interval)
        finally:
            self._ended.set()

    def _watch_loop(self, loop_thread: int, interval: float) -> None:
        """From a thread: log where the event loop is when the heartbeat is late.

        systemd stops the agent one full ``WATCHDOG_USEC`` (two intervals) after the
        last ping; the line comes after one and a half, while the loop is still blocked.
        """
        blocked_since: float | None = None
        while not self._ended.wait(interval / 4):
            late = time.monotonic() - self._last_turn
            if late <= 1.5 * interval:
                if blocked_since is not None:
                    log.warning("watchdog: the event loop turns again")
                blocked_since = None
            elif blocked_since is None:
                blocked_since = self._last_turn
                log.error("watchdog: event loop blocked for %.0fs at %s; no pings while it is",
                          late, _where(sys._current_frames().get(loop_thread)))


def _where(frame: FrameType | None) -> str:
    """file:line in function of the innermost Python frame a thread runs."""
    if frame is None:
        return "an unknown place"
    last = traceback.extract_stack(frame)[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"
