"""MQTT over TLS against a real mosquitto: certificates made with openssl at test time, never committed.

The broker has two TLS listeners sharing one password file:

* ``server_auth``: the broker proves who it is (server certificate from our CA);
  clients log in with username and password (``tls_ca_file`` + password).
* ``mutual``: ``require_certificate true`` as well: a client must also present
  a certificate from our CA (``tls_cert_file`` + ``tls_key_file``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.integration.test_mqtt_broker import ListDestination, centre, identity, readings, subscribed, until
from tests.support.peers import free_port, missing_peer, need_binary, wait_port
from trapline.collectors.mqtt_bridge.collector import build as build_bridge
from trapline.core.config import Section
from trapline.exporters.mqtt import MqttDestination, build_destinations
from trapline.middleware.filters import Filters
from trapline.middleware.pipeline import Pipeline
from trapline.middleware.settings import AgentSettings, SpoolSettings
from trapline.middleware.spool import Spool

pytestmark = pytest.mark.integration

USER, PASSWORD = "van", "tls horse battery"
# The certificate extensions Python's verification expects of a CA, a server (by IP) and a client.
_EXTENSIONS = """
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
subjectAltName = IP:127.0.0.1, DNS:localhost
extendedKeyUsage = serverAuth
[client]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA the broker's certificate does not come from


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(
        [need_binary("openssl"), *map(str, args)], check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        missing_peer(f"openssl {args[0]} failed: {done.stderr[-300:]}")


# A fresh P-256 key, unencrypted (the test reads it without a passphrase).
_NEW_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _self_signed_ca(folder: Path, name: str, extensions: Path) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        *_NEW_EC_KEY,
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "2",
        "-subj",
        f"/CN=trapline test {name}",
        "-config",
        extensions,
        "-extensions",
        "ca",
    )
    return cert, key


def _signed(folder: Path, name: str, ca: tuple[Path, Path], extensions: Path) -> tuple[Path, Path]:
    cert, key, request = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    _openssl(
        "req",
        "-new",
        *_NEW_EC_KEY,
        "-keyout",
        key,
        "-out",
        request,
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-CAcreateserial",
        "-out",
        cert,
        "-days",
        "2",
        "-extfile",
        extensions,
        "-extensions",
        name,
    )
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    extensions = folder / "extensions.cnf"
    # `openssl req -config` needs a [req] section; the extensions live beside it.
    extensions.write_text("[req]\ndistinguished_name = dn\n[dn]\n" + _EXTENSIONS)
    ca = _self_signed_ca(folder, "ca", extensions)
    other_ca, _ = _self_signed_ca(folder, "other-ca", extensions)
    server = _signed(folder, "server", ca, extensions)
    client = _signed(folder, "client", ca, extensions)
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)


@dataclass(frozen=True)
class TlsBroker:
    server_auth: int  # port: TLS, password
    mutual: int  # port: TLS, client certificate and password
    log: Path


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    binary = need_binary("mosquitto")
    folder = tmp_path_factory.mktemp("mosquitto")
    passwords = folder / "passwords"
    passwords.write_text("")
    subprocess.run([need_binary("mosquitto_passwd"), "-b", str(passwords), USER, PASSWORD], check=True)
    ports = TlsBroker(free_port(), free_port(), folder / "mosquitto.log")
    tls = [f"cafile {pki.ca}", f"certfile {pki.server_cert}", f"keyfile {pki.server_key}"]
    config = folder / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                "user root",  # mosquitto drops root privileges to the "mosquitto" user unless told otherwise
                "allow_anonymous false",
                f"password_file {passwords}",
                f"log_dest file {ports.log}",
                "log_type error",
                "log_type warning",
                "log_type notice",
                f"listener {ports.server_auth} 127.0.0.1",
                *tls,
                f"listener {ports.mutual} 127.0.0.1",
                *tls,
                "require_certificate true",
            ]
        )
        + "\n"
    )
    process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not (wait_port(ports.server_auth) and wait_port(ports.mutual)):
            process.terminate()
            _, err = process.communicate(timeout=10)
            missing_peer(f"mosquitto with TLS did not start: {err.decode(errors='replace')[-500:]}")
        yield ports
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "mqtt.password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def broker_keys(tmp_path: Path, port: int, **extra: object) -> dict[str, object]:
    """The connection keys the edge's [mqtt] section and the bridge collector share."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "client_id": "van-17",
        "username": USER,
        "password_file": str(secret_file(tmp_path)),
        **extra,
    }


def edge(tmp_path: Path, port: int, **extra: object) -> MqttDestination:
    data = broker_keys(tmp_path, port, **{"timeout": 3, **extra})
    [dest] = build_destinations(Section(tmp_path / "t.toml", "mqtt", data))
    assert isinstance(dest, MqttDestination)
    return dest


def edge_pipeline(tmp_path: Path, dest: MqttDestination) -> Pipeline:
    """A vehicle agent: its spool in front of the MQTT destination."""
    agent = AgentSettings(host=None, self_interval=3600, flush_interval=0.05, shutdown_timeout=1)
    spool_settings = SpoolSettings(tmp_path / "edge.db", 100_000, "normal", 3600, 0.05, 0.1, 500)
    return Pipeline(
        agent=agent,
        spool_settings=spool_settings,
        spool=Spool(spool_settings.path),
        filters=Filters.from_config(Section(tmp_path / "t.toml", "filters", {})),
        collectors=[],
        destinations=[dest],
    )


def spool_readings(pipeline: Pipeline, count: int) -> None:
    outbox = pipeline.outbox("obd")
    for item in readings("Van 17", count):
        outbox.put(item)
    pipeline.flush_intake()


@contextlib.asynccontextmanager
async def centre_receiving(
    tmp_path: Path, port: int, name: str, **tls: str
) -> AsyncIterator[ListDestination]:
    """A running bridge feeding a centre pipeline; yields what arrives there.

    Its own group and ``session_expiry = 0``: a bridge of an earlier test must not
    keep a share of this test's messages in its session (mosquitto holds them there).
    """
    data = broker_keys(
        tmp_path, port, type="mqtt_bridge", client_id=name, group=name, session_expiry=0, **tls
    )
    section = Section(tmp_path / "t.toml", "collectors.fleet", data)
    section.text("type")  # read by the settings loader before build()
    collector, received = build_bridge("fleet", section), ListDestination()
    pipeline = centre(tmp_path, collector, received, spool=f"{name}.db")
    running = asyncio.create_task(pipeline.run(install_signal_handlers=False))
    try:
        await subscribed(collector)
        yield received
    finally:
        pipeline.stop()
        await running


def test_edge_and_bridge_deliver_over_tls_with_a_password(
    tmp_path: Path, pki: Pki, broker: TlsBroker
) -> None:
    async def scenario() -> None:
        async with centre_receiving(
            tmp_path, broker.server_auth, "centre-tls", tls_ca_file=str(pki.ca)
        ) as received:
            dest = edge(tmp_path, broker.server_auth, tls_ca_file=str(pki.ca))
            assert dest.settings.tls
            vehicle = edge_pipeline(tmp_path, dest)
            spool_readings(vehicle, 50)
            outcome = await vehicle.deliver_once(dest)
            assert outcome is not None and len(outcome.accepted) == 50 and outcome.unreachable is None
            assert vehicle.spool.depth() == 0
            await until(lambda: len(received.items) == 50, "the readings at the centre")
            assert identity(received.items) == identity(readings("Van 17", 50))
            await dest.close()

    asyncio.run(scenario())


async def refused(tmp_path: Path, port: int, ca: Path, client_id: str) -> tuple[Pipeline, str]:
    """An edge agent with 20 readings spooled tries twice; returns its pipeline and the reason it got."""
    dest = edge(tmp_path, port, tls_ca_file=str(ca), client_id=client_id, timeout=1)
    vehicle = edge_pipeline(tmp_path, dest)
    spool_readings(vehicle, 20)
    reasons = []
    for _ in range(2):  # and again: a refused agent keeps running and keeps its data
        outcome = await vehicle.deliver_once(dest)
        assert outcome is not None and outcome.accepted == [] and outcome.unreachable is not None
        assert vehicle.spool.depth() == 20  # nothing lost
        reasons.append(outcome.unreachable)
    await dest.close()
    assert f"127.0.0.1:{port}" in reasons[-1] and PASSWORD not in "".join(reasons)
    return vehicle, reasons[-1]


def test_a_broker_certificate_from_another_ca_is_refused_and_the_spool_keeps_everything(
    tmp_path: Path, pki: Pki, broker: TlsBroker
) -> None:
    async def scenario() -> None:
        vehicle, _ = await refused(tmp_path, broker.server_auth, pki.other_ca, "van-wrong-ca")
        # The same spool, now with the right CA: everything leaves and arrives.
        async with centre_receiving(
            tmp_path, broker.server_auth, "centre-ca", tls_ca_file=str(pki.ca)
        ) as received:
            right = edge(tmp_path, broker.server_auth, tls_ca_file=str(pki.ca), client_id="van-wrong-ca")
            outcome = await vehicle.deliver_once(right)
            assert outcome is not None and len(outcome.accepted) == 20 and vehicle.spool.depth() == 0
            await until(lambda: len(received.items) == 20, "the spooled readings at the centre")
            assert identity(received.items) == identity(readings("Van 17", 20))
            await right.close()

    asyncio.run(scenario())


def test_a_client_without_a_certificate_is_refused_where_one_is_required(
    tmp_path: Path, pki: Pki, broker: TlsBroker
) -> None:
    asyncio.run(refused(tmp_path, broker.mutual, pki.ca, "van-no-cert"))


def test_tls_refusals_say_why(tmp_path: Path, pki: Pki, broker: TlsBroker) -> None:
    async def scenario() -> tuple[str, str]:
        _, wrong_ca = await refused(tmp_path, broker.server_auth, pki.other_ca, "van-why-ca")
        _, no_cert = await refused(tmp_path / "b", broker.mutual, pki.ca, "van-why-cert")
        return wrong_ca, no_cert

    (tmp_path / "b").mkdir()
    wrong_ca, no_cert = asyncio.run(scenario())
    assert "certificate verify failed" in wrong_ca, wrong_ca
    assert "certificate required" in no_cert, no_cert


def _paho_with_client_certificate(pki: Pki, port: int) -> str:
    """Connect with a plain paho client and our client certificate; returns the CONNACK reason."""
    answered, reason = threading.Event(), []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-mutual", protocol=mqtt.MQTTv5)
    client.tls_set(
        ca_certs=str(pki.ca),
        certfile=str(pki.client_cert),
        keyfile=str(pki.client_key),
        cert_reqs=ssl.CERT_REQUIRED,
    )
    client.username_pw_set(USER, PASSWORD)
    client.on_connect = lambda c, u, flags, rc, props: (reason.append(str(rc)), answered.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(10), "no CONNACK"
        return reason[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_mutual_tls_listener_accepts_a_client_certificate_from_our_ca(
    pki: Pki, broker: TlsBroker
) -> None:
    """The broker set-up is right: with a client certificate the same listener lets a client in."""
    assert _paho_with_client_certificate(pki, broker.mutual) == "Success"


def test_edge_and_bridge_deliver_with_client_certificates(
    tmp_path: Path, pki: Pki, broker: TlsBroker
) -> None:
    """The same key names as in [zabbix]."""
    certificate = {
        "tls_ca_file": str(pki.ca),
        "tls_cert_file": str(pki.client_cert),
        "tls_key_file": str(pki.client_key),
    }

    async def scenario() -> None:
        async with centre_receiving(tmp_path, broker.mutual, "centre-cert", **certificate) as received:
            dest = edge(tmp_path, broker.mutual, client_id="van-cert", **certificate)
            vehicle = edge_pipeline(tmp_path, dest)
            spool_readings(vehicle, 10)
            outcome = await vehicle.deliver_once(dest)
            assert outcome is not None and len(outcome.accepted) == 10
            await until(lambda: len(received.items) == 10, "the readings at the centre")
            await dest.close()

    asyncio.run(scenario())
