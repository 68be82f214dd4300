"""python-OBD is pinned below its next minor release, and what is installed fits the pin.

The OBD collector takes python-OBD's command names and descriptions; a new
minor release may rename or reshape them, so taking one is a deliberate change
of this bound, with the OBD tests run against it.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def obd_requirement() -> Requirement:
    project = tomllib.loads(PYPROJECT.read_text("utf-8"))["project"]
    lists = [project.get("dependencies", []), *project.get("optional-dependencies", {}).values()]
    found = {str(r) for r in map(Requirement, (line for group in lists for line in group)) if r.name == "obd"}
    assert len(found) == 1, f"expected one requirement spelling for obd, found {sorted(found)}"
    return Requirement(found.pop())


def test_obd_has_an_upper_bound() -> None:
    assert any(spec.operator in ("<", "<=", "==", "~=") for spec in obd_requirement().specifier)


def test_installed_obd_is_inside_the_bound() -> None:
    assert obd_requirement().specifier.contains(version("obd"))
