"""deploy/raspberrypi/install.sh --direct: the TLS-PSK uplink, in a fresh Debian trixie chroot.

Trixie's Python 3.13 speaks TLS-PSK, so the van needs no proxy: the script copies the
fleet's key to the agent and writes the PSK and autoregistration keys into its config.
Run twice (the second time with no option at all, from install.env), the second run must
change nothing; the key is never printed. Then the installed agent, as its own user, sends
to a real Zabbix 7.0 that knows nothing of the van but the fleet's PSK and the
autoregistration action: the van appears with its templates and its data arrives over
TLS-PSK. On bookworm (Python 3.11) ``--direct`` is refused before anything changes.

The chroots and their caches are the bookworm install test's (test_pi_install.py).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from devtools.localzabbix import LocalZabbix, namespace_command
from tests.integration.test_direct_psk import accept_the_fleet, registered_van
from tests.integration.test_pi_install import (
    SOURCE_IN_CHROOT,
    WATCHED,
    fresh_chroot,
    ids,
    in_chroot,
    snapshot,
)
from tests.support.agent_process import running_agent
from tests.support.zabbix_fixtures import unique_name
from trapline.provision import AGENT_TEMPLATE, INVENTORY_AUTOMATIC, TLS_PSK, VEHICLE_TEMPLATE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

SCRIPT = f"{SOURCE_IN_CHROOT}/deploy/raspberrypi/install.sh"
SERVER = "zbx.example.net:10051"
VAN = "van-23"
IDENTITY = "fleet-north"
KEY_IN_CHROOT = "/root/fleet.psk"  # where an admin would have copied the fleet's key
INSTALLED_KEY = "etc/trapline/secrets/fleet.psk"
DIRECT = [SCRIPT, "--direct", "--server", SERVER, "--vehicle", VAN, "--psk-identity", IDENTITY]


class Installed(NamedTuple):
    root: Path
    key: str
    refusals: str  # the output of the runs refused before the real first run
    first: str
    second: str


def changes_between(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def place_key(root: Path, text: str) -> None:
    path = root / KEY_IN_CHROOT.lstrip("/")
    path.write_text(text)
    path.chmod(0o600)


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """A trixie chroot after two direct runs, and before them two runs refused for their key."""
    # 256 bits in hex, as `openssl rand -hex 32` makes it for Zabbix (its PSK docs), written
    # with the newline `echo KEY > FILE` (what provision prints) leaves.
    key = secrets.token_hex(32)
    with fresh_chroot("trixie") as root:
        untouched = snapshot(root)
        without_key = in_chroot(root, DIRECT)
        assert without_key.returncode == 1, without_key.stdout + without_key.stderr
        place_key(root, "not a key: " + key[:20] + "\n")
        bad_key = in_chroot(root, [*DIRECT, "--psk-file", KEY_IN_CHROOT])
        assert bad_key.returncode == 1, bad_key.stdout + bad_key.stderr
        assert changes_between(untouched, snapshot(root)) == []
        refusals = without_key.stdout + without_key.stderr + bad_key.stdout + bad_key.stderr

        place_key(root, key + "\n")
        first = in_chroot(root, [*DIRECT, "--psk-file", KEY_IN_CHROOT])
        assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
        before = snapshot(root)
        second = in_chroot(root, [SCRIPT])
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        assert changes_between(before, snapshot(root)) == []
        assert "done: 0 change(s)" in second.stdout, second.stdout
        yield Installed(root, key, refusals, first.stdout + first.stderr, second.stdout + second.stderr)


def test_a_direct_run_without_a_good_key_is_refused_in_one_line(installed: Installed) -> None:
    errors = [line for line in installed.refusals.splitlines() if line.startswith("install.sh: error:")]
    assert len(errors) == 2, installed.refusals
    assert "--psk-file is required on the first direct run" in errors[0]
    assert "is not a PSK (expected 32 to 512 hex digits" in errors[1]
    assert installed.key[:20] not in installed.refusals


def test_the_fleet_key_is_the_agents_alone_and_never_printed(installed: Installed) -> None:
    root = installed.root
    assert f"changed: /{INSTALLED_KEY}" in installed.first
    path = root / INSTALLED_KEY
    assert path.read_text() == installed.key + "\n"
    info = path.stat()
    owner = ids(root, "passwd", "trapline"), ids(root, "group", "trapline")
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, *owner)
    assert installed.key not in installed.first and installed.key not in installed.second


def test_no_proxy_is_installed(installed: Installed) -> None:
    root = installed.root
    status = in_chroot(root, ["dpkg-query", "-W", "-f=${Status}", "zabbix-proxy-sqlite3"], timeout=60)
    assert "install ok installed" not in status.stdout
    assert not (root / "etc/zabbix/trapline-proxy.psk").exists()
    assert not (root / "etc/systemd/system/trapline.service.d/uplink.conf").exists()
    assert (root / "etc/systemd/system/multi-user.target.wants/trapline.service").is_symlink()
    assert "registers itself (autoregistration)" in installed.second
    per_van = installed.second.replace("'trapline provision --autoregistration'", "")
    assert "trapline provision " not in per_van  # no command per van, unlike the proxy uplink


def test_the_agent_loads_the_psk_and_registration_settings(installed: Installed) -> None:
    toml = (installed.root / "etc/trapline/trapline.toml").read_text()
    for line in (f'servers = ["{SERVER}"]', f'tls_psk_identity = "{IDENTITY}"',
                 f'tls_psk_file = "/{INSTALLED_KEY}"', f'autoregistration_host = "{VAN}"'):
        assert line in toml.splitlines(), line
    # The installed agent's own loader, under trixie's Python 3.13: it reads the key file
    # and builds the TLS-PSK context (an older Python would refuse the PSK keys).
    load = (
        "import json, sys; from pathlib import Path; from trapline.app.settings import load_settings; "
        "s = load_settings(Path('/etc/trapline/trapline.toml')); (d,) = s.destinations; "
        "print(json.dumps({'python': sys.version_info[:2], 'identity': d.client._tls.identity, "
        "'host': d.registration.host, 'metadata': d.registration.metadata, "
        "'collectors': sorted(type(c).__name__ for c in s.collectors)}))"
    )
    result = in_chroot(installed.root, ["/opt/trapline/bin/python", "-c", load], timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["python"] == [3, 13]
    assert (loaded["identity"], loaded["host"]) == (IDENTITY, VAN)
    assert loaded["metadata"].split()[:2] == ["trapline", "vehicle"]
    # The GPS collector follows {$VEHICLE.GEOFENCES}: the active checks poller comes with it.
    assert loaded["collectors"] == ["ActiveChecksPoller", "GpsCollector", "ObdCollector"], loaded


def test_the_installed_van_appears_in_zabbix_70_by_autoregistration(
    installed: Installed, zabbix70: LocalZabbix, tmp_path: Path
) -> None:
    root = installed.root
    accept_the_fleet(zabbix70, IDENTITY, installed.key)  # with the key this van got
    # The installed config as is, but for the test server's address (the install's name
    # resolves nowhere) and a host name no earlier run used (a deleted host lingers in the
    # server's cache). Its OBD adapter and gpsd are absent: the agent's own metrics remain.
    van = unique_name("pi-van")
    config = (root / "etc/trapline/trapline.toml").read_text()
    config = config.replace(f'"{SERVER}"', f'"{zabbix70.trapper_address}"').replace(f'"{VAN}"', f'"{van}"')
    test_config = root / "etc/trapline/zabbix70.toml"
    test_config.write_text(config)
    os.chown(test_config, 0, ids(root, "group", "trapline"))
    test_config.chmod(0o640)  # as install.sh leaves trapline.toml
    as_agent = ["setpriv", "--reuid=trapline", "--regid=trapline", "--init-groups"]
    python = namespace_command(root, [], [*as_agent, "/opt/trapline/bin/python"])
    with running_agent(Path("/etc/trapline/zabbix70.toml"), tmp_path / "agent.log", python) as agent:
        host = registered_van(zabbix70, van)
        assert agent.terminate() == 0
    assert {t["host"] for t in host["parentTemplates"]} == {VEHICLE_TEMPLATE, AGENT_TEMPLATE}
    assert int(host["inventory_mode"]) == INVENTORY_AUTOMATIC
    assert int(host["tls_accept"]) == TLS_PSK
    assert installed.key not in agent.output()


def test_trixie_takes_the_proxy_uplink_and_a_switch_to_direct_names_what_the_config_lacks() -> None:
    with fresh_chroot("trixie") as root:
        proxy = in_chroot(root, [SCRIPT, "--server", SERVER, "--vehicle", VAN])
        assert proxy.returncode == 0, (proxy.stdout + proxy.stderr)[-3000:]
        # Zabbix 7.0's proxy (trixie's) validates its configuration file and stops.
        validate = ["/usr/sbin/zabbix_proxy", "-c", "/etc/zabbix/trapline_proxy.conf", "-T"]
        checked = in_chroot(root, validate, timeout=60)
        assert "Validation successful" in checked.stdout + checked.stderr, checked.stdout + checked.stderr

        key = secrets.token_hex(32)
        place_key(root, key + "\n")
        switched = in_chroot(root, [SCRIPT, "--direct", "--psk-file", KEY_IN_CHROOT])
        assert switched.returncode == 0, (switched.stdout + switched.stderr)[-3000:]
        # The config is the owner's: never rewritten, each missing line named once. The proxy's
        # PSK identity is not carried over: the fleet's default is expected.
        lacks = "WARNING: /etc/trapline/trapline.toml lacks, for the direct uplink, in [zabbix]: "
        warned = [line.split(lacks, 1)[1] for line in switched.stdout.splitlines() if lacks in line]
        expected = [f'servers = ["{SERVER}"]', 'tls_psk_identity = "trapline-fleet"',
                    f'tls_psk_file = "/{INSTALLED_KEY}"', f'autoregistration_host = "{VAN}"']
        assert warned == expected, switched.stdout
        assert "changed: disabled zabbix-proxy.service" in switched.stdout
        assert key not in switched.stdout + switched.stderr
        assert (root / INSTALLED_KEY).read_text() == key + "\n"


def test_bookworm_refuses_direct_before_changing_anything() -> None:
    with fresh_chroot("bookworm") as root:
        place_key(root, secrets.token_hex(32) + "\n")
        before = snapshot(root, WATCHED)
        refused = in_chroot(root, [*DIRECT, "--psk-file", KEY_IN_CHROOT], timeout=60)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert "bookworm (Python 3.11): use the proxy uplink" in refused.stderr
        assert changes_between(before, snapshot(root, WATCHED)) == []
