"""Every shipped template has a dashboard, and its widgets point at entities of their own template.

Zabbix imports a template dashboard whose widget names a missing item or graph only to fail the
whole import (6.0) or to leave an empty widget, so the references are checked here without a server;
tests/integration/test_template_import.py imports the files into real 6.0 and 7.0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from trapline.templates import shipped_templates

TEMPLATES = list(shipped_templates())


def _export(path: Path) -> dict[str, Any]:
    export: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))["zabbix_export"]
    return export


def _entities(template: dict[str, Any], root_graphs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Item keys and graph names by the widget field type that refers to them.

    Graphs sit at the export's root, beside the templates; a graph belongs to the template its items are on.
    """
    rules = template.get("discovery_rules", [])
    own = template["template"]
    return {
        "ITEM": {i["key"] for i in template.get("items", [])},
        "ITEM_PROTOTYPE": {p["key"] for r in rules for p in r.get("item_prototypes", [])},
        "GRAPH": {g["name"] for g in root_graphs if all(i["item"]["host"] == own for i in g["graph_items"])},
        "GRAPH_PROTOTYPE": {g["name"] for r in rules for g in r.get("graph_prototypes", [])},
    }


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.name for p in TEMPLATES])
def test_dashboard_widgets_name_entities_of_their_own_template(path: Path) -> None:
    export = _export(path)
    for template in export["templates"]:
        entities = _entities(template, export.get("graphs", []))
        for dashboard in template.get("dashboards", []):
            widgets = [w for page in dashboard["pages"] for w in page["widgets"]]
            assert widgets, dashboard["name"]
            for widget in widgets:
                for field in widget.get("fields", []):
                    if field["type"] not in entities:
                        continue
                    value = field["value"]
                    assert value["host"] == template["template"], widget["name"]
                    assert value.get("key", value.get("name")) in entities[field["type"]], widget["name"]


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.name for p in TEMPLATES])
def test_every_template_has_a_dashboard(path: Path) -> None:
    assert len(TEMPLATES) >= 6
    for template in _export(path)["templates"]:
        assert template.get("dashboards"), f"{template['template']} has no template dashboard"
