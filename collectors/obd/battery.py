"""The vehicle battery as the adapter sees it: a guard against draining it while the
engine is off, and the voltage dip of each engine start.  Pure bookkeeping over
(time, volts) and (time, engine running) samples; the collector acts on its answers.

Guard: while the engine is off, a voltage below ``voltage`` for ``after``
seconds trips it (the collector then stops polling and sends ``ATLP``); it
resets when the voltage is back at ``resume`` or above, or the engine runs.

Cranking dip: the starter motor pulls the voltage down for a second or two; the
lowest reading of the ``crank_window`` seconds before the engine is seen running
is that start's dip (a healthy battery stays above about 9.6 V).  It is only
seen when the adapter was sampling the voltage while the starter turned, which
the collector does while the ECU answers and the engine is off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class GuardSettings:
    voltage: float = 11.8  # V; 0 switches the guard off
    after: float = 600.0  # s below ``voltage`` before it trips
    resume: float = 12.4  # V at which it resets
    shutdown: bool = False  # ask the system to power off when it trips
    shutdown_command: tuple[str, ...] = ("systemctl", "poweroff")
    probe_interval: float = 900.0  # s between voltage probes while tripped
    crank_window: float = 10.0  # s before the engine runs whose lowest voltage is the dip


class Change(Enum):
    TRIPPED = "tripped"
    RESET = "reset"


class BatteryWatch:
    def __init__(self, settings: GuardSettings) -> None:
        self.settings = settings
        self.tripped = False
        self._low_since: float | None = None
        self._running: bool | None = None  # None until an RPM answer or a silent ECU says
        self._recent: deque[tuple[float, float]] = deque()  # (clock, volts) within crank_window

    def voltage(self, clock: float, volts: float) -> Change | None:
        """A battery voltage reading; whether it trips or resets the guard."""
        if self._running is False:  # a reading taken with the engine running is no start's dip
            self._recent.append((clock, volts))
        while self._recent and self._recent[0][0] < clock - self.settings.crank_window:
            self._recent.popleft()
        s = self.settings
        if self.tripped:
            return self._reset() if volts >= s.resume else None
        if s.voltage <= 0 or self._running or volts >= s.voltage:
            self._low_since = None
            return None
        if self._low_since is None:
            self._low_since = clock
        if clock - self._low_since >= s.after:
            self.tripped = True
            return Change.TRIPPED
        return None

    def engine(self, clock: float, running: bool) -> tuple[float | None, Change | None]:
        """The engine seen running or not: the dip of a start just seen, and whether that resets the guard."""
        # a start is only one when the engine was seen off (not at the first answer after a connect)
        started = running and self._running is False
        self._running = running
        if not running:
            return None, None
        self._low_since = None
        window = [v for c, v in self._recent if c >= clock - self.settings.crank_window]
        dip = min(window) if started and window else None
        if started:
            self._recent.clear()  # the next start's dip comes from its own readings
        return dip, self._reset() if self.tripped else None

    @property
    def before_start(self) -> bool:
        """The engine is known to be off: the readings now are what a start's dip is taken from."""
        return self._running is False

    def _reset(self) -> Change:
        self.tripped = False
        self._low_since = None
        return Change.RESET
