"""``trapline provision``: put vehicles into Zabbix, ready for the agent to send to.

For each vehicle a host is created (or brought up to date) in a host group,
with the "Vehicle OBD-II and GPS by Zabbix trapper" template linked, and the
"trapline agent by Zabbix trapper" template too, because the vehicle install
reports the agent's own metrics on the vehicle's host.  The host inventory is
in automatic mode, so the GPS items fill the inventory's location and the
vehicle shows up on a Geomap.  With --proxy-name the host is monitored by the
van's proxy (created with --create-proxy, accepted only with the PSK of
--psk-file or --new-psk); with --power-cut-at-ignition the host says that its
agent's silence and restarts are normal.  --csv takes a fleet in one call.  A global dashboard ("Fleet
map") is created once: the group on a Geomap, its open problems, and a table of the vans
(recent position fixes, stale ones marked red, speed, battery, stored trouble codes).  Running it again
changes nothing that is already right, and never removes groups, templates or
dashboard pages someone added by hand.
"""

from __future__ import annotations

import argparse
import csv
import logging
import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pyzabbix.api import ZabbixAPIException
from requests import RequestException

from trapline.core.config import ConfigError, Secret, read_psk_file
from trapline.templates import (
    TemplateError,
    ZabbixApiClient,
    add_server_arguments,
    connect,
    import_templates,
    server_version,
    shipped_templates,
)

log = logging.getLogger(__name__)

VEHICLE_TEMPLATE = "Vehicle OBD-II and GPS by Zabbix trapper"
VEHICLE_TEMPLATE_FILE = "template_vehicle_obd_gps.yaml"
AGENT_TEMPLATE = "trapline agent by Zabbix trapper"
AGENT_TEMPLATE_FILE = "template_trapline_agent.yaml"
# The agent template's switch for hosts whose agent is powered off on purpose.
STOPS_EXPECTED_MACRO = "{$TRAPLINE.STOPS.EXPECTED}"
DEFAULT_GROUP = "Vehicles"
DEFAULT_DASHBOARD = "Fleet map"

INVENTORY_AUTOMATIC = 1
WIDGET_FIELD_INTEGER = 0
WIDGET_FIELD_STRING = 1
WIDGET_FIELD_HOST_GROUP = 2
GEOMAP_WIDGET = "geomap"
PROBLEMS_WIDGET = "problems"
TOP_HOSTS_WIDGET = "tophosts"
# The dashboard grid is 24 columns wide up to 6.4 and 72 from 7.0 on; rows are alike.
_GRID_COLUMNS_7 = 72
_GRID_COLUMNS_6 = 24
_MAP_HEIGHT = 12
_TABLE_HEIGHT = 8

Action = Literal["created", "updated", "unchanged"]


class ProvisionError(Exception):
    """The server lacks something provisioning needs; ``str()`` says what."""


@dataclass(frozen=True)
class Outcome:
    objectid: str
    action: Action


def _call(api: ZabbixApiClient, method: str, params: Mapping[str, Any]) -> Any:
    return api.do_request(method, params)["result"]


# --------------------------------------------------------------------------
# Template, group, host
# --------------------------------------------------------------------------
def _template_id(api: ZabbixApiClient, name: str) -> str | None:
    found = _call(api, "template.get", {"output": ["templateid"], "filter": {"host": [name]}})
    return str(found[0]["templateid"]) if found else None


def ensure_template(
    api: ZabbixApiClient, name: str = VEHICLE_TEMPLATE, file_name: str = VEHICLE_TEMPLATE_FILE
) -> Outcome:
    """A shipped template's id; its file is imported first if the server lacks it.

    An existing template is left as it is: updating it is ``trapline templates import``'s job.
    """
    templateid = _template_id(api, name)
    if templateid is not None:
        return Outcome(templateid, "unchanged")
    paths = [p for p in shipped_templates() if p.name == file_name]
    if not paths:
        raise ProvisionError(f"{file_name} is not among the shipped templates")
    import_templates(api, paths)
    templateid = _template_id(api, name)
    if templateid is None:
        raise ProvisionError(f"template {name!r} is still missing after its import")
    return Outcome(templateid, "created")


# --------------------------------------------------------------------------
# Proxy: 7.0 renamed the proxy's name field and replaced proxy_hostid with monitored_by/proxyid
# --------------------------------------------------------------------------
PROXY_ACTIVE_6 = 5  # proxy.status in 6.0-6.4
PROXY_ACTIVE_7 = 0  # proxy.operating_mode from 7.0
MONITORED_BY_PROXY = 1


def _proxy_name_field(version: tuple[int, int]) -> str:
    return "name" if version >= (7, 0) else "host"


TLS_PSK = 2  # tls_accept / tls_connect: connections encrypted with a pre-shared key


@dataclass(frozen=True)
class ProxyPsk:
    """The PSK an active proxy encrypts its connections to the server with."""

    identity: str
    key: Secret


def new_psk() -> Secret:
    return Secret(secrets.token_hex(32))


def ensure_proxy(api: ZabbixApiClient, name: str, create: bool, psk: ProxyPsk | None = None) -> Outcome:
    """The id of the proxy ``name``; created as an active proxy when ``create`` and missing.

    With ``psk`` the server accepts the proxy's connections only with that key.  The API
    returns neither key nor identity, so an existing proxy gets them only when it does not
    accept PSK yet; replacing the key of a proxy that has one is the frontend's job, so that
    a second run never changes a working van.
    """
    version = server_version(api)
    field = _proxy_name_field(version)
    found = _call(api, "proxy.get", {
        "output": ["proxyid", "tls_accept"], "filter": {field: [name]},
    })
    tls: dict[str, Any] = {}
    if psk is not None:  # the server never connects to an active proxy: tls_connect stays "none"
        tls = {"tls_connect": 1, "tls_accept": TLS_PSK, "tls_psk_identity": psk.identity,
               "tls_psk": psk.key.reveal()}
    if found:
        proxy = found[0]
        proxyid = str(proxy["proxyid"])
        if psk is None or int(proxy.get("tls_accept", 1)) == TLS_PSK:
            return Outcome(proxyid, "unchanged")
        _call(api, "proxy.update", {"proxyid": proxyid, **tls})
        log.info("proxy %s now accepted only with PSK identity %s", name, psk.identity)
        return Outcome(proxyid, "updated")
    if not create:
        raise ProvisionError(f"proxy {name!r} does not exist on the server (--create-proxy creates it)")
    mode = {"operating_mode": PROXY_ACTIVE_7} if version >= (7, 0) else {"status": PROXY_ACTIVE_6}
    created = _call(api, "proxy.create", {field: name, **mode, **tls})
    proxyid = str(created["proxyids"][0])
    log.info("created active proxy %s (proxyid %s)", name, proxyid)
    return Outcome(proxyid, "created")


def proxy_fields(proxyid: str | None, version: tuple[int, int]) -> dict[str, Any]:
    """The host fields that say who monitors it: the proxy, or the server when ``proxyid`` is None."""
    if version >= (7, 0):
        if proxyid is None:
            return {"monitored_by": 0}
        return {"monitored_by": MONITORED_BY_PROXY, "proxyid": proxyid}
    return {"proxy_hostid": proxyid or "0"}


def _monitored_by(host: Mapping[str, Any], version: tuple[int, int]) -> str | None:
    if version >= (7, 0):
        return str(host["proxyid"]) if int(host.get("monitored_by", 0)) == MONITORED_BY_PROXY else None
    proxyid = str(host.get("proxy_hostid", "0"))
    return None if proxyid == "0" else proxyid


@dataclass(frozen=True)
class VehicleSettings:
    """What provisioning sets on a vehicle host beyond its group and templates."""

    proxy: str | None = None  # proxy name; "{host}" in it becomes the vehicle's host name
    create_proxy: bool = False
    power_cut_at_ignition: bool = False
    psk: ProxyPsk | None = None  # the proxy's PSK; "{host}" in its identity as in the proxy name

    def proxy_for(self, host: str) -> str | None:
        return self.proxy.replace("{host}", host) if self.proxy else None

    def psk_for(self, host: str) -> ProxyPsk | None:
        if self.psk is None:
            return None
        return replace(self.psk, identity=self.psk.identity.replace("{host}", host))


def ensure_host_group(api: ZabbixApiClient, name: str) -> Outcome:
    found = _call(api, "hostgroup.get", {"output": ["groupid"], "filter": {"name": [name]}})
    if found:
        return Outcome(str(found[0]["groupid"]), "unchanged")
    created = _call(api, "hostgroup.create", {"name": name})
    return Outcome(str(created["groupids"][0]), "created")


@dataclass(frozen=True)
class VanOutcome:
    host: Outcome
    proxy: Outcome | None


def provision_van(
    api: ZabbixApiClient, host: str, group: str = DEFAULT_GROUP, settings: VehicleSettings = VehicleSettings()
) -> VanOutcome:
    """The van's proxy (with its PSK, when given), then its host monitored by that proxy."""
    proxy_name = settings.proxy_for(host)
    proxy = None
    if proxy_name is not None:
        proxy = ensure_proxy(api, proxy_name, settings.create_proxy, settings.psk_for(host))
    proxyid = None if proxy is None else proxy.objectid
    return VanOutcome(provision_vehicle(api, host, group, settings, proxyid=proxyid), proxy)


def provision_vehicle(
    api: ZabbixApiClient,
    host: str,
    group: str = DEFAULT_GROUP,
    settings: VehicleSettings = VehicleSettings(),
    *,
    proxyid: str | None = None,
) -> Outcome:
    """Create or update the vehicle's host: in ``group``, both templates linked, inventory automatic.

    The host name is the technical one the agent's collectors send as ``host``; the vehicle
    install also sends the agent's own metrics there, hence the agent template.  The host is
    monitored by ``proxyid``, or else by the proxy ``settings`` names (which must exist).
    """
    templateids = [
        ensure_template(api).objectid,
        ensure_template(api, AGENT_TEMPLATE, AGENT_TEMPLATE_FILE).objectid,
    ]
    groupid = ensure_host_group(api, group).objectid
    version = server_version(api)
    proxy_name = settings.proxy_for(host)
    if proxyid is None and proxy_name is not None:
        proxyid = ensure_proxy(api, proxy_name, settings.create_proxy).objectid
    # 6.2 renamed host groups in host.get (selectGroups -> selectHostGroups).
    select_groups, groups_key = (
        ("selectHostGroups", "hostgroups") if version >= (6, 2) else ("selectGroups", "groups")
    )
    proxy_output = ["monitored_by", "proxyid"] if version >= (7, 0) else ["proxy_hostid"]
    found = _call(api, "host.get", {
        "output": ["hostid", "inventory_mode", *proxy_output],
        "filter": {"host": [host]},
        "selectParentTemplates": ["templateid"],
        "selectMacros": ["hostmacroid", "macro", "value"],
        select_groups: ["groupid"],
    })
    macros = [{"macro": STOPS_EXPECTED_MACRO, "value": "1"}] if settings.power_cut_at_ignition else []
    if not found:
        created = _call(api, "host.create", {
            "host": host,
            "groups": [{"groupid": groupid}],
            "templates": [{"templateid": t} for t in templateids],
            "inventory_mode": INVENTORY_AUTOMATIC,
            "macros": macros,
            **(proxy_fields(proxyid, version) if proxyid else {}),
        })
        hostid = str(created["hostids"][0])
        log.info("created vehicle host %s (hostid %s) in group %s", host, hostid, group)
        return Outcome(hostid, "created")

    existing = found[0]
    hostid = str(existing["hostid"])
    groupids = [str(g["groupid"]) for g in existing.get(groups_key, [])]
    linked = [str(t["templateid"]) for t in existing.get("parentTemplates", [])]
    changes: dict[str, Any] = {}
    if groupid not in groupids:
        changes["groups"] = [{"groupid": g} for g in [*groupids, groupid]]
    missing = [t for t in templateids if t not in linked]
    if missing:
        # host.update replaces the linked templates: keep the ones already there.
        changes["templates"] = [{"templateid": t} for t in [*linked, *missing]]
    if int(existing.get("inventory_mode", -1)) != INVENTORY_AUTOMATIC:
        changes["inventory_mode"] = INVENTORY_AUTOMATIC
    # Only set what was asked for: a host someone moved to a proxy by hand keeps it.
    if proxyid is not None and _monitored_by(existing, version) != proxyid:
        changes.update(proxy_fields(proxyid, version))
    have = {str(m["macro"]): m for m in existing.get("macros", [])}
    if macros and have.get(STOPS_EXPECTED_MACRO, {}).get("value") != "1":
        # host.update replaces the host's macros: keep the others, by their ids.
        kept = [{"hostmacroid": m["hostmacroid"]} for name, m in have.items() if name != STOPS_EXPECTED_MACRO]
        changes["macros"] = [*kept, *macros]
    if not changes:
        return Outcome(hostid, "unchanged")
    _call(api, "host.update", {"hostid": hostid, **changes})
    log.info("updated vehicle host %s (%s)", host, ", ".join(sorted(changes)))
    return Outcome(hostid, "updated")


# --------------------------------------------------------------------------
# Fleet dashboard
# --------------------------------------------------------------------------
def geomap_widget(groupid: str, version: tuple[int, int]) -> dict[str, Any]:
    """A Geomap widget over the hosts of one host group: two thirds of the dashboard's width."""
    return _group_widget(GEOMAP_WIDGET, "Fleet", groupid, version, x=0, width_thirds=2)


def problems_widget(groupid: str, version: tuple[int, int]) -> dict[str, Any]:
    """The open problems of one host group, beside the map: what the coloured markers mean."""
    return _group_widget(PROBLEMS_WIDGET, "Fleet problems", groupid, version, x=2, width_thirds=1)


def _group_widget(
    kind: str, name: str, groupid: str, version: tuple[int, int], *, x: int, width_thirds: int
) -> dict[str, Any]:
    third = (_GRID_COLUMNS_7 if version >= (7, 0) else _GRID_COLUMNS_6) // 3
    return {
        "type": kind,
        "name": name,
        "x": x * third,
        "y": 0,
        "width": width_thirds * third,
        "height": _MAP_HEIGHT,
        "fields": [{"type": WIDGET_FIELD_HOST_GROUP, "name": _groupids_field(version), "value": groupid}],
    }


@dataclass(frozen=True)
class TableColumn:
    """One column of the fleet table: the host name, or the last value of a vehicle template item."""

    title: str
    item: str | None = None  # Top hosts picks a column's items by item name, across the group's hosts
    stale_below: int | None = None  # values below this are coloured as stale, those at or above as fresh


STALE_COLOUR = "FF465C"
FRESH_COLOUR = "0EC9AC"
# The vans whose position is stale come first: the table lists the fewest recent fixes first.
FLEET_TABLE_COLUMNS = (
    TableColumn("Vehicle"),
    TableColumn("Recent fixes", "Vehicle: GPS: Recent position fixes", stale_below=1),
    TableColumn("Speed", "Vehicle: GPS: Speed"),
    TableColumn("Battery", "Vehicle: OBD: Battery voltage"),
    TableColumn("Trouble codes", "Vehicle: OBD: Stored trouble codes"),
)
_ORDER_COLUMN = 1
_ORDER_BOTTOM_N = 3  # Top hosts' "Bottom N": ascending, so 0 recent fixes sorts first
_TABLE_ROWS = 100  # the most Top hosts shows on 6.0
_DATA_ITEM_VALUE, _DATA_HOST_NAME = 1, 2


def fleet_table_widget(groupid: str, version: tuple[int, int]) -> dict[str, Any]:
    """A Top hosts table of the group's vans under the map, as wide as the dashboard.

    7.0 moved the column index in the field names (``columns.0.name`` where 6.0 has
    ``columns.name.0``, thresholds alike) and renamed the row limit ``count`` to ``show_lines``.
    Every column carries the settings the frontend's own column form saves, so the widget's
    view finds each of them (6.0 reads ``timeshift`` unconditionally).
    """
    seven = version >= (7, 0)
    width = _GRID_COLUMNS_7 if seven else _GRID_COLUMNS_6
    fields: list[dict[str, Any]] = [
        {"type": WIDGET_FIELD_HOST_GROUP, "name": _groupids_field(version), "value": groupid},
        {"type": WIDGET_FIELD_INTEGER, "name": "column", "value": _ORDER_COLUMN},
        {"type": WIDGET_FIELD_INTEGER, "name": "order", "value": _ORDER_BOTTOM_N},
        {"type": WIDGET_FIELD_INTEGER, "name": "show_lines" if seven else "count", "value": _TABLE_ROWS},
    ]
    for index, column in enumerate(FLEET_TABLE_COLUMNS):
        fields += _column_fields(index, column, seven)
    return {
        "type": TOP_HOSTS_WIDGET, "name": "Vans", "x": 0, "y": _MAP_HEIGHT, "width": width,
        "height": _TABLE_HEIGHT, "fields": fields,
    }


def _column_fields(index: int, column: TableColumn, seven: bool) -> list[dict[str, Any]]:
    settings: dict[str, tuple[int, Any]] = {
        "name": (WIDGET_FIELD_STRING, column.title),
        "data": (WIDGET_FIELD_INTEGER, _DATA_HOST_NAME if column.item is None else _DATA_ITEM_VALUE),
        "item": (WIDGET_FIELD_STRING, column.item or ""),
        "aggregate_function": (WIDGET_FIELD_INTEGER, 0),
        "display": (WIDGET_FIELD_INTEGER, 1),  # as is
        "history": (WIDGET_FIELD_INTEGER, 1),  # history or trends, whichever the item has
        "base_color": (WIDGET_FIELD_STRING, STALE_COLOUR if column.stale_below is not None else ""),
        "min": (WIDGET_FIELD_STRING, ""),
        "max": (WIDGET_FIELD_STRING, ""),
        "text": (WIDGET_FIELD_STRING, ""),
    }
    settings |= {"decimal_places": (WIDGET_FIELD_INTEGER, 2)} if seven else {
        "timeshift": (WIDGET_FIELD_STRING, ""), "aggregate_interval": (WIDGET_FIELD_STRING, "1h"),
    }
    fields = [
        {"type": kind, "name": _column_key(seven, "columns", index, key), "value": value}
        for key, (kind, value) in settings.items()
    ]
    if column.stale_below is not None:
        # The base colour is the stale one; from the threshold up the cell turns to the fresh colour.
        threshold = {"color": FRESH_COLOUR, "threshold": str(column.stale_below)}
        fields += [
            {"type": WIDGET_FIELD_STRING, "name": _column_key(seven, "columnsthresholds", index, key) + ".0",
             "value": value}
            for key, value in threshold.items()
        ]
    return fields


def _column_key(seven: bool, prefix: str, index: int, key: str) -> str:
    # 7.0 puts the column's index right after the list's name, 6.0 after the setting's name.
    return f"{prefix}.{index}.{key}" if seven else f"{prefix}.{key}.{index}"


def _groupids_field(version: tuple[int, int]) -> str:
    # 6.4 numbered the values of multi-value widget fields: "groupids.0", "groupids.1", ...
    return "groupids.0" if version >= (6, 4) else "groupids"


def _shows_group(widget: Mapping[str, Any], groupid: str, kind: str = GEOMAP_WIDGET) -> bool:
    return widget.get("type") == kind and any(
        int(field.get("type", -1)) == WIDGET_FIELD_HOST_GROUP
        and str(field.get("name", "")).split(".")[0] == "groupids"
        and str(field.get("value")) == groupid
        for field in widget.get("fields", [])
    )


def ensure_fleet_dashboard(api: ZabbixApiClient, group: str, name: str = DEFAULT_DASHBOARD) -> Outcome:
    """A shared global dashboard ``name`` with a map, problems and a table of the host group ``group``.

    An existing dashboard of that name keeps its pages; if none of them maps the
    group yet, a page with the three widgets is added.  A page whose map came from
    an older trapline, without the table, gets the table below its widgets.
    """
    groupid = ensure_host_group(api, group).objectid
    version = server_version(api)
    table = fleet_table_widget(groupid, version)
    widgets = [geomap_widget(groupid, version), problems_widget(groupid, version), table]
    page = {"name": group, "widgets": widgets}
    found = _call(api, "dashboard.get", {
        "output": ["dashboardid"], "filter": {"name": [name]}, "selectPages": "extend",
    })
    if not found:
        created = _call(api, "dashboard.create", {
            "name": name, "private": 0, "display_period": 30, "auto_start": 1, "pages": [page],
        })
        dashboardid = str(created["dashboardids"][0])
        log.info("created dashboard %r (id %s) mapping host group %s", name, dashboardid, group)
        return Outcome(dashboardid, "created")

    dashboard = found[0]
    dashboardid = str(dashboard["dashboardid"])
    pages = dashboard.get("pages", [])
    kept: list[dict[str, Any]] = [{"dashboard_pageid": p["dashboard_pageid"]} for p in pages]
    mapping = [i for i, p in enumerate(pages) if any(_shows_group(w, groupid) for w in p.get("widgets", []))]
    if not mapping:
        _call(api, "dashboard.update", {"dashboardid": dashboardid, "pages": [*kept, page]})
        log.info("added a map of host group %s to dashboard %r", group, name)
        return Outcome(dashboardid, "updated")
    if any(_shows_group(w, groupid, TOP_HOSTS_WIDGET) for p in pages for w in p.get("widgets", [])):
        return Outcome(dashboardid, "unchanged")
    # The page's widgets are given back as they are (a page's widget list is replaced as a whole).
    present = pages[mapping[0]].get("widgets", [])
    bottom = max(int(w["y"]) + int(w["height"]) for w in present)
    kept[mapping[0]]["widgets"] = [*present, table | {"y": bottom}]
    _call(api, "dashboard.update", {"dashboardid": dashboardid, "pages": kept})
    log.info("added the table of host group %s to dashboard %r", group, name)
    return Outcome(dashboardid, "updated")


# --------------------------------------------------------------------------
# Autoregistration: vans with the direct TLS-PSK uplink add themselves
# --------------------------------------------------------------------------
AUTOREGISTRATION_EVENTS = 2  # action.eventsource
CONDITION_HOST_METADATA = 24  # conditiontype of autoregistration actions
OPERATOR_CONTAINS = 2  # "like"
EVALTYPE_AND = 1
OPERATION_ADD_HOST = 2
OPERATION_ADD_TO_GROUP = 4
OPERATION_LINK_TEMPLATE = 6
OPERATION_INVENTORY_MODE = 10
TLS_UNENCRYPTED = 1
DEFAULT_AUTOREGISTRATION_ACTION = "trapline vehicles"
DEFAULT_FLEET_IDENTITY = "trapline-fleet"
# Words of the host metadata the agent sends ("trapline vehicle <version>").
VEHICLE_METADATA_WORDS = ("trapline", "vehicle")
# Fields of an action operation (or of its parts) that the API sets itself and refuses back.
_READ_ONLY_OPERATION_FIELDS = frozenset({"operationid", "actionid"})


def autoregistration_operations(groupid: str, templateids: list[str]) -> list[dict[str, Any]]:
    """What the action does to a registering van: host, fleet group, templates, automatic inventory."""
    return [
        {"operationtype": OPERATION_ADD_HOST},
        {"operationtype": OPERATION_ADD_TO_GROUP, "opgroup": [{"groupid": groupid}]},
        {"operationtype": OPERATION_LINK_TEMPLATE, "optemplate": [{"templateid": t} for t in templateids]},
        {"operationtype": OPERATION_INVENTORY_MODE, "opinventory": {"inventory_mode": INVENTORY_AUTOMATIC}},
    ]


def _operation_facts(operation: Mapping[str, Any]) -> set[tuple[int, str]]:
    """(operation type, target) pairs an operation stands for, to compare without ids and order."""
    kind = int(operation["operationtype"])
    if kind == OPERATION_ADD_TO_GROUP:
        return {(kind, str(g["groupid"])) for g in operation.get("opgroup", [])}
    if kind == OPERATION_LINK_TEMPLATE:
        return {(kind, str(t["templateid"])) for t in operation.get("optemplate", [])}
    if kind == OPERATION_INVENTORY_MODE:
        inventory = operation.get("opinventory") or {}
        return {(kind, str(inventory.get("inventory_mode", "")))}
    return {(kind, "")}


def _condition_facts(action: Mapping[str, Any]) -> set[tuple[int, int, str]]:
    conditions = (action.get("filter") or {}).get("conditions", [])
    return {(int(c["conditiontype"]), int(c["operator"]), str(c["value"])) for c in conditions}


def _writable(operation: Mapping[str, Any]) -> dict[str, Any]:
    """An operation read by action.get, as action.update takes it back.

    Its type and its ``op*`` parts only: autoregistration operations refuse the escalation
    fields (esc_period, esc_step_*, evaltype) that action.get returns for every operation.
    """
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in _READ_ONLY_OPERATION_FIELDS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {
        key: clean(value)
        for key, value in operation.items()
        if (key == "operationtype" or key.startswith("op"))
        and key not in _READ_ONLY_OPERATION_FIELDS
        and value not in ([], {})
    }


def ensure_autoregistration_action(
    api: ZabbixApiClient, group: str = DEFAULT_GROUP, name: str = DEFAULT_AUTOREGISTRATION_ACTION
) -> Outcome:
    """The autoregistration action that adds trapline vehicles: once per fleet, idempotent.

    It matches host metadata containing "trapline" and "vehicle" (both: another trapline
    role must not become a vehicle) and adds the host in ``group`` with the vehicle and
    agent templates linked and inventory automatic, as provision_vehicle does by hand.
    An existing action of that name keeps the operations someone added; only what is
    missing is added.
    """
    templateids = [
        ensure_template(api).objectid,
        ensure_template(api, AGENT_TEMPLATE, AGENT_TEMPLATE_FILE).objectid,
    ]
    groupid = ensure_host_group(api, group).objectid
    conditions = [
        {"conditiontype": CONDITION_HOST_METADATA, "operator": OPERATOR_CONTAINS, "value": word}
        for word in VEHICLE_METADATA_WORDS
    ]
    wanted = autoregistration_operations(groupid, templateids)
    found = _call(api, "action.get", {
        "output": ["actionid", "eventsource"], "filter": {"name": [name]},
        "selectFilter": "extend", "selectOperations": "extend",
    })
    if not found:
        action = {
            "name": name, "eventsource": AUTOREGISTRATION_EVENTS, "status": 0,
            "filter": {"evaltype": EVALTYPE_AND, "conditions": conditions}, "operations": wanted,
        }
        actionid = str(_call(api, "action.create", action)["actionids"][0])
        log.info("created autoregistration action %r (id %s) for host group %s", name, actionid, group)
        return Outcome(actionid, "created")
    action = found[0]
    actionid = str(action["actionid"])
    if int(action["eventsource"]) != AUTOREGISTRATION_EVENTS:
        raise ProvisionError(f"action {name!r} exists but is not an autoregistration action: rename one")
    present = [_writable(op) for op in action.get("operations", [])]
    have = set().union(*(_operation_facts(op) for op in present))
    missing = [op for op in wanted if not _operation_facts(op) <= have]
    changes: dict[str, Any] = {}
    if missing:
        changes["operations"] = [*present, *missing]
    if not {(c["conditiontype"], c["operator"], c["value"]) for c in conditions} <= _condition_facts(action):
        changes["filter"] = {"evaltype": EVALTYPE_AND, "conditions": conditions}
    if not changes:
        return Outcome(actionid, "unchanged")
    _call(api, "action.update", {"actionid": actionid, **changes})
    log.info("updated autoregistration action %r (%s)", name, ", ".join(sorted(changes)))
    return Outcome(actionid, "updated")


def ensure_autoregistration_psk(api: ZabbixApiClient, psk: ProxyPsk) -> Outcome:
    """The server takes autoregistrations with this PSK (and, as before, unencrypted ones if it did).

    The API never returns the key: a server that accepts PSK autoregistration already
    keeps its key (changing the key of a running fleet is the frontend's job), as
    ensure_proxy does for a proxy.
    """
    current = _call(api, "autoregistration.get", {"output": ["tls_accept"]})
    accept = int(current.get("tls_accept", TLS_UNENCRYPTED))
    if accept & TLS_PSK:
        return Outcome("autoregistration", "unchanged")
    _call(api, "autoregistration.update", {
        "tls_accept": accept | TLS_PSK, "tls_psk_identity": psk.identity, "tls_psk": psk.key.reveal(),
    })
    log.info("autoregistration now accepted with PSK identity %s", psk.identity)
    return Outcome("autoregistration", "updated")


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Van:
    """One van to provision: its host name and its settings."""

    host: str
    settings: VehicleSettings
    new_key: bool = False  # the key in settings.psk was generated here: show it once, to copy


_CSV_COLUMNS = ("host", "proxy_name", "psk_identity", "psk_file", "power_cut_at_ignition")
_YES = {"1", "yes", "true", "y"}
_NO = {"", "0", "no", "false", "n"}


def _psk(
    identity: str | None, psk_file: Path | None, generate: bool, where: str
) -> tuple[ProxyPsk | None, bool]:
    if psk_file is not None and generate:
        raise ConfigError(f"{where}: a PSK file and --new-psk exclude each other")
    if psk_file is None and not generate:
        if identity:
            raise ConfigError(f"{where}: a PSK identity needs --psk-file or --new-psk")
        return None, False
    key = new_psk() if generate else read_psk_file(psk_file)  # type: ignore[arg-type]
    return ProxyPsk(identity or "{host}", key), generate


def vans_from_args(args: argparse.Namespace) -> Iterator[Van]:
    """The vans of the command line, then those of ``--csv`` (its empty cells take the options)."""
    defaults = VehicleSettings(args.proxy_name, args.create_proxy, args.power_cut_at_ignition)
    for host in args.hosts:  # a key generated per van: no two vans share one
        psk, generated = _psk(args.psk_identity, args.psk_file, args.new_psk, "command line")
        yield Van(host, replace(defaults, psk=psk), generated)
    if args.csv is None:
        return
    with args.csv.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        unknown = sorted(set(rows.fieldnames or ()) - set(_CSV_COLUMNS))
        if "host" not in (rows.fieldnames or ()) or unknown:
            raise ConfigError(f"{args.csv}: expected the columns {', '.join(_CSV_COLUMNS)} (host required)"
                              + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        for line, row in enumerate(rows, start=2):
            where = f"{args.csv}:{line}"
            host = (row.get("host") or "").strip()
            if not host:
                raise ConfigError(f"{where}: empty host")
            cut = (row.get("power_cut_at_ignition") or "").strip().lower()
            if cut not in _YES | _NO:
                raise ConfigError(f"{where}: power_cut_at_ignition must be yes or no, not {cut!r}")
            psk_file = (row.get("psk_file") or "").strip()
            row_psk, row_new = _psk(
                (row.get("psk_identity") or "").strip() or args.psk_identity,
                Path(psk_file) if psk_file else args.psk_file,
                args.new_psk and not psk_file,
                where,
            )
            settings = VehicleSettings(
                (row.get("proxy_name") or "").strip() or args.proxy_name,
                args.create_proxy,
                cut in _YES or (not cut and args.power_cut_at_ignition),
                row_psk,
            )
            yield Van(host, settings, row_new)


def _fleet_dashboard(api: ZabbixApiClient, args: argparse.Namespace) -> None:
    if args.dashboard:
        outcome = ensure_fleet_dashboard(api, args.group, args.dashboard)
        print(f"dashboard {args.dashboard!r}: {outcome.action} (dashboardid {outcome.objectid})")


def _cmd_autoregistration(args: argparse.Namespace) -> int:
    if args.hosts or args.csv or args.proxy_name or args.create_proxy or args.power_cut_at_ignition:
        raise ConfigError(
            "--autoregistration sets up the fleet, not vans: give no host, --csv or proxy option"
        )
    psk, generated = _psk(args.psk_identity, args.psk_file, args.new_psk, "command line")
    if psk is not None and psk.identity == "{host}":  # the default of per-van proxies
        psk = replace(psk, identity=DEFAULT_FLEET_IDENTITY)
    api = connect(args)
    action = ensure_autoregistration_action(api, args.group)
    print(f"autoregistration action {DEFAULT_AUTOREGISTRATION_ACTION!r}: {action.action} "
          f"(actionid {action.objectid})")
    if psk is not None:
        outcome = ensure_autoregistration_psk(api, psk)
        print(f"autoregistration PSK (identity {psk.identity}): {outcome.action}")
        if generated and outcome.action != "unchanged":
            # Generated here, so the user needs it once: the file every van's install takes.
            print(f"  fleet PSK, for each van's install.sh --direct --psk-file fleet.psk: umask 077; "
                  f"echo {psk.key.reveal()} > fleet.psk")
    _fleet_dashboard(api, args)
    return 0


def _cmd_provision(args: argparse.Namespace) -> int:
    if args.autoregistration:
        return _cmd_autoregistration(args)
    vans = list(vans_from_args(args))
    if not vans:
        raise ConfigError("no van to provision: name hosts or give --csv")
    api = connect(args)
    for van in vans:
        done = provision_van(api, van.host, args.group, van.settings)
        proxy = ""
        if done.proxy is not None:
            proxy = f"; proxy {van.settings.proxy_for(van.host)}: {done.proxy.action}"
        print(f"host {van.host}: {done.host.action} (hostid {done.host.objectid}){proxy}")
        psk = van.settings.psk_for(van.host)
        if van.new_key and psk is not None and done.proxy is not None and done.proxy.action != "unchanged":
            # Generated here, so the user needs it once: the line that puts it on the van's Pi.
            print(f"  PSK for {van.host} (identity {psk.identity}), on its Pi as root: "
                  f"umask 077; echo {psk.key.reveal()} > /etc/zabbix/trapline-proxy.psk")
    _fleet_dashboard(api, args)
    return 0


def _guarded(args: argparse.Namespace) -> int:
    """Expected failures become one line on stderr and an exit code, never a traceback."""
    try:
        return _cmd_provision(args)
    except ConfigError as exc:
        print(f"trapline provision: {exc}", file=sys.stderr)
        return 2
    except (ProvisionError, TemplateError, ZabbixAPIException, RequestException, OSError) as exc:
        print(f"trapline provision: {exc}", file=sys.stderr)
        return 1


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``provision`` on the ``trapline`` command line."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "provision",
        help="create or update vehicle hosts and the fleet map dashboard in Zabbix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("hosts", nargs="*", metavar="HOST",
                        help="technical host name of a vehicle, as its agent's collectors send it")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="vans to provision, one per row: columns " + ", ".join(_CSV_COLUMNS)
                        + " (host required; an empty cell takes the option's value)")
    parser.add_argument("--group", default=DEFAULT_GROUP, help=f"host group (default {DEFAULT_GROUP!r})")
    parser.add_argument("--dashboard", default=DEFAULT_DASHBOARD,
                        help=f"name of the fleet map dashboard (default {DEFAULT_DASHBOARD!r}); '' for none")
    parser.add_argument("--proxy-name", "--proxy", dest="proxy_name", metavar="NAME",
                        help="monitor the hosts by this Zabbix proxy (the van's own proxy uplink); "
                        "'{host}' in NAME becomes each vehicle's host name, e.g. '{host}-proxy'")
    parser.add_argument("--create-proxy", action="store_true",
                        help="create the proxy as an active proxy when the server lacks it")
    parser.add_argument("--psk-identity", metavar="ID",
                        help="the proxy's PSK identity ('{host}' allowed; default: '{host}', with a key)")
    parser.add_argument("--psk-file", type=Path, metavar="FILE",
                        help="the proxy's PSK, a private file as the van's install wrote it "
                        "(/etc/zabbix/trapline-proxy.psk copied from the Pi); never printed")
    parser.add_argument("--new-psk", action="store_true",
                        help="generate a PSK per van and print the line that puts it on the van's Pi")
    parser.add_argument("--autoregistration", action="store_true",
                        help="instead of vans: the autoregistration action that adds every van of the "
                        "direct TLS-PSK uplink by itself (host metadata 'trapline vehicle'), once per "
                        "fleet; with --psk-file or --new-psk also the server's autoregistration PSK "
                        f"(identity from --psk-identity, default {DEFAULT_FLEET_IDENTITY!r})")
    parser.add_argument("--power-cut-at-ignition", action="store_true",
                        help=f"the vans cut the agent's power with the ignition: set "
                        f"{STOPS_EXPECTED_MACRO}=1, so their silence and restarts raise nothing")
    add_server_arguments(parser)
    parser.set_defaults(func=_guarded)
    return parser
