"""The units in deploy/ parse, and each is sandboxed and bounded (issue 17, "Units").

``systemd-analyze verify`` complains about binaries this test machine lacks (rfcomm, the
installed agent): only complaints about the unit text itself fail the test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.peers import need_binary

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "raspberrypi"
UNITS = ["trapline.service", "trapline-rfcomm.service"]
DROP_IN = DEPLOY / "zabbix-proxy.service.d" / "trapline.conf"
# What systemd says about text it cannot use; it then ignores the line and starts anyway.
PARSE_COMPLAINTS = re.compile(r"Unknown key|Unknown section|ignoring|Failed to parse|Invalid|bad-setting")
MAX_EXPOSURE = 2.0


def verify(unit: Path) -> str:
    result = subprocess.run(
        [need_binary("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("name", UNITS)
def test_unit_parses_and_scores_at_most_2(name: str) -> None:
    unit = DEPLOY / name
    complaints = [line for line in verify(unit).splitlines() if PARSE_COMPLAINTS.search(line)]
    assert not complaints, complaints
    security = subprocess.run(
        [need_binary("systemd-analyze"), "security", "--offline=yes", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert found, security.stdout + security.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, security.stdout


def test_drop_in_parses_on_a_stand_in_proxy_unit(tmp_path: Path) -> None:
    # The proxy's unit comes from its package; the drop-in's lines are checked on a stand-in.
    unit = tmp_path / "zabbix-proxy.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n" + DROP_IN.read_text())
    complaints = [line for line in verify(unit).splitlines() if PARSE_COMPLAINTS.search(line)]
    assert not complaints, complaints


@pytest.mark.parametrize("path", [DEPLOY / name for name in UNITS] + [DROP_IN], ids=lambda p: p.name)
def test_no_core_dumps_and_bounded_resources(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    keys = dict(line.split("=", 1) for line in lines)
    assert keys.get("LimitCORE") == "0"
    assert keys.get("MemoryMax") and keys.get("TasksMax")
    assert keys.get("SocketBindDeny") == "any"
