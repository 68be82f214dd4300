"""``custom_pids`` entries: checked at start (one ConfigError naming the entry), and
decoded from ECU answers.  Entry shape: the collector's sample.toml; answer shape:
a positive response is the service byte + 0x40, the PID bytes echoed, the data
(SAE J1979 for mode 01, ISO 14229 ReadDataByIdentifier for 22), a refusal is
``7F <service> <code>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.support.outbox import ListOutbox
from trapline.collectors.obd.adapter import Adapter
from trapline.collectors.obd.collector import _Connection, build, read_settings
from trapline.collectors.obd.custom import AnswerError, CustomPid
from trapline.core.blocking import BlockingWorker
from trapline.core.config import ConfigError, Section

SOC = {"key": "EV_SOC", "name": "EV state of charge", "header": "7E4", "request": "22 B0 02",
       "formula": "(A*256+B)/10", "unit": "%"}
FUEL_RATE = {"key": "cyl_fuel_rate", "request": "01A2", "formula": "(A*256+B)/32", "unit": "mg",
             "tier": "fast"}


def section(custom: list[Any], **extra: Any) -> Section:
    data = {"type": "obd", "host": "van-17", "device": "/dev/rfcomm0", "custom_pids": custom} | extra
    return Section(Path("agent.toml"), "collectors.van17_obd", data)


def custom_of(sec: Section) -> dict[str, CustomPid]:
    return {c.key: c for tier in read_settings(sec).tiers for c in tier.custom}


def test_entries_land_in_their_tiers() -> None:
    settings = read_settings(section([SOC, FUEL_RATE]))
    by_tier = {tier.name: [c.key for c in tier.custom] for tier in settings.tiers}
    assert by_tier == {"fast": ["cyl_fuel_rate"], "slow": ["EV_SOC"]}  # slow unless told
    soc = custom_of(section([SOC]))["EV_SOC"]
    assert (soc.request, soc.header, soc.unit, soc.name) == ("22B002", "7E4", "%", "EV state of charge")
    fuel = custom_of(section([FUEL_RATE]))["cyl_fuel_rate"]
    assert (fuel.header, fuel.name, fuel.unit) == (None, "cyl_fuel_rate", "mg")


def test_entries_may_name_configured_tiers() -> None:
    tiers = {"often": {"interval": 2.0, "pids": ["RPM"]}}
    settings = read_settings(section([SOC | {"tier": "often"}], tiers=tiers))
    assert [c.key for c in settings.tiers[0].custom] == ["EV_SOC"]


@pytest.mark.parametrize(("change", "where", "says"), [
    ({"formula": "(A*256+B/10"}, "formula", "'(' at position 1 is never closed"),
    ({"formula": "A ** 2"}, "formula", "unexpected '*'"),
    ({"formula": "__import__('os').system('x')"}, "formula", "unexpected '_'"),
    ({"formula": "42"}, "formula", "uses no data byte"),
    ({"header": "7EG"}, "header", "not a CAN id"),
    ({"header": "7E"}, "header", "not a CAN id"),
    ({"request": "22B0Z2"}, "request", "not hex digits in pairs"),
    ({"request": "22B00"}, "request", "not hex digits in pairs"),
    ({"request": "09 02"}, "request", "only 01 and 22"),
    ({"request": "22B0"}, "request", "takes 2 PID byte(s)"),
    ({"key": "RPM"}, "key", "clashes with a PID of the shipped catalogue"),
    ({"key": "rpm"}, "key", "clashes with a PID of the shipped catalogue"),
    ({"key": "EV SOC]"}, "key", "not 1-64 letters, digits or _"),
    ({"tier": "hourly"}, "tier", "no tier 'hourly' (tiers: fast, slow)"),
    ({"scale": 2}, "scale", "unknown key"),
    ({"formula": 7}, "formula", "expected a string"),
])
def test_a_bad_entry_is_one_error_naming_it(change: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_settings(section([FUEL_RATE, SOC | change]))
    message = str(caught.value)
    assert message.startswith(f"agent.toml: [collectors.van17_obd.custom_pids[1]].{where}: "), message
    assert says in message


def test_a_key_defined_twice_names_both_places() -> None:
    with pytest.raises(ConfigError) as caught:
        read_settings(section([SOC, FUEL_RATE, SOC | {"key": "ev_soc"}]))
    assert str(caught.value) == (
        "agent.toml: [collectors.van17_obd.custom_pids[2]].key: custom PID 'ev_soc' is defined twice "
        "(first at agent.toml: [collectors.van17_obd.custom_pids[0]].key)"
    )


# every documented key optional, each a good value, some other TOML value or junk text,
# plus a stray key: only a ConfigError may come out
def entry_values(good: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(good), st.text(max_size=20), st.integers(), st.booleans(),
                     st.lists(st.text(max_size=3), max_size=2))


entries = st.fixed_dictionaries({}, optional={key: entry_values(str(good)) for key, good in
                                              (SOC | {"tier": "fast", "extra": ""}).items()})


@given(st.lists(entries, max_size=3))
def test_any_entries_load_or_give_a_config_error(custom: list[dict[str, Any]]) -> None:
    try:
        read_settings(section(custom))
    except ConfigError as exc:
        assert str(exc).startswith("agent.toml: [collectors.van17_obd")


def soc() -> CustomPid:
    return custom_of(section([SOC]))["EV_SOC"]


def test_decode_takes_the_positive_answer_among_ecus() -> None:
    other_ecu = bytes.fromhex("62B0030000")
    assert soc().decode((other_ecu, bytes.fromhex("62B00202F1"))) == 75.3


@pytest.mark.parametrize(("payloads", "says"), [
    ((), "no answer to 22B002"),
    ((bytes.fromhex("7F2231"),), "the ECU refused 22B002 (code 31)"),
    ((bytes.fromhex("62B00202"),), "reads 2 data bytes, the answer has 1"),
    ((bytes.fromhex("410D20"),), "no answer to 22B002"),
])
def test_decode_failures_are_reasons(payloads: tuple[bytes, ...], says: str) -> None:
    with pytest.raises(AnswerError, match=says.replace("(", r"\(").replace(")", r"\)")):
        soc().decode(payloads)


TEMPLATE = Path(__file__).resolve().parent.parent / "zabbix_templates" / "vehicle_obd_gps" / \
    "template_vehicle_obd_gps.yaml"


def test_the_vehicle_template_discovers_custom_pids_as_items_with_name_and_unit() -> None:
    """The rows the collector sends for custom PIDs pass the template's PID rule with its
    default filter macros, and its prototype then names, keys and units them as sent."""
    collector = build("car", section([SOC, FUEL_RATE]))
    out = ListOutbox()
    collector._out = out
    conn = _Connection(Adapter("/dev/null", None, None), BlockingWorker("obd-test"))
    collector._discover_pids(conn)  # an ECU that flags none of the shipped PIDs
    rows = out.discoveries("obd.pid.discovery")[0].rows
    assert sorted(rows, key=str) == [{"{#PID}": "EV_SOC", "{#NAME}": "EV state of charge", "{#UNIT}": "%"},
                                     {"{#PID}": "cyl_fuel_rate", "{#NAME}": "cyl_fuel_rate", "{#UNIT}": "mg"}]

    template = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]["templates"][0]
    # A macro whose value is empty has no "value" in the YAML export.
    macros = {m["macro"]: m.get("value", "") for m in template["macros"]}
    rule = next(r for r in template["discovery_rules"] if r["key"] == "obd.pid.discovery")
    prototype = next(p for p in rule["item_prototypes"] if p["key"] == "obd.pid[{#PID}]")
    for row in rows:
        for condition in rule["filter"]["conditions"]:
            pattern = macros[condition["value"]]
            matched = re.search(pattern, row[condition["macro"]]) is not None
            wanted = condition.get("operator", "MATCHES_REGEX") == "MATCHES_REGEX"
            assert matched == wanted, (row, condition)
        expanded = {}
        for field in ("key", "name", "units"):
            text = prototype[field]
            for macro, value in row.items():
                text = text.replace(macro, value)
            expanded[field] = text
        assert expanded == {"key": f"obd.pid[{row['{#PID}']}]", "name": f"Vehicle: OBD: {row['{#NAME}']}",
                            "units": row["{#UNIT}"]}
    assert prototype["value_type"] == "FLOAT"  # the formulas' values are floats


# answers as elm327.ecu_payloads hands them on: any number of ECU messages, each a positive
# answer to this or another identifier, a refusal, or any bytes, with any data after it
heads = st.sampled_from([b"", b"\x62\xb0\x02", b"\x62\xb0\x03", b"\x7f\x22", b"\x41\x0d"])
messages = st.builds(lambda head, tail: head + tail, heads, st.binary(max_size=6))


@given(st.lists(messages, max_size=4))
def test_any_answer_gives_a_value_or_a_reason(payloads: list[bytes]) -> None:
    try:
        value = soc().decode(payloads)
    except AnswerError as exc:
        assert str(exc).startswith("custom PID EV_SOC: ")
        return
    answer = next(p for p in payloads if p.startswith(bytes.fromhex("62B002")))
    assert value == (answer[3] * 256 + answer[4]) / 10
