"""What the rest of trapline relies on in Reading, Discovery and Spooled (msgspec Structs)."""

from __future__ import annotations

import gc
import json
import pickle

import msgspec
import pytest

from trapline.core.model import Discovery, Reading
from trapline.core.plugin import Spooled

READING = Reading("h", "k", 1.5, 1_700_000_000, 7, "s", {"pid": "RPM"})


def test_items_are_immutable() -> None:
    with pytest.raises(AttributeError):
        READING.value = 2  # type: ignore[misc]
    spooled = Spooled(1, READING, 0.0, 0)
    with pytest.raises(AttributeError):
        spooled.attempts = 1  # type: ignore[misc]


def test_defaults_equality_and_pickling() -> None:
    reading = Reading("h", "k", "v", 5)
    assert (reading.ns, reading.unit, reading.labels) == (0, "", {})
    assert reading.labels is not Reading("h", "k", "v", 5).labels  # a dict of its own each
    assert reading == Reading(host="h", key="k", value="v", clock=5)
    assert reading != Reading("h", "k", "v", 6)
    assert pickle.loads(pickle.dumps(READING)) == READING
    assert hash(Reading("h", "k", 1, 2, labels=())) == hash(Reading("h", "k", 1, 2, labels=()))


def test_fields_encode_as_arrays_in_declaration_order() -> None:
    """The spool's batch rows store these arrays: a reordered field would misread every file."""
    discovery = Discovery("h", "lld", ({"{#X}": "1"},), 3, 4)
    encoded = msgspec.msgpack.decode(msgspec.msgpack.encode([READING, discovery]))
    assert encoded == [
        ["h", "k", 1.5, 1_700_000_000, 7, "s", {"pid": "RPM"}],
        ["h", "lld", [{"{#X}": "1"}], 3, 4],
    ]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(READING), type=Reading) == READING


def test_readings_and_spooled_stay_out_of_the_cycle_collector() -> None:
    assert not gc.is_tracked(READING)
    assert not gc.is_tracked(Spooled(1, READING, 0.0, 0))


def test_discovery_travels_as_a_json_reading() -> None:
    discovery = Discovery.now("h", "lld", [{"{#X}": "1"}])
    assert discovery.rows == ({"{#X}": "1"},)
    reading = discovery.as_reading()
    assert (reading.host, reading.key) == ("h", "lld")
    assert (reading.clock, reading.ns) == (discovery.clock, discovery.ns)
    assert json.loads(str(reading.value)) == {"data": [{"{#X}": "1"}]}
