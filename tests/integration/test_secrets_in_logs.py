"""No configured secret in any line the agent writes, at debug level, from any library.

The agent runs as an operator runs it (``python -m trapline run --log-level debug``) with
every kind of secret the config takes, each against endpoints that accept it, refuse it
and fail while echoing the request back:

- Mist token: the test Mist server (devtools/mist_server.py, a small websocket server, since
  Mist has no local edition) with the right token and a wrong one (HTTP 401), and a small
  local HTTP endpoint that answers the REST calls with 403 and the stream upgrade with
  500, echoing the request headers;
- AWS external id: a real moto server (AssumeRole accepted) and the echo endpoint
  (HTTP 500 with the request echoed, which botocore dumps at debug);
- Zabbix API token: values go to a real Zabbix 7.0 trapper for a host that does not
  exist, so the agent asks the API why. The API is either the real Zabbix 7.0 API, which
  refuses the token, or the echo endpoint, answering with a JSON-RPC error whose text
  echoes the request (pyzabbix puts it in its exception);
- MQTT password: a real mosquitto with password auth, the destination with the right
  password and the bridge collector with a wrong one (refused).

Then the whole output is searched for each secret in every spelling a library may use.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devtools.localzabbix import LocalZabbix
from devtools.mist_server import MistServer
from tests.support.agent_process import toml_config
from tests.support.mosquitto import running_mosquitto
from tests.support.peers import missing_peer

SECRETS = {
    "mist_ok": "Mist+Right/Token=0123456789",
    "mist_bad": "Mist+Wrong/Token=9876543210",
    "mist_echo": "Mist+Echoed/Token=5555",
    "aws_ok": "ext+id/moto=,@:-1",
    "aws_echo": "ext+id/echo=,@:-2",
    "zabbix": "zbx+api/token=abcdef",
    "mqtt_ok": 'mqtt pass+word/="ok"',
    "mqtt_bad": 'mqtt pass+word/="bad"',
}
SITE = "6b1b6ba4-ccd5-4ed4-9e3d-5b0a4e0c0f01"
ORG = "0d5a1f0e-9b6c-4d8e-8f3a-1c2b3d4e5f60"


def spellings(value: str) -> set[str]:
    return {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        urllib.parse.quote(value),
        json.dumps(value)[1:-1],
        repr(value)[1:-1],
        repr(value.encode())[2:-1],
    }


class Echo(BaseHTTPRequestHandler):
    """Fails every request and echoes it: the worst an endpoint can do to our logs."""

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        echo = f"{self.requestline}\n{self.headers}\n{body.decode('utf-8', 'replace')}"
        if self.path.startswith("/zabbix") and b'"apiinfo.version"' in body:
            # The version first, so that pyzabbix goes on to send the token.
            status, reply = 200, json.dumps({"jsonrpc": "2.0", "result": "7.0.0", "id": 1})
        elif self.path.startswith("/zabbix"):
            # A JSON-RPC error, which pyzabbix turns into an exception carrying this text.
            status, reply = 200, json.dumps(
                {"jsonrpc": "2.0", "error": {"code": -32500, "message": "echo", "data": echo}, "id": 1}
            )
        else:
            status = 403 if self.path.startswith("/api/v1/") else 500
            reply = json.dumps({"detail": "refused", "request": echo})
        data = reply.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test server's own access log is not the agent's output


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def mist_server() -> Iterator[MistServer]:
    """The test Mist server on an event loop of its own, since the agent is another process."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = MistServer(SECRETS["mist_ok"], {SITE: ("Site", ORG)}, {ORG: "Org"})
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 (optional test peer)
    except ImportError:
        missing_peer("moto[server] is not installed")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def secret_file(tmp: Path, name: str) -> str:
    path = tmp / f"{name}.secret"
    path.write_text(SECRETS[name])
    path.chmod(0o600)
    return str(path)


@pytest.fixture(params=["echo", "real"])
def urls(request: pytest.FixtureRequest, zabbix70: LocalZabbix, echo_url: str) -> tuple[str, str]:
    """The echo endpoint, and the Zabbix API the agent asks: the echo, or the real API refusing the token."""
    return echo_url, f"{echo_url}/zabbix" if request.param == "echo" else zabbix70.api_url


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_no_secret_in_the_debug_log(
    tmp_path: Path, zabbix70: LocalZabbix, urls: tuple[str, str], mist_server: MistServer, moto_url: str
) -> None:
    echo_url, api_url = urls
    users = {"van": SECRETS["mqtt_ok"]}
    (tmp_path / "mqtt").mkdir()
    with running_mosquitto(tmp_path / "mqtt", users) as broker:
        mist = {"type": "mist", "host": "Mist discovery", "sites": [SITE]}
        aws = {"type": "aws", "host": "aws", "region": "eu-west-1",
               "role_arn": "arn:aws:iam::123456789012:role/trapline", "poll_interval": 1.0}
        config = tmp_path / "trapline.toml"
        config.write_text(toml_config({
            "spool": {"path": str(tmp_path / "spool.db")},
            "zabbix": {"servers": [zabbix70.trapper_address], "api_url": api_url,
                       "api_token_file": secret_file(tmp_path, "zabbix")},
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "username": "van",
                     "password_file": secret_file(tmp_path, "mqtt_ok")},
            "collectors.numbers": {"type": "synthetic", "host": "no-such-host-for-secrets"},
            "collectors.mist_ok": {**mist, "stream_url": mist_server.stream_url,
                                   "rest_url": mist_server.rest_url,
                                   "token_file": secret_file(tmp_path, "mist_ok")},
            "collectors.mist_bad": {**mist, "stream_url": mist_server.stream_url,
                                    "rest_url": mist_server.rest_url,
                                    "token_file": secret_file(tmp_path, "mist_bad")},
            "collectors.mist_echo": {**mist, "stream_url": echo_url.replace("http", "ws") + "/stream",
                                     "rest_url": echo_url, "token_file": secret_file(tmp_path, "mist_echo")},
            "collectors.aws_ok": {**aws, "endpoint_url": moto_url,
                                  "external_id_file": secret_file(tmp_path, "aws_ok")},
            "collectors.aws_echo": {**aws, "endpoint_url": echo_url, "max_attempts": 1,
                                    "external_id_file": secret_file(tmp_path, "aws_echo")},
            "collectors.bridge": {"type": "mqtt_bridge", "host": "127.0.0.1", "port": broker.port,
                                  "username": "van", "password_file": secret_file(tmp_path, "mqtt_bad")},
        }))
        log = tmp_path / "agent.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "eu-west-1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "trapline", "run", "-c", str(config), "--log-level", "debug"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        # Each line shows that its endpoint was reached and answered as intended.
        reached = {
            "mist_ok": "collector mist_ok: connection 0: subscribed 1 of 1 channels",
            "mist_bad": "refused the API token (HTTP 401)",
            "mist_echo": "collector mist_echo: site lookup",
            "aws_echo": "aws_echo:",
            "zabbix": "cannot diagnose refused values",
            "mqtt_bad": "refused the connection: Not authorized",
            "mqtt_ok": "connected to MQTT broker",
        }
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                text = log.read_text(errors="replace")
                if all(marker in text for marker in reached.values()):
                    break
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    text = log.read_text(errors="replace")
    missing = [name for name, marker in reached.items() if marker not in text]
    assert not missing, f"endpoints not exercised: {missing}\n{text[-5000:]}"
    assert "***" in text  # something was masked: the secrets did reach the log machinery
    for name, value in SECRETS.items():
        for spelling in spellings(value):
            assert spelling not in text, f"{name} appears in the log as {spelling!r}"
