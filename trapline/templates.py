"""``trapline templates``: list, check, import and export the shipped Zabbix templates.

Templates are hand-written 6.0-format YAML files under ``zabbix_templates/``.
Before anything is sent to a server every file passes :func:`check_template`,
because Zabbix accepts some broken files silently (two items with one key: one
of them is just lost).  After an import the server's own export is compared
with the file, so a loss the checks did not foresee is still reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pyzabbix.api import ZabbixAPI, ZabbixAPIException
from requests import RequestException

from trapline.core.config import ConfigError, read_secret_file
from trapline.uuids import UuidSlot, add_arguments, is_v4_shaped, run, uuid_slots

log = logging.getLogger(__name__)

EXPORT_VERSION = "6.0"
TEMPLATE_SUFFIXES = (".yaml", ".yml")

# "Delete missing" for everything inside a template: re-importing a newer file
# must remove what the file no longer has, or old items and triggers linger on
# every host.  Groups are shared with the rest of the server: only create.
_CHILD_RULE = {"createMissing": True, "updateExisting": True, "deleteMissing": True}
_CREATE_ONLY = {"createMissing": True, "updateExisting": False}
_COMMON_RULES: dict[str, dict[str, bool]] = {
    "templates": {"createMissing": True, "updateExisting": True},
    "templateDashboards": _CHILD_RULE,
    "templateLinkage": {"createMissing": True, "deleteMissing": True},
    "items": _CHILD_RULE,
    "discoveryRules": _CHILD_RULE,
    "triggers": _CHILD_RULE,
    "graphs": _CHILD_RULE,
    "httptests": _CHILD_RULE,
    "valueMaps": _CHILD_RULE,
}

# An item reference in a trigger expression: "func(/host/key" (5.4+ syntax).
_ITEM_REFERENCE = re.compile(r"\(\s*/([^/]*)/")
_KEY_NAME = re.compile(r"[0-9A-Za-z_.\-]+")
_USER_MACRO = re.compile(r"\{\$([A-Z0-9_.]+)(?::[^}]*)?\}")


class TemplateError(Exception):
    """A template file that must not be imported; ``str()`` lists every problem."""


class ZabbixApiClient(Protocol):
    """The part of pyzabbix's ``ZabbixAPI`` used here."""

    def do_request(self, method: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> Any: ...


# --------------------------------------------------------------------------
# Where the templates are
# --------------------------------------------------------------------------
def template_dir() -> Path:
    """The folder holding the shipped templates.

    Inside an installed package it is ``trapline/zabbix_templates`` (package
    data); in a source checkout or editable install it is the repository's
    ``zabbix_templates/`` next to the ``trapline`` package folder.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "zabbix_templates", package.parent / "zabbix_templates"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no zabbix_templates folder in {package} or {package.parent}")


def shipped_templates(folder: Path | None = None) -> list[Path]:
    root = folder if folder is not None else template_dir()
    return sorted(p for p in root.rglob("*") if p.suffix in TEMPLATE_SUFFIXES and p.is_file())


# --------------------------------------------------------------------------
# Reading a template file
# --------------------------------------------------------------------------
def _list(node: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = node.get(key)
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


@dataclass(frozen=True)
class TemplateFile:
    path: Path
    source: str
    export: dict[str, Any]

    @property
    def templates(self) -> list[dict[str, Any]]:
        return _list(self.export, "templates")

    @property
    def root_triggers(self) -> list[dict[str, Any]]:
        return _list(self.export, "triggers")


def load_template(path: Path) -> TemplateFile:
    try:
        source = path.read_text(encoding="utf-8")
        data = yaml.safe_load(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read ({exc})") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from None
    export = data.get("zabbix_export") if isinstance(data, dict) else None
    if not isinstance(export, dict):
        raise TemplateError(f"{path}: no zabbix_export mapping at the top")
    return TemplateFile(path, source, export)


def _discovery_items(rule: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _list(rule, "item_prototypes")


def _rule_triggers(rule: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    yield from _list(rule, "trigger_prototypes")
    for prototype in _discovery_items(rule):
        yield from _list(prototype, "trigger_prototypes")


def _item_triggers(template: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for item in _list(template, "items"):
        yield from _list(item, "triggers")


# --------------------------------------------------------------------------
# Static checks
# --------------------------------------------------------------------------
def _referenced_items(expression: str) -> Iterator[tuple[str, str]]:
    """(host, key) of every ``/host/key`` reference in a trigger expression."""
    for match in _ITEM_REFERENCE.finditer(expression):
        position = match.end()
        name = _KEY_NAME.match(expression, position)
        if name is None:
            yield match.group(1), ""
            continue
        end = name.end()
        if end < len(expression) and expression[end] == "[":
            end = _skip_key_parameters(expression, end)
        yield match.group(1), expression[position:end]


def _skip_key_parameters(text: str, start: int) -> int:
    """Index just past the ``[...]`` starting at ``start``; quoted parameters may hold brackets."""
    depth = 0
    index = start
    in_quotes = False
    while index < len(text):
        char = text[index]
        if in_quotes:
            if char == "\\":
                index += 1
            elif char == '"':
                in_quotes = False
        elif char == '"':
            in_quotes = True
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return index


def _check_expressions(
    where: str, trigger: Mapping[str, Any], allowed_hosts: set[str], known_keys: set[str]
) -> list[str]:
    problems = []
    name = trigger.get("name", "?")
    for field in ("expression", "recovery_expression"):
        expression = trigger.get(field)
        if not isinstance(expression, str):
            if field == "expression":
                problems.append(f"{where}: trigger {name!r} has no expression")
            continue
        references = list(_referenced_items(expression))
        if not references:
            problems.append(f"{where}: trigger {name!r} {field} references no item")
        for host, key in references:
            if host not in allowed_hosts:
                problems.append(
                    f"{where}: trigger {name!r} {field} references {host!r}, not its own template"
                )
            elif key not in known_keys:
                problems.append(f"{where}: trigger {name!r} {field} references unknown key {key!r}")
    return problems


def _check_keys(where: str, template: Mapping[str, Any]) -> list[str]:
    """Item, LLD rule and prototype keys share one namespace per template in Zabbix."""
    keys = [item.get("key") for item in _list(template, "items")]
    for rule in _list(template, "discovery_rules"):
        keys.append(rule.get("key"))
        keys.extend(prototype.get("key") for prototype in _discovery_items(rule))
    problems = [f"{where}: an item, prototype or discovery rule has no key" for key in keys if not key]
    problems += [
        f"{where}: key {key!r} used {count} times (Zabbix keeps only one)"
        for key, count in Counter(k for k in keys if k).items()
        if count > 1
    ]
    return problems


def _check_masters(where: str, entries: list[dict[str, Any]], masters: set[str]) -> list[str]:
    problems = []
    for entry in entries:
        if entry.get("type") != "DEPENDENT":
            continue
        master = entry.get("master_item")
        master_key = master.get("key") if isinstance(master, dict) else None
        if master_key not in masters:
            problems.append(f"{where}: dependent {entry.get('key')!r} has unknown master item {master_key!r}")
    return problems


def _check_valuemaps(where: str, template: Mapping[str, Any]) -> list[str]:
    defined = {valuemap.get("name") for valuemap in _list(template, "valuemaps")}
    items = list(_list(template, "items"))
    for rule in _list(template, "discovery_rules"):
        items.extend(_discovery_items(rule))
    problems = []
    for item in items:
        valuemap = item.get("valuemap")
        if isinstance(valuemap, dict) and valuemap.get("name") not in defined:
            problems.append(
                f"{where}: item {item.get('key')!r} uses undefined value map {valuemap.get('name')!r}"
            )
    return problems


def _check_macros(where: str, template: Mapping[str, Any], extra_text: str) -> list[str]:
    problems = []
    defined = set()
    for macro in _list(template, "macros"):
        name = macro.get("macro", "?")
        defined.add(_USER_MACRO.sub(r"\1", str(name)))
        if not str(macro.get("description") or "").strip():
            problems.append(f"{where}: macro {name} has no description")
    used = set(_USER_MACRO.findall(json.dumps(template, default=str) + extra_text))
    problems += [f"{where}: macro {{${name}}} is used but not defined" for name in sorted(used - defined)]
    return problems


def _check_uuids(path: Path, slots: list[UuidSlot]) -> list[str]:
    problems = []
    for slot in slots:
        where = f"{path}: {slot.kind} {slot.label!r}"
        if slot.value is None:
            problems.append(f"{where}: missing uuid (run python -m trapline.uuids {path})")
        elif not is_v4_shaped(slot.value.value):
            problems.append(f"{where}: uuid {slot.value.value!r} is not a version-4 shaped 32-hex string")
        elif slot.value.style not in ("'", '"'):
            problems.append(f"{where}: uuid {slot.value.value} is not quoted")
    problems += _duplicate_uuids({path: slots})
    return problems


def _duplicate_uuids(slots_by_file: Mapping[Path, list[UuidSlot]]) -> list[str]:
    """One uuid for two different entities.  The same group in two files is one entity."""
    owners: dict[str, tuple[Path, str]] = {}
    problems = []
    for path, slots in slots_by_file.items():
        for slot in slots:
            if slot.value is None:
                continue
            uuid = slot.value.value
            first = owners.setdefault(uuid, (path, slot.stable_name))
            if first != (path, slot.stable_name) and not (
                slot.kind == "groups" and first[1] == slot.stable_name
            ):
                problems.append(
                    f"{path}: {slot.kind} {slot.label!r}: uuid {uuid} is also used by "
                    f"{first[1].splitlines()[0]!r} in {first[0]}"
                )
    return problems


def check_template(path: Path) -> list[str]:
    """Every problem found in one template file; empty when it is fit to import."""
    try:
        loaded = load_template(path)
    except TemplateError as exc:
        return [str(exc)]
    export = loaded.export
    problems: list[str] = []
    if export.get("version") != EXPORT_VERSION:
        problems.append(
            f"{path}: zabbix_export.version is {export.get('version')!r}, "
            f"expected the string '{EXPORT_VERSION}'"
        )
    if not (path.parent / "README.md").is_file():
        problems.append(f"{path}: no README.md beside the template")
    problems += _check_uuids(path, uuid_slots(loaded.source))
    if not loaded.templates:
        problems.append(f"{path}: no templates in the file")

    group_names = {group.get("name") for group in _list(export, "groups")}
    template_keys: dict[str, set[str]] = {}
    for template in loaded.templates:
        host = str(template.get("template", ""))
        where = f"{path}: template {host!r}"
        if not host:
            problems.append(f"{path}: a template has no 'template' (technical name)")
        groups = _list(template, "groups")
        if not groups:
            problems.append(f"{where}: no groups")
        problems += [
            f"{where}: group {group.get('name')!r} is not in zabbix_export.groups"
            for group in groups
            if group.get("name") not in group_names
        ]
        problems += _check_keys(where, template)
        problems += _check_valuemaps(where, template)

        item_keys = {str(item.get("key")) for item in _list(template, "items")}
        template_keys[host] = item_keys
        problems += _check_masters(where, _list(template, "items"), item_keys)
        for trigger in _item_triggers(template):
            problems += _check_expressions(where, trigger, {host}, item_keys)
        for rule in _list(template, "discovery_rules"):
            rule_keys = item_keys | {str(p.get("key")) for p in _discovery_items(rule)}
            problems += _check_masters(where, [rule], item_keys)
            problems += _check_masters(where, _discovery_items(rule), rule_keys)
            for trigger in _rule_triggers(rule):
                problems += _check_expressions(where, trigger, {host}, rule_keys)

        own_root_triggers = [
            trigger for trigger in loaded.root_triggers
            if host in {h for h, _ in _referenced_items(str(trigger.get("expression", "")))}
        ]
        problems += _check_macros(where, template, json.dumps(own_root_triggers, default=str))

    for trigger in loaded.root_triggers:
        hosts = {h for h, _ in _referenced_items(str(trigger.get("expression", "")))}
        if len(hosts) != 1:
            problems.append(
                f"{path}: trigger {trigger.get('name')!r} must reference exactly one template, "
                f"found {sorted(hosts)}"
            )
        host = next(iter(hosts)) if len(hosts) == 1 else ""
        problems += _check_expressions(
            f"{path}: template {host!r}", trigger, set(template_keys), template_keys.get(host, set())
        )
    return problems


def check_templates(paths: Sequence[Path]) -> list[str]:
    """:func:`check_template` for each file, plus uuids that clash across files."""
    problems: list[str] = []
    slots_by_file: dict[Path, list[UuidSlot]] = {}
    for path in paths:
        problems += check_template(path)
        try:
            slots_by_file[path] = uuid_slots(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # already reported by check_template
    if len(slots_by_file) > 1:
        problems += [p for p in _duplicate_uuids(slots_by_file) if p not in problems]
    return problems


# --------------------------------------------------------------------------
# Summary for `templates list`
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateSummary:
    name: str
    file: Path
    version: str
    items: int  # items and item prototypes
    triggers: int  # triggers and trigger prototypes
    discovery_rules: int


def summarize(path: Path) -> list[TemplateSummary]:
    loaded = load_template(path)
    summaries = []
    for template in loaded.templates:
        host = str(template.get("template", ""))
        rules = _list(template, "discovery_rules")
        root = [
            t for t in loaded.root_triggers
            if host in {h for h, _ in _referenced_items(str(t.get("expression", "")))}
        ]
        triggers = len(list(_item_triggers(template))) + len(root)
        triggers += sum(len(list(_rule_triggers(rule))) for rule in rules)
        items = len(_list(template, "items")) + sum(len(_discovery_items(rule)) for rule in rules)
        summaries.append(
            TemplateSummary(
                str(template.get("name") or host), path, str(loaded.export.get("version")), items, triggers,
                len(rules),
            )
        )
    return summaries


# --------------------------------------------------------------------------
# Talking to Zabbix
# --------------------------------------------------------------------------
def _call(api: ZabbixApiClient, method: str, params: Mapping[str, Any] | Sequence[Any]) -> Any:
    return api.do_request(method, params)["result"]


def server_version(api: ZabbixApiClient) -> tuple[int, int]:
    major, minor = str(_call(api, "apiinfo.version", [])).split(".")[:2]
    return int(major), int(minor)


def import_rules(version: tuple[int, int]) -> dict[str, dict[str, bool]]:
    """configuration.import rules for a server version: 6.2 split host and template groups."""
    rules = dict(_COMMON_RULES)
    if version >= (6, 2):
        rules["template_groups"] = _CREATE_ONLY
        rules["host_groups"] = _CREATE_ONLY
    else:
        rules["groups"] = _CREATE_ONLY
    return rules


def _template_id(api: ZabbixApiClient, name: str) -> str | None:
    for field in ("host", "name"):
        found = _call(api, "template.get", {"output": ["templateid"], "filter": {field: name}})
        if found:
            return str(found[0]["templateid"])
    return None


def export_template(api: ZabbixApiClient, name: str) -> str:
    """The server's YAML export of one template, by technical or visible name."""
    templateid = _template_id(api, name)
    if templateid is None:
        raise TemplateError(f"no template named {name!r} on the server")
    return str(_call(api, "configuration.export", {"format": "yaml", "options": {"templates": [templateid]}}))


def landing_problems(loaded: TemplateFile, exported_sources: Sequence[str]) -> list[str]:
    """Entities of the file that the server's export lacks (matched by uuid, kind and key/name)."""
    landed = {
        (slot.value.value, slot.kind, slot.label)
        for source in exported_sources
        for slot in uuid_slots(source)
        if slot.value is not None
    }
    exported_macros = set()
    for source in exported_sources:
        for template in _list(yaml.safe_load(source)["zabbix_export"], "templates"):
            exported_macros |= {(template.get("template"), m.get("macro")) for m in _list(template, "macros")}
    problems = [
        f"{loaded.path}: {slot.kind} {slot.label!r} (uuid {slot.value.value}) is missing on the server"
        for slot in uuid_slots(loaded.source)
        if slot.value is not None and slot.kind != "groups"
        and (slot.value.value, slot.kind, slot.label) not in landed
    ]
    for template in loaded.templates:
        for macro in _list(template, "macros"):
            if (template.get("template"), macro.get("macro")) not in exported_macros:
                problems.append(f"{loaded.path}: macro {macro.get('macro')} is missing on the server")
    return problems


def _linked_names(node: Any) -> Iterator[str]:
    """The names of the templates a template file links: in template linkage and in host prototypes."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "templates" and isinstance(value, list):
                yield from (str(t["name"]) for t in value if isinstance(t, dict) and "name" in t)
            yield from _linked_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _linked_names(value)


def in_link_order(paths: Sequence[Path]) -> list[Path]:
    """``paths`` with every file after the files defining the templates it links (else in the given order).

    Zabbix refuses a host prototype or a linkage naming a template it does not have yet: the
    discovery template's prototypes link the device templates, whose folders sort after it.
    """
    files = {path: load_template(path) for path in paths}
    defined = {path: {str(t["template"]) for t in loaded.templates} for path, loaded in files.items()}
    needs = {path: set(_linked_names(loaded.export)) - defined[path] for path, loaded in files.items()}
    ordered: list[Path] = []
    remaining = list(paths)
    while remaining:
        pending = set().union(*(defined[p] for p in remaining))
        ready = next((p for p in remaining if not needs[p] & pending), remaining[0])  # a cycle: as given
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


def import_templates(api: ZabbixApiClient, paths: Sequence[Path]) -> list[str]:
    """Check, import and verify template files; return the imported template names.

    Raises TemplateError before touching the server if any file fails the
    checks, and after the import if the server did not keep everything.
    """
    problems = check_templates(paths)
    if problems:
        raise TemplateError("\n".join(problems))
    rules = import_rules(server_version(api))
    imported: list[str] = []
    for path in in_link_order(paths):
        loaded = load_template(path)
        _call(api, "configuration.import", {"format": "yaml", "rules": rules, "source": loaded.source})
        names = [str(template["template"]) for template in loaded.templates]
        problems = landing_problems(loaded, [export_template(api, name) for name in names])
        if problems:
            raise TemplateError("\n".join(problems))
        log.info("imported %s from %s", ", ".join(names), path)
        imported += names
    return imported


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
def connect(args: argparse.Namespace) -> ZabbixApiClient:
    """A logged-in API client from --url and --token-file or --user/--password-file."""
    # pyzabbix logs every request body at DEBUG, passwords and tokens included.
    logging.getLogger("pyzabbix").setLevel(max(logging.INFO, logging.getLogger("pyzabbix").level))
    if args.token_file is not None:
        api = ZabbixAPI(args.url, timeout=args.timeout)
        api.login(api_token=read_secret_file(args.token_file).reveal())
    elif args.user is not None and args.password_file is not None:
        api = ZabbixAPI(args.url, timeout=args.timeout)
        api.login(user=args.user, password=read_secret_file(args.password_file).reveal())
    else:
        raise ConfigError("give --token-file, or --user and --password-file")
    client: ZabbixApiClient = api
    return client


def _selected(names: Sequence[str]) -> list[Path]:
    available = shipped_templates()
    if not names:
        return available
    chosen: list[Path] = []
    for name in names:
        as_file = Path(name)
        matches = [as_file] if as_file.suffix in TEMPLATE_SUFFIXES and as_file.is_file() else []
        matches = matches or [p for p in available if name in (p.stem, p.parent.name, p.name)] or [
            summary.file for path in available for summary in summarize(path) if summary.name == name
        ]
        if not matches:
            raise ConfigError(f"no shipped template {name!r} (see `trapline templates list`)")
        chosen += [m for m in matches if m not in chosen]
    return chosen


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [("NAME", "FILE", "VERSION", "ITEMS", "TRIGGERS", "LLD")]
    root = template_dir()
    for path in shipped_templates(root):
        try:
            rows += [
                (s.name, str(s.file.relative_to(root)), s.version, str(s.items), str(s.triggers),
                 str(s.discovery_rules))
                for s in summarize(path)
            ]
        except TemplateError as exc:
            print(exc, file=sys.stderr)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    paths = list(args.files) or shipped_templates()
    problems = check_templates(paths)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def _cmd_import(args: argparse.Namespace) -> int:
    paths = _selected(args.names)
    problems = check_templates(paths)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print("nothing imported: fix the problems above", file=sys.stderr)
        return 1
    for name in import_templates(connect(args), paths):
        print(f"imported {name}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    text = export_template(connect(args), args.name)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def _guarded(command: Any) -> Any:
    """Turn expected failures into one line on stderr and an exit code, never a traceback."""

    def run_command(args: argparse.Namespace) -> int:
        try:
            status: int = command(args)
        except ConfigError as exc:
            print(f"trapline templates: {exc}", file=sys.stderr)
            return 2
        except (TemplateError, ZabbixAPIException, RequestException, OSError) as exc:
            print(f"trapline templates: {exc}", file=sys.stderr)
            return 1
        return status

    return run_command


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="Zabbix frontend URL, e.g. https://zabbix.example.org/")
    parser.add_argument("--token-file", type=Path, help="file holding an API token (mode 600)")
    parser.add_argument("--user", help="user name, with --password-file")
    parser.add_argument("--password-file", type=Path, help="file holding the password (mode 600)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per API request (default 30)")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``templates`` on the ``trapline`` command line."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "templates", help="list, check, import and export the Zabbix templates"
    )
    commands = parser.add_subparsers(dest="templates_command", required=True)

    listing = commands.add_parser("list", help="shipped templates with item/trigger/LLD counts")
    listing.set_defaults(func=_guarded(_cmd_list))

    check = commands.add_parser("check", help="static checks (all shipped templates without FILE)")
    check.add_argument("files", nargs="*", type=Path, metavar="FILE")
    check.set_defaults(func=_guarded(_cmd_check))

    importing = commands.add_parser("import", help="check, then import templates into a Zabbix server")
    importing.add_argument(
        "names", nargs="*", metavar="TEMPLATE",
        help="YAML file, or shipped template by folder, file stem or name; default: all shipped",
    )
    add_server_arguments(importing)
    importing.set_defaults(func=_guarded(_cmd_import))

    export = commands.add_parser("export", help="write a template from the server to a YAML file")
    export.add_argument("name", metavar="TEMPLATE", help="technical or visible template name")
    export.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    add_server_arguments(export)
    export.set_defaults(func=_guarded(_cmd_export))

    uuids = commands.add_parser("uuids", help="fill missing uuids in template files (in place)")
    add_arguments(uuids)
    uuids.set_defaults(func=_guarded(run))
    return parser
