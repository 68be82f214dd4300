"""The local Zabbix stacks the suite and ``trapline demo`` rely on, checked against themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.localzabbix import LocalZabbix, LocalZabbixError, configured_debian_mirror
from tests.support.peers import need_binary
from tests.support.zabbix_fixtures import FLOAT, create_trapper_host, history, wait_until


@pytest.mark.integration
def test_sent_value_lands_in_history_with_its_clock(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    assert api.apiinfo.version().startswith(zabbix.version + ".")
    assert api.host.get(hostids=[10084], output=["status"]) == [{"hostid": "10084", "status": "1"}]
    host = create_trapper_host(zabbix, {"smoke.value": FLOAT}, api=api)

    clock = int(time.time()) - 300  # the reading's own time, not the receive time
    values = tmp_path / "values.txt"
    values.write_text(f'"{host.name}" smoke.value {clock} 42.5\n')
    sent = subprocess.run(
        [
            need_binary("zabbix_sender"),
            "-z",
            zabbix.trapper_host,
            "-p",
            str(zabbix.trapper_port),
            "-T",
            "-i",
            str(values),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "processed: 1; failed: 0" in sent.stdout

    rows = wait_until(lambda: history(api, host.itemids["smoke.value"], FLOAT), what="the value in history")
    assert [(int(r["clock"]), float(r["value"])) for r in rows] == [(clock, 42.5)]


@pytest.mark.integration
@pytest.mark.parametrize("version", ["6.0", "7.0"], ids=["zbx6.0", "zbx7.0"])
def test_failed_start_names_the_step_and_leaves_nothing_running(version: str, tmp_path: Path) -> None:
    stack = LocalZabbix(version, tmp_path, server_config={"StartTrappers": "not-a-number"})
    with pytest.raises(LocalZabbixError) as failure:
        stack.start()
    message = str(failure.value)
    assert message.startswith("start zabbix_server:")
    assert "StartTrappers" in message  # the server's own complaint, from the tail of its output
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if _mounts_mention(p, tmp_path)]
    assert leftovers == []


_KEEP_STACK_UP = """
import sys, time
from pathlib import Path
from devtools.localzabbix import LocalZabbix
with LocalZabbix("6.0", Path(sys.argv[1])):
    print("up", flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
def test_a_script_killed_with_sigterm_stops_its_stack(tmp_path: Path) -> None:
    """``kill`` on a script inside ``with LocalZabbix(...)`` must not leave server, database or php behind."""
    script = subprocess.Popen(
        [sys.executable, "-c", _KEEP_STACK_UP, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert script.stdout is not None and script.stdout.readline() == "up\n"
        running = [p for p in Path("/proc").glob("[0-9]*") if _mounts_mention(p, tmp_path)]
        assert running  # the check below can only pass because the stack stopped
        script.send_signal(signal.SIGTERM)
        assert script.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        script.kill()
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if _mounts_mention(p, tmp_path)]
    assert leftovers == []


def _mounts_mention(proc: Path, workdir: Path) -> bool:
    """Whether a process still sees the stack's work directory mounted (i.e. was started by it)."""
    try:
        return str(workdir) in (proc / "mountinfo").read_text() or str(workdir) in os.readlink(proc / "cwd")
    except OSError:
        return False


def test_mirror_comes_from_apt_configuration(tmp_path: Path) -> None:
    codename = next(
        line.split("=", 1)[1].strip('"')
        for line in Path("/etc/os-release").read_text().splitlines()
        if line.startswith("VERSION_CODENAME=")
    )
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(f"# deb http://old.example/debian {codename} main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://security.example/debian-security\n"
        f"Suites: {codename}-security\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "# a comment inside the stanza\n"
        "URIs: http://mirror.example/debian/\n"
        f"Suites: {codename} {codename}-updates\n"
        "Components: main\n"
    )
    assert configured_debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_missing_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://mirror.example/debian some-other-release main\n")
    with pytest.raises(LocalZabbixError, match="no apt source"):
        configured_debian_mirror(tmp_path)
