"""The battery guard and the cranking dip (battery.py), on sample sequences.

The shape of the input is what the collector feeds: AT RV voltages (the ELM327
answers 0.0-99.9 V with one decimal; a 12 V car sits between ~9 when cranking and
~14.7 when charging) and engine samples (RPM answered > 0, RPM 0, or the ECU
silent), in time order with any gaps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trapline.collectors.obd.battery import BatteryWatch, Change, GuardSettings
from trapline.collectors.obd.collector import read_settings
from trapline.core.config import ConfigError, Section

GUARD = GuardSettings(voltage=11.8, after=600.0, resume=12.4, crank_window=10.0)


def test_low_for_the_whole_delay_trips_once_and_recovery_resets() -> None:
    watch = BatteryWatch(GUARD)
    watch.engine(0.0, running=False)
    assert watch.voltage(0.0, 11.7) is None
    assert watch.voltage(599.0, 11.5) is None
    assert watch.voltage(600.0, 11.6) is Change.TRIPPED
    assert watch.voltage(700.0, 11.0) is None and watch.tripped
    assert watch.voltage(800.0, 12.3) is None, "below the resume voltage it stays tripped"
    assert watch.voltage(900.0, 12.4) is Change.RESET and not watch.tripped


def test_a_good_reading_in_between_starts_the_delay_again() -> None:
    watch = BatteryWatch(GUARD)
    watch.voltage(0.0, 11.0)
    watch.voltage(300.0, 11.8)  # at the threshold is not below it
    assert watch.voltage(800.0, 11.0) is None
    assert watch.voltage(1400.0, 11.0) is Change.TRIPPED


def test_a_running_engine_never_trips_and_a_start_resets() -> None:
    watch = BatteryWatch(GUARD)
    watch.engine(0.0, running=True)
    assert watch.voltage(0.0, 11.0) is None
    assert watch.voltage(5000.0, 11.0) is None
    watch.engine(5001.0, running=False)
    watch.voltage(5001.0, 11.0)
    assert watch.voltage(5601.0, 11.0) is Change.TRIPPED
    assert watch.engine(5700.0, running=True)[1] is Change.RESET


def test_zero_switches_the_guard_off() -> None:
    watch = BatteryWatch(GuardSettings(voltage=0.0))
    assert all(watch.voltage(t * 100.0, 3.0) is None for t in range(100))


def test_the_dip_is_the_lowest_reading_just_before_the_start() -> None:
    watch = BatteryWatch(GUARD)
    watch.engine(100.0, running=False)  # ignition on, RPM 0
    for clock, volts in ((100.0, 12.6), (103.0, 12.5), (104.0, 9.9), (105.0, 10.4)):
        watch.voltage(clock, volts)
    assert watch.engine(106.0, running=True) == (9.9, None)
    watch.voltage(107.0, 14.2)
    assert watch.engine(108.0, running=True) == (None, None), "one dip per start"


def test_no_dip_when_the_engine_was_never_seen_off() -> None:
    watch = BatteryWatch(GUARD)
    watch.voltage(0.0, 14.1)  # the voltage read at connect, engine already running
    assert watch.engine(1.0, running=True) == (None, None)


def test_readings_older_than_the_window_are_not_the_dip() -> None:
    watch = BatteryWatch(GUARD)
    watch.engine(0.0, running=False)
    watch.voltage(0.0, 8.0)
    watch.voltage(95.0, 12.5)
    assert watch.engine(100.0, running=True) == (12.5, None)


events = st.lists(
    st.tuples(st.floats(0.0, 400.0), st.one_of(
        st.integers(0, 160).map(lambda tenths: ("volts", tenths / 10)),
        st.sampled_from([("engine", True), ("engine", False)]),
    )),
    max_size=60,
)


@given(events)
def test_the_guard_agrees_with_a_replay_of_the_history(steps: list[tuple[float, tuple[str, object]]]) -> None:
    """Reference: the guard is tripped after a voltage sample when, since it was last
    reset (or since the start), the engine has been off and every voltage below the
    threshold for at least ``after`` seconds; a sample at ``resume`` or a running
    engine resets it."""
    watch = BatteryWatch(GUARD)
    clock = 0.0
    tripped = False
    low_since: float | None = None
    engine_on = False
    for gap, (kind, value) in steps:
        clock += gap
        if kind == "engine":
            running = bool(value)
            _, change = watch.engine(clock, running)
            engine_on = running
            if running:
                low_since = None
                assert change is (Change.RESET if tripped else None)
                tripped = False
            continue
        volts = float(value)  # type: ignore[arg-type]
        change = watch.voltage(clock, volts)
        if tripped:
            if volts >= GUARD.resume:
                assert change is Change.RESET
                tripped, low_since = False, None
            else:
                assert change is None
        elif engine_on or volts >= GUARD.voltage:
            low_since = None
            assert change is None
        else:
            low_since = clock if low_since is None else low_since
            tripped = clock - low_since >= GUARD.after
            assert change is (Change.TRIPPED if tripped else None)
        assert watch.tripped == tripped


def section(**keys: object) -> Section:
    base: dict[str, object] = {"type": "obd", "host": "van", "device": "/dev/x"}
    return Section(Path("agent.toml"), "collectors.van", base | keys)


def test_guard_settings_are_read_and_checked() -> None:
    guard = read_settings(section(battery_guard_voltage=11.5, battery_guard_after=60,
                                  battery_guard_resume=12.0, battery_guard_shutdown=True)).battery
    assert (guard.voltage, guard.after, guard.resume, guard.shutdown) == (11.5, 60.0, 12.0, True)
    assert guard.shutdown_command == ("systemctl", "poweroff")
    assert read_settings(section()).battery == GuardSettings()
    with pytest.raises(ConfigError, match=r"resume: must be above battery_guard_voltage \(12\.5"):
        read_settings(section(battery_guard_voltage=12.5))
    with pytest.raises(ConfigError, match="battery_guard_shutdown_command: empty"):
        read_settings(section(battery_guard_shutdown=True, battery_guard_shutdown_command=[]))
