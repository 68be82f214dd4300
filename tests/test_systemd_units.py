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
CENTRE_UNIT = DEPLOY.parent / "centre" / "trapline@.service"
UNITS = [DEPLOY / "trapline.service", DEPLOY / "trapline-rfcomm.service", CENTRE_UNIT]
DROP_IN = DEPLOY / "zabbix-proxy.service.d" / "trapline.conf"
# What systemd says about text it cannot use; it then ignores the line and starts anyway.
PARSE_COMPLAINTS = re.compile(r"Unknown key|Unknown section|ignoring|Failed to parse|Invalid|bad-setting")
MAX_EXPOSURE = 2.0
# "/opt/trapline/bin/trapline run ..." or "python3 -m trapline run ...".
AGENT_COMMAND = re.compile(r"\btrapline\s+run\b")


def verify(unit: Path) -> str:
    result = subprocess.run(
        [need_binary("systemd-analyze"), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_parses_and_scores_at_most_2(unit: Path) -> None:
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


def unit_keys(path: Path) -> dict[str, list[str]]:
    """Every KEY=value of a unit file, in order, comments left out."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def units_running_trapline() -> list[Path]:
    """Every unit shipped under deploy/ whose service is the agent itself."""
    return [unit for unit in sorted(DEPLOY.parent.rglob("*.service"))
            if any(AGENT_COMMAND.search(cmd) for cmd in unit_keys(unit).get("ExecStart", []))]


def test_every_agent_unit_has_the_watchdog() -> None:
    # Issue 20 item 3. trapline-rfcomm.service runs "rfcomm bind", a oneshot that exits at
    # once: nothing of ours runs there, nothing could ping.
    units = units_running_trapline()
    assert sorted(u.name for u in units) == ["trapline.service", "trapline@.service"]
    for unit in units:
        keys = unit_keys(unit)
        assert keys.get("Type") == ["notify"], unit
        assert keys.get("NotifyAccess") == ["main"], unit
        watchdog = keys.get("WatchdogSec", [])
        assert len(watchdog) == 1 and int(watchdog[0]) > 0, unit
        assert keys.get("Restart") in (["on-failure"], ["always"], ["on-watchdog"]), unit


@pytest.mark.parametrize("path", [*UNITS, DROP_IN], ids=lambda p: p.name)
def test_no_core_dumps_and_bounded_resources(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    keys = dict(line.split("=", 1) for line in lines)
    assert keys.get("LimitCORE") == "0"
    assert keys.get("MemoryMax") and keys.get("TasksMax")
    assert keys.get("SocketBindDeny") == "any"


def test_centre_unit_keeps_each_role_apart_and_always_restarts() -> None:
    keys = unit_keys(CENTRE_UNIT)
    # The instance name is the role: its own virtualenv, config and spool directory.
    assert keys["ExecStart"] == ["/opt/trapline-%i/bin/trapline run -c /etc/trapline/%i.toml"]
    assert keys["StateDirectory"] == ["trapline/%i"]
    assert keys["ConfigurationDirectory"] == ["trapline"]
    assert (keys["User"], keys["Group"]) == (["trapline"], ["trapline"])
    assert keys["Restart"] == ["always"] and keys["RestartPreventExitStatus"] == ["2"]
    # The roles only connect out, to the Mist cloud, AWS, a broker and Zabbix.
    assert set(keys["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert keys["PrivateDevices"] == ["yes"]


def test_prometheus_drop_in_parses_on_the_centre_unit(tmp_path: Path) -> None:
    # deploy/centre/README.md's drop-in for a [prometheus] listener, on an instance of the unit.
    unit = tmp_path / "trapline@mist.service"
    unit.write_text(CENTRE_UNIT.read_text() + "\n[Service]\nSocketBindAllow=tcp:9708\n")
    complaints = [line for line in verify(unit).splitlines() if PARSE_COMPLAINTS.search(line)]
    assert not complaints, complaints
