from __future__ import annotations

import contextlib
import math
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapline.core.keys import quote_param, split_params
from trapline.core.model import Discovery, Reading
from trapline.middleware import normalize as normalize_module
from trapline.middleware.normalize import Rejected, normalize
from trapline.middleware.spool import Spool


def reading(key: str = "a.b", value: object = 1, unit: str = "", host: str = "h1") -> Reading:
    return Reading(host, key, value, 1_700_000_000, 5, unit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("unit", "value", "expected_unit", "expected"),
    [
        ("mph", 10, "km/h", 16.09344),
        ("kilopascal", 101, "Pa", 101000),
        ("degree_Fahrenheit", 212, "°C", 100.0),
        ("percent", 5, "%", 5),
        ("ms", 250, "s", 0.25),
        ("furlongs", 3, "furlongs", 3),  # unknown units pass unchanged
    ],
)
def test_units_convert_to_canonical(unit: str, value: float, expected_unit: str, expected: float) -> None:
    out = normalize(reading(unit=unit, value=value))
    assert isinstance(out, Reading)
    assert out.unit == expected_unit
    assert math.isclose(float(out.value), expected, rel_tol=1e-9)


def test_key_name_lowercased_params_kept() -> None:
    out = normalize(reading(key="OBD.Pid[Speed]"))
    assert isinstance(out, Reading) and out.key == "obd.pid[Speed]"


def test_clock_and_labels_survive() -> None:
    r = Reading("h", "k", 1.5, 123, 456, "", {"pid": "RPM"})
    out = normalize(r)
    assert (out.clock, out.ns) == (123, 456)
    assert isinstance(out, Reading) and out.labels == {"pid": "RPM"}


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (reading(value=float("nan")), "not a finite number"),
        (reading(value=None), "missing value"),
        (reading(value=[1]), "unsupported value type"),
        (reading(key="bad key!"), "invalid item key"),
        (reading(host="h/1"), "invalid Zabbix host name"),
        (reading(value="x" * 70000), "longer than"),
        (reading(value="abc", unit="mph"), "non-numeric value"),
    ],
)
def test_rejections_carry_reason(item: Reading, reason: str) -> None:
    with pytest.raises(Rejected, match=reason):
        normalize(item)


def test_checked_hosts_and_keys_are_remembered_but_rejections_never(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names that passed are looked up, not checked again; a bad one is refused every time,
    also once the bounded memory was cleared."""
    monkeypatch.setattr(normalize_module, "_CHECKED_MAX", 3)
    for round_no in range(3):
        for n in range(5):  # more than the bound: the memory is cleared on the way
            out = normalize(reading(key=f"Obd.K{n}[X]", host=f"h{n}"))
            assert (out.host, out.key) == (f"h{n}", f"obd.k{n}[X]"), round_no
        assert normalize(reading(key="a.b")) == reading(key="a.b")
        with pytest.raises(Rejected, match="invalid item key"):
            normalize(reading(key="bad key!"))
        with pytest.raises(Rejected, match="invalid Zabbix host name"):
            normalize(reading(host="h/1"))
        with pytest.raises(Rejected, match="invalid item key"):
            normalize(Discovery("h", "bad rule!", (), 1, 0))
    assert len(normalize_module._CANONICAL_KEYS) <= 3
    assert len(normalize_module._CHECKED_HOSTS) <= 3


def test_unchanged_item_is_returned_as_it_is() -> None:
    item = Reading("h", "mist.ap.raw", '{"a":"b"}', 1, 2, "", {"site": "s1"})
    assert normalize(item) is item
    assert normalize(Reading("h", "mist.ap.raw", '{"a":"b"}', 1, 2, "", {"site": "s1"})) is not item


def test_bool_and_bytes_coerced() -> None:
    assert normalize(reading(value=True)).value == 1  # type: ignore[union-attr]
    assert normalize(reading(value=b"caf\xc3\xa9")).value == "café"  # type: ignore[union-attr]


def test_discovery_rule_key_checked() -> None:
    d = Discovery("h", "Obd.Discovery", ({"{#PID}": "0C"},), 1, 0)
    assert normalize(d).rule == "obd.discovery"  # type: ignore[union-attr]
    with pytest.raises(Rejected):
        normalize(Discovery("h", "no spaces", (), 1, 0))


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
                 st.lists(st.integers())))
def test_normalize_never_raises_anything_but_rejected(value: object) -> None:
    with contextlib.suppress(Rejected):
        normalize(reading(value=value))
    bad_labels = Reading("h", "k", 1, 1, 0, "", {"l": value})  # type: ignore[dict-item]
    with contextlib.suppress(Rejected):
        normalize(bad_labels)
    with contextlib.suppress(Rejected):
        normalize(Discovery("h", "k.discovery", ({"{#X}": value}, value), 1, 0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "param", ["zabbix[127.0.0.1:10051]", "a,b", 'say "hi"', "", " padded "],
)
def test_quoted_params_round_trip(param: str) -> None:
    key = f"trapline.sent[{quote_param(param)}]"
    assert normalize(reading(key=key)).key == key  # type: ignore[union-attr]
    assert split_params(key[len("trapline.sent[") : -1]) == [param]


def test_split_params_of_plain_and_mixed_lists() -> None:
    assert split_params("eth0,rx") == ["eth0", "rx"]
    assert split_params('"a,b", c') == ["a,b", "c"]


_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)  # lone surrogates too


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), _ANY_TEXT),
    param=_ANY_TEXT,
    label=_ANY_TEXT,
)
def test_whatever_normalize_admits_the_spool_stores(
    tmp_path: Path, value: object, param: str, label: str
) -> None:
    """Huge integers and lone surrogates once passed normalize and crashed the spool's put."""
    item = Reading("h", f"k[{quote_param(param)}]", value, 1, 2, "", {"l": label})  # type: ignore[arg-type]
    row = Discovery("h", "k.discovery", ({"{#NAME}": label},), 1, 2)
    admitted = []
    for candidate in (item, row):
        with contextlib.suppress(Rejected):
            admitted.append(normalize(candidate))
    spool = Spool(tmp_path / f"spool-{uuid.uuid4().hex}.db")
    try:
        spool.put(admitted, ["zabbix", "mqtt"])
        back = [s.item for s in spool.claim("mqtt", 10)]
        assert back == admitted
        for s in spool.claim("zabbix", 10):  # refused: each reading gets a row of its own
            spool.defer([s.id], 1e12, refused=True)
        assert spool.depth() == 2 * len(admitted)
    finally:
        spool.close()
