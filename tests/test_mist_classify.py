"""Device classification when the optional ``type`` is missing, and devices that are not monitored.

Shapes: Juniper's published device-stats models (StatsAp / StatsSwitch / StatsGateway, e.g. the
models documented in tmunzer/mistapi-go doc/models) mark every field optional, ``type`` included;
``type`` is one of ap, switch, gateway, ble.  Models are named by family
(AP12 ... AP64, EX..., SRX.../SSR...).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_mist_fleet import MAC1, MAC2, NODE1, NODE2, lld, make_fleet, raw
from trapline.collectors.mist.fleet import kind_of_model

AP_MODELS = [
    "AP12",
    "AP21",
    "AP24",
    "AP32",
    "AP33",
    "AP34",
    "AP41",
    "AP43",
    "AP45",
    "AP47",
    "AP61",
    "AP63",
    "ap64",
]


def device(mac: str, **fields: Any) -> dict[str, Any]:
    return {"id": f"00000000-0000-0000-1000-{mac}", "mac": mac, **fields}


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        *((m, "ap") for m in AP_MODELS),
        ("EX4100-48P", "switch"),
        ("QFX5120", "switch"),
        ("SRX320", "gateway"),
        ("SSR130", "gateway"),
        ("BT11", "ble"),
        ("X9", None),
        (None, None),
        (42, None),
    ],
)
def test_model_families(model: object, kind: str | None) -> None:
    assert kind_of_model(model) == kind


def test_a_full_update_without_type_is_an_ap_by_its_model() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    fleet.update("s1", device(MAC1, name="ap-1", model="AP45", status="connected"), 0.0)
    items = fleet.due(0.0)
    assert [r["{#NODEID}"] for d in lld(items) for r in d.rows] == [NODE1]
    assert raw(items) == [
        {"mac": MAC1, "id": device(MAC1)["id"], "name": "ap-1", "model": "AP45", "status": "connected"}
    ]


def test_type_once_seen_is_remembered_for_updates_without_it() -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    fleet.update("s1", device(MAC1, type="ap", model="Z1"), 0.0)  # no family for Z1: type decides
    fleet.due(0.0)
    fleet.update("s1", device(MAC1, model="Z1", num_clients=3), 1.0)
    assert raw(fleet.due(1.0))[0]["num_clients"] == 3


def test_unknown_kind_is_held_and_released_with_everything_once_known(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    with caplog.at_level(logging.INFO, logger="trapline.collectors.mist.fleet"):
        fleet.update("s1", device(MAC1, num_clients=3), 0.0)
        fleet.update("s1", device(MAC1, uptime=5), 1.0)
    assert fleet.due(1.0) == []
    assert fleet.unmonitored() == {"kind unknown": 1}
    assert sum("not monitored: kind unknown" in r.getMessage() for r in caplog.records) == 1
    fleet.update("s1", device(MAC1, model="AP43"), 2.0)
    items = fleet.due(2.0)
    assert len(lld(items)) == 1
    assert raw(items)[0] == {
        "id": device(MAC1)["id"],
        "mac": MAC1,
        "num_clients": 3,
        "uptime": 5,
        "model": "AP43",
    }
    assert fleet.unmonitored() == {}


def test_ignored_kinds_are_counted_per_reason_and_named_once(caplog: pytest.LogCaptureFixture) -> None:
    fleet = make_fleet(lld_min_interval=0.0)
    with caplog.at_level(logging.INFO, logger="trapline.collectors.mist.fleet"):
        for step in range(3):
            fleet.update("s1", device(MAC1, model="EX4100-48P", name="sw-1"), float(step))
            fleet.update("s1", device(MAC2, type="gateway", name="gw-1"), float(step))
            fleet.update("s1", device("5c5b35000003", type="switch"), float(step))
    assert fleet.due(3.0) == []
    assert fleet.unmonitored() == {"type switch": 2, "type gateway": 1}
    named = [r.getMessage() for r in caplog.records]
    assert len(named) == 3
    assert sum(MAC1 in m and "sw-1" in m and "type switch" in m for m in named) == 1


kinds = st.sampled_from(["ap", "switch", "gateway", "ble"])
ap_models = st.sampled_from(AP_MODELS)


@settings(max_examples=100, deadline=None)
@given(
    typed_first=st.booleans(),
    model=st.none() | ap_models,
    plan=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=6),
)
def test_every_named_ap_is_discovered_exactly_once(
    typed_first: bool, model: str | None, plan: list[tuple[bool, bool, bool]]
) -> None:
    """Any mix of updates with or without type, model and name: an AP told as one by any of them
    appears once in the LLD rows; a device never told as anything is held, not listed."""
    fleet = make_fleet(lld_min_interval=0.0)
    told = False
    for step, (with_type, with_model, with_name) in enumerate(plan):
        fields: dict[str, Any] = {"uptime": step}
        if with_type or (typed_first and step == 0):
            fields["type"] = "ap"
        if with_model and model is not None:
            fields["model"] = model
        if with_name:
            fields["name"] = "ap-1"
        told = told or "type" in fields or "model" in fields
        fleet.update("s1", device(MAC1, **fields), float(step))
        fleet.update("s1", device(MAC2, type="switch", model="EX2300"), float(step))
    rows = [r["{#NODEID}"] for d in lld(fleet.due(float(len(plan)))) for r in d.rows]
    assert rows == ([NODE1] if told else [])
    assert NODE2 not in rows
    assert fleet.unmonitored() == ({"type switch": 1} if told else {"type switch": 1, "kind unknown": 1})
