"""deploy/raspberrypi/install.sh on the Pi's own architecture: arm64 Debian bookworm under qemu-user.

The amd64 test (test_pi_install.py) proves the install and its sandbox; this one proves
what only the Pi's architecture can: every dependency installs on aarch64 (apt packages,
and pip finds or builds msgspec, lz4, orjson for it), and the installed agent starts
there.  Emulated code runs several times slower, so the test keeps to install-and-start.

It needs qemu-user-static and binfmt-support on the host (scripts/setup-debian.sh
installs them) and a binfmt_misc registration for aarch64, which it makes itself if
missing.  Durations cold and warm: bench/RESULTS.md, "Pi install under qemu-user".
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_pi_install import (
    SOURCE_IN_CHROOT,
    chroot_command,
    fresh_chroot,
    ids,
    in_chroot,
    install_twice,
    snapshot,
)
from tests.support.peers import missing_peer, need_binary

# A cold run debootstraps arm64 (its second stage emulated) and installs everything
# under emulation: far beyond the suite's 600 s per test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

ARCH = "arm64"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# The names binfmt-support registers qemu-user-static's interpreters under.
BINFMT_ENTRIES = {"arm64": "qemu-aarch64", "armhf": "qemu-arm"}
# One install.sh run under emulation: apt unpacking and pip dominate.
INSTALL_TIMEOUT = 1500
# A bound for an agent that never reaches its first delivery round, not an expected duration.
AGENT_RUN_LIMIT = 300
# What the agent imports on a van: the vehicle collectors, the middleware and the exporters
# the installed config can name (zabbix, prometheus, mqtt), with their compiled libraries.
VEHICLE_MODULES = (
    "trapline.cli",
    "trapline.collectors.obd",
    "trapline.collectors.gps",
    "trapline.middleware.pipeline",
    "trapline.middleware.spool",
    "trapline.exporters.zabbix",
    "trapline.exporters.prometheus",
    "trapline.exporters.mqtt",
    "msgspec",
    "orjson",
    "lz4.frame",
    "obd",
    "serial",
    "gpsd",
    "paho.mqtt.client",
)


def binfmt_enabled(name: str) -> bool:
    entry = BINFMT / name
    return entry.exists() and entry.read_text().splitlines()[0] == "enabled"


def ensure_emulation(arch: str) -> None:
    """Make the kernel run ``arch`` binaries through qemu-user, or fail (skip off CI) saying why."""
    name = BINFMT_ENTRIES[arch]
    if binfmt_enabled(name):
        return
    need_binary(f"{name}-static")
    update_binfmts = need_binary("update-binfmts")
    # A container or a machine without systemd's proc-sys-fs-binfmt_misc.mount has it empty.
    if not (BINFMT / "register").exists():
        argv = ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)]
        mount = subprocess.run(argv, capture_output=True, text=True, check=False)
        if mount.returncode:
            missing_peer(f"cannot mount binfmt_misc on {BINFMT}: {mount.stderr.strip()}")
    entry = BINFMT / name
    if entry.exists():
        # Registered but switched off: update-binfmts --enable only says "already enabled".
        try:
            entry.write_text("1")
        except OSError as exc:
            missing_peer(f"cannot switch {entry} on: {exc.strerror}")
    else:
        argv = [update_binfmts, "--enable", name]
        enable = subprocess.run(argv, capture_output=True, text=True, check=False)
        if not binfmt_enabled(name):
            missing_peer(f"update-binfmts --enable {name} failed: {enable.stderr.strip()}")


@pytest.fixture(scope="module")
def installed() -> Iterator[tuple[Path, str, str]]:
    """An arm64 bookworm chroot after two runs of install.sh."""
    ensure_emulation(ARCH)
    with fresh_chroot("bookworm", ARCH) as root:
        yield root, *install_twice(root, ARCH, INSTALL_TIMEOUT)


def run_in(root: Path, argv: list[str], timeout: float = 300, arch: str = ARCH) -> str:
    result = in_chroot(root, argv, timeout, arch)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def test_the_chroot_is_aarch64_and_so_is_the_virtualenv(installed: tuple[Path, str, str]) -> None:
    root = installed[0]
    assert run_in(root, ["uname", "-m"]).strip() == "aarch64"
    machine = "import platform, sys; print(platform.machine(), sys.version_info[:2])"
    assert run_in(root, ["/opt/trapline/bin/python", "-c", machine]).strip() == "aarch64 (3, 11)"


def test_every_runtime_module_of_the_vehicle_role_imports(installed: tuple[Path, str, str]) -> None:
    # An amd64 build of a compiled library cannot load into this aarch64 interpreter: the
    # import itself proves pip installed the right one.  The spool's round trip runs the
    # compiled msgspec and lz4 code too, not only their loaders.
    script = (
        "import importlib, sys\n"
        f"for name in {VEHICLE_MODULES!r}: importlib.import_module(name)\n"
        "import lz4.frame, msgspec\n"
        "row = msgspec.msgpack.encode({'key': 'obd.pid[RPM]', 'value': 812.5})\n"
        "assert msgspec.msgpack.decode(lz4.frame.decompress(lz4.frame.compress(row))) == "
        "{'key': 'obd.pid[RPM]', 'value': 812.5}\n"
        "print(len(sys.modules))\n"
    )
    assert int(run_in(installed[0], ["/opt/trapline/bin/python", "-c", script])) > len(VEHICLE_MODULES)


def test_the_agent_reports_its_version_and_loads_its_config(installed: tuple[Path, str, str]) -> None:
    root = installed[0]
    assert run_in(root, ["/opt/trapline/bin/trapline", "--version"]).startswith("trapline ")
    load = (
        "import json; from pathlib import Path; from trapline.app.settings import load_settings; "
        "s = load_settings(Path('/etc/trapline/trapline.toml')); "
        "print(json.dumps(sorted(type(c).__name__ for c in s.collectors)))"
    )
    collectors = json.loads(run_in(root, ["/opt/trapline/bin/python", "-c", load]))
    assert any("Obd" in name for name in collectors) and any("Gps" in name for name in collectors), collectors


def test_the_installed_agent_runs_and_stops_cleanly(installed: tuple[Path, str, str]) -> None:
    """The vehicle role's agent, as its unit starts it, until a delivery round; then SIGTERM.

    Nothing answers here (no adapter, no gpsd, no proxy): the collectors retry, the agent's
    own readings go through the pipeline into the spool, the exporter finds no proxy and keeps
    them, and SIGTERM commits what is in memory and exits 0, all on aarch64.
    """
    root = installed[0]
    agent = ["/opt/trapline/bin/trapline", "run", "-c", "/etc/trapline/trapline.toml", "--log-level", "info"]
    # A network namespace of its own: the agent's 127.0.0.1:10051 must not reach some other
    # test's Zabbix on this host.  setpriv, as the unit's User=: exec, no forking in between.
    argv = ["unshare", "--net", "setpriv", "--reuid=trapline", "--regid=trapline", "--init-groups", *agent]
    command, env = chroot_command(root, argv, ARCH)
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    limit = threading.Timer(AGENT_RUN_LIMIT, process.kill)
    limit.start()
    log: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "values kept" in line and not any("values kept" in seen for seen in log):
                process.send_signal(signal.SIGTERM)
            log.append(line)
        status = process.wait()
    finally:
        limit.cancel()
        process.kill()
    output = "".join(log)
    assert status == 0, output[-3000:]
    started = (
        # OBD, GPS and the active checks poller that brings the GPS collector {$VEHICLE.GEOFENCES}
        "trapline running: 3 collectors, 1 destinations, 0 observers,"
        " spool /var/lib/trapline/spool.db (0 waiting)"
    )
    assert started in output, output[-3000:]
    stopped = re.search(r"stopped; (\d+) readings stay in the spool", output)
    assert stopped and int(stopped.group(1)) > 0, output[-3000:]
    spool = root / "var/lib/trapline/spool.db"
    assert spool.stat().st_uid == ids(root, "passwd", "trapline")


def test_32_bit_armhf_is_refused_before_anything_changes() -> None:
    """Raspberry Pi OS (32-bit) is Debian armhf: install.sh stops there with one line.

    Tried before deciding: in this chroot pip finds no armv7l wheels of msgspec and lz4 and
    fails to build them for want of a compiler (bench/RESULTS.md).  The chroot's own dpkg
    answers the architecture, so this also proves the script asks the right question.
    """
    ensure_emulation("armhf")
    with fresh_chroot("bookworm", "armhf") as root:
        assert run_in(root, ["uname", "-m"], arch="armhf").strip() == "armv7l"
        before = snapshot(root)
        script = f"{SOURCE_IN_CHROOT}/deploy/raspberrypi/install.sh"
        argv = [script, "--server", "zbx.example.net:10051", "--vehicle", "van-17"]
        result = in_chroot(root, argv, 120, "armhf")
        assert (result.returncode, result.stdout) == (1, ""), result.stdout + result.stderr
        assert result.stderr == (
            "install.sh: error: armhf is not supported (64-bit only): "
            "install Raspberry Pi OS (64-bit), for a Pi 3, 4, 5 or Zero 2 W\n"
        )
        assert snapshot(root) == before
