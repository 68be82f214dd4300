"""Named geofences of the GPS collector: circles and polygons, inside/outside, entry and exit.

Config shapes follow the sample in collectors/gps/vehicle_derived.py; names are any TOML
key (TOML allows any string as a quoted key), so hypothesis draws arbitrary text.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trapline.collectors.gps.vehicle_derived import (
    DerivedSettings,
    EdgeDerivations,
    Geofence,
    great_circle_m,
)
from trapline.core.config import ConfigError, Section
from trapline.core.keys import split_params
from trapline.wire.vehicle_state import VehicleState

DEPOT = (56.9496, 24.1052)
# An L-shaped yard: its notch (north-east) is outside although inside the bounding box.
YARD = ["56.000 24.000", "56.002 24.000", "56.002 24.001", "56.001 24.001", "56.001 24.002", "56.000 24.002"]


def settings(fences: dict[str, dict[str, object]], **extra: object) -> DerivedSettings:
    section = Section(Path("t.toml"), "collectors.gps", {"geofences": fences, **extra})
    return DerivedSettings.from_section(section)


def test_a_circle_holds_what_is_within_its_radius() -> None:
    (depot,) = settings({"depot": {"latitude": DEPOT[0], "longitude": DEPOT[1], "radius": 300}}).geofences
    north = 290 / 111_195.0
    assert depot.contains(DEPOT[0] + north, DEPOT[1])
    assert not depot.contains(DEPOT[0] + 2 * north, DEPOT[1])


@pytest.mark.parametrize(
    ("lat", "lon", "inside"),
    [(56.0005, 24.0005, True), (56.0015, 24.0005, True), (56.0005, 24.0015, True),
     (56.0015, 24.0015, False),  # the notch
     (55.9995, 24.0005, False), (56.0005, 24.0025, False)],
)
def test_a_polygon_follows_its_concave_outline(lat: float, lon: float, inside: bool) -> None:
    (yard,) = settings({"yard": {"polygon": YARD}}).geofences
    assert yard.contains(lat, lon) is inside


@given(
    st.tuples(st.floats(-60, 60), st.floats(-170, 170)), st.tuples(st.floats(0.001, 1), st.floats(0.001, 1)),
    st.tuples(st.floats(-2, 2), st.floats(-2, 2)),
)
def test_a_rectangle_polygon_agrees_with_its_bounds(
    corner: tuple[float, float], size: tuple[float, float], where: tuple[float, float]
) -> None:
    (south, west), (height, width), (dlat, dlon) = corner, size, where
    corners = [f"{south} {west}", f"{south + height} {west}", f"{south + height} {west + width}",
               f"{south} {west + width}"]
    (box,) = settings({"box": {"polygon": corners}}).geofences
    lat, lon = south + dlat * height, west + dlon * width
    strictly_in = south < lat < south + height and west < lon < west + width
    strictly_out = not (south <= lat <= south + height and west <= lon <= west + width)
    if strictly_in or strictly_out:  # on an edge either answer is fair
        assert box.contains(lat, lon) is strictly_in


def drive_through(edge: EdgeDerivations, lats: list[float]) -> list[dict]:
    return [edge.update(float(i), lat, DEPOT[1], 30.0) for i, lat in enumerate(lats)]


def test_entry_and_exit_are_sent_once_at_the_crossing_fix() -> None:
    conf = settings({"depot": {"latitude": DEPOT[0], "longitude": DEPOT[1], "radius": 100}})
    out = 1000 / 111_195.0
    lats = [DEPOT[0] - out, DEPOT[0], DEPOT[0], DEPOT[0] + out, DEPOT[0] + out]
    fixes = drive_through(EdgeDerivations(conf), lats)
    assert [f["vehicle.geofence.inside[depot]"][0] for f in fixes] == [0, 1, 1, 0, 0]
    assert [f.get("vehicle.geofence.event[depot]", ("",))[0] for f in fixes] == ["", "entry", "", "exit", ""]


def test_a_restart_inside_is_not_an_entry_and_a_crossing_while_down_is_reported(tmp_path: Path) -> None:
    conf = settings({"depot": {"latitude": DEPOT[0], "longitude": DEPOT[1], "radius": 100}})
    state = VehicleState(tmp_path / "v.json", "van")
    drive_through(EdgeDerivations(conf, state), [DEPOT[0]])
    asyncio.run(state.save())

    def restarted() -> EdgeDerivations:
        again = VehicleState(tmp_path / "v.json", "van")
        again.load()
        return EdgeDerivations(conf, again)

    (inside,) = drive_through(restarted(), [DEPOT[0]])
    assert "vehicle.geofence.event[depot]" not in inside
    (outside,) = drive_through(restarted(), [DEPOT[0] + 0.01])  # it left while the agent was down
    assert outside["vehicle.geofence.event[depot]"] == ("exit", "")


def test_the_home_circle_of_older_configs_works_as_before_beside_named_ones() -> None:
    conf = settings({"yard": {"polygon": YARD}}, home_latitude=DEPOT[0], home_longitude=DEPOT[1],
                    geofence_radius=500)
    edge = EdgeDerivations(conf)
    fix = edge.update(0.0, DEPOT[0], DEPOT[1], 0.0)
    assert fix["vehicle.geofence.inside"] == (1, "")
    assert fix["vehicle.geofence.inside[yard]"] == (0, "")
    assert edge.discovery_rows() == [{"{#GEOFENCE}": "yard"}]
    assert EdgeDerivations(settings({})).discovery_rows() == []


@given(st.text(min_size=1, max_size=20))
def test_any_name_is_a_geofence_or_one_clear_config_error(name: str) -> None:
    try:
        (fence,) = settings({name: {"latitude": 1.0, "longitude": 2.0, "radius": 5}}).geofences
    except ConfigError as exc:
        assert "geofence name" in str(exc)
        return
    assert fence.name == name
    # The key it is sent under names it back, read as Zabbix reads a key parameter.
    fix = EdgeDerivations(DerivedSettings(geofences=(fence,))).update(0.0, 1.0, 2.0, 0.0)
    (key,) = (k for k in fix if k.startswith("vehicle.geofence.inside["))
    assert split_params(key[len("vehicle.geofence.inside[") : -1]) == [name]


@pytest.mark.parametrize(
    ("fence", "complaint"),
    [
        ({"polygon": ["56 24", "57 24"]}, "at least 3"),
        ({"polygon": ["56 24", "57 24", "56 24"]}, "at least 3"),
        ({"polygon": ["56 24", "57 24", "57"]}, "'lat lon'"),
        ({"polygon": ["56 24", "57 24", "north east"]}, "'lat lon'"),
        ({"polygon": ["56 24", "57 24", "91 25"]}, "position in degrees"),
        ({"polygon": ["56 24", "57 24", "nan 25"]}, "position in degrees"),
        ({"latitude": 56.0, "longitude": 24.0}, "radius"),
        ({"latitude": 56.0, "longitude": 24.0, "radius": 0}, "radius"),
        ({"latitude": 56.0, "radius": 10}, "longitude"),
        ({"latitude": 56.0, "longitude": 24.0, "radius": 10, "colour": "red"}, "colour"),
    ],
)
def test_a_bad_geofence_is_one_clear_config_error(fence: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as raised:
        settings({"depot": fence})
    assert "geofences.depot" in str(raised.value)


def test_circle_edge_uses_the_same_distance_as_the_rest() -> None:
    fence = Geofence("x", centre=DEPOT, radius=great_circle_m(*DEPOT, DEPOT[0] + 0.001, DEPOT[1]))
    assert fence.contains(DEPOT[0] + 0.001, DEPOT[1])
