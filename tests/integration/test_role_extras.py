"""A wheel built from this checkout, installed with only ``[mist]`` into a fresh virtualenv
(issue 19 item 5, "How it is shown"): no other role's library comes along, and the installed
``trapline`` checks and runs a Mist config against devtools/mist_server.py.

pip resolves through the machine's configured package indexes, as ``make setup`` does; its
cache under /var/cache/trapline keeps later runs short.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.mist_server import MistServer, ap_full
from tests.support.peers import free_port, missing_peer
from tests.support.wheel import build_wheel

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PIP_CACHE = Path("/var/cache/trapline/pip-roles")
# What the other roles install (pyproject.toml extras, with what they pull in).
OTHER_ROLES = {"boto3", "botocore", "s3transfer", "obd", "pint", "pyserial", "gpsd-py3",
               "paho-mqtt", "pyzabbix", "requests", "pyyaml"}
TOKEN = "role-test-token"
SITE = "5a1e0000-0000-0000-0000-000000000001"
MAC = "5c5b35000042"
WAIT = 30.0


def pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "pip"), *args, "--cache-dir", str(PIP_CACHE), "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.fixture(scope="module")
def mist_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("mist-role")
    try:
        wheel = build_wheel(work)
    except subprocess.CalledProcessError as exc:
        missing_peer(f"pip wheel failed (the package index for the build backend?): {exc.stderr[-1500:]!r}")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    PIP_CACHE.mkdir(parents=True, exist_ok=True)
    installed = pip(venv, "install", "-q", f"{wheel}[mist]")
    if installed.returncode:
        missing_peer(f"pip install of the wheel failed (the package index?): {installed.stderr[-1500:]}")
    yield venv


def test_only_the_mist_libraries_are_installed(mist_venv: Path) -> None:
    listed = json.loads(pip(mist_venv, "list", "--format=json").stdout)
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in listed}
    assert {"trapline", "websockets", "msgspec", "orjson", "lz4", "prometheus-client"} <= names, names
    assert not names & OTHER_ROLES, names & OTHER_ROLES
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run(
        [str(mist_venv / "bin" / "python"), "-c", where],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    size = subprocess.run(["du", "-sk", site], capture_output=True, text=True, check=True).stdout.split()[0]
    print(f"trapline[mist] virtualenv site-packages: {int(size) // 1024} MB (pip and setuptools included)")


def write_config(tmp: Path, server: MistServer, metrics_port: int) -> Path:
    token = tmp / "mist.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    config = tmp / "mist.toml"
    # Prometheus instead of Zabbix as the destination to watch: it is in the base install,
    # and this test is about what the [mist] install can run, not about delivery.
    config.write_text(f"""
[spool]
path = "{tmp / 'spool.db'}"

[prometheus]
listen = "127.0.0.1:{metrics_port}"

[collectors.mist]
type = "mist"
host = "Mist discovery"
token_file = "{token}"
sites = ["{SITE}"]
stream_url = "{server.stream_url}"
rest_url = "{server.rest_url}"
retry_min = 0.1
retry_max = 1.0
""")
    return config


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def test_the_mist_install_checks_and_runs_a_mist_config(mist_venv: Path, tmp_path: Path) -> None:
    trapline = str(mist_venv / "bin" / "trapline")

    async def scenario() -> None:
        async with MistServer(TOKEN, {SITE: ("Site One", "o1")}, {"o1": "Org One"}) as server:
            port = free_port()
            config = write_config(tmp_path, server, port)
            check = await asyncio.create_subprocess_exec(
                trapline, "check", "-c", str(config),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await check.communicate()
            assert check.returncode == 0, (out + err).decode()
            assert re.search(r"^mist\s+ok\b", out.decode(), re.MULTILINE), out.decode()

            agent = await asyncio.create_subprocess_exec(
                trapline, "run", "-c", str(config), stderr=asyncio.subprocess.PIPE,
            )
            try:
                sample = f'host="mist-ap-{MAC}"'
                # Polling: a separate process starts (imports take seconds on a busy machine),
                # and /metrics has no way to say "changed".
                async with asyncio.timeout(WAIT):
                    while not server.subscribers(SITE):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                    await server.push(SITE, ap_full(MAC, "ap-lobby"))
                    while sample not in (text := await asyncio.to_thread(scrape, port)):  # noqa: ASYNC110
                        await asyncio.sleep(0.2)
                cpu = rf"trapline_mist_ap_cpu_util_percent\{{[^}}]*{sample}[^}}]*\}} 3\.0"
                assert re.search(cpu, text), text
            finally:
                agent.send_signal(signal.SIGTERM)
                async with asyncio.timeout(WAIT):
                    _, log = await agent.communicate()
            assert agent.returncode == 0, log.decode()[-3000:]
            assert b"Traceback" not in log, log.decode()[-3000:]

    asyncio.run(scenario())


def test_another_roles_config_stops_with_one_line_naming_its_extra(mist_venv: Path, tmp_path: Path) -> None:
    # Not a hidden module this time: boto3, paho and pyzabbix are really absent from this venv.
    trapline = str(mist_venv / "bin" / "trapline")
    cases = {
        "aws": '[collectors.glue]\ntype = "aws"\nhost = "aws"\nregion = "eu-west-1"\n',
        "mqtt": '[collectors.vehicles]\ntype = "mqtt_bridge"\nhost = "127.0.0.1"\n',
        "vehicle": '[collectors.car]\ntype = "obd"\n',
    }
    for extra, section in cases.items():
        config = tmp_path / f"{extra}.toml"
        config.write_text(f'[spool]\npath = "{tmp_path / "spool.db"}"\n{section}')
        result = subprocess.run(
            [trapline, "run", "-c", str(config)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"trapline: config error: {config}: [collectors."), line
        assert line.endswith(f"pip install 'trapline[{extra}]'"), line
    admin = subprocess.run(
        [trapline, "templates", "list"], capture_output=True, text=True, timeout=60, check=False
    )
    assert admin.returncode == 1
    missing = "pyzabbix, requests, yaml"
    assert admin.stderr.splitlines() == [
        f"trapline templates: needs {missing}, not installed here: pip install 'trapline[admin]'"
    ]
