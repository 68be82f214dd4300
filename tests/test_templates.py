"""Static checks on every shipped Zabbix template, and proof that the checks catch defects."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from trapline import templates
from trapline.core.model import Discovery, Reading
from trapline.middleware.stats import AgentStats
from trapline.templates import (
    _referenced_items,
    check_template,
    check_templates,
    import_rules,
    in_link_order,
    shipped_templates,
    summarize,
    template_dir,
)
from trapline.uuids import derive_uuid, fill_uuids, is_v4_shaped, uuid_slots

SHIPPED = shipped_templates()


def _id(path: Path) -> str:
    return str(path.relative_to(template_dir()))


def test_templates_are_shipped() -> None:
    assert template_dir().name == "zabbix_templates"
    assert any(p.name == "template_trapline_agent.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_shipped_template_passes_every_check(path: Path) -> None:
    assert check_template(path) == []


@pytest.mark.parametrize("path", SHIPPED, ids=_id)
def test_shipped_template_uuids_are_already_filled(path: Path) -> None:
    _, changes = fill_uuids(path.read_text(encoding="utf-8"))
    assert changes == 0


def test_uuids_are_unique_across_all_shipped_templates() -> None:
    assert check_templates(SHIPPED) == []


# --------------------------------------------------------------------------
# The agent template is a contract with the pipeline's self-monitoring
# --------------------------------------------------------------------------
AGENT_TEMPLATE = template_dir() / "trapline_agent" / "template_trapline_agent.yaml"


def _keys_the_agent_sends() -> tuple[set[str], set[str], set[str], set[str]]:
    """Plain item keys, LLD rules, destination and collector prototype keys, from the agent's own code."""
    stats = AgentStats()
    stats.destination("{#DEST}")
    stats.collector("{#COLLECTOR}")
    items = stats.readings("agent", 0, None)
    keys = {i.key for i in items if isinstance(i, Reading)}
    rules = {i.rule for i in items if isinstance(i, Discovery)}
    dest = {k for k in keys if "{#DEST}" in k}
    collector = {k for k in keys if "{#COLLECTOR}" in k}
    return keys - dest - collector, rules, dest, collector


AGENT_KEYS, AGENT_RULES, DESTINATION_KEYS, COLLECTOR_KEYS = _keys_the_agent_sends()
COUNTER_KEYS = {
    "trapline.spool.dropped", "trapline.rejected", 'trapline.sent["{#DEST}"]', 'trapline.failed["{#DEST}"]',
    'trapline.collector.readings["{#COLLECTOR}"]', 'trapline.collector.errors["{#COLLECTOR}"]',
}


def _agent_template() -> dict:  # type: ignore[type-arg]
    data = yaml.safe_load(AGENT_TEMPLATE.read_text(encoding="utf-8"))
    (template,) = data["zabbix_export"]["templates"]
    return template  # type: ignore[no-any-return]


def _all_items(template: dict) -> list[dict]:  # type: ignore[type-arg]
    items = list(template["items"])
    for rule in template["discovery_rules"]:
        items += rule["item_prototypes"]
    return items


def test_agent_template_has_exactly_the_keys_the_agent_sends() -> None:
    template = _agent_template()
    assert {item["key"] for item in template["items"]} == AGENT_KEYS
    rules = {rule["key"]: rule for rule in template["discovery_rules"]}
    assert set(rules) == AGENT_RULES == {"trapline.destination.discovery", "trapline.collector.discovery"}
    assert {p["key"] for p in rules["trapline.destination.discovery"]["item_prototypes"]} == DESTINATION_KEYS
    assert {p["key"] for p in rules["trapline.collector.discovery"]["item_prototypes"]} == COLLECTOR_KEYS
    assert all(rule["type"] == "TRAP" for rule in rules.values())
    assert all(item["type"] == "TRAP" for item in _all_items(template))


def test_agent_template_turns_counters_into_named_rates() -> None:
    for item in _all_items(_agent_template()):
        steps = [step["type"] for step in item.get("preprocessing", [])]
        is_rate = "CHANGE_PER_SECOND" in steps
        assert is_rate == (item["key"] in COUNTER_KEYS), item["key"]
        assert is_rate == item["name"].endswith("per second"), item["name"]
        if is_rate:
            assert item["value_type"] == "FLOAT"


def test_agent_template_follows_naming_and_tagging_conventions() -> None:
    template = _agent_template()
    assert template["name"] == "trapline agent by Zabbix trapper"
    assert {t["tag"] for t in template["tags"]} == {"class", "target"}
    for item in _all_items(template):
        assert item["name"].startswith("trapline: ")
        key_name = item["key"].split("[")[0]
        assert key_name == key_name.lower()
        assert "component" in {t["tag"] for t in item["tags"]}
    data = yaml.safe_load(AGENT_TEMPLATE.read_text(encoding="utf-8"))["zabbix_export"]
    triggers = [t for item in template["items"] for t in item.get("triggers", [])] + data["triggers"]
    for rule in template["discovery_rules"]:
        triggers += rule.get("trigger_prototypes", [])
        triggers += [t for p in rule["item_prototypes"] for t in p.get("trigger_prototypes", [])]
    assert len(triggers) == 7
    for trigger in triggers:
        assert trigger["name"].startswith("trapline: ")
        assert trigger["opdata"] and trigger["description"]
        assert {t["tag"] for t in trigger["tags"]} == {"scope"}


def test_list_counts_the_agent_template() -> None:
    (summary,) = summarize(AGENT_TEMPLATE)
    assert (summary.name, summary.version) == ("trapline agent by Zabbix trapper", "6.0")
    assert (summary.items, summary.triggers, summary.discovery_rules) == (12, 7, 2)


# --------------------------------------------------------------------------
# The checks find real defects
# --------------------------------------------------------------------------
VALID = """\
zabbix_export:
  version: '6.0'
  groups:
    - uuid: 'a571c0d144b14fd4a87a9d9b2aa9fcd6'
      name: Templates/Applications
  templates:
    - uuid: '11111111111141118111111111111111'
      template: 'Probe by Zabbix trapper'
      name: 'Probe by Zabbix trapper'
      groups:
        - name: Templates/Applications
      items:
        - uuid: '22222222222242228222222222222222'
          name: 'Probe: Status'
          type: TRAP
          key: probe.status
          valuemap:
            name: 'Probe status'
          triggers:
            - uuid: '33333333333343338333333333333333'
              expression: 'last(/Probe by Zabbix trapper/probe.status)>{$PROBE.MAX}'
              name: 'Probe: Bad status'
        - uuid: '44444444444444448444444444444444'
          name: 'Probe: Raw'
          type: TRAP
          key: probe.raw
          value_type: TEXT
      discovery_rules:
        - uuid: '55555555555545558555555555555555'
          name: 'Part discovery'
          type: DEPENDENT
          key: probe.part.discovery
          master_item:
            key: probe.raw
          item_prototypes:
            - uuid: '66666666666646668666666666666666'
              name: 'Probe: Part {#PART}: Value'
              type: TRAP
              key: 'probe.value["{#PART}",]'
              trigger_prototypes:
                - uuid: '77777777777747778777777777777777'
                  expression: 'last(/Probe by Zabbix trapper/probe.value["{#PART}",])>0'
                  name: 'Probe: Part {#PART} is bad'
      macros:
        - macro: '{$PROBE.MAX}'
          value: '1'
          description: 'Highest good status.'
      valuemaps:
        - uuid: '88888888888848888888888888888888'
          name: 'Probe status'
          mappings:
            - value: '0'
              newvalue: ok
  triggers:
    - uuid: '99999999999949998999999999999999'
      expression: |
        last(/Probe by Zabbix trapper/probe.status)>0
        and length(last(/Probe by Zabbix trapper/probe.raw))>0
      name: 'Probe: Both'
"""


def _write(folder: Path, text: str, readme: bool = True, name: str = "template_probe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if readme:
        (folder / "README.md").write_text("# Probe\n", encoding="utf-8")
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_valid_probe_passes(tmp_path: Path) -> None:
    assert check_template(_write(tmp_path, VALID)) == []


# name: (text to replace, replacement, what the problem report must say)
DEFECTS: dict[str, tuple[str, str, str]] = {
    "not yaml": ("  version: '6.0'", "  version: [6.0", "not valid YAML"),
    "old version": ("version: '6.0'", "version: '5.4'", "zabbix_export.version is '5.4'"),
    "version is a float": ("version: '6.0'", "version: 6.0", "expected the string '6.0'"),
    "missing uuid": ("- uuid: '44444444444444448444444444444444'\n          name", "- name", "missing uuid"),
    "uuid not v4": (
        "'22222222222242228222222222222222'", "'22222222222212228222222222222222'", "not a version-4 shaped"
    ),
    "uuid with dashes": (
        "'22222222222242228222222222222222'",
        "'22222222-2222-4222-8222-222222222222'",
        "not a version-4 shaped",
    ),
    "uuid unquoted": ("'22222222222242228222222222222222'", "22222222222242228222222222222222", "not quoted"),
    "uuid used twice": (
        "'44444444444444448444444444444444'", "'22222222222242228222222222222222'", "is also used by"
    ),
    "duplicate item key": (
        "key: probe.raw\n          value_type", "key: probe.status\n          value_type",
        "'probe.status' used 2 times",
    ),
    "prototype key equals item key": (
        "key: 'probe.value[\"{#PART}\",]'", "key: probe.raw", "'probe.raw' used 2 times"
    ),
    "dependent LLD rule key equals item key": (
        "key: probe.part.discovery", "key: probe.status", "'probe.status' used 2 times"
    ),
    "trigger names another template": (
        "last(/Probe by Zabbix trapper/probe.status)>{$PROBE.MAX}",
        "last(/Other template/probe.status)>{$PROBE.MAX}",
        "references 'Other template', not its own template",
    ),
    "trigger on unknown key": (
        "last(/Probe by Zabbix trapper/probe.status)>{$PROBE.MAX}",
        "last(/Probe by Zabbix trapper/probe.stauts)>{$PROBE.MAX}",
        "unknown key 'probe.stauts'",
    ),
    "prototype trigger names another template": (
        "last(/Probe by Zabbix trapper/probe.value", "last(/Probe/probe.value", "not its own template"
    ),
    "root trigger spans templates": (
        "length(last(/Probe by Zabbix trapper/probe.raw))", "length(last(/Other/probe.raw))",
        "exactly one template",
    ),
    "undefined value map": (
        "name: 'Probe status'\n          triggers", "name: 'Probe state'\n          triggers",
        "undefined value map 'Probe state'",
    ),
    "macro without description": (
        "description: 'Highest good status.'", "description: ''", "{$PROBE.MAX} has no description"
    ),
    "macro used but not defined": (
        ")>{$PROBE.MAX}'", ")>{$PROBE.MIN}'", "{$PROBE.MIN} is used but not defined"
    ),
    "template without groups": ("      groups:\n        - name: Templates/Applications\n", "", "no groups"),
    "group not exported": (
        "        - name: Templates/Applications", "        - name: Templates/Other",
        "'Templates/Other' is not in zabbix_export.groups",
    ),
    "unknown master item": (
        "master_item:\n            key: probe.raw", "master_item:\n            key: probe.gone",
        "unknown master item 'probe.gone'",
    ),
}


@pytest.mark.parametrize("defect", DEFECTS, ids=list(DEFECTS))
def test_each_check_catches_its_defect(tmp_path: Path, defect: str) -> None:
    old, new, expected = DEFECTS[defect]
    assert VALID.count(old) == 1, f"mutation for {defect!r} must hit exactly one place"
    problems = check_template(_write(tmp_path, VALID.replace(old, new)))
    assert any(expected in problem for problem in problems), problems


def test_a_template_without_readme_is_refused(tmp_path: Path) -> None:
    problems = check_template(_write(tmp_path, VALID, readme=False))
    assert any("no README.md" in p for p in problems)


def test_uuid_clash_across_files_is_found_but_a_shared_group_is_fine(tmp_path: Path) -> None:
    first = _write(tmp_path / "a", VALID)
    renamed = VALID.replace("Probe by Zabbix trapper", "Second probe by Zabbix trapper")
    refilled, _ = fill_uuids(_without_uuids_except_group(renamed))
    second = _write(tmp_path / "b", refilled)
    assert check_templates([first, second]) == []

    clash = _write(tmp_path / "c", renamed)  # same item uuids as the first file
    problems = check_templates([first, clash])
    assert any("is also used by" in p for p in problems)
    assert not any("Templates/Applications" in p for p in problems)


def _without_uuids_except_group(text: str) -> str:
    keep = "uuid: 'a571c0d144b14fd4a87a9d9b2aa9fcd6'"
    lines = text.splitlines(keepends=True)
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("- uuid:") and keep not in line:
            out.append(line.replace(stripped, "-"))
        elif stripped.startswith("uuid:") and keep not in line:
            continue
        else:
            out.append(line)
    return "".join(out)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("last(/T/a.b)>0", [("T", "a.b")]),
        (
            'min(/T x/k[{#A},"x,]y"],5m)>1 or max( /T x/k2 ,1h)=0',
            [("T x", 'k[{#A},"x,]y"]'), ("T x", "k2")],
        ),
        ("last(/T/k[a,[b,c]])=1", [("T", "k[a,[b,c]]")]),
        ("nodata(/T/trapline.uptime,{$X})=1", [("T", "trapline.uptime")]),
    ],
)
def test_item_references_are_parsed_with_bracketed_keys(
    expression: str, expected: list[tuple[str, str]]
) -> None:
    assert list(_referenced_items(expression)) == expected


# --------------------------------------------------------------------------
# Deterministic uuids and the filler
# --------------------------------------------------------------------------
@given(st.text())
def test_derived_uuids_are_v4_shaped_and_stable(name: str) -> None:
    assert is_v4_shaped(derive_uuid(name))
    assert derive_uuid(name) == derive_uuid(name)


def test_derived_uuids_differ_by_name() -> None:
    assert derive_uuid("templates/A/items/a") != derive_uuid("templates/A/items/b")


def test_filler_adds_missing_fixes_bad_quotes_unquoted_and_keeps_good(tmp_path: Path) -> None:
    source = "# hand-written, keep me\n" + _without_uuids_except_group(VALID)
    source = source.replace("      macros:\n", "      macros:\n        # a comment inside\n")
    good = "'a571c0d144b14fd4a87a9d9b2aa9fcd6'"
    unquoted = _without_uuids_except_group(VALID).replace(good, good.strip("'"))
    malformed = _without_uuids_except_group(VALID).replace(good, "'not-a-uuid'")

    fixed, count = fill_uuids(source)
    # template, 2 items, trigger, rule, prototype, prototype trigger, value map, root trigger
    assert count == 9
    assert count == len([s for s in uuid_slots(fixed) if s.kind != "groups"])
    assert "# hand-written, keep me" in fixed and "# a comment inside" in fixed
    assert good in fixed
    assert fill_uuids(fixed) == (fixed, 0)
    assert check_template(_write(tmp_path, fixed)) == []
    original, refilled = yaml.safe_load(source), yaml.safe_load(fixed)
    assert _drop_uuids(original) == _drop_uuids(refilled)
    assert fill_uuids(source)[0] == fixed  # deterministic

    assert good in fill_uuids(unquoted)[0]
    repaired = fill_uuids(malformed)[0]
    assert "not-a-uuid" not in repaired
    assert check_template(_write(tmp_path / "m", repaired)) == []


def _drop_uuids(node: object) -> object:
    if isinstance(node, dict):
        return {k: _drop_uuids(v) for k, v in node.items() if k != "uuid"}
    if isinstance(node, list):
        return [_drop_uuids(v) for v in node]
    return node


def test_filler_leaves_linked_templates_and_template_groups_alone() -> None:
    # Inside a template, "groups" and "templates" are references by name and carry no uuid.
    fixed, _ = fill_uuids(_without_uuids_except_group(VALID))
    template = yaml.safe_load(fixed)["zabbix_export"]["templates"][0]
    assert template["groups"] == [{"name": "Templates/Applications"}]


def test_uuids_command_check_mode_reports_without_writing(tmp_path: Path) -> None:
    path = _write(tmp_path, _without_uuids_except_group(VALID))
    before = path.read_text(encoding="utf-8")
    assert _cli(["templates", "uuids", "--check", str(path)]) == 1
    assert path.read_text(encoding="utf-8") == before
    assert _cli(["templates", "uuids", str(path)]) == 0
    assert _cli(["templates", "uuids", "--check", str(path)]) == 0
    assert check_template(path) == []


# --------------------------------------------------------------------------
# Command line and import rules (no server needed)
# --------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trapline")
    templates.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


def test_list_prints_every_shipped_template(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["templates", "list"]) == 0
    out = capsys.readouterr().out
    assert "trapline agent by Zabbix trapper" in out
    assert "trapline_agent/template_trapline_agent.yaml" in out


def test_check_command_fails_on_a_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, VALID.replace(*DEFECTS["duplicate item key"][:2]))
    assert _cli(["templates", "check", str(path)]) == 1
    assert "used 2 times" in capsys.readouterr().out
    assert _cli(["templates", "check"]) == 0


def test_import_refuses_a_broken_file_before_contacting_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, VALID.replace(*DEFECTS["duplicate item key"][:2]))
    # Nothing listens on port 9: reaching the network would fail differently.
    status = _cli(["templates", "import", str(path), "--url", "http://127.0.0.1:9/", "--user", "Admin",
                   "--password-file", str(tmp_path / "nope")])
    assert status == 1
    assert "nothing imported" in capsys.readouterr().err


def test_import_refuses_a_readable_secret_and_never_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "password"
    secret.write_text("hunter2-very-secret\n", encoding="utf-8")
    os.chmod(secret, 0o644)
    status = _cli(["templates", "import", "--url", "http://127.0.0.1:9/", "--user", "Admin",
                   "--password-file", str(secret)])
    captured = capsys.readouterr()
    assert status == 2
    assert "readable by group or others" in captured.err
    assert "hunter2" not in captured.out + captured.err


def test_import_needs_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["templates", "import", "--url", "http://127.0.0.1:9/"]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_unknown_template_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["templates", "import", "no-such-template", "--url", "http://127.0.0.1:9/"]) == 2
    assert "no shipped template 'no-such-template'" in capsys.readouterr().err


def test_import_rules_follow_the_server_version() -> None:
    old, new = import_rules((6, 0)), import_rules((7, 0))
    assert "groups" in old and "template_groups" not in old
    assert "groups" not in new and {"template_groups", "host_groups"} <= set(new)
    for rules in (old, new):
        for child in ("items", "triggers", "discoveryRules", "valueMaps", "templateDashboards", "graphs"):
            assert rules[child] == {"createMissing": True, "updateExisting": True, "deleteMissing": True}
        group_rule = rules.get("groups") or rules["template_groups"]
        assert group_rule == {"createMissing": True, "updateExisting": False}


def test_templates_are_imported_after_the_templates_they_link() -> None:
    """The discovery template's host prototypes link the AP, switch and gateway templates; Zabbix
    refuses a link to a template it does not have, and mist_discovery sorts before mist_gateway."""
    order = [p.parent.name for p in in_link_order(SHIPPED)]
    for linked in ("mist_ap", "mist_switch", "mist_gateway"):
        assert order.index(linked) < order.index("mist_discovery"), order
    assert sorted(order) == sorted(p.parent.name for p in SHIPPED)
