"""``trapline provision`` without a server, and the vehicle template against what the collectors send.

Provisioning itself is tested against real Zabbix 6.0 and 7.0 in
tests/integration/test_vehicle_zabbix.py.
"""

from __future__ import annotations

import argparse
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from trapline import provision
from trapline.collectors.gps.collector import MACRO_STATUS, fix_readings
from trapline.collectors.gps.vehicle_derived import (
    GEOFENCE_DISCOVERY,
    DerivedSettings,
    EdgeDerivations,
    Geofence,
)
from trapline.collectors.obd.collector import DTC_DISCOVERY, PID_DISCOVERY
from trapline.templates import check_template, shipped_templates
from trapline.wire.vehicle_state import VehicleState

TEMPLATE = next(p for p in shipped_templates() if p.name == provision.VEHICLE_TEMPLATE_FILE)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trapline")
    provision.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def test_provision_needs_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["provision", "van-17", "--url", "http://127.0.0.1:9/"]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_provision_needs_a_host_or_a_csv(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["provision", "--url", "http://127.0.0.1:9/"]) == 2
    assert "no van to provision" in capsys.readouterr().err


def _vans(tmp_path: Path, argv: list[str]) -> list[provision.Van]:
    parser = argparse.ArgumentParser(prog="trapline")
    provision.add_parser(parser.add_subparsers(dest="command", required=True))
    return list(provision.vans_from_args(parser.parse_args(["provision", *argv, "--url", "http://x/"])))


def _sheet(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vans.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _key_file(tmp_path: Path, name: str, text: str, mode: int = 0o600) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return str(path)


def test_csv_rows_take_the_options_where_their_cells_are_empty(tmp_path: Path) -> None:
    key = _key_file(tmp_path, "van-2.psk", "ab" * 32 + "\n")
    sheet = _sheet(tmp_path, "host,proxy_name,psk_identity,psk_file,power_cut_at_ignition\n"
                   "van-1,,,,\n"
                   f"van-2,own-proxy,id-2,{key},yes\n"
                   "van-3,,,,no\n")
    vans = _vans(tmp_path, ["van-0", "--csv", sheet, "--proxy-name", "{host}-proxy", "--new-psk",
                            "--power-cut-at-ignition"])
    assert [v.host for v in vans] == ["van-0", "van-1", "van-2", "van-3"]
    proxies = [v.settings.proxy_for(v.host) for v in vans]
    assert proxies == ["van-0-proxy", "van-1-proxy", "own-proxy", "van-3-proxy"]
    assert [v.new_key for v in vans] == [True, True, False, True]
    identities = [psk.identity for v in vans if (psk := v.settings.psk_for(v.host)) is not None]
    assert identities == ["van-0", "van-1", "id-2", "van-3"]
    assert vans[2].settings.psk is not None and vans[2].settings.psk.key.reveal() == "ab" * 32
    assert len({v.settings.psk.key.reveal() for v in vans if v.settings.psk}) == 4  # one key per van
    assert [v.settings.power_cut_at_ignition for v in vans] == [True, True, True, False]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name\nvan-1\n", "expected the columns"),
        ("host,colour\nvan-1,red\n", "unknown: colour"),
        ("host\n\n ,\n", "empty host"),
        ("host,power_cut_at_ignition\nvan-1,maybe\n", "must be yes or no"),
        ("host,psk_identity\nvan-1,id-1\n", "needs --psk-file or --new-psk"),
    ],
)
def test_a_bad_csv_is_one_line_naming_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    sheet = _sheet(tmp_path, text)
    assert _cli(["provision", "--csv", sheet, "--url", "http://127.0.0.1:9/"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_psk_file_must_be_private_and_hex_and_is_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = _key_file(tmp_path, "shared.psk", "cd" * 32, mode=0o640)
    url = ["--url", "http://127.0.0.1:9/"]
    assert _cli(["provision", "van-1", "--proxy-name", "p", "--psk-file", shared, *url]) == 2
    assert "readable by group or others" in capsys.readouterr().err
    garbage = _key_file(tmp_path, "garbage.psk", "not a key, but a secret-looking text")
    assert _cli(["provision", "van-1", "--proxy-name", "p", "--psk-file", garbage, *url]) == 2
    err = capsys.readouterr().err
    assert "not a PSK" in err and "secret-looking" not in err
    good = _key_file(tmp_path, "good.psk", "ef" * 32)
    token = _key_file(tmp_path, "token", "tok\n")
    status = _cli(["provision", "van-1", "--proxy-name", "p", "--psk-file", good,
                   "--url", "http://127.0.0.1:9/", "--token-file", token])
    captured = capsys.readouterr()
    assert status == 1  # nothing listens there
    assert "ef" * 32 not in captured.out + captured.err


def test_a_file_and_a_generated_key_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _key_file(tmp_path, "good.psk", "ef" * 32)
    assert _cli(["provision", "van-1", "--psk-file", good, "--new-psk", "--url", "http://127.0.0.1:9/"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_provision_refuses_a_readable_secret_and_never_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "token"
    secret.write_text("tok-very-secret-123\n", encoding="utf-8")
    os.chmod(secret, 0o644)
    status = _cli(["provision", "van-17", "--url", "http://127.0.0.1:9/", "--token-file", str(secret)])
    captured = capsys.readouterr()
    assert status == 2
    assert "readable by group or others" in captured.err
    assert "tok-very-secret" not in captured.out + captured.err


def test_an_unreachable_server_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "token"
    secret.write_text("tok-very-secret-123\n", encoding="utf-8")
    os.chmod(secret, 0o600)
    # Nothing listens on port 9.
    status = _cli(
        ["provision", "van-17", "--url", "http://127.0.0.1:9/", "--token-file", str(secret), "--timeout", "2"]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.startswith("trapline provision: ")
    assert "Traceback" not in captured.err
    assert "tok-very-secret" not in captured.out + captured.err


# --------------------------------------------------------------------------
# Proxy and power-cut settings
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "proxyid", "fields"),
    [
        ((6, 0), "7", {"proxy_hostid": "7"}),
        ((6, 0), None, {"proxy_hostid": "0"}),
        ((7, 0), "7", {"monitored_by": 1, "proxyid": "7"}),
        ((7, 0), None, {"monitored_by": 0}),
    ],
)
def test_the_monitored_by_fields_follow_the_server_version(
    version: tuple[int, int], proxyid: str | None, fields: dict[str, Any]
) -> None:
    assert provision.proxy_fields(proxyid, version) == fields


def test_the_proxy_name_may_carry_each_vans_host_name() -> None:
    assert provision.VehicleSettings(proxy="{host}-proxy").proxy_for("van-17") == "van-17-proxy"
    assert provision.VehicleSettings(proxy="depot").proxy_for("van-17") == "depot"
    assert provision.VehicleSettings().proxy_for("van-17") is None


def test_the_command_line_reads_the_proxy_and_power_cut_options() -> None:
    parser = argparse.ArgumentParser(prog="trapline")
    provision.add_parser(parser.add_subparsers(dest="command", required=True))
    server = ["--url", "http://127.0.0.1:9/"]
    args = parser.parse_args(["provision", "van-17", *server, "--proxy", "{host}-proxy", "--create-proxy",
                              "--power-cut-at-ignition"])
    assert (args.proxy_name, args.create_proxy, args.power_cut_at_ignition) == ("{host}-proxy", True, True)
    plain = parser.parse_args(["provision", "van-17", *server])
    assert (plain.proxy_name, plain.create_proxy, plain.power_cut_at_ignition) == (None, False, False)


# --------------------------------------------------------------------------
# Geomap widget per server version
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "field", "width"),
    [((6, 0), "groupids", 24), ((6, 4), "groupids.0", 24), ((7, 0), "groupids.0", 72)],
)
def test_map_and_problems_share_the_dashboard_grid_and_follow_the_field_names(
    version: tuple[int, int], field: str, width: int
) -> None:
    widget = provision.geomap_widget("42", version)
    problems = provision.problems_widget("42", version)
    assert (widget["type"], problems["type"]) == ("geomap", "problems")
    # Side by side, together exactly as wide as the grid.
    assert (widget["x"], widget["width"] + problems["width"]) == (0, width)
    assert problems["x"] == widget["width"]
    for w in (widget, problems):
        assert w["fields"] == [{"type": 2, "name": field, "value": "42"}]
    assert provision._shows_group(widget, "42")
    assert not provision._shows_group(widget, "43")
    assert not provision._shows_group(problems, "42")


def test_a_map_of_another_widget_type_does_not_count() -> None:
    widget = provision.geomap_widget("42", (7, 0)) | {"type": "map"}
    assert not provision._shows_group(widget, "42")


# --------------------------------------------------------------------------
# The fleet table (Top hosts) per server version
# --------------------------------------------------------------------------
# How each frontend turns the stored field names back into columns, transcribed from its PHP:
# 6.0 CWidgetForm::convertDottedKeys maps "columns.name.0" to columns[0][name] and
# "columnsthresholds.color.0.1" to columnsthresholds[0][color][1]; 7.0 (widgets/tophosts) stores
# "columns.0.name" and "columnsthresholds.0.color.1".
_READ_6 = (re.compile(r"^([a-z]+)\.([a-z_]+)\.(\d+)\.(\d+)$"), re.compile(r"^([a-z]+)\.([a-z_]+)\.(\d+)$"))
_READ_7 = (re.compile(r"^([a-z]+)\.(\d+)\.([a-z_]+)\.(\d+)$"), re.compile(r"^([a-z]+)\.(\d+)\.([a-z_]+)$"))


def _as_the_frontend_reads(fields: list[dict[str, Any]], seven: bool) -> dict[str, Any]:
    four, three = _READ_7 if seven else _READ_6
    data: dict[str, Any] = {}
    for field in fields:
        name, value = field["name"], field["value"]
        if match := four.match(name):
            lst, a, b, sub = match.groups()
            index, key = (a, b) if seven else (b, a)
            data.setdefault(lst, {}).setdefault(int(index), {}).setdefault(key, {})[int(sub)] = value
        elif match := three.match(name):
            lst, a, b = match.groups()
            index, key = (a, b) if seven else (b, a)
            data.setdefault(lst, {}).setdefault(int(index), {})[key] = value
        else:
            data[name] = value
    return data


@pytest.mark.parametrize("version", [(6, 0), (6, 4), (7, 0)])
def test_the_fleet_table_reads_back_as_the_intended_columns(version: tuple[int, int]) -> None:
    seven = version >= (7, 0)
    widget = provision.fleet_table_widget("42", version)
    read = _as_the_frontend_reads(widget["fields"], seven)
    columns = [read["columns"][i] for i in sorted(read["columns"])]
    assert [c["name"] for c in columns] == ["Vehicle", "Recent fixes", "Speed", "Battery", "Trouble codes"]
    assert [c["data"] for c in columns] == [2, 1, 1, 1, 1]  # host name, then item values
    # 6.0's view reads timeshift for every item column; 7.0 has no such setting.
    assert all(("timeshift" in c) != seven for c in columns)
    # Only the freshness column is coloured: stale below one fix, fresh from one on.
    assert read["columnsthresholds"] == {1: {"color": {0: provision.FRESH_COLOUR}, "threshold": {0: "1"}}}
    assert [c["base_color"] for c in columns] == ["", provision.STALE_COLOUR, "", "", ""]
    # The stale vans first: ordered by the freshness column, fewest first.
    assert (read["column"], read["order"]) == (1, 3)
    assert read["show_lines" if seven else "count"] == 100
    assert provision._shows_group(widget, "42", provision.TOP_HOSTS_WIDGET)
    # Under the map and the problems, across the whole grid.
    geomap = provision.geomap_widget("42", version)
    assert (widget["x"], widget["y"], widget["width"]) == (0, geomap["height"], 72 if seven else 24)


def test_every_item_column_names_a_numeric_item_of_the_vehicle_template() -> None:
    # Top hosts finds a column's items by their name; a renamed item would leave the column empty.
    items = {item["name"]: item for item in _template()["items"]}
    for column in provision.FLEET_TABLE_COLUMNS:
        if column.item is not None:
            assert items[column.item].get("value_type", "UNSIGNED") in {"FLOAT", "UNSIGNED"}, column.item


def test_staleness_is_counted_by_the_server_over_the_macro_and_pages_nobody() -> None:
    template = _template()
    (item,) = [i for i in template["items"] if i["type"] == "CALCULATED"]
    assert item["params"] == "count(//gps.latitude,{$VEHICLE.POSITION.STALE})"
    assert "gps.latitude" in {i["key"] for i in template["items"]}
    assert "{$VEHICLE.POSITION.STALE}" in {m["macro"] for m in template["macros"]}
    # A parked van is normal: the stale marker is a colour in the table, never a problem.
    expressions = _expressions(yaml.safe_load(TEMPLATE.read_text(encoding="utf-8")))
    assert len(expressions) > 10
    assert not [e for e in expressions if item["key"] in e]


def _expressions(node: Any) -> list[str]:
    """Every trigger (and trigger prototype) expression anywhere in an export."""
    if isinstance(node, list):
        return [e for child in node for e in _expressions(child)]
    if not isinstance(node, dict):
        return []
    own = [str(node[k]) for k in ("expression", "recovery_expression") if k in node]
    return own + [e for child in node.values() for e in _expressions(child)]


# --------------------------------------------------------------------------
# The vehicle template matches what the collectors send (no item without a sender, no key without an item)
# --------------------------------------------------------------------------
OBD_KEYS = {
    "obd.state",
    "obd.voltage",
    "obd.engine.running",
    "obd.protocol",
    "obd.vin",
    "obd.mil",
    "obd.dtc.count[stored]",
    "obd.dtc.count[pending]",
    "obd.battery.guard",
    "obd.battery.crank_voltage",
}
FULL_GPSD_REPORT = {
    "class": "POLL",
    "active": 1,
    "tpv": [
        {
            "mode": 3,
            "lat": 1.0,
            "lon": 2.0,
            "altMSL": 3.0,
            "speed": 4.0,
            "track": 5.0,
            "epx": 6.0,
            "epy": 7.0,
            "epv": 8.0,
            "time": "2024-01-01T00:00:00Z",
        }
    ],
    "sky": [{"uSat": 9}],
}


def _template() -> dict[str, Any]:
    template: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"][
        "templates"
    ][0]
    return template


def test_the_vehicle_template_passes_the_checks() -> None:
    assert check_template(TEMPLATE) == []
    assert _template()["template"] == provision.VEHICLE_TEMPLATE


def _derived_keys(state_dir: Path) -> set[str]:
    """Every key the edge derivations and the vehicle totals send, with every option on and one whole trip."""
    state = VehicleState(state_dir / "vehicle.json", "van")
    edge = EdgeDerivations(DerivedSettings(home=(0.0, 0.0), geofence_radius=1, overspeed_limit=1,
                                           trip_start_after=0, trip_stop_after=0), state)
    keys: set[str] = set()
    for t, speed in enumerate([50.0, 50.0, 0.0]):
        keys |= set(edge.update(t, 0.001 * t, 0.0, speed))
    return keys | set(state.odometer()) | set(state.engine()) | set(state.today(0))


def test_template_items_are_exactly_what_the_collectors_send(tmp_path: Path) -> None:
    gps_keys = set(fix_readings(FULL_GPSD_REPORT, datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)))
    derived = _derived_keys(tmp_path)
    assert "vehicle.trip.last.distance" in derived
    # Calculated items are the server's own arithmetic over these: nothing sends them.
    sent = {item["key"] for item in _template()["items"] if item["type"] == "TRAP"}
    # The status of {$VEHICLE.GEOFENCES}, sent by the GPS collector when Zabbix hands it the macro.
    assert sent == OBD_KEYS | gps_keys | derived | {MACRO_STATUS}
    assert {item["type"] for item in _template()["items"]} == {"TRAP", "CALCULATED", "ZABBIX_ACTIVE"}
    # The one active item carries {$VEHICLE.GEOFENCES} to the agent in its key; it gets no value.
    active = [item["key"] for item in _template()["items"] if item["type"] == "ZABBIX_ACTIVE"]
    assert active == ['trapline.geofences["{$VEHICLE.GEOFENCES}"]']


def test_discovery_rules_match_the_collector() -> None:
    rules = {rule["key"]: rule for rule in _template()["discovery_rules"]}
    assert set(rules) == {PID_DISCOVERY, DTC_DISCOVERY, GEOFENCE_DISCOVERY}
    fence = EdgeDerivations(DerivedSettings(geofences=(Geofence("depot", radius=1.0),))).update(0, 0, 0, 0)
    prototypes = rules[GEOFENCE_DISCOVERY]["item_prototypes"]
    assert {p["key"].replace("{#GEOFENCE}", "depot") for p in prototypes} == {
        key for key in fence if "[depot]" in key} | {"vehicle.geofence.event[depot]"}
    assert [p["key"] for p in rules[PID_DISCOVERY]["item_prototypes"]] == ["obd.pid[{#PID}]"]
    assert [p["key"] for p in rules[DTC_DISCOVERY]["item_prototypes"]] == ["obd.dtc[{#DTC},{#STATE}]"]


def test_position_items_fill_the_inventory_without_units() -> None:
    items = {item["key"]: item for item in _template()["items"]}
    for key, field in (("gps.latitude", "LOCATION_LAT"), ("gps.longitude", "LOCATION_LON")):
        assert items[key]["inventory_link"] == field
        # With units, Zabbix writes the formatted value ("52.52 °") and Geomap cannot place the host.
        assert "units" not in items[key]


# --------------------------------------------------------------------------
# Autoregistration (real servers: tests/integration/test_direct_psk.py)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [["van-17"], ["--proxy-name", "p"], ["--power-cut-at-ignition"]])
def test_autoregistration_is_for_the_fleet_not_for_vans(
    extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(["provision", "--autoregistration", *extra, "--url", "http://127.0.0.1:9/"]) == 2
    assert "--autoregistration sets up the fleet" in capsys.readouterr().err


def test_operations_read_back_are_written_back_without_escalation_fields() -> None:
    # An "add to group" operation as action.get returns it for an autoregistration action
    # (fields of the API's "Action operation" object).
    read = {
        "operationid": "7", "actionid": "3", "operationtype": "4", "esc_period": "0",
        "esc_step_from": "1", "esc_step_to": "1", "evaltype": "0", "opconditions": [],
        "opgroup": [{"operationid": "7", "groupid": "22"}],
    }
    written = provision._writable(read)
    assert written == {"operationtype": "4", "opgroup": [{"groupid": "22"}]}
    assert provision._operation_facts(written) == {(provision.OPERATION_ADD_TO_GROUP, "22")}


def test_the_wanted_operations_cover_host_group_templates_and_inventory() -> None:
    wanted = provision.autoregistration_operations("22", ["101", "102"])
    facts = set().union(*(provision._operation_facts(op) for op in wanted))
    assert facts == {
        (provision.OPERATION_ADD_HOST, ""),
        (provision.OPERATION_ADD_TO_GROUP, "22"),
        (provision.OPERATION_LINK_TEMPLATE, "101"),
        (provision.OPERATION_LINK_TEMPLATE, "102"),
        (provision.OPERATION_INVENTORY_MODE, str(provision.INVENTORY_AUTOMATIC)),
    }
