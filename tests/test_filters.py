from __future__ import annotations

from pathlib import Path

from trapline.core.config import Section
from trapline.core.model import Discovery, Reading
from trapline.middleware.filters import Filters


def at(t: float, value: object = 1, key: str = "obd.rpm") -> Reading:
    return Reading("car", key, value, int(t), int((t % 1) * 1e9))  # type: ignore[arg-type]


def make(**kw: object) -> Filters:
    return Filters.from_config(Section(Path("t.toml"), "filters", dict(kw)))


def test_default_passes_everything() -> None:
    f = make()
    assert all(f.admit(at(100 + i, 5)) for i in range(5))


def test_discard_unchanged_with_heartbeat() -> None:
    f = make(discard_unchanged_heartbeat=60)
    assert f.admit(at(0, 5))
    assert not f.admit(at(10, 5))  # unchanged
    assert f.admit(at(20, 6))  # changed
    assert not f.admit(at(79, 6))
    assert f.admit(at(80, 6))  # heartbeat: 60 s since the last one sent


def test_min_interval_per_key_rule() -> None:
    f = make(rules=[{"match": "obd.*", "min_interval": 1.0}])
    assert f.admit(at(0.0, 1))
    assert not f.admit(at(0.5, 2))
    assert f.admit(at(1.0, 3))
    assert f.admit(at(0.1, 1, key="gps.lat")) and f.admit(at(0.2, 1, key="gps.lat"))  # other keys free


def test_clock_going_backwards_never_suppresses() -> None:
    f = make(discard_unchanged_heartbeat=60)
    assert f.admit(at(100, 5))
    assert f.admit(at(50, 5))


def test_discovery_resent_only_on_change_or_heartbeat() -> None:
    f = make(discovery_heartbeat=600)
    rows = ({"{#A}": "1"},)
    assert f.admit(Discovery("h", "r", rows, 0))
    assert not f.admit(Discovery("h", "r", rows, 100))
    assert f.admit(Discovery("h", "r", ({"{#A}": "2"},), 200))
    assert f.admit(Discovery("h", "r", ({"{#A}": "2"},), 800))
