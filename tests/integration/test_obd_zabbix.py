"""The OBD additions of issue 20 on real Zabbix 6.0 and 7.0: custom PIDs read from
ELM327-emulator reach Zabbix as discovered items with their name and unit, and the vehicle
template's battery-guard and weak-battery triggers page when they should and only then.

Hosts are provisioned and values delivered as in test_noc_scenarios (its helpers).  The
trigger scenarios shape values as the OBD collector sends them (``obd.battery.guard`` 0/1 with
the link state, ``obd.battery.crank_voltage`` once per watched engine start), with clocks in
the past.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.integration.test_noc_scenarios import _send, _van, api  # noqa: F401 - api is a fixture
from tests.integration.test_obd_custom_pids import CUSTOM_PIDS, emulated_car
from tests.support.elm_fixtures import obd_section
from tests.support.outbox import ListOutbox, run_collector_until
from tests.support.zabbix_fixtures import (
    FLOAT,
    assert_quiet_for,
    history,
    open_problems,
    wait_for_problems,
    wait_until,
)
from trapline.collectors.obd import build
from trapline.collectors.obd.collector import PID_DISCOVERY
from trapline.core.model import Reading

pytestmark = pytest.mark.integration

GUARD = ("Vehicle: Battery guard stopped OBD polling (battery low with the engine off)", "warning")
WEAK = ("Vehicle: Weak battery: voltage dropped below 9.6 V at the last two engine starts", "warning")


def guard(host: str, on: int, clock: int) -> Reading:
    return Reading(host, "obd.battery.guard", on, clock)


def starts(host: str, dips: list[float], end: int) -> list[Reading]:
    """One dip per start, an hour apart, the last at ``end``."""
    return [Reading(host, "obd.battery.crank_voltage", v, end - 3600 * (len(dips) - 1 - i), 0, "V")
            for i, v in enumerate(dips)]


def test_the_guard_pages_while_it_holds_and_weak_starts_page_only_twice_in_a_row(
    zabbix: LocalZabbix, api: Any  # noqa: F811 - the fixture imported above
) -> None:
    guarded_host, guarded = _van(api)
    weak_host, weak = _van(api)
    normal_host, normal = _van(api)  # healthy starts, one cold morning, the guard never trips
    zabbix.config_cache_reload()
    now = int(time.time())
    _send(zabbix, [guard(guarded_host, 0, now - 1200), guard(guarded_host, 1, now - 60),
                   *starts(weak_host, [10.4, 9.3, 9.1], now - 60),
                   *starts(normal_host, [10.6, 10.2, 9.2, 10.1], now - 60),
                   guard(normal_host, 0, now - 60)])
    wait_for_problems(api, [guarded], {GUARD})
    wait_for_problems(api, [weak], {WEAK})
    assert_quiet_for(api, [normal], 35)

    # the battery recovers / the next start is strong: both problems resolve
    _send(zabbix, [guard(guarded_host, 0, now), *starts(weak_host, [10.3], now)])
    wait_until(lambda: open_problems(api, [guarded, weak]) == set(), timeout=60, what="both resolved")


def test_custom_pids_from_the_emulator_become_items_with_their_name_unit_and_values(
    zabbix: LocalZabbix, api: Any, emulator: tuple[Any, int], elm_module: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    emu, port = emulator
    emulated_car(emu, elm_module)
    host, hostid = _van(api)
    zabbix.config_cache_reload()
    out = ListOutbox()
    collector = build("car", obd_section(port, tmp_path, host=host, custom_pids=CUSTOM_PIDS))
    run_collector_until(collector, out, lambda o: len(o.readings("obd.pid[EV_SOC]")) >= 3, 40.0)

    _send(zabbix, out.discoveries(PID_DISCOVERY)[:1])
    items = wait_until(lambda: api.item.get(hostids=[hostid], filter={"key_": "obd.pid[EV_SOC]"},
                                            output=["itemid", "name", "units"]),
                       timeout=30, what="the discovered EV_SOC item")
    assert (items[0]["name"], items[0]["units"]) == ("Vehicle: OBD: EV battery state of charge", "%")
    zabbix.config_cache_reload()
    readings = out.readings("obd.pid[EV_SOC]")
    _send(zabbix, readings)
    itemid = items[0]["itemid"]
    stored = wait_until(lambda: len(rows := history(api, itemid, FLOAT)) == len(readings) and rows,
                        timeout=30, what="the EV_SOC values in history")
    assert [float(r["value"]) for r in stored] == [r.value for r in readings]
    assert [int(r["clock"]) for r in stored] == [r.clock for r in readings]
