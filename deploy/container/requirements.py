"""Print what the image installs before trapline itself: its dependencies and every role's extra.

One image runs every role, so it carries each role's optional dependencies; the ``dev`` and
``demo`` extras (test tools, the CC-BY-NC-SA car emulator) stay out. An extra that names
trapline itself (``all = ["trapline[mist,aws]"]``) adds nothing the others do not list.
Used by the Containerfile: ``python3 requirements.py pyproject.toml > requirements.txt``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

LEFT_OUT = frozenset({"dev", "demo"})


def requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    wanted: list[str] = list(project.get("dependencies", []))
    for extra, listed in project.get("optional-dependencies", {}).items():
        if extra not in LEFT_OUT:
            wanted += [r for r in listed if not r.replace(" ", "").startswith(f"{project['name']}[")]
    return list(dict.fromkeys(wanted))


if __name__ == "__main__":
    print(*requirements(Path(sys.argv[1])), sep="\n")
