"""Edge derivations: trips with hysteresis, home distance, geofence, overspeed duration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trapline.collectors.gps.vehicle_derived import DerivedSettings, EdgeDerivations, great_circle_m
from trapline.core.config import ConfigError, Section

HOME = (56.9496, 24.1052)
# One degree of latitude is about 111.2 km: 0.0001 deg ~ 11.1 m.
DEG_PER_M = 1 / 111_195.0


def drive(edge: EdgeDerivations, plan: list[tuple[float, float]], start: float = 0.0) -> list[dict]:
    """Feed one fix per second northwards; plan = [(seconds, km/h), ...]."""
    out, t, lat = [], start, HOME[0]
    for seconds, speed in plan:
        for _ in range(int(seconds)):
            t += 1
            lat += speed / 3.6 * DEG_PER_M
            out.append(edge.update(t, lat, HOME[1], speed))
    return out


def settings(**kw: object) -> DerivedSettings:
    return DerivedSettings(**{"home": HOME, "trip_start_after": 5, "trip_stop_after": 30, **kw})  # type: ignore[arg-type]


def test_great_circle_matches_a_known_distance() -> None:
    # Riga -> Tallinn, about 279 km
    assert math.isclose(great_circle_m(56.9496, 24.1052, 59.4370, 24.7536), 279_000, rel_tol=0.01)


def test_a_trip_starts_after_hysteresis_and_ends_with_its_figures() -> None:
    edge = EdgeDerivations(settings())
    fixes = drive(edge, [(3, 0), (3, 36), (2, 0), (60, 36), (40, 0)])
    moving = [f["vehicle.moving"][0] for f in fixes]
    # a 3 s burst is not a trip; 60 s at 36 km/h is, confirmed 5 s after it began
    assert moving[:8] == [0] * 8
    assert moving[8:12] == [0, 0, 0, 0] and moving[13] == 1
    assert moving[-1] == 0
    ends = [f for f in fixes if "vehicle.trip.last.distance" in f]
    assert len(ends) == 1
    distance, duration = ends[0]["vehicle.trip.last.distance"][0], ends[0]["vehicle.trip.last.duration"][0]
    assert math.isclose(float(distance), 59 * 10, rel_tol=0.03)  # 10 m/s from the first fast fix on
    assert math.isclose(float(duration), 60, abs_tol=1.5)
    assert fixes[-1]["vehicle.trips"][0] == 1
    assert fixes[-1]["vehicle.trip.distance"][0] == 0.0


def test_a_short_stop_does_not_end_the_trip() -> None:
    edge = EdgeDerivations(settings())
    fixes = drive(edge, [(20, 50), (20, 0), (20, 50)])
    assert all(f["vehicle.moving"][0] == 1 for f in fixes[5:])
    assert fixes[-1]["vehicle.trips"][0] == 0


def test_jitter_while_parked_adds_no_distance() -> None:
    edge = EdgeDerivations(settings())
    for t in range(100):
        out = edge.update(t, HOME[0] + (t % 2) * 0.0002, HOME[1], 1.0)
    assert out["vehicle.trip.distance"][0] == 0.0 and out["vehicle.moving"][0] == 0


def test_geofence_and_home_distance() -> None:
    edge = EdgeDerivations(settings(geofence_radius=1000))
    inside = edge.update(0, HOME[0] + 500 * DEG_PER_M, HOME[1], 0)
    outside = edge.update(1, HOME[0] + 1500 * DEG_PER_M, HOME[1], 0)
    assert inside["vehicle.geofence.inside"][0] == 1 and outside["vehicle.geofence.inside"][0] == 0
    assert math.isclose(float(outside["vehicle.home.distance"][0]), 1500, rel_tol=0.01)


def test_overspeed_duration_counts_continuous_time_above_the_limit() -> None:
    edge = EdgeDerivations(settings(overspeed_limit=90))
    fixes = drive(edge, [(10, 100), (1, 80), (4, 100)])
    durations = [f["vehicle.overspeed.duration"][0] for f in fixes]
    assert durations[9] == 9.0
    assert durations[10] == 0.0
    assert durations[-1] == 3.0


def test_nothing_optional_is_sent_unless_configured() -> None:
    edge = EdgeDerivations(DerivedSettings())
    out = edge.update(0, 1.0, 2.0, 10)
    assert "vehicle.home.distance" not in out and "vehicle.geofence.inside" not in out
    assert "vehicle.overspeed.duration" not in out


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"geofence_radius": 100}, "needs home_latitude"),
        ({"home_latitude": 95.0, "home_longitude": 0.0}, "expected a position"),
        ({"home_latitude": 1.0}, "home_longitude: missing"),
        ({"trip_start_speed": 5, "trip_stop_speed": 10}, "at most trip_start_speed"),
    ],
)
def test_config_mistakes(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DerivedSettings.from_section(Section(Path("t.toml"), "collectors.gps", data))
