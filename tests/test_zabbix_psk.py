"""Direct TLS-PSK uplink settings and active agent autoregistration, without a real server.

The PSK handshake itself needs Python 3.13 and a real Zabbix: that is
tests/integration/test_direct_psk.py.  Here: the ``[zabbix]`` settings, the
error on Pythons without PSK, that the key shows nowhere, and the
``active checks`` exchange against the fake trapper of test_zabbix_client.py.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

import trapline
from tests.test_zabbix_client import fake_zabbix
from tests.test_zabbix_destination import readings, spool
from trapline.core.config import ConfigError, Secret, Section
from trapline.exporters import zabbix as zabbix_config
from trapline.exporters.zabbix import build_destinations
from trapline.exporters.zabbix.autoregistration import AutoRegistration, host_metadata
from trapline.exporters.zabbix.client import (
    PSK_SUPPORTED,
    ClusterClient,
    Endpoint,
    PskSettings,
)
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.exporters.zabbix.protocol import (
    ProtocolError,
    active_checks_request,
    parse_active_checks_reply,
)

# A 32-byte key in the form `openssl rand -hex 32` writes, as Zabbix's "Using pre-shared
# keys" page tells to make one.
KEY = "1f87b595725ac58dd977beef14b97461a7c1045b9a1c963065002c5473194952"


def psk_file(tmp_path: Path, text: str = KEY, mode: int = 0o600) -> Path:
    path = tmp_path / "fleet.psk"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def section(tmp_path: Path, **data: Any) -> Section:
    return Section(tmp_path / "trapline.toml", "zabbix", {"servers": ["zbx.example:10051"], **data})


@pytest.fixture
def psk_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings as on Python 3.13, whatever runs the test.

    The PSK context itself needs 3.13's ssl: the integration test builds and uses it.
    """
    monkeypatch.setattr(zabbix_config, "PSK_SUPPORTED", True)
    if not PSK_SUPPORTED:
        monkeypatch.setattr(PskSettings, "context", lambda self: ssl.create_default_context())


# -- settings -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["tls_psk_identity", "tls_psk_file"])
def test_psk_on_a_python_without_psk_is_one_error_naming_the_proxy_uplink(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zabbix_config, "PSK_SUPPORTED", False)
    value = "fleet" if key == "tls_psk_identity" else str(psk_file(tmp_path))
    with pytest.raises(ConfigError) as caught:
        build_destinations(section(tmp_path, **{key: value}))
    message = str(caught.value)
    assert f"[zabbix].{key}" in message
    assert "Python 3.13" in message and "proxy uplink" in message
    assert "deploy/raspberrypi/README.md" in message


@pytest.mark.skipif(PSK_SUPPORTED, reason="this Python has TLS-PSK")
def test_this_python_has_no_psk_so_the_real_check_refuses(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs Python 3\.13"):
        build_destinations(section(tmp_path, tls_psk_identity="fleet", tls_psk_file=str(psk_file(tmp_path))))


@pytest.mark.usefixtures("psk_python")
def test_psk_settings_reach_the_client(tmp_path: Path) -> None:
    (dest,) = build_destinations(
        section(tmp_path, tls_psk_identity="fleet", tls_psk_file=str(psk_file(tmp_path)))
    )
    assert isinstance(dest, ZabbixDestination) and isinstance(dest.client, ClusterClient)
    tls = dest.client._tls
    assert isinstance(tls, PskSettings)
    assert (tls.identity, tls.key.reveal()) == ("fleet", KEY)
    assert KEY not in repr(tls) and KEY not in str(tls)


@pytest.mark.usefixtures("psk_python")
@pytest.mark.parametrize(
    ("data", "file_text", "mode", "message"),
    [
        ({"tls_psk_identity": "fleet"}, None, 0o600, r"tls_psk_file: missing"),
        ({}, KEY, 0o600, r"tls_psk_identity: missing"),
        ({"tls_psk_identity": ""}, KEY, 0o600, r"tls_psk_identity: expected 1 to 128"),
        ({"tls_psk_identity": "x" * 129}, KEY, 0o600, r"tls_psk_identity: expected 1 to 128"),
        ({"tls_psk_identity": "fleet"}, KEY, 0o640, r"readable by group or others"),
        ({"tls_psk_identity": "fleet"}, KEY, 0o604, r"readable by group or others"),
        ({"tls_psk_identity": "fleet"}, KEY[:30], 0o600, r"not a PSK \(expected 32 to 512 hex"),
        ({"tls_psk_identity": "fleet"}, KEY[:-1], 0o600, r"an even number"),
        ({"tls_psk_identity": "fleet"}, "g" + KEY[1:], 0o600, r"not a PSK"),
        ({"tls_psk_identity": "fleet"}, KEY * 9, 0o600, r"not a PSK"),
        ({"tls_psk_identity": "fleet", "tls_ca_file": "ca.pem"}, KEY, 0o600, r"tls_ca_file: certificates"),
    ],
)
def test_bad_psk_settings_name_the_key_and_never_show_the_key(
    data: dict[str, Any], file_text: str | None, mode: int, message: str, tmp_path: Path
) -> None:
    if file_text is not None:
        data = {**data, "tls_psk_file": str(psk_file(tmp_path, file_text, mode))}
    with pytest.raises(ConfigError, match=message) as caught:
        build_destinations(section(tmp_path, **data))
    assert "trapline.toml" in str(caught.value)
    assert (file_text or KEY)[:32] not in str(caught.value)


@pytest.mark.parametrize("size", [16, 256])
@pytest.mark.usefixtures("psk_python")
def test_psk_of_the_sizes_zabbix_takes_is_accepted(size: int, tmp_path: Path) -> None:
    key = "ab" * size
    build_destinations(section(tmp_path, tls_psk_identity="fleet", tls_psk_file=str(psk_file(tmp_path, key))))


def test_wrong_psk_failure_names_the_identity_not_the_key() -> None:
    settings = PskSettings("fleet-17", Secret(KEY))
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_DECRYPT_ERROR] tlsv1 alert decrypt error")
    for failure in (alert, ConnectionResetError(104, "Connection reset by peer")):
        text = settings.describe_failure(Endpoint("zbx", 10051), failure)
        assert "TLS-PSK handshake failed with identity 'fleet-17'" in text
        assert "tls_psk_identity and tls_psk_file" in text and KEY not in text
    refused = ConnectionRefusedError(111, "Connection refused")
    text = settings.describe_failure(Endpoint("zbx", 10051), refused)
    assert text == "zbx:10051: cannot connect (Connection refused)"


@pytest.mark.skipif(PSK_SUPPORTED, reason="this Python has TLS-PSK")
def test_psk_context_on_a_python_without_psk_says_why() -> None:
    settings = PskSettings("fleet", Secret(KEY))
    with pytest.raises(RuntimeError, match=r"Python 3\.13"):
        settings.context()


# -- autoregistration settings --------------------------------------------------


def test_autoregistration_settings(tmp_path: Path) -> None:
    (dest,) = build_destinations(section(tmp_path, autoregistration_host="van-17"))
    assert isinstance(dest, ZabbixDestination) and dest.registration is not None
    assert (dest.registration.host, dest.registration.metadata) == (
        "van-17",
        f"trapline vehicle {trapline.__version__}",
    )
    (plain,) = build_destinations(section(tmp_path))
    assert isinstance(plain, ZabbixDestination) and plain.registration is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"autoregistration_role": "vehicle"}, r"autoregistration_role: given without autoregistration_host"),
        ({"autoregistration_host": "van/17"}, r"autoregistration_host: expected a Zabbix host name"),
        ({"autoregistration_host": ""}, r"autoregistration_host: expected a Zabbix host name"),
        (
            {"autoregistration_host": "v", "autoregistration_role": "two words"},
            r"autoregistration_role: expected one",
        ),
    ],
)
def test_bad_autoregistration_settings(data: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        build_destinations(section(tmp_path, **data))


# -- the active checks exchange -------------------------------------------------


def test_active_checks_request_has_the_documented_fields() -> None:
    # Fields of "Active checks request" in Zabbix 7.0's agent protocol page.
    doc = json.loads(active_checks_request("van-17", host_metadata("vehicle", "1.2.3")))
    assert doc == {
        "request": "active checks",
        "host": "van-17",
        "version": "6.0",
        "host_metadata": "trapline vehicle 1.2.3",
    }


@pytest.mark.parametrize(
    ("reply", "known", "info"),
    [
        (b'{"response":"success","data":[]}', True, ""),
        (b'{"response":"success","data":[{"key":"agent.ping","delay":"30s"}]}', True, ""),
        (b'{"response":"failed","info":"host [van-17] not found"}', False, "host [van-17] not found"),
        (b'{"response":"failed"}', False, "no reason given"),
    ],
)
def test_active_checks_replies(reply: bytes, known: bool, info: str) -> None:
    parsed = parse_active_checks_reply(reply)
    assert (parsed.known, parsed.info) == (known, info)


@pytest.mark.parametrize("reply", [b"", b"[]", b'{"response":"maybe"}', b"\xff"])
def test_bad_active_checks_replies(reply: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_active_checks_reply(reply)


def test_values_wait_in_the_spool_until_the_server_knows_the_host() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            client = ClusterClient([server.endpoint], timeout=2)
            registration = AutoRegistration(client, "van-17", "trapline vehicle 0.1.0")
            dest = ZabbixDestination("test", client, registration=registration, resend_delay=0)
            batch = spool(readings("van-17", ["gps.speed", "obd.rpm"]))

            first = await dest.deliver(batch)
            assert not first.accepted and not first.retry and not first.rejected
            assert first.unreachable is not None
            assert "host van-17 is not in Zabbix yet (host [van-17] not found)" in first.unreachable
            assert "'trapline vehicle 0.1.0'" in first.unreachable
            assert server.requests == []  # no value went out to be refused

            server.known_hosts.add("van-17")
            second = await dest.deliver(batch)
            assert sorted(second.accepted) == [0, 1] and second.unreachable is None
            assert registration.known
            third = await dest.deliver(batch)
            assert sorted(third.accepted) == [0, 1]
            # Asked twice (not found, then found), never again once known.
            assert [doc["host_metadata"] for doc in server.active_checks] == ["trapline vehicle 0.1.0"] * 2

    asyncio.run(scenario())


def test_unreachable_server_during_registration_keeps_the_values() -> None:
    async def scenario() -> None:
        async with fake_zabbix() as server:
            port = server.port
        client = ClusterClient([Endpoint("127.0.0.1", port)], timeout=2)
        dest = ZabbixDestination("test", client, registration=AutoRegistration(client, "van-17", "m"))
        outcome = await dest.deliver(spool(readings("van-17", ["gps.speed"])))
        assert not outcome.accepted and not outcome.retry and not outcome.rejected
        assert outcome.unreachable is not None
        assert outcome.unreachable.startswith("autoregistration of host van-17: 127.0.0.1:")

    asyncio.run(scenario())
