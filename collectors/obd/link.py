"""The connection state machine of the OBD collector (pure: no I/O, no clock).

    no adapter --connect: adapter only--> ignition off --probe: ECU talks--> reconnect
    no adapter --connect: car---------> running
    running --serial error | deadline | N unusable answers in a row--> reconnect
    reconnect --result--> no adapter (with backoff) | ignition off | running

The state is what the last connection attempt found; a reconnect keeps it
until the attempt answers, so an ignition cycle reads running -> ignition off,
not running -> no adapter -> ignition off.
"""

from __future__ import annotations

from enum import IntEnum

from trapline.collectors.obd.adapter import Reach


class LinkState(IntEnum):
    """Value of the ``obd.state`` item (a Zabbix value map in the template)."""

    NO_ADAPTER = 0
    IGNITION_OFF = 1
    RUNNING = 2


_STATE_OF_REACH = {
    Reach.NOTHING: LinkState.NO_ADAPTER,
    Reach.ADAPTER: LinkState.IGNITION_OFF,
    Reach.CAR: LinkState.RUNNING,
}


class Link:
    def __init__(self, retry_initial: float, retry_max: float, unusable_max: int) -> None:
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.unusable_max = unusable_max
        self.state = LinkState.NO_ADAPTER
        self.failed_connects = 0
        self.unusable_in_row = 0
        self._reconnect = True

    def connected(self, reach: Reach) -> bool:
        """Record a connection attempt's result; True if the state changed."""
        previous = self.state
        self.state = _STATE_OF_REACH[reach]
        self.unusable_in_row = 0
        if reach is Reach.NOTHING:
            self.failed_connects += 1
            self._reconnect = True
        else:
            self.failed_connects = 0
            self._reconnect = False
        return self.state is not previous

    def needs_reconnect(self) -> bool:
        return self._reconnect

    def answered(self) -> None:
        self.unusable_in_row = 0

    def unusable(self) -> None:
        """An empty, refused or garbled answer; enough in a row mean the link is gone."""
        self.unusable_in_row += 1
        if self.unusable_in_row >= self.unusable_max:
            self._reconnect = True

    def lost(self) -> None:
        """Serial error, missed deadline, or the ECU came back (reconnect to set it up)."""
        self._reconnect = True

    def retry_delay(self) -> float:
        """Seconds to wait before the next connection attempt (exponential backoff)."""
        if self.failed_connects == 0:
            return 0.0
        # The exponent is capped: an adapter missing for days must not overflow the float.
        return min(self.retry_max, self.retry_initial * 2.0 ** min(self.failed_connects - 1, 64))
