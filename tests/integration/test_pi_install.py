"""deploy/raspberrypi/install.sh, run twice in a fresh Debian bookworm chroot.

The first run installs everything for real (apt packages, the virtualenv with
trapline and its dependencies from PyPI, the proxy, the units); the second run
must change nothing.  Then systemd checks the agent's unit and its sandbox.

Caches under /var/cache/trapline keep later runs short: the debootstrapped base
system (copied, never modified), apt's downloaded packages and pip's cache, one set
per architecture (``arch``: None is the host's own; test_pi_install_arm64.py runs
the same install on arm64 under qemu-user).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from devtools.localzabbix import BASE_ENV, configured_debian_mirror, namespace_command
from tests.support.peers import missing_peer, need_binary
from trapline import provision

# On a fresh machine the first test also debootstraps bookworm and installs the Pi's
# packages (no cache yet): more than the suite's 600 s per test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/trapline")
READY = ".trapline-ready"
SOURCE_IN_CHROOT = "/srv/trapline"
BT_MAC = "00:1D:A5:68:98:8B"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_CHROOT = "/usr/local/share/host-ca-bundle.crt"
MAX_EXPOSURE = 2.0
# What the install script owns; a second run must leave all of it alone.
WATCHED = ("etc", "opt/trapline", "var/lib/trapline", "var/lib/zabbix", "usr/local/share/doc/trapline")


def arch_suffix(arch: str | None) -> str:
    """What sets a foreign architecture's caches apart; the host's own keep their plain names."""
    return f"-{arch}" if arch else ""


def apt_archives(arch: str | None = None) -> Path:
    return CACHE / f"pi-apt-archives{arch_suffix(arch)}"


def pip_cache(arch: str | None = None) -> Path:
    return CACHE / f"pi-pip{arch_suffix(arch)}"


def ensure_base(suite: str = "bookworm", arch: str | None = None) -> Path:
    """A minimal Debian ``suite`` for ``arch``, built once with debootstrap, kept read-only in the cache."""
    base = CACHE / f"{suite}{arch_suffix(arch)}-pi-base"
    if (base / READY).exists():
        return base
    need_binary("debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    with base.with_name(base.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (base / READY).exists():
            return base
        building = base.with_name(base.name + ".partial")
        shutil.rmtree(building, ignore_errors=True)
        log = base.with_name(base.name + ".build.log")
        with log.open("wb") as out:
            foreign = [f"--arch={arch}"] if arch else []
            mirror = configured_debian_mirror()
            argv = ["debootstrap", *foreign, "--variant=minbase", suite, str(building), mirror]
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                missing_peer(f"debootstrap of {suite} failed (the Debian mirror?), see {log}")
        (building / READY).write_text("")
        building.rename(base)
    return base


@contextlib.contextmanager
def fresh_chroot(suite: str = "bookworm", arch: str | None = None) -> Iterator[Path]:
    """A throw-away copy of the ``suite`` base with this checkout in it, removed afterwards."""
    base = ensure_base(suite, arch)
    work = CACHE / f"pi-install-test.{suite}{arch_suffix(arch)}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["cp", "-a", str(base), str(work)], check=True)
    # Package scripts and install.sh alike must not start services here.
    policy = work / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # This machine may reach PyPI through a TLS-intercepting proxy: give pip the host's CAs.
    shutil.copy(HOST_CA_BUNDLE, work / CA_IN_CHROOT.lstrip("/"))
    (work / "var/cache/pip").mkdir(parents=True, exist_ok=True)
    # A copy, not a bind mount: other work in the checkout must not change it between the runs.
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*_cache", ".hypothesis", "build")
    shutil.copytree(REPO, work / SOURCE_IN_CHROOT.lstrip("/"), symlinks=True, ignore=ignore)
    apt_archives(arch).joinpath("partial").mkdir(parents=True, exist_ok=True)
    pip_cache(arch).mkdir(parents=True, exist_ok=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def chroot() -> Iterator[Path]:
    with fresh_chroot() as work:
        yield work


def chroot_command(
    root: Path, argv: Sequence[str], arch: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The host command and environment that run ``argv`` in ``root`` with the caches of ``arch``."""
    binds = [
        (apt_archives(arch), "/var/cache/apt/archives"),
        (pip_cache(arch), "/var/cache/pip"),
    ]
    env = {**BASE_ENV, "DEBIAN_FRONTEND": "noninteractive", "PIP_CACHE_DIR": "/var/cache/pip"}
    env["HOME"] = "/root"  # pip and apt look for their per-user files there
    env["PIP_CERT"] = CA_IN_CHROOT
    return namespace_command(root, binds, argv), env


def in_chroot(
    root: Path, argv: Sequence[str], timeout: float = 600, arch: str | None = None
) -> subprocess.CompletedProcess[str]:
    command, env = chroot_command(root, argv, arch)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def snapshot(root: Path, watched: Sequence[str] = WATCHED) -> dict[str, str]:
    """Path -> type, mode, owner and content hash of everything the script owns (``watched``)."""
    listing: dict[str, str] = {}
    for top in watched:
        for path in sorted((root / top).rglob("*")):
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                what = "-> " + os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir" if stat.S_ISDIR(info.st_mode) else "other"
            listing[str(path.relative_to(root))] = f"{info.st_mode:o} {info.st_uid}:{info.st_gid} {what}"
    return listing


def ids(root: Path, database: str, name: str) -> int:
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"{name} missing from the chroot's /etc/{database}")


def install_twice(root: Path, arch: str | None = None, timeout: float = 600) -> tuple[str, str]:
    """install.sh twice in ``root``: the first run with options, the second with none (install.env).

    The second run must change nothing; returns the output of each.
    """
    script = f"{SOURCE_IN_CHROOT}/deploy/raspberrypi/install.sh"
    first = in_chroot(
        root,
        [script, "--server", "zbx.example.net:10051", "--vehicle", "van-17", "--elm327-mac", BT_MAC],
        timeout,
        arch,
    )
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    before = snapshot(root)
    second = in_chroot(root, [script], timeout, arch)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    after = snapshot(root)
    differences = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert differences == [], f"the second run changed: {differences[:20]}"
    assert "done: 0 change(s)" in second.stdout, second.stdout
    return first.stdout + first.stderr, second.stdout + second.stderr


@pytest.fixture(scope="module")
def installed(chroot: Path) -> tuple[Path, str, str]:
    """The chroot after two runs of install.sh."""
    return chroot, *install_twice(chroot)


def test_second_run_changes_nothing_and_secrets_stay_hidden(installed: tuple[Path, str, str]) -> None:
    root, first_output, second_output = installed
    assert "changed: /etc/trapline/trapline.toml" in first_output
    assert "systemd is not running here" in first_output
    psk_file = root / "etc/zabbix/trapline-proxy.psk"
    psk = psk_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", psk)
    assert psk not in first_output and psk not in second_output
    info = psk_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 0, ids(root, "group", "zabbix"))


def test_the_install_prints_the_provision_command_of_this_van(installed: tuple[Path, str, str]) -> None:
    # The command is printed by every run; it must be one trapline's own parser takes as is.
    printed = "install.sh:   trapline provision "
    lines = [line for line in installed[2].splitlines() if line.startswith(printed)]
    assert len(lines) == 1, installed[2][-2000:]
    line = lines[0]
    argv = shlex.split(line.split("trapline ", 1)[1])
    parser = argparse.ArgumentParser(prog="trapline")
    provision.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert (args.hosts, args.proxy_name, args.create_proxy) == (["van-17"], "van-17-proxy", True)
    assert args.psk_identity == "van-17-proxy" and args.psk_file == Path("./van-17.psk")


def test_files_modes_and_enabled_units(installed: tuple[Path, str, str]) -> None:
    root = installed[0]
    trapline_uid, trapline_gid = ids(root, "passwd", "trapline"), ids(root, "group", "trapline")
    expected = {
        "etc/trapline": (0o750, 0, trapline_gid),
        "etc/trapline/trapline.toml": (0o640, 0, trapline_gid),
        "etc/trapline/secrets": (0o700, trapline_uid, trapline_gid),
        "var/lib/trapline": (0o750, trapline_uid, trapline_gid),
    }
    for inner, (mode, uid, gid) in expected.items():
        info = (root / inner).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, uid, gid), inner
    groups = (root / "etc/group").read_text().splitlines()
    dialout = next(line for line in groups if line.startswith("dialout:"))
    assert "trapline" in dialout.rsplit(":", 1)[1].split(","), dialout
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("trapline.service", "trapline-rfcomm.service", "zabbix-proxy.service"):
        assert (wants / unit).is_symlink(), f"{unit} not enabled"
    gpsd = (root / "etc/default/gpsd").read_text()
    assert 'GPSD_OPTIONS="-n"' in gpsd and 'USBAUTO="false"' in gpsd
    assert f"ELM327_MAC={BT_MAC}" in (root / "etc/trapline/elm327-bluetooth.conf").read_text()
    toml = (root / "etc/trapline/trapline.toml").read_text()
    assert 'servers = ["127.0.0.1:10051"]' in toml and 'device = "/dev/rfcomm0"' in toml


def test_installed_agent_accepts_the_vehicle_config(installed: tuple[Path, str, str]) -> None:
    load = (
        "from pathlib import Path; from trapline.app.settings import load_settings; "
        "s = load_settings(Path('/etc/trapline/trapline.toml')); "
        "print(sorted(type(c).__name__ for c in s.collectors), len(s.destinations))"
    )
    result = in_chroot(installed[0], ["/opt/trapline/bin/python", "-c", load], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("]")[1].strip() == "1", result.stdout
    assert "Gps" in result.stdout and "Obd" in result.stdout, result.stdout


def test_the_virtualenv_holds_the_vehicle_role_only(installed: tuple[Path, str, str]) -> None:
    listing = in_chroot(installed[0], ["/opt/trapline/bin/pip", "list", "--format=json"], timeout=120)
    assert listing.returncode == 0, listing.stderr
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listing.stdout)}
    assert {"obd", "pyserial", "gpsd-py3", "paho-mqtt"} <= names, names
    assert not names & {"boto3", "botocore", "websockets", "pyzabbix"}, names


def test_proxy_accepts_its_config(installed: tuple[Path, str, str]) -> None:
    # 6.0 has no config test switch: a runtime command parses the whole file first,
    # and only then fails for want of a running proxy.
    argv = ["/usr/sbin/zabbix_proxy", "-c", "/etc/zabbix/trapline_proxy.conf", "-R", "config_cache_reload"]
    result = in_chroot(installed[0], argv, timeout=60)
    output = result.stdout + result.stderr
    assert "config file" not in output, output
    assert "Cannot perform runtime control command" in output, output


def verified_exposure(root: Path, unit_path: str, unit: str) -> float:
    """``systemd-analyze verify`` of the installed unit must pass; returns its sandbox's exposure."""
    analyze = need_binary("systemd-analyze")
    verify = subprocess.run(
        [analyze, "verify", f"--root={root}", unit_path], capture_output=True, text=True, check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", f"--root={root}", unit],
        capture_output=True, text=True, check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert found, security.stdout + security.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security: {unit} exposure {exposure}")
    return exposure


def test_unit_verifies_and_its_sandbox_scores_at_most_2(installed: tuple[Path, str, str]) -> None:
    exposure = verified_exposure(installed[0], "/etc/systemd/system/trapline.service", "trapline.service")
    assert exposure <= MAX_EXPOSURE
