"""The import rules of docs/architecture.md, read from the product code's own import statements.

Each product module is placed in a layer (core, wire formats, middleware, one collector, one
exporter, application, development tools) by where it lives. An import that the rules do not
allow fails the test; there are no exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The package's import path for each top-level source folder (trapline/ links the others in).
SOURCE_FOLDERS = {
    "trapline": "trapline",
    "middleware": "trapline.middleware",
    "collectors": "trapline.collectors",
    "exporters": "trapline.exporters",
    "devtools": "devtools",
}
LINKED_INTO_TRAPLINE = {"collectors", "middleware", "exporters", "zabbix_templates"}

APPLICATION = {
    "trapline.cli",
    "trapline.__main__",
    "trapline.templates",
    "trapline.provision",
    "trapline.uuids",
}


def layer(module: str) -> str:
    """A product module's layer: core, wire, middleware, collector:X, exporter:X, app or devtools."""
    parts = module.split(".")
    if module == "trapline" or parts[:2] == ["trapline", "core"]:
        return "core"
    if parts[:2] == ["trapline", "wire"]:
        return "wire"
    if parts[0] == "devtools":
        return "devtools"
    if module in APPLICATION or parts[:2] == ["trapline", "app"]:
        return "app"
    if parts[:2] == ["trapline", "middleware"]:
        return "middleware"
    if parts[:2] in (["trapline", "collectors"], ["trapline", "exporters"]):
        kind = "collector" if parts[1] == "collectors" else "exporter"
        if len(parts) == 2:
            return "app"  # the package itself holds the registry, which the composition root reads
        return f"{kind}:{parts[2]}"
    raise AssertionError(f"{module} is in no layer of docs/architecture.md: place it there first")


def allowed(source: str, target: str) -> bool:
    if source in (target, "devtools"):
        return True
    if target == "devtools":
        return False  # nothing in the product may need a development tool
    if source == "app":
        return True
    below = {"core": set(), "wire": {"core"}, "middleware": {"core"}}
    if source in below:
        return target in below[source]
    # A plugin (collector or exporter) sees the core and the shared wire formats, nothing else.
    return target in ("core", "wire")


def product_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, package in SOURCE_FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder)
            if folder == "trapline" and relative.parts[0] in LINKED_INTO_TRAPLINE:
                continue
            names = [p for p in relative.with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *names])] = path
    return modules


def trapline_imports(module: str, path: Path) -> set[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] in ("trapline", "devtools")}


def import_edges() -> set[tuple[str, str]]:
    return {
        (module, target)
        for module, path in product_modules().items()
        for target in trapline_imports(module, path)
    }


def test_every_import_follows_the_layer_rules() -> None:
    broken = sorted(
        f"{source} ({layer(source)}) imports {target} ({layer(target)})"
        for source, target in import_edges()
        if not allowed(layer(source), layer(target))
    )
    assert not broken, "imports against docs/architecture.md:\n" + "\n".join(broken)


@pytest.mark.parametrize(
    ("source", "target", "ok"),
    [
        ("trapline.collectors.gps", "trapline.core.model", True),
        ("trapline.collectors.gps", "trapline.collectors.gps.vehicle_derived", True),
        ("trapline.collectors.gps", "trapline.collectors.obd.link", False),
        ("trapline.collectors.mist.fleet", "trapline.exporters.zabbix.protocol", False),
        ("trapline.exporters.zabbix.client", "trapline.middleware.spool", False),
        ("trapline.middleware.pipeline", "trapline.middleware.spool", True),
        ("trapline.core.model", "trapline.middleware.normalize", False),
        ("trapline.middleware.spool", "trapline.collectors.mist", False),
        ("trapline.cli", "devtools.localzabbix", False),
        ("devtools.demo", "devtools.localzabbix", True),
        ("trapline.cli", "trapline.middleware.settings", True),
    ],
)
def test_the_rules_themselves(source: str, target: str, ok: bool) -> None:
    assert allowed(layer(source), layer(target)) is ok
