"""deploy/centre/install.sh, each role run twice in fresh Debian 12 and 13 chroots (issue 21 item 1).

The chroots, their caches and the way into them are the Pi install test's
(tests/integration/test_pi_install.py): debootstrapped bases, apt and pip caches. The first run of a role
installs for real (its virtualenv from the package index, the user, the directories, the unit);
the second must change nothing. Then systemd checks the installed instance and its sandbox.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_pi_install import (
    MAX_EXPOSURE,
    SOURCE_IN_CHROOT,
    fresh_chroot,
    ids,
    in_chroot,
    snapshot,
    verified_exposure,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

SCRIPT = f"{SOURCE_IN_CHROOT}/deploy/centre/install.sh"
ROLES = {"mist": "websockets", "aws": "boto3", "bridge": "paho-mqtt"}
# Distributions that only the other roles (or the vehicle) may bring.
ROLE_ONLY = {"websockets", "boto3", "botocore", "paho-mqtt", "obd", "pyserial", "gpsd-py3", "pyzabbix"}
# The secrets the shipped configs name, there before the first run (root's, as an admin
# would copy them in): the script hands them to the agent's user.
SECRETS = {"mist.token": "mist-api-token-0123456789", "mqtt.password": "broker-password-0123"}
COLLECTORS = {"mist": "MistCollector", "aws": "AwsCollector", "bridge": "MqttBridge"}


Installed = tuple[Path, dict[str, tuple[str, str]]]  # the chroot, each role's two outputs


def watched(role: str) -> tuple[str, ...]:
    return ("etc", f"opt/trapline-{role}", "var/lib/trapline", "usr/local/share/doc/trapline")


# Debian 12 and 13, the releases the script is for (deploy/centre/README.md).
@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def installed(request: pytest.FixtureRequest) -> Iterator[Installed]:
    """The chroot after each role's two runs: the first with --server, the second with nothing."""
    with fresh_chroot(request.param) as chroot:
        yield chroot, install_every_role_twice(chroot)


def install_every_role_twice(chroot: Path) -> dict[str, tuple[str, str]]:
    secrets = chroot / "etc/trapline/secrets"
    secrets.mkdir(parents=True, mode=0o700)
    for name, value in SECRETS.items():
        (secrets / name).write_text(value)
        (secrets / name).chmod(0o600)
    outputs: dict[str, tuple[str, str]] = {}
    for role in ROLES:
        first = in_chroot(chroot, [SCRIPT, role, "--server", "zbx.example.net:10051"])
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
        before = snapshot(chroot, watched(role))
        second = in_chroot(chroot, [SCRIPT, role])
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        after = snapshot(chroot, watched(role))
        differences = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert differences == [], f"the second run of {role} changed: {differences[:20]}"
        assert "done: 0 change(s)" in second.stdout, second.stdout
        outputs[role] = (first.stdout + first.stderr, second.stdout + second.stderr)
    return outputs


def test_first_runs_install_and_second_runs_change_nothing(
    installed: Installed,
) -> None:
    outputs = installed[1]
    for role, (first, _) in outputs.items():
        assert f"changed: /etc/trapline/{role}.toml" in first, first
        assert f"changed: enabled trapline@{role}.service" in first, first
        assert "systemd is not running here" in first, first
        for value in SECRETS.values():
            assert value not in first
    # Only the first role's run found the secrets root's and handed them over.
    assert "mist.token (owner trapline)" in outputs["mist"][0]


def test_each_role_gets_its_files_with_their_modes_and_its_unit_enabled(
    installed: Installed,
) -> None:
    root = installed[0]
    uid, gid = ids(root, "passwd", "trapline"), ids(root, "group", "trapline")
    expected = {
        "etc/trapline": (0o750, 0, gid),
        "etc/trapline/secrets": (0o700, uid, gid),
        "var/lib/trapline": (0o750, uid, gid),
        **{f"etc/trapline/secrets/{name}": (0o600, uid, gid) for name in SECRETS},
    }
    for role in ROLES:
        expected[f"etc/trapline/{role}.toml"] = (0o640, 0, gid)
        expected[f"var/lib/trapline/{role}"] = (0o750, uid, gid)
    for inner, (mode, owner, group) in expected.items():
        info = (root / inner).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, owner, group), inner
    users = (root / "etc/passwd").read_text().splitlines()
    account = next(line for line in users if line.startswith("trapline:"))
    assert account.endswith(":/usr/sbin/nologin"), account
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for role in ROLES:
        link = wants / f"trapline@{role}.service"
        assert link.is_symlink() and link.resolve().name == "trapline@.service", link


def test_each_virtualenv_holds_only_its_role(installed: Installed) -> None:
    root = installed[0]
    for role, library in ROLES.items():
        listing = in_chroot(root, [f"/opt/trapline-{role}/bin/pip", "list", "--format=json"], timeout=120)
        assert listing.returncode == 0, listing.stderr
        names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listing.stdout)}
        assert library in names, (role, names)
        allowed = {library, "botocore"} if role == "aws" else {library}  # boto3 brings botocore
        assert not names & ROLE_ONLY - allowed, (role, names & ROLE_ONLY)


def test_installed_agents_accept_their_configs(installed: Installed) -> None:
    root = installed[0]
    for role, collector in COLLECTORS.items():
        load = (
            "from pathlib import Path; from trapline.app.settings import load_settings; "
            f"s = load_settings(Path('/etc/trapline/{role}.toml')); "
            "print(sorted(type(c).__name__ for c in s.collectors), len(s.destinations), s.spool.path)"
        )
        result = in_chroot(root, [f"/opt/trapline-{role}/bin/python", "-c", load], timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [f"['{collector}']", "1", f"/var/lib/trapline/{role}/spool.db"]


def test_a_secret_others_can_read_stops_the_script(installed: Installed) -> None:
    root = installed[0]
    secret = root / "etc/trapline/secrets/mist.token"
    secret.chmod(0o640)
    try:
        result = in_chroot(root, [SCRIPT, "mist"])
    finally:
        secret.chmod(0o600)
    assert result.returncode != 0
    assert "/etc/trapline/secrets/mist.token is mode 640, not 0600" in result.stderr, result.stderr
    assert SECRETS["mist.token"] not in result.stdout + result.stderr


@pytest.mark.parametrize("role", sorted(ROLES))
def test_instance_verifies_and_its_sandbox_scores_at_most_2(
    installed: Installed, role: str,
) -> None:
    unit = f"trapline@{role}.service"
    # Through the link that enabling made: verify then loads the template as this instance.
    link = f"/etc/systemd/system/multi-user.target.wants/{unit}"
    assert verified_exposure(installed[0], link, unit) <= MAX_EXPOSURE
