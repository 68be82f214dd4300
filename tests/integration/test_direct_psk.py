"""Issue 20 item 2: zero admin commands per van, direct TLS-PSK uplink, on real Zabbix.

``trapline provision --autoregistration`` creates the fleet's autoregistration action
(6.0 and 7.0) and a second run changes nothing.  Then, on 7.0, the real agent runs under
Python 3.13 (Debian trixie's, from the chroot the 7.0 stack runs in) with nothing but the
server's address, the fleet's PSK and its own host name: the van appears by
autoregistration with both templates linked and inventory automatic, and its own metrics
land over TLS-PSK.  A van with a wrong key says so in one clear line and keeps every
reading in its spool.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import (
    CHROOT_DIR,
    LocalZabbix,
    LocalZabbixError,
    ensure_chroot_python,
    namespace_command,
)
from tests.integration.test_provision_fleet import _argv, _private
from tests.support.agent_process import running_agent, spooled_readings, toml_config
from tests.support.peers import missing_peer
from tests.support.zabbix_fixtures import unique_name, wait_until
from trapline import cli
from trapline.provision import (
    AGENT_TEMPLATE,
    CONDITION_HOST_METADATA,
    DEFAULT_AUTOREGISTRATION_ACTION,
    DEFAULT_FLEET_IDENTITY,
    INVENTORY_AUTOMATIC,
    OPERATOR_CONTAINS,
    TLS_PSK,
    VEHICLE_TEMPLATE,
    ensure_autoregistration_action,
)

# The agent's first request registers the van; the server then needs its configuration
# cache to know the new host (the test reloads it instead of waiting up to 60 s).
APPEAR_TIMEOUT = 60.0
WRONG_KEY_RUN = 8.0  # seconds a van with a wrong key runs: several delivery rounds


@pytest.mark.integration
def test_provision_autoregistration_creates_the_action_once(
    zabbix: LocalZabbix, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    group = unique_name("trapline-fleet")
    argv = _argv(zabbix, tmp_path, "--autoregistration", "--group", group)
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert re.search(rf"^autoregistration action '{DEFAULT_AUTOREGISTRATION_ACTION}': (created|updated) ",
                     first, re.M), first

    api = zabbix.api()
    (action,) = api.action.get(filter={"name": [DEFAULT_AUTOREGISTRATION_ACTION]}, output=["eventsource"],
                               selectFilter="extend", selectOperations="extend")
    assert int(action["eventsource"]) == 2
    conditions = {(int(c["conditiontype"]), int(c["operator"]), c["value"])
                  for c in action["filter"]["conditions"]}
    assert conditions == {(CONDITION_HOST_METADATA, OPERATOR_CONTAINS, w) for w in ("trapline", "vehicle")}
    (groupid,) = [g["groupid"] for g in api.hostgroup.get(filter={"name": [group]}, output=["groupid"])]
    templateids = {t["templateid"] for t in api.template.get(
        filter={"host": [VEHICLE_TEMPLATE, AGENT_TEMPLATE]}, output=["templateid"])}
    by_type: dict[int, list[dict[str, Any]]] = {}
    for operation in action["operations"]:
        by_type.setdefault(int(operation["operationtype"]), []).append(operation)
    assert set(by_type) == {2, 4, 6, 10}  # add host, add to group, link templates, inventory mode
    # Other tests on this stack provision other groups into the same action: this one is among them.
    assert groupid in {g["groupid"] for op in by_type[4] for g in op["opgroup"]}
    assert {t["templateid"] for op in by_type[6] for t in op["optemplate"]} == templateids
    assert {int(op["opinventory"]["inventory_mode"]) for op in by_type[10]} == {INVENTORY_AUTOMATIC}

    assert cli.main(argv) == 0
    again = capsys.readouterr().out
    assert f"autoregistration action '{DEFAULT_AUTOREGISTRATION_ACTION}': unchanged" in again

    # A second fleet group is added to the action; what was there stays.
    other = unique_name("trapline-fleet")
    assert cli.main(_argv(zabbix, tmp_path, "--autoregistration", "--group", other)) == 0
    assert f"'{DEFAULT_AUTOREGISTRATION_ACTION}': updated" in capsys.readouterr().out
    (action,) = api.action.get(filter={"name": [DEFAULT_AUTOREGISTRATION_ACTION]}, output=["actionid"],
                               selectOperations="extend")
    names = {g["name"] for g in api.hostgroup.get(
        groupids=[g["groupid"] for op in action["operations"] for g in op.get("opgroup", [])],
        output=["name"])}
    assert {group, other} <= names

    # The server's autoregistration PSK: a key generated here is shown once, to copy to the vans.
    api.autoregistration.update(tls_accept=1)
    with_psk = _argv(zabbix, tmp_path, "--autoregistration", "--group", group, "--new-psk")
    assert cli.main(with_psk) == 0
    out = capsys.readouterr().out
    assert f"autoregistration PSK (identity {DEFAULT_FLEET_IDENTITY}): updated" in out
    # The line makes the file that deploy/raspberrypi/install.sh --direct --psk-file takes.
    made = re.findall(r"^  fleet PSK, for each van's install.sh --direct --psk-file fleet.psk: "
                      r"umask 077; echo [0-9a-f]{64} > fleet.psk$", out, re.M)
    assert len(made) == 1, out
    assert int(api.autoregistration.get(output=["tls_accept"])["tls_accept"]) == 1 | TLS_PSK
    assert cli.main(with_psk) == 0
    out = capsys.readouterr().out
    assert "autoregistration PSK (identity trapline-fleet): unchanged" in out and "echo" not in out


@contextmanager
def _chroot_python(zabbix: LocalZabbix, work: Path) -> Iterator[tuple[list[str], str]]:
    """argv of the chroot's Python 3.13 with this checkout importable, and where ``work`` is inside."""
    try:
        python = ensure_chroot_python()
    except (LocalZabbixError, OSError) as exc:
        missing_peer(f"Python 3.13 in the 7.0 chroot: {exc}")
    inner = f"/mnt/{unique_name('trapline-directpsk')}"
    (CHROOT_DIR / inner.lstrip("/") / "src").mkdir(parents=True)
    (CHROOT_DIR / inner.lstrip("/") / "work").mkdir()
    source = Path(__file__).resolve().parents[2]
    binds = [(source, f"{inner}/src"), (work, f"{inner}/work")]
    argv = namespace_command(CHROOT_DIR, binds, ["env", f"PYTHONPATH={inner}/src", python])
    try:
        yield argv, f"{inner}/work"
    finally:
        shutil.rmtree(CHROOT_DIR / inner.lstrip("/"))


def _van_config(zabbix: LocalZabbix, work: Path, inner: str, van: str, *, identity: str, key: str) -> Path:
    """What a van of the direct uplink needs: server address, fleet PSK, its own name."""
    _private(work / "fleet.psk", key + "\n")
    config = work / "trapline.toml"
    config.write_text(toml_config({
        "agent": {"host": van, "self_interval": 2.0, "flush_interval": 0.2},
        "spool": {"path": f"{inner}/spool.db", "retry_initial": 1.0, "retry_cap": 4.0},
        "zabbix": {
            "servers": [zabbix.trapper_address],
            "tls_psk_identity": identity,
            "tls_psk_file": f"{inner}/fleet.psk",
            "autoregistration_host": van,
        },
    }))
    return config


def _host(api: Any, name: str) -> dict[str, Any] | None:
    found = api.host.get(filter={"host": [name]}, output=["hostid", "tls_accept", "inventory_mode"],
                         selectParentTemplates=["host"])
    return found[0] if found else None


def accept_the_fleet(zabbix: LocalZabbix, identity: str, key: str) -> None:
    """The autoregistration action and the server's autoregistration PSK, as provision sets them."""
    api = zabbix.api()
    ensure_autoregistration_action(api, unique_name("trapline-fleet"))
    # The server-wide autoregistration PSK is set here directly: the API never returns it,
    # so provision (which keeps a PSK already there) could not tell the test which one is set.
    api.autoregistration.update(tls_accept=1 | TLS_PSK, tls_psk_identity=identity, tls_psk=key)
    # The trapper finds PSK identities in the configuration cache: until its next sync it
    # answers "cannot find requested PSK identity".
    zabbix.config_cache_reload()


def registered_van(zabbix: LocalZabbix, van: str) -> dict[str, Any]:
    """The van's host, once autoregistration created it and the van's uptime reached history."""
    api = zabbix.api()
    host = wait_until(lambda: _host(api, van), timeout=APPEAR_TIMEOUT, interval=1.0,
                      what="the van's host created by autoregistration")
    assert host is not None  # wait_until returns only a found one
    zabbix.config_cache_reload()
    uptime = api.item.get(hostids=[host["hostid"]], filter={"key_": "trapline.uptime"},
                          output=["itemid", "value_type"])
    assert uptime, "the agent template's items are on the van's host"
    wait_until(lambda: api.history.get(itemids=[uptime[0]["itemid"]],
                                       history=int(uptime[0]["value_type"]), limit=1),
               timeout=APPEAR_TIMEOUT, interval=1.0, what="the van's uptime in history")
    return host


@pytest.mark.integration
def test_a_van_with_only_the_fleet_psk_appears_and_a_wrong_key_keeps_everything(
    zabbix70: LocalZabbix, tmp_path: Path
) -> None:
    zabbix = zabbix70
    api = zabbix.api()
    identity, key = unique_name("fleet-psk"), secrets.token_hex(32)
    accept_the_fleet(zabbix, identity, key)

    van = unique_name("direct-van")
    work = tmp_path / "van"
    work.mkdir()
    with _chroot_python(zabbix, work) as (python, inner):
        config = _van_config(zabbix, work, inner, van, identity=identity, key=key)
        with running_agent(Path(f"{inner}/trapline.toml"), work / "agent.log", python) as agent:
            assert config.exists()
            host = registered_van(zabbix, van)
            assert agent.terminate() == 0
        log = agent.output()
        assert {t["host"] for t in host["parentTemplates"]} == {VEHICLE_TEMPLATE, AGENT_TEMPLATE}
        assert int(host["inventory_mode"]) == INVENTORY_AUTOMATIC
        assert int(host["tls_accept"]) == TLS_PSK  # its values are taken over TLS-PSK only
        assert key not in log

        wrong = unique_name("wrong-key-van")
        (work / "spool.db").unlink()
        config = _van_config(zabbix, work, inner, wrong, identity=identity, key=secrets.token_hex(32))
        (work / "agent.log").unlink()
        with running_agent(Path(f"{inner}/trapline.toml"), work / "agent.log", python) as agent:
            time.sleep(WRONG_KEY_RUN)
            assert agent.terminate() == 0
        log = agent.output()
    failures = [line for line in log.splitlines() if "TLS-PSK handshake failed" in line]
    assert len(failures) == 1, log
    assert f"identity {identity!r}" in failures[0] and key not in log
    assert _host(api, wrong) is None
    kept = spooled_readings(work / "spool.db", f"zabbix[{zabbix.trapper_address}]")
    assert kept and {r.host for r in kept} == {wrong}
    assert {"trapline.uptime", "trapline.version"} <= {r.key for r in kept}
