"""`trapline check` against a real Zabbix: a table row per endpoint, exit 1 when one fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import free_port
from trapline.localzabbix import LocalZabbix


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
    result = subprocess.run(
        [sys.executable, "-m", "trapline", "check", "-c", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    good = next(line for name, line in rows.items() if zabbix60.trapper_address in name)
    bad = next(line for name, line in rows.items() if closed in name)
    assert " ok " in good and "trapper answers" in good and "version 6.0" in good
    assert "FAILED" in bad
    assert result.returncode == 1
