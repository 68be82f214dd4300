"""The dashboard the demo's frontend opens on: the three verticals side by side, each linking on.

Zabbix 6.0 has no widget of plain links, so the links hang on a network map: one
element per vertical (the vans, the Mist sites, the data pipelines), each a host group
element that shows the group's problems and, when clicked, offers the pages to go to.
Beside it, problems by severity per host group (the Mist sites appear as LLD creates
their groups) and the list of open problems.

Written for the demo's Zabbix 6.0 (widget field names and grid of that version).
A fresh frontend session opens the first dashboard by name, hence the name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

OVERVIEW_NAME: Final = "Demo: trapline overview"  # sorts before "Fleet map" and "Global view"
MAP_NAME: Final = "trapline demo"
# Zabbix 6.0 constants: widget field types, map element type "host group", grid.
FIELD_INT: Final = 0
FIELD_GROUP: Final = 2
FIELD_MAP: Final = 8
ELEMENT_HOST_GROUP: Final = 3
GRID_COLUMNS: Final = 24
MAP_WIDTH, MAP_HEIGHT = 780, 360


@dataclass(frozen=True, slots=True)
class Tile:
    """One vertical on the map: a host group, its icon and where a click leads."""

    label: str
    group: str
    icon: str  # a stock Zabbix image
    links: tuple[tuple[str, str], ...]  # (name, frontend-relative URL)


def page_url(action: str, **query: str | Sequence[str]) -> str:
    """A frontend page with its filter, relative to the frontend's root."""
    pairs: list[tuple[str, str]] = [("action", action)]
    for name, value in query.items():
        # Indexed (groupids[0], groupids[1]): a URL passed on through index.php's "request" keeps
        # only the last of several "groupids[]".
        if isinstance(value, str):
            pairs.append((name, value))
        else:
            pairs += [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return f"zabbix.php?{urlencode(pairs)}"


def _call(api: Any, method: str, params: Mapping[str, Any] | Sequence[str]) -> Any:
    return api.do_request(method, params)["result"]


def group_id(api: Any, name: str) -> str:
    found = _call(api, "hostgroup.get", {"output": ["groupid"], "filter": {"name": [name]}})
    if not found:
        raise LookupError(f"host group {name!r} does not exist")
    return str(found[0]["groupid"])


def ensure_map(api: Any, tiles: Sequence[Tile]) -> str:
    """The map of the tiles, created anew (the demo's Zabbix is its own)."""
    names = sorted({tile.icon for tile in tiles})
    icons = {i["name"]: i["imageid"] for i in _call(api, "image.get", {
        "output": ["imageid", "name"], "filter": {"name": names}})}
    missing = set(names) - icons.keys()
    if missing:
        raise LookupError(f"no stock image {sorted(missing)} in Zabbix")
    step = MAP_WIDTH // len(tiles)
    elements = [{
        "elementtype": ELEMENT_HOST_GROUP,
        "elements": [{"groupid": group_id(api, tile.group)}],
        "iconid_off": icons[tile.icon],
        "label": f"{tile.label}\n(click for links)",
        "x": step * k + (step - 96) // 2,
        "y": 90,
        "urls": [{"name": name, "url": url} for name, url in tile.links],
    } for k, tile in enumerate(tiles)]
    old = _call(api, "map.get", {"output": ["sysmapid"], "filter": {"name": [MAP_NAME]}})
    if old:
        _call(api, "map.delete", [m["sysmapid"] for m in old])
    created = _call(api, "map.create", {
        "name": MAP_NAME, "width": MAP_WIDTH, "height": MAP_HEIGHT, "private": 0,
        "label_type": 0,  # element labels as written
        "expandproblem": 0,  # a count of problems under a tile: their names would overlap the next tile
        "expand_macros": 1, "selements": elements,
    })
    return str(created["sysmapids"][0])


def ensure_overview(api: Any, tiles: Sequence[Tile], hidden_groups: Sequence[str]) -> str:
    """The overview dashboard (replaced if it exists); returns its id."""
    sysmapid = ensure_map(api, tiles)
    hidden = [{"type": FIELD_GROUP, "name": "exclude_groupids", "value": group_id(api, g)}
              for g in hidden_groups]
    half = GRID_COLUMNS // 2
    widgets = [
        {"type": "map", "name": "The suite: click a tile for its pages", "x": 0, "y": 0, "width": half,
         "height": 6, "fields": [{"type": FIELD_MAP, "name": "sysmapid", "value": sysmapid}]},
        {"type": "problemsbysv", "name": "Problems by host group (Mist: one group per site)",
         "x": half, "y": 0, "width": half, "height": 6, "fields": hidden},
        {"type": "problems", "name": "Open problems", "x": 0, "y": 6, "width": GRID_COLUMNS, "height": 6,
         "fields": [*hidden, {"type": FIELD_INT, "name": "show_lines", "value": 12}]},
    ]
    old = _call(api, "dashboard.get", {"output": ["dashboardid"], "filter": {"name": [OVERVIEW_NAME]}})
    if old:
        _call(api, "dashboard.delete", [d["dashboardid"] for d in old])
    created = _call(api, "dashboard.create", {
        "name": OVERVIEW_NAME, "private": 0, "pages": [{"widgets": widgets}],
    })
    return str(created["dashboardids"][0])
