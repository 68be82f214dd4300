"""Every shipped template imports into real Zabbix 6.0 and 7.0, completely and idempotently."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.localzabbix import ADMIN_PASSWORD, ADMIN_USER, LocalZabbix
from trapline.templates import TemplateError, add_parser, export_template, import_templates, shipped_templates

SHIPPED = shipped_templates()
AGENT = next(p for p in SHIPPED if p.name == "template_trapline_agent.yaml")
AGENT_NAME = "trapline agent by Zabbix trapper"


def _export(api: Any, name: str) -> dict[str, Any]:
    """The server's export of one template, without the export timestamp."""
    data: dict[str, Any] = yaml.safe_load(export_template(api, name))["zabbix_export"]
    data.pop("date", None)
    return data


def _keys(export: dict[str, Any], template_name: str) -> list[str]:
    """Every item, discovery rule and prototype key of one template, duplicates kept."""
    (template,) = [t for t in export.get("templates", []) if t["template"] == template_name]
    keys = [item["key"] for item in template.get("items", [])]
    for rule in template.get("discovery_rules", []):
        keys.append(rule["key"])
        keys += [prototype["key"] for prototype in rule.get("item_prototypes", [])]
    return keys


def _file_templates(path: Path) -> tuple[dict[str, Any], list[str]]:
    export: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))["zabbix_export"]
    return export, [t["template"] for t in export["templates"]]


@pytest.mark.integration
def test_shipped_templates_import_completely_and_idempotently(zabbix: LocalZabbix) -> None:
    api = zabbix.api()
    names = import_templates(api, SHIPPED)
    assert AGENT_NAME in names
    first = {name: _export(api, name) for name in names}

    assert import_templates(api, SHIPPED) == names
    second = {name: _export(api, name) for name in names}
    assert second == first, "a second import changed the templates"

    for path in SHIPPED:
        file_export, file_names = _file_templates(path)
        for name in file_names:
            on_server = _keys(first[name], name)
            in_file = _keys(file_export, name)
            assert sorted(on_server) == sorted(in_file), f"{path}: keys differ on Zabbix {zabbix.version}"


@pytest.mark.integration
def test_reimport_removes_what_a_newer_file_dropped(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    import_templates(api, [AGENT])
    shipped_state = _export(api, AGENT_NAME)

    # An "older release" of the template with one more item: importing the shipped file
    # afterwards must converge to exactly the shipped state again.
    older = tmp_path / AGENT.parent.name / AGENT.name
    older.parent.mkdir()
    shutil.copy(AGENT.parent / "README.md", older.parent / "README.md")
    extra_item = """\
        -
          uuid: '0f5a7d7e1c2b4e3a9d8c7b6a5f4e3d2c'
          name: 'trapline: Agent: Retired metric'
          type: TRAP
          key: trapline.retired
          delay: '0'
          tags:
            -
              tag: component
              value: application
"""
    text = AGENT.read_text(encoding="utf-8")
    marker = "      items:\n"
    assert text.count(marker) == 1
    older.write_text(text.replace(marker, marker + extra_item), encoding="utf-8")
    import_templates(api, [older])
    assert "trapline.retired" in _keys(_export(api, AGENT_NAME), AGENT_NAME)

    import_templates(api, [AGENT])
    assert _export(api, AGENT_NAME) == shipped_state


@pytest.mark.integration
def test_broken_template_never_reaches_the_server(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    broken = tmp_path / "broken" / "template_broken.yaml"
    broken.parent.mkdir()
    shutil.copy(AGENT.parent / "README.md", broken.parent / "README.md")
    text = AGENT.read_text(encoding="utf-8").replace(AGENT_NAME, "trapline broken by Zabbix trapper")
    # Two items with one key: Zabbix would keep one of them without a word.
    broken.write_text(text.replace("key: trapline.rejected", "key: trapline.spool.dropped"), encoding="utf-8")
    with pytest.raises(TemplateError, match="used 2 times"):
        import_templates(api, [broken])
    assert api.template.get(filter={"host": "trapline broken by Zabbix trapper"}) == []


@pytest.mark.integration
def test_command_line_import_and_export(zabbix: LocalZabbix, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text(ADMIN_PASSWORD + "\n", encoding="utf-8")
    os.chmod(password, 0o600)
    server = ["--url", zabbix.frontend_url, "--user", ADMIN_USER, "--password-file", str(password)]
    assert _cli(["templates", "import", "trapline_agent", *server]) == 0

    exported = tmp_path / "exported.yaml"
    assert _cli(["templates", "export", AGENT_NAME, "-o", str(exported), *server]) == 0
    assert sorted(_keys(yaml.safe_load(exported.read_text())["zabbix_export"], AGENT_NAME)) == sorted(
        _keys(_file_templates(AGENT)[0], AGENT_NAME)
    )
    assert _cli(["templates", "export", "no such template", "-o", str(exported), *server]) == 1


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trapline")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status
