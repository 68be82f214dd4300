"""Each plugin's ``sample.toml`` is the single source of its settings' documentation.

For every collector and exporter folder (the registries name them): the sample exists, the real
config loader reads it and the real builder builds the plugin from it (secret and TLS files
replaced by private temporary ones), the plugin's README shows it unchanged, and every key
the plugin's code asks a config section for appears in it, set or as a commented-out line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.samples import private_copy
from trapline.app.settings import load_settings
from trapline.collectors import REGISTRY
from trapline.exporters import DESTINATIONS, OBSERVERS

ROOT = Path(__file__).resolve().parent.parent
# Section getters whose first argument is the key they read (trapline/core/config.py).
GETTERS = {
    "text", "integer", "port", "number", "boolean", "strings", "choice", "url",
    "host_port", "host", "path", "table", "tables",
}
# Getters that read several keys under other names.
DERIVED = {
    "secret": lambda key: [f"{key}_file", f"{key}_env"],
}
TLS_KEYS = ["tls_ca_file", "tls_cert_file", "tls_key_file"]
_KEY_LINE = re.compile(r"^\s*#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", re.M)
_TABLE_LINE = re.compile(r"^\s*#?\s*\[\[?([^\]]+)\]\]?", re.M)


def plugin_folders() -> dict[str, Path]:
    folders = {}
    for spec in [*REGISTRY.values(), *DESTINATIONS.values(), *OBSERVERS.values()]:
        module = spec.builder.partition(":")[0]  # trapline.collectors.<name> or trapline.exporters.<name>
        _, layer, name = module.split(".")
        folders[f"{layer}/{name}"] = ROOT / layer / name
    return folders


FOLDERS = plugin_folders()


def _sources(folder: Path) -> set[Path]:
    """The plugin's modules and the shared wire-format modules they import (which read settings too)."""
    paths = set(folder.rglob("*.py"))
    for path in list(paths):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trapline.wire."):
                paths.add(ROOT / "trapline" / Path(*node.module.split(".")[1:]).with_suffix(".py"))
    return paths


def keys_read_by(folder: Path) -> set[str]:
    """The config keys the plugin's code asks for by a literal name."""
    keys: set[str] = set()
    for path in _sources(folder):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            method = node.func.attr
            first = node.args[0] if node.args else None
            is_name = isinstance(first, ast.Constant) and isinstance(first.value, str)
            literal = first.value if is_name else None  # type: ignore[union-attr]
            if method == "tls_files":
                keys.update(TLS_KEYS)
            elif literal is not None and method in GETTERS:
                keys.add(literal)
            elif literal is not None and method in DERIVED:
                keys.update(DERIVED[method](literal))
    return keys


def documented(sample: str) -> set[str]:
    names = set(_KEY_LINE.findall(sample))
    names.update(part.strip() for header in _TABLE_LINE.findall(sample) for part in header.split("."))
    return names


@pytest.mark.parametrize("plugin", sorted(FOLDERS))
def test_the_plugin_is_a_folder_with_its_sample_and_readme(plugin: str) -> None:
    folder = FOLDERS[plugin]
    assert (folder / "__init__.py").is_file(), f"{plugin} is not a folder"
    sample = (folder / "sample.toml").read_text(encoding="utf-8")
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert f"```toml\n{sample}```" in readme, f"{plugin}/README.md does not show sample.toml unchanged"


@pytest.mark.parametrize("plugin", sorted(FOLDERS))
def test_every_key_the_code_reads_is_in_the_sample(plugin: str) -> None:
    folder = FOLDERS[plugin]
    missing = keys_read_by(folder) - documented((folder / "sample.toml").read_text(encoding="utf-8"))
    assert not missing, f"{plugin}: keys read by the code but not in sample.toml: {sorted(missing)}"


def test_the_readme_shows_the_agent_sample_unchanged() -> None:
    sample = (ROOT / "trapline" / "app" / "sample.toml").read_text(encoding="utf-8")
    assert f"```toml\n{sample}```" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("plugin", sorted(FOLDERS))
def test_the_sample_loads_and_builds(plugin: str, tmp_path: Path) -> None:
    sample = (FOLDERS[plugin] / "sample.toml").read_text(encoding="utf-8")
    config = tmp_path / "sample.toml"
    config.write_text(private_copy(sample, tmp_path), encoding="utf-8")
    settings = load_settings(config)
    built = [*settings.collectors, *settings.destinations, *settings.observers]
    assert built, f"{plugin}: the sample configures nothing"
