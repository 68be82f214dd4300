"""`trapline check` against a real Zabbix: a table row per endpoint, exit 1 when one fails."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.localzabbix import LocalZabbix
from tests.support.peers import free_port


@pytest.mark.integration
def test_check_reports_each_endpoint(zabbix60: LocalZabbix, tmp_path: Path) -> None:
    password = tmp_path / "api.password"
    password.write_text("zabbix\n")
    password.chmod(0o600)
    closed = f"127.0.0.1:{free_port()}"
    config = tmp_path / "trapline.toml"
    config.write_text(
        f"""
[spool]
path = "{tmp_path}/spool.db"
[zabbix]
servers = ["{zabbix60.trapper_address}", "{closed}"]
timeout = 2
api_url = "{zabbix60.api_url}"
api_user = "Admin"
api_password_file = "{password}"
[prometheus]
listen = "127.0.0.1:0"
"""
    )
    code, rows = _check(config)
    good = next(line for name, line in rows.items() if zabbix60.trapper_address in name)
    bad = next(line for name, line in rows.items() if closed in name)
    assert " ok " in good and "trapper answers" in good and "version 6.0" in good
    assert "FAILED" in bad
    assert code == 1


def _check(config: Path) -> tuple[int, dict[str, str]]:
    result = subprocess.run(
        [sys.executable, "-m", "trapline", "check", "-c", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    return result.returncode, rows


def _token_config(tmp_path: Path, stack: LocalZabbix, token: str, spool: Path) -> Path:
    token_file = tmp_path / "api.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = tmp_path / "trapline.toml"
    config.write_text(
        f"""
[spool]
path = "{spool}"
[zabbix]
servers = ["{stack.trapper_address}"]
timeout = 5
api_url = "{stack.api_url}"
api_token_file = "{token_file}"
"""
    )
    return config


@pytest.mark.integration
def test_check_authenticates_with_the_api_token(zabbix: LocalZabbix, tmp_path: Path) -> None:
    """A token the server knows passes; a made-up one (64 hex digits, the shape Zabbix
    generates) fails the check.  apiinfo.version alone would have said ok to both."""
    api = zabbix.api()
    (admin,) = api.user.get(filter={"username": "Admin"}, output=["userid"])
    created = api.token.create(name=f"trapline-check-{secrets.token_hex(4)}", userid=admin["userid"])
    tokenid = created["tokenids"][0]
    (generated,) = api.token.generate(tokenid)
    good = _token_config(tmp_path, zabbix, generated["token"], tmp_path / "spool.db")
    code, rows = _check(good)
    assert code == 0, rows
    assert "version" in rows[f"zabbix[{zabbix.trapper_address}]"]

    refused = _token_config(tmp_path, zabbix, secrets.token_hex(32), tmp_path / "spool.db")
    code, rows = _check(refused)
    line = rows[f"zabbix[{zabbix.trapper_address}]"]
    assert code == 1 and "FAILED" in line and "API" in line, rows


@pytest.mark.integration
def test_check_opens_the_spool_as_run_does(zabbix60: LocalZabbix, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = _token_config(tmp_path, zabbix60, "x" * 64, blocker / "spool.db")
    code, rows = _check(config)
    assert code == 1 and "FAILED" in rows["spool"] and str(blocker) in rows["spool"], rows
    run = subprocess.run(
        [sys.executable, "-m", "trapline", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode != 0 and "cannot open spool" in run.stderr
