"""Deterministic UUIDs for Zabbix template files.

Zabbix matches imported entities by ``uuid``, so a uuid must never change
between releases and must be version-4 shaped (32 lowercase hex digits,
version nibble 4, variant 8-b).  Instead of hand-making random ones, authors
leave ``uuid`` out and run::

    python -m trapline.uuids zabbix_templates/x/template_x.yaml

which inserts a uuid derived from a stable name (template + kind + key/name)
wherever one is missing or malformed and quotes unquoted ones.  Existing valid
uuids are never changed: once written, a uuid stays what it is even if the
item is renamed later.  The file is edited as text, so comments and layout
the author chose survive.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

UUID_V4_SHAPE = re.compile(r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$")

# Lists whose entries are entities with their own uuid in a 6.0 export, and
# the fields that identify an entry of that kind (first one present wins).
ENTITY_LISTS: dict[str, tuple[str, ...]] = {
    "groups": ("name",),
    "templates": ("template",),
    "items": ("key",),
    "discovery_rules": ("key",),
    "item_prototypes": ("key",),
    "triggers": ("name", "expression"),
    "trigger_prototypes": ("name", "expression"),
    "graphs": ("name",),
    "graph_prototypes": ("name",),
    "host_prototypes": ("host",),
    "dashboards": ("name",),
    "httptests": ("name",),
    "valuemaps": ("name",),
}


def derive_uuid(stable_name: str) -> str:
    """A version-4 shaped uuid (32 hex, no dashes) that depends only on the name."""
    digest = hashlib.sha256(stable_name.encode("utf-8")).digest()[:16]
    return uuid.UUID(bytes=digest, version=4).hex


def is_v4_shaped(value: object) -> bool:
    return isinstance(value, str) and UUID_V4_SHAPE.match(value) is not None


@dataclass(frozen=True)
class UuidSlot:
    """One entity that carries (or should carry) a uuid in the YAML source."""

    kind: str  # the list it sits in: "items", "triggers", ...
    label: str  # what identifies it to a reader: the key, or the name
    stable_name: str
    mapping: MappingNode
    value: ScalarNode | None  # None: the uuid key is missing

    @property
    def needs_fix(self) -> bool:
        if self.value is None or not is_v4_shaped(self.value.value):
            return True
        return self.value.style not in ("'", '"')


def _mapping_get(node: MappingNode, key: str) -> Node | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            found: Node = value_node
            return found
    return None


def _scalar_text(node: MappingNode, key: str) -> str | None:
    value = _mapping_get(node, key)
    return value.value if isinstance(value, ScalarNode) else None


def _walk(node: Node, owner: str) -> Iterator[UuidSlot]:
    """Yield every entity mapping below ``node``; ``owner`` names its parent."""
    if isinstance(node, SequenceNode):
        for child in node.value:
            yield from _walk(child, owner)
        return
    if not isinstance(node, MappingNode):
        return
    for key_node, value_node in node.value:
        identity_fields = ENTITY_LISTS.get(key_node.value) if isinstance(key_node, ScalarNode) else None
        if identity_fields is None or not isinstance(value_node, SequenceNode):
            yield from _walk(value_node, owner)
            continue
        kind = key_node.value
        # Templates and groups are global objects; everything else lives
        # inside the template (or discovery rule, item) above it.
        global_kind = kind in ("groups", "templates")
        if global_kind and owner:
            continue  # a template's group list or linked templates: references, not entities
        for entry in value_node.value:
            if not isinstance(entry, MappingNode):
                continue
            identity = [text for field in identity_fields if (text := _scalar_text(entry, field)) is not None]
            natural = "\n".join(identity)
            stable_name = f"{kind}/{natural}" if global_kind else f"{owner}/{kind}/{natural}"
            uuid_node = _mapping_get(entry, "uuid")
            yield UuidSlot(
                kind,
                identity[0] if identity else "",
                stable_name,
                entry,
                uuid_node if isinstance(uuid_node, ScalarNode) else None,
            )
            yield from _walk(entry, stable_name)


def uuid_slots(source: str) -> list[UuidSlot]:
    """All entities of a template export, in source order."""
    root = yaml.compose(source, Loader=yaml.SafeLoader)
    return list(_walk(root, "")) if root is not None else []


def fill_uuids(source: str) -> tuple[str, int]:
    """Return the text with missing/malformed/unquoted uuids fixed, and how many."""
    edits: list[tuple[int, int, str]] = []
    for slot in uuid_slots(source):
        if not slot.needs_fix:
            continue
        if slot.value is not None:
            current = slot.value.value
            new = current if is_v4_shaped(current) else derive_uuid(slot.stable_name)
            edits.append((slot.value.start_mark.index, slot.value.end_mark.index, f"'{new}'"))
        else:
            if slot.mapping.flow_style:
                raise ValueError(
                    f"line {slot.mapping.start_mark.line + 1}: cannot add a uuid to a flow-style mapping; "
                    "write it in block style"
                )
            start = slot.mapping.start_mark
            indent = " " * start.column
            line = f"uuid: '{derive_uuid(slot.stable_name)}'\n{indent}"
            edits.append((start.index, start.index, line))
    # Apply from the end so earlier offsets stay valid.
    for begin, end, text in sorted(edits, reverse=True):
        source = source[:begin] + text + source[end:]
    return source, len(edits)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trapline.uuids",
        description="Fill missing or malformed uuids in Zabbix template YAML files (in place).",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--check", action="store_true", help="only report files that need changes (exit 1), write nothing"
    )


def run(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            source = path.read_text(encoding="utf-8")
            fixed, count = fill_uuids(source)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 2
            continue
        if count == 0:
            continue
        if args.check:
            print(f"{path}: {count} uuid(s) missing, malformed or unquoted")
            status = max(status, 1)
        else:
            path.write_text(fixed, encoding="utf-8")
            print(f"{path}: fixed {count} uuid(s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
