"""Vehicle totals at the edge: odometer from ECU or GPS, engine time, today's distance, on disk.

The ECU odometer's shape (PID A6, 0.1 km per bit, so steps of 100 m) comes from
SAE J1979; the collectors hand in metres.  A restart is a new :class:`VehicleState`
on the same file, as a new agent process would make it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.outbox import ListOutbox
from trapline.collectors.gps.vehicle_derived import DerivedSettings, EdgeDerivations
from trapline.wire import vehicle_state
from trapline.wire.vehicle_state import UnreadableState, VehicleState, open_state, state_path

HOST = "van-17"
DAY = 86_400.0
NOON = 1_700_000_000.0 - 1_700_000_000.0 % DAY + DAY / 2  # noon UTC, the test's local time
FRESH = 90.0  # s an ECU odometer reading stays valid
GAP = 3.0  # s between RPM samples that still counts as running


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Local time is UTC here, so "today" has known edges whatever the machine's zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def fresh(tmp_path: Path) -> VehicleState:
    state = VehicleState(state_path(tmp_path, HOST), HOST)
    state.load()
    return state


def reread(path: Path) -> VehicleState:
    state = VehicleState(path, HOST)
    state.load()
    return state


def restart(state: VehicleState) -> VehicleState:
    asyncio.run(state.save())
    again = VehicleState(state.path, HOST)
    again.load()
    return again


def odometer(state: VehicleState) -> float:
    return state.odometer()["vehicle.odometer"][0]


def test_gps_distance_is_the_odometer_without_an_ecu_and_survives_a_restart(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    for i in range(10):
        state.gps_distance(NOON + i, 12.5)
    state = restart(state)
    assert odometer(state) == 125.0
    assert state.today(NOON + 20)["vehicle.distance.today"][0] == 125.0


def test_the_ecu_sets_the_odometer_and_gps_is_ignored_while_it_is_fresh(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    state.gps_distance(NOON, 300.0)
    state.ecu_odometer(NOON + 1, 50_000_000.0, FRESH)  # first reading: the real odometer, ahead of GPS
    assert odometer(state) == 50_000_000.0
    assert state.today(NOON + 1)["vehicle.distance.today"][0] == 300.0  # the reading itself was not driven
    state.gps_distance(NOON + 2, 40.0)  # the ECU counts this stretch
    state.ecu_odometer(NOON + 30, 50_000_100.0, FRESH)
    assert odometer(state) == 50_000_100.0


def test_a_silent_ecu_leaves_it_to_gps_and_corrects_it_forward_only(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    state.ecu_odometer(NOON, 1_000_000.0, FRESH)
    silent = NOON + FRESH + 1
    state.gps_distance(silent, 900.0)  # adapter unplugged: GPS counts
    assert odometer(state) == 1_000_900.0
    state.ecu_odometer(silent + 10, 1_001_000.0, FRESH)  # GPS missed 100 m: caught up
    assert odometer(state) == 1_001_000.0
    state.gps_distance(silent + FRESH + 20, 700.0)
    state.ecu_odometer(silent + FRESH + 30, 1_001_500.0, FRESH)  # GPS counted 200 m too many: hold
    assert odometer(state) == 1_001_700.0
    state.ecu_odometer(silent + FRESH + 40, 1_001_800.0, FRESH)  # until the ECU passes it
    assert odometer(state) == 1_001_800.0


def test_an_ecu_that_starts_far_lower_is_a_new_baseline_counted_on_from(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    state.ecu_odometer(NOON, 80_000_000.0, FRESH)
    state.ecu_odometer(NOON + 10, 5_000.0, FRESH)  # a replaced cluster
    assert odometer(state) == 80_000_000.0
    state.ecu_odometer(NOON + 20, 5_300.0, FRESH)
    assert odometer(state) == 80_000_300.0
    assert odometer(restart(state)) == 80_000_300.0


def test_engine_time_counts_running_samples_and_not_gaps_or_stops(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    for i in range(11):  # 10 s running
        state.engine_sample(NOON + i, True, GAP)
    state.engine_sample(NOON + 30, True, GAP)  # 19 s without an answer: unknown, not counted
    state.engine_sample(NOON + 31, True, GAP)
    state.engine_sample(NOON + 32, False, GAP)  # engine off
    state.engine_sample(NOON + 33, True, GAP)  # first sample after the stop only marks
    state.engine_sample(NOON + 34, True, GAP)
    assert state.engine()["vehicle.engine.time"][0] == 12.0
    assert restart(state).engine()["vehicle.engine.time"][0] == 12.0


def test_todays_distance_starts_again_at_local_midnight(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    state.gps_distance(NOON, 1000.0)
    midnight = NOON + DAY / 2
    assert state.today(midnight - 1)["vehicle.distance.today"][0] == 1000.0
    assert state.today(midnight)["vehicle.distance.today"][0] == 0.0  # parked across midnight
    state.gps_distance(midnight + 60, 250.0)
    assert restart(state).today(midnight + 61)["vehicle.distance.today"][0] == 250.0
    assert odometer(state) == 1250.0


# Events as the collectors make them: ECU readings in 100 m steps (J1979's 0.1 km), GPS
# steps of any length, engine samples; time moves forward by any amount.
EVENTS = st.lists(
    st.tuples(
        st.floats(0, 400),
        st.one_of(
            st.tuples(st.just("ecu"), st.integers(0, 2_000_000).map(lambda tenths: tenths * 100.0)),
            st.tuples(st.just("gps"), st.floats(0, 5_000)),
            st.tuples(st.just("engine"), st.booleans()),
            st.tuples(st.just("restart"), st.none()),
        ),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(events=EVENTS)
def test_no_total_ever_goes_down_whatever_the_sources_and_restarts(
    tmp_path_factory: pytest.TempPathFactory, events: list[tuple[float, tuple[str, object]]]
) -> None:
    state = fresh(tmp_path_factory.mktemp("state"))
    clock, last_odometer, last_engine = NOON, 0.0, 0.0
    for step, (kind, value) in events:
        clock += step
        if kind == "ecu":
            state.ecu_odometer(clock, float(value), FRESH)  # type: ignore[arg-type]
        elif kind == "gps":
            state.gps_distance(clock, float(value))  # type: ignore[arg-type]
        elif kind == "engine":
            state.engine_sample(clock, bool(value), GAP)
        else:
            state = restart(state)
        now_odometer, now_engine = odometer(state), state.engine()["vehicle.engine.time"][0]
        assert now_odometer >= last_odometer and now_engine >= last_engine
        last_odometer, last_engine = now_odometer, now_engine
    assert odometer(restart(state)) == last_odometer


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        json.dumps({"format": 2, "host": HOST}),
        json.dumps({"format": 1, "host": "van-18", "odometer_m": 5.0}),
        json.dumps({"format": 1, "host": HOST, "odometer_m": -5.0}),
        json.dumps({"format": 1, "host": HOST, "engine_s": "12"}),
        json.dumps({"format": 1, "host": HOST, "trips": []}),
    ],
)
def test_a_damaged_file_is_set_aside_and_the_totals_start_over(tmp_path: Path, content: str) -> None:
    path = state_path(tmp_path, HOST)
    path.write_text(content)
    state = VehicleState(path, HOST)
    with pytest.raises(UnreadableState, match="unreadable"):
        state.load()
    assert not path.exists() and path.with_name(path.name + ".unreadable").read_text() == content
    assert odometer(state) == 0.0


def test_a_write_cut_short_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = fresh(tmp_path)
    state.gps_distance(NOON, 100.0)
    asyncio.run(state.save())

    def power_cut(*_: object) -> None:
        raise OSError("no space left on device")

    state.gps_distance(NOON + 1, 50.0)
    monkeypatch.setattr(vehicle_state.os, "replace", power_cut)
    with pytest.raises(OSError, match="no space"):
        asyncio.run(state.save())
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == [state.path.name]  # no temporary left behind
    assert odometer(reread(state.path)) == 100.0
    asyncio.run(state.save())  # still due, so the next save writes it
    assert odometer(reread(state.path)) == 150.0


def test_a_torn_temporary_beside_the_file_is_not_read(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    state.gps_distance(NOON, 100.0)
    asyncio.run(state.save())
    torn = '{"format": 1, "host": "van-17", "odome'  # SIGKILL in the middle of writing the sibling
    (tmp_path / f".{state.path.name}.x1y2").write_text(torn)
    assert odometer(reread(state.path)) == 100.0


def test_an_older_snapshot_never_replaces_a_newer_one(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    # two collectors saving at once; the first snapshot's thread is the slower one
    state._write(2, json.dumps({"format": 1, "host": HOST, "odometer_m": 200.0}))
    state._write(1, json.dumps({"format": 1, "host": HOST, "odometer_m": 100.0}))
    assert odometer(reread(state.path)) == 200.0


def test_a_failed_save_is_one_condition_until_a_save_succeeds(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = VehicleState(state_path(blocker, HOST), HOST)
    state.gps_distance(NOON, 10.0)
    out = ListOutbox()
    asyncio.run(state.save_or_report(out, "gps: car"))
    assert list(out.conditions) == ["vehicle-state"] and "gps: car: cannot save" in out.errors[0]


def test_collectors_of_one_host_and_directory_share_one_state(tmp_path: Path) -> None:
    assert open_state(tmp_path, HOST) is open_state(tmp_path / "." , HOST)
    assert open_state(tmp_path, HOST) is not open_state(tmp_path, "van-18")


def drive(edge: EdgeDerivations, start: float, seconds: int, kmh: float, lat: float) -> tuple[float, dict]:
    out: dict = {}
    for i in range(seconds):
        lat += kmh / 3.6 / 111_195.0
        out = edge.update(start + i, lat, 24.1, kmh)
    return lat, out


def test_a_trip_goes_on_across_a_restart_without_reset_or_jump(tmp_path: Path) -> None:
    conf = DerivedSettings(trip_start_after=5, trip_stop_after=30)
    state = fresh(tmp_path)
    lat, before = drive(EdgeDerivations(conf, state), NOON, 60, 36.0, 56.9)
    assert before["vehicle.moving"][0] == 1
    state = restart(state)
    edge = EdgeDerivations(conf, state)  # the agent came back 10 s later, still driving
    lat, after = drive(edge, NOON + 70, 60, 36.0, lat + 100 / 111_195.0)
    assert after["vehicle.moving"][0] == 1 and after["vehicle.trips"][0] == 0
    assert after["vehicle.trip.duration"][0] == pytest.approx(129, abs=1)  # the same trip
    # 10 m/s throughout, the 100 m across the outage included
    assert after["vehicle.trip.distance"][0] == pytest.approx(1290, rel=0.02)
    assert after["vehicle.odometer"][0] == pytest.approx(after["vehicle.trip.distance"][0], abs=0.2)
    assert after["vehicle.distance.today"][0] == after["vehicle.odometer"][0]
    _, parked = drive(edge, NOON + 130, 40, 0.0, lat)
    assert parked["vehicle.trips"][0] == 1
    assert EdgeDerivations(conf, restart(state)).trip.trips == 1


def test_a_malformed_saved_trip_starts_parked_and_keeps_the_totals(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    state.gps_distance(NOON, 10.0)
    state.trips = {"moving": "yes", "trips": -1}
    edge = EdgeDerivations(DerivedSettings(), restart(state))
    assert not edge.trip.moving and edge.trip.trips == 0
    assert edge.update(NOON + 1, 56.9, 24.1, 0.0)["vehicle.odometer"][0] == 10.0


def test_a_parked_vehicle_with_gps_jitter_writes_nothing(tmp_path: Path) -> None:
    state = fresh(tmp_path)
    edge = EdgeDerivations(DerivedSettings(), state)
    edge.update(NOON, 56.9, 24.1, 0.0)
    asyncio.run(state.save())
    written = state.path.stat().st_mtime_ns
    for i in range(1, 50):  # a metre or so of wander, speed below any trip start
        edge.update(NOON + i, 56.9 + (i % 3) * 1e-5, 24.1 - (i % 2) * 1e-5, 1.5)
        asyncio.run(state.save())
    assert state.path.stat().st_mtime_ns == written
    assert odometer(state) == 0.0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
# The file's own fields with values of any JSON type, so most draws get past the outer shape.
STATE_LIKE = st.fixed_dictionaries(
    {"format": st.just(1), "host": st.just(HOST)},
    optional={key: JSON for key in ("odometer_m", "ecu_m", "ecu_offset_m", "engine_s", "day", "today_m",
                                    "trips")},
)


@settings(max_examples=150, deadline=None)
@given(content=st.one_of(JSON, STATE_LIKE, st.binary(max_size=64).map(lambda b: b.decode("latin-1"))))
def test_any_file_content_loads_or_is_one_clear_error(tmp_path_factory: pytest.TempPathFactory,
                                                      content: object) -> None:
    path = state_path(tmp_path_factory.mktemp("state"), HOST)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    state = VehicleState(path, HOST)
    try:
        state.load()
    except UnreadableState:
        assert path.with_name(path.name + ".unreadable").exists()
        return
    assert odometer(state) >= 0 and state.engine()["vehicle.engine.time"][0] >= 0
    EdgeDerivations(DerivedSettings(), state).update(NOON, 56.9, 24.1, 0.0)  # whatever trips held
