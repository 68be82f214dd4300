"""The OBD connection state machine and the collector's configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trapline.collectors.obd import build
from trapline.collectors.obd.adapter import Reach
from trapline.collectors.obd.link import Link, LinkState
from trapline.core.config import ConfigError, Section


def test_backoff_while_no_adapter_then_full_polling() -> None:
    link = Link(retry_initial=1.0, retry_max=5.0, unusable_max=3)
    assert link.needs_reconnect() and link.retry_delay() == 0.0
    delays = []
    for _ in range(5):
        link.connected(Reach.NOTHING)
        delays.append(link.retry_delay())
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert link.state is LinkState.NO_ADAPTER
    assert link.connected(Reach.CAR) is True
    assert link.state is LinkState.RUNNING and not link.needs_reconnect() and link.retry_delay() == 0.0


def test_unusable_answers_in_a_row_ask_for_a_reconnect() -> None:
    link = Link(1.0, 5.0, unusable_max=3)
    link.connected(Reach.CAR)
    link.unusable()
    link.unusable()
    link.answered()  # the streak is broken
    link.unusable()
    link.unusable()
    assert not link.needs_reconnect()
    link.unusable()
    assert link.needs_reconnect()


def test_ignition_cycle_keeps_state_until_the_reconnect_answers() -> None:
    link = Link(1.0, 5.0, unusable_max=1)
    link.connected(Reach.CAR)
    link.unusable()  # ignition off: NO DATA
    assert link.needs_reconnect() and link.state is LinkState.RUNNING
    assert link.connected(Reach.ADAPTER) is True
    assert link.state is LinkState.IGNITION_OFF and link.retry_delay() == 0.0
    link.lost()  # the ECU answers the probe again
    assert link.connected(Reach.CAR) is True
    assert link.connected(Reach.CAR) is False  # same state: no change reported


def section(**data: Any) -> Section:
    base = {"type": "obd", "host": "van", "device": "/dev/rfcomm0"}
    return Section(Path("t.toml"), "collectors.car", base | data)


def test_defaults_and_tiers() -> None:
    collector = build("car", section())
    assert [t.name for t in collector.settings.tiers] == ["fast", "slow"]
    assert collector.settings.baudrate is None
    tiers = {"t": {"interval": 2, "pids": ["RPM"]}}
    tcp = build("car", section(device="socket://127.0.0.1:35000", tiers=tiers))
    assert tcp.settings.baudrate == 38400
    assert [p.name for p in tcp.settings.tiers[0].pids] == ["RPM"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tiers": {"t": {"interval": 1, "pids": ["WARP_DRIVE"]}}}, "unknown PID 'WARP_DRIVE'"),
        ({"tiers": {"t": {"interval": 1, "pids": ["RPM"], "colour": 1}}}, "unknown key"),
        ({"max_pids_per_request": 7}, "at most 6"),
        ({"call_timout": 5}, "unknown key"),
    ],
)
def test_bad_configuration_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build("car", section(**data))
