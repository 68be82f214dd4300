"""Figures derived on the vehicle from its GPS fixes: trips, home distance, geofence, overspeed.

They are computed at the edge because only the edge sees every fix: the link
may be down for hours, and filters may thin what reaches Zabbix.  The GPS
collector feeds every fix in and sends what comes out.

Keys (all on the vehicle's host):

- ``vehicle.moving``: 1 while a trip is under way, 0 when parked (with hysteresis)
- ``vehicle.trip.distance`` (m) and ``vehicle.trip.duration`` (s): the trip so far, 0 when parked
- ``vehicle.trip.last.distance`` (m), ``vehicle.trip.last.duration`` (s): sent once when a trip ends
- ``vehicle.trips``: trips completed (a counter, kept across restarts)
- ``vehicle.odometer`` (m), ``vehicle.distance.today`` (m): see :mod:`trapline.wire.vehicle_state`
- ``vehicle.home.distance`` (m): great-circle distance from the configured home point
- ``vehicle.geofence.inside``: 1 inside the circle of ``geofence_radius`` around home, else 0
- ``vehicle.geofence.discovery``: LLD of the named geofences (``{#GEOFENCE}``), once per gpsd connection
- ``vehicle.geofence.inside[NAME]``: 1 inside the named geofence (a circle or a polygon), else 0
- ``vehicle.geofence.event[NAME]``: ``entry`` or ``exit``, sent once at the fix that crossed its edge
- ``vehicle.overspeed.duration`` (s): how long the speed has been above the limit, 0 below it

Hysteresis: a trip starts when the speed stays at or above ``trip_start_speed``
for ``trip_start_after`` seconds (counted from the first such fix) and ends when
it stays below ``trip_stop_speed`` for ``trip_stop_after`` seconds (the trip ends
at the first slow fix).  Distance only grows while moving, so GPS jitter on a
parked vehicle adds nothing.

With a :class:`VehicleState`, the trip under way, the trip count and the
distance driven go to ``state_dir`` too, so a restart mid-drive (SIGKILL, power
cut) carries on with the same trip: the first fix after it adds the straight
line from the last fix before it.  Whether the vehicle is inside each named
geofence is kept there as well, so a restart inside one is not an entry.

Named geofences (any number, beside the older home circle, which stays as it
was) are ``geofences`` tables of the GPS collector's section, and the JSON object
of the host's ``{$VEHICLE.GEOFENCES}`` macro in Zabbix: see ``sample.toml``.
A polygon is tested in the plane of latitude and longitude (plenty for the size
of a yard or a town, not for one that spans the antimeridian or a pole).
A name may hold any printable character (commas, quotes, brackets, any script) but
``{`` (Zabbix would read a macro in the item key), starts and ends with no space and
does not end in a backslash (Zabbix cannot quote that in a key); at most 128 characters.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from trapline.core.config import ConfigError, Section
from trapline.core.keys import lld_param
from trapline.core.model import Value
from trapline.wire.vehicle_state import VehicleState

log = logging.getLogger(__name__)

_EARTH_RADIUS_M = 6_371_008.8

Derived = dict[str, tuple[Value, str]]
GEOFENCE_DISCOVERY = "vehicle.geofence.discovery"
GEOFENCES_MACRO = "{$VEHICLE.GEOFENCES}"
_FENCE_NAME_MAX = 128  # characters; the name goes into item names and tag values (255 at most)


def great_circle_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _position(section: Section, key: str, lat: float, lon: float) -> tuple[float, float]:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise section.error(key, f"expected a position in degrees, got {lat}, {lon}")
    return lat, lon


def _inside_polygon(lat: float, lon: float, corners: Sequence[tuple[float, float]]) -> bool:
    """Even-odd rule: a ray from the point eastwards crosses the edges an odd number of times."""
    inside = False
    for (lat1, lon1), (lat2, lon2) in zip(corners, [*corners[1:], corners[0]], strict=True):
        if (lat1 > lat) != (lat2 > lat):  # the edge spans the point's latitude
            crossing = lon1 + (lat - lat1) * (lon2 - lon1) / (lat2 - lat1)
            if lon < crossing:
                inside = not inside
    return inside


def _name_problem(name: str) -> str | None:
    if not 0 < len(name) <= _FENCE_NAME_MAX:
        return f"has 1 to {_FENCE_NAME_MAX} characters"
    if not name.isprintable():
        return "has no control characters"
    if name != name.strip():
        return "starts and ends with no space"
    if "{" in name:
        return "has no '{'"
    if name.endswith("\\"):
        return "does not end in a backslash"
    return None


def inside_key(name: str) -> str:
    """``vehicle.geofence.inside[NAME]`` as Zabbix's LLD writes it from the prototype."""
    return f"vehicle.geofence.inside[{lld_param(name)}]"


def event_key(name: str) -> str:
    """``vehicle.geofence.event[NAME]`` as Zabbix's LLD writes it from the prototype."""
    return f"vehicle.geofence.event[{lld_param(name)}]"


def macro_geofences(text: str, configured: Sequence[Geofence] = ()) -> tuple[Geofence, ...]:
    """The geofences of a ``{$VEHICLE.GEOFENCES}`` value: a JSON object shaped as the
    ``geofences`` tables of the config, read by the same code.  Empty text is none.

    A name the config has too is a mistake in the macro, not an override: the van's own
    config is what its installer tested.  Raises one :class:`ConfigError` for the value.
    """
    if not text.strip():
        return ()
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{GEOFENCES_MACRO}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{GEOFENCES_MACRO}: expected a JSON object of named geofences")
    fences = Section(Path(GEOFENCES_MACRO), "geofences", data)
    out = tuple(Geofence.from_section(name, sub) for name, sub in fences.subsections())
    taken = {fence.name for fence in configured} & {fence.name for fence in out}
    if taken:
        raise ConfigError(f"{GEOFENCES_MACRO}: {sorted(taken)} already set in the GPS collector's config")
    return out


@dataclass(frozen=True, slots=True)
class Geofence:
    name: str
    centre: tuple[float, float] = (0.0, 0.0)
    radius: float = 0.0  # m, for a circle
    corners: tuple[tuple[float, float], ...] = ()  # (lat, lon), for a polygon

    def contains(self, lat: float, lon: float) -> bool:
        if self.corners:
            return _inside_polygon(lat, lon, self.corners)
        return great_circle_m(*self.centre, lat, lon) <= self.radius

    @classmethod
    def from_section(cls, name: str, section: Section) -> Geofence:
        problem = _name_problem(name)
        if problem is not None:
            raise section.error("", f"a geofence name {problem} (it goes into item keys)")
        if not section.has("polygon"):
            centre = _position(section, "latitude", section.number("latitude"), section.number("longitude"))
            radius = section.number("radius", minimum=0.1)
            section.done()
            return cls(name, centre=centre, radius=radius)
        corners = []
        for corner in section.strings("polygon"):
            try:
                lat, lon = (float(part) for part in corner.split())
            except ValueError:
                raise section.error("polygon", f"expected 'lat lon' corners, got {corner!r}") from None
            corners.append(_position(section, "polygon", lat, lon))
        if len(set(corners)) < 3:
            raise section.error("polygon", f"expected at least 3 distinct corners, got {len(set(corners))}")
        section.done()
        return cls(name, corners=tuple(corners))


@dataclass(frozen=True, slots=True)
class DerivedSettings:
    home: tuple[float, float] | None = None
    geofence_radius: float = 0.0  # m; 0 = no geofence
    overspeed_limit: float = 0.0  # km/h; 0 = no overspeed tracking
    trip_start_speed: float = 8.0  # km/h
    trip_start_after: float = 10.0  # s
    trip_stop_speed: float = 3.0  # km/h
    trip_stop_after: float = 120.0  # s
    geofences: tuple[Geofence, ...] = ()

    @classmethod
    def from_section(cls, section: Section) -> DerivedSettings:
        defaults = cls()
        home = None
        if section.has("home_latitude") or section.has("home_longitude"):
            home = _position(section, "home_latitude", section.number("home_latitude"),
                             section.number("home_longitude"))
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
            geofences=tuple(Geofence.from_section(name, sub)
                            for name, sub in section.table("geofences").subsections()),
        )


class Trip(msgspec.Struct):
    """Where the trip hysteresis stands; kept in the state file between restarts."""

    moving: bool = False
    trips: Annotated[int, msgspec.Meta(ge=0)] = 0  # completed
    fast_since: float | None = None  # first fast fix while parked
    slow_since: float | None = None  # first slow fix while moving
    start: float = 0.0
    distance: float = 0.0  # up to the last fix
    distance_at_slow: float = 0.0  # trip distance when the vehicle slowed down
    pending_distance: float = 0.0  # covered while a start was being confirmed
    last: tuple[float, float] | None = None  # the last fix
    inside: dict[str, bool] = {}  # per named geofence, at the last fix
    # The last valid {$VEHICLE.GEOFENCES}: its geofences hold from the start, with no link.
    geofences_macro: str = ""


class EdgeDerivations:
    def __init__(self, settings: DerivedSettings, state: VehicleState | None = None) -> None:
        self.settings = settings
        self.state = state
        self.trip = Trip()
        self._over_since: float | None = None
        self.macro_fences: tuple[Geofence, ...] = ()
        if state is not None and state.trips:
            try:
                self.trip = msgspec.convert(state.trips, Trip)
            except msgspec.ValidationError as exc:
                log.warning("%s: the saved trip is malformed (%s); starting parked", state.path, exc)
        try:
            self.macro_fences = macro_geofences(self.trip.geofences_macro, settings.geofences)
        except ConfigError as exc:  # the config took one of its names since
            log.warning("the saved %s is no longer valid (%s); waiting for Zabbix's", GEOFENCES_MACRO, exc)
            self.trip.geofences_macro = ""

    @property
    def geofences(self) -> tuple[Geofence, ...]:
        """The config's named geofences, then the host macro's."""
        return self.settings.geofences + self.macro_fences

    def discovery_rows(self) -> list[dict[str, str]]:
        """The ``vehicle.geofence.discovery`` rows; empty without named geofences."""
        return [{"{#GEOFENCE}": fence.name} for fence in self.geofences]

    def set_macro_geofences(self, text: str) -> bool:
        """Take a ``{$VEHICLE.GEOFENCES}`` value; True if its geofences changed.

        Raises :class:`ConfigError` for a bad value, and keeps the geofences it had.
        A geofence whose shape changed forgets where the vehicle was: its state is
        recomputed at the next fix, with no entry or exit for a line that moved.
        """
        fences = macro_geofences(text, self.settings.geofences)
        self.trip.geofences_macro = text
        if fences == self.macro_fences:
            return False
        before = {fence.name: fence for fence in self.macro_fences}
        for fence in fences:
            if fence.name in before and before[fence.name] != fence:
                self.trip.inside.pop(fence.name, None)
        self.macro_fences = fences
        return True

    def update(self, clock: float, lat: float, lon: float, speed_kmh: float) -> Derived:
        """Feed one fix; returns the readings to send for it."""
        s, trip = self.settings, self.trip
        step = great_circle_m(*trip.last, lat, lon) if trip.last is not None else 0.0
        trip.last = (lat, lon)
        out: Derived = {}
        counted = trip.distance
        if trip.moving:
            trip.distance += step
            out.update(self._while_moving(clock, speed_kmh))
        else:
            counted = 0.0  # a trip confirmed by this fix brings its pending distance
            out.update(self._while_parked(clock, speed_kmh, step))
        out["vehicle.moving"] = (int(trip.moving), "")
        if trip.moving:
            out["vehicle.trip.distance"] = (round(trip.distance, 1), "m")
            out["vehicle.trip.duration"] = (round(clock - trip.start, 1), "s")
        else:
            out["vehicle.trip.distance"] = (0.0, "m")
            out["vehicle.trip.duration"] = (0.0, "s")
        out["vehicle.trips"] = (trip.trips, "")
        out.update(self._geofences(lat, lon))
        if self.state is not None:
            if trip.moving or "vehicle.trip.last.distance" in out:  # moving, or the trip ended just now
                self.state.gps_distance(clock, trip.distance - counted)
            saved = msgspec.to_builtins(trip)
            # Parked, only the last fix moves (GPS jitter): not worth a write to the SD card.
            if trip.moving or {**saved, "last": None} != {**self.state.trips, "last": None}:
                self.state.trips = saved
            out.update(self.state.odometer())
            out.update(self.state.today(clock))
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

    def _geofences(self, lat: float, lon: float) -> Derived:
        """Inside or outside each named geofence, and an event where that changed since the last fix."""
        out: Derived = {}
        now = {fence.name: fence.contains(lat, lon) for fence in self.geofences}
        for name, inside in now.items():
            out[inside_key(name)] = (int(inside), "")
            if self.trip.inside.get(name, inside) != inside:
                out[event_key(name)] = ("entry" if inside else "exit", "")
        self.trip.inside = now  # a geofence taken out of the config or the macro is forgotten
        return out

    def _while_parked(self, clock: float, speed_kmh: float, step: float) -> Derived:
        s, trip = self.settings, self.trip
        if speed_kmh < s.trip_start_speed:
            trip.fast_since = None
            trip.pending_distance = 0.0
            return {}
        if trip.fast_since is None:
            trip.fast_since = clock
            trip.pending_distance = 0.0
        else:
            trip.pending_distance += step
        if clock - trip.fast_since >= s.trip_start_after:
            trip.moving = True
            trip.start = trip.fast_since
            trip.distance = trip.pending_distance
            trip.slow_since = None
            trip.fast_since = None
        return {}

    def _while_moving(self, clock: float, speed_kmh: float) -> Derived:
        s, trip = self.settings, self.trip
        if speed_kmh >= s.trip_stop_speed:
            trip.slow_since = None
            return {}
        if trip.slow_since is None:
            trip.slow_since = clock
            trip.distance_at_slow = trip.distance
        if clock - trip.slow_since < s.trip_stop_after:
            return {}
        trip.moving = False
        trip.trips += 1
        return {
            "vehicle.trip.last.distance": (round(trip.distance_at_slow, 1), "m"),
            "vehicle.trip.last.duration": (round(trip.slow_since - trip.start, 1), "s"),
        }
