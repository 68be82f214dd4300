"""deploy/raspberrypi/install.sh refuses a 32-bit system before it changes anything.

32-bit Raspberry Pi OS is Debian's ``armhf``: PyPI publishes no armv7l wheels of msgspec
and lz4 (tried: ``pip download --platform linux_armv7l``), and the script installs no
compiler, so the virtualenv could not be built there.  Stubs stand in for ``dpkg`` (the
architecture) and ``id`` (a non-root user): should the refusal go missing, the script
stops at "run as root" instead, so this test fails without touching the machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "deploy/raspberrypi/install.sh"


def run_as_if_on(tmp_path: Path, architecture: str) -> subprocess.CompletedProcess[str]:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, answer in (("dpkg", architecture), ("id", "1000")):
        stub = stubs / name
        stub.write_text(f"#!/bin/sh\necho {answer}\n")
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    argv = ["bash", str(SCRIPT), "--server", "zbx.example.net", "--vehicle", "van-17"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("architecture", ["armhf", "armel", "i386"])
def test_a_32_bit_system_is_refused_in_one_line(tmp_path: Path, architecture: str) -> None:
    result = run_as_if_on(tmp_path, architecture)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"install.sh: error: {architecture} is not supported (64-bit only): "
        "install Raspberry Pi OS (64-bit), for a Pi 3, 4, 5 or Zero 2 W\n"
    )


@pytest.mark.parametrize("architecture", ["arm64", "amd64"])
def test_a_64_bit_system_passes_the_check(tmp_path: Path, architecture: str) -> None:
    result = run_as_if_on(tmp_path, architecture)
    assert (result.returncode, result.stderr) == (1, "install.sh: error: run as root\n")
