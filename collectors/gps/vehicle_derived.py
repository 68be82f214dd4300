"""Figures derived on the vehicle from its GPS fixes: trips, home distance, geofence, overspeed.

They are computed at the edge because only the edge sees every fix: the link
may be down for hours, and filters may thin what reaches Zabbix.  The GPS
collector feeds every fix in and sends what comes out.

Keys (all on the vehicle's host):

- ``vehicle.moving``: 1 while a trip is under way, 0 when parked (with hysteresis)
- ``vehicle.trip.distance`` (m) and ``vehicle.trip.duration`` (s): the trip so far, 0 when parked
- ``vehicle.trip.last.distance`` (m), ``vehicle.trip.last.duration`` (s): sent once when a trip ends
- ``vehicle.trips``: trips completed since the agent started (a counter)
- ``vehicle.home.distance`` (m): great-circle distance from the configured home point
- ``vehicle.geofence.inside``: 1 inside the circle of ``geofence_radius`` around home, else 0
- ``vehicle.overspeed.duration`` (s): how long the speed has been above the limit, 0 below it

Hysteresis: a trip starts when the speed stays at or above ``trip_start_speed``
for ``trip_start_after`` seconds (counted from the first such fix) and ends when
it stays below ``trip_stop_speed`` for ``trip_stop_after`` seconds (the trip ends
at the first slow fix).  Distance only grows while moving, so GPS jitter on a
parked vehicle adds nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trapline.core.config import Section
from trapline.core.model import Value

_EARTH_RADIUS_M = 6_371_008.8

Derived = dict[str, tuple[Value, str]]


def great_circle_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class DerivedSettings:
    home: tuple[float, float] | None = None
    geofence_radius: float = 0.0  # m; 0 = no geofence
    overspeed_limit: float = 0.0  # km/h; 0 = no overspeed tracking
    trip_start_speed: float = 8.0  # km/h
    trip_start_after: float = 10.0  # s
    trip_stop_speed: float = 3.0  # km/h
    trip_stop_after: float = 120.0  # s

    @classmethod
    def from_section(cls, section: Section) -> DerivedSettings:
        defaults = cls()
        home = None
        if section.has("home_latitude") or section.has("home_longitude"):
            lat = section.number("home_latitude")
            lon = section.number("home_longitude")
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise section.error("home_latitude", f"expected a position in degrees, got {lat}, {lon}")
            home = (lat, lon)
        radius = section.number("geofence_radius", 0.0, minimum=0)
        if radius and home is None:
            raise section.error("geofence_radius", "needs home_latitude and home_longitude")
        start = section.number("trip_start_speed", defaults.trip_start_speed, minimum=0.1)
        stop = section.number("trip_stop_speed", defaults.trip_stop_speed, minimum=0)
        if stop > start:
            raise section.error("trip_stop_speed", f"expected at most trip_start_speed ({start}), got {stop}")
        return cls(
            home=home,
            geofence_radius=radius,
            overspeed_limit=section.number("overspeed_limit", 0.0, minimum=0),
            trip_start_speed=start,
            trip_start_after=section.number("trip_start_after", defaults.trip_start_after, minimum=0),
            trip_stop_speed=stop,
            trip_stop_after=section.number("trip_stop_after", defaults.trip_stop_after, minimum=0),
        )


class EdgeDerivations:
    def __init__(self, settings: DerivedSettings) -> None:
        self.settings = settings
        self.moving = False
        self.trips = 0
        self._fast_since: float | None = None  # first fast fix while parked
        self._slow_since: float | None = None  # first slow fix while moving
        self._trip_start = 0.0
        self._trip_distance = 0.0  # up to the last fix
        self._distance_at_slow = 0.0  # trip distance when the vehicle slowed down
        self._pending_distance = 0.0  # covered while a start was being confirmed
        self._last: tuple[float, float] | None = None
        self._over_since: float | None = None

    def update(self, clock: float, lat: float, lon: float, speed_kmh: float) -> Derived:
        """Feed one fix; returns the readings to send for it."""
        s = self.settings
        step = great_circle_m(*self._last, lat, lon) if self._last is not None else 0.0
        self._last = (lat, lon)
        out: Derived = {}
        if self.moving:
            self._trip_distance += step
            out.update(self._while_moving(clock, speed_kmh))
        else:
            out.update(self._while_parked(clock, speed_kmh, step))
        out["vehicle.moving"] = (int(self.moving), "")
        if self.moving:
            out["vehicle.trip.distance"] = (round(self._trip_distance, 1), "m")
            out["vehicle.trip.duration"] = (round(clock - self._trip_start, 1), "s")
        else:
            out["vehicle.trip.distance"] = (0.0, "m")
            out["vehicle.trip.duration"] = (0.0, "s")
        out["vehicle.trips"] = (self.trips, "")
        if s.home is not None:
            home_distance = great_circle_m(*s.home, lat, lon)
            out["vehicle.home.distance"] = (round(home_distance, 1), "m")
            if s.geofence_radius:
                out["vehicle.geofence.inside"] = (int(home_distance <= s.geofence_radius), "")
        if s.overspeed_limit:
            if speed_kmh > s.overspeed_limit:
                self._over_since = clock if self._over_since is None else self._over_since
            else:
                self._over_since = None
            over = 0.0 if self._over_since is None else clock - self._over_since
            out["vehicle.overspeed.duration"] = (round(over, 1), "s")
        return out

    def _while_parked(self, clock: float, speed_kmh: float, step: float) -> Derived:
        s = self.settings
        if speed_kmh < s.trip_start_speed:
            self._fast_since = None
            self._pending_distance = 0.0
            return {}
        if self._fast_since is None:
            self._fast_since = clock
            self._pending_distance = 0.0
        else:
            self._pending_distance += step
        if clock - self._fast_since >= s.trip_start_after:
            self.moving = True
            self._trip_start = self._fast_since
            self._trip_distance = self._pending_distance
            self._slow_since = None
            self._fast_since = None
        return {}

    def _while_moving(self, clock: float, speed_kmh: float) -> Derived:
        s = self.settings
        if speed_kmh >= s.trip_stop_speed:
            self._slow_since = None
            return {}
        if self._slow_since is None:
            self._slow_since = clock
            self._distance_at_slow = self._trip_distance
        if clock - self._slow_since < s.trip_stop_after:
            return {}
        self.moving = False
        self.trips += 1
        return {
            "vehicle.trip.last.distance": (round(self._distance_at_slow, 1), "m"),
            "vehicle.trip.last.duration": (round(self._slow_since - self._trip_start, 1), "s"),
        }
