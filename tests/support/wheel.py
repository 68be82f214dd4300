"""Build trapline's wheel from the working tree, as a user's ``pip install .`` would.

The build runs on a copy (tracked and new files, symlinks kept), so the checkout gets no
``build/`` or ``*.egg-info`` from it.  pip gets the build backend pyproject.toml asks for
from the package index the machine is configured with, as ``make setup`` does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def source_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).exists()]


def build_wheel(workdir: Path) -> Path:
    """Copy the tree into ``workdir/src``, build, return the wheel's path."""
    source = workdir / "src"
    for name in source_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)
    out = workdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True,
    )
    (wheel,) = out.glob("trapline-*.whl")
    return wheel
