"""MQTT destination: readings leave the vehicle as QoS 1 messages to a broker (the wire format: ../MQTT.md).

Sample configuration::

    [mqtt]
    host = "broker.example.net"
    port = 8883                      # default 8883 with TLS, 1883 without
    client_id = "van-17"             # stable: the broker keeps this session; also the status topic
    username = "van-17"
    password_file = "/etc/trapline/mqtt.password"   # mode 0600 (or password_env)
    tls_ca_file = "/etc/trapline/mqtt-ca.pem"       # turns TLS on (tls = true: system CAs)
    tls_cert_file = "/etc/trapline/van-17.crt"      # client certificate, if the broker asks for one
    tls_key_file = "/etc/trapline/van-17.key"       # its private key: mode 0600
    topic_prefix = "trapline"        # data on trapline/v1/<host>/data
    qos = 1                          # 1 or 2
    keepalive = 60                   # seconds
    session_expiry = 86400           # seconds the broker keeps the session while we are away
    max_payload = 131072             # bytes per message; a delivery is split to fit
    timeout = 10                     # seconds to wait for the connection, then for acknowledgements
"""

from __future__ import annotations

from trapline.core.config import Section
from trapline.core.plugin import Destination
from trapline.exporters.mqtt.destination import MqttDestination
from trapline.wire.mqtt.link import default_client_id, parse_broker

__all__ = ["MqttDestination", "build_destinations"]


def build_destinations(section: Section) -> list[Destination]:
    settings = parse_broker(section, default_client_id("edge"))
    # 268435455 is the largest packet MQTT's variable-length header can announce.
    max_payload = section.integer("max_payload", 131072, minimum=1024, maximum=268_435_455)
    timeout = section.number("timeout", 10.0, minimum=0.1)
    section.done()
    return [MqttDestination(settings, max_payload, timeout)]
