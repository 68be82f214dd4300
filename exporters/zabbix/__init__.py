"""Native asyncio Zabbix sender (trapper protocol) destination.

Sample configuration::

    [zabbix]
    # Each entry is an independent destination (values go to each one);
    # inside an entry, ";" separates the HA nodes of one cluster.
    servers = ["zabbix-a.example.net;zabbix-b.example.net:10051", "127.0.0.1:10052"]
    batch_size = 250          # values per request (the C zabbix_sender's limit)
    concurrency = 4           # requests in flight per destination
    compress = false          # zlib frames (Zabbix 4.0+)
    timeout = 10              # seconds, for connect, write and read each
    # TLS with certificates ...
    # tls_ca_file = "/etc/trapline/zabbix-ca.pem"
    # tls_cert_file = "/etc/trapline/trapline.crt"
    # tls_key_file = "/etc/trapline/trapline.key"
    # tls_server_name = "zabbix.example.net"
    # ... or with a pre-shared key (Python 3.13+; older: the proxy uplink)
    # tls_psk_identity = "fleet"
    # tls_psk_file = "/etc/trapline/secrets/fleet.psk"   # 0600, hex
    # Register the host by active agent autoregistration (metadata "trapline vehicle 0.1.0")
    # autoregistration_host = "van-17"
    # autoregistration_role = "vehicle"
    # How often to ask for the host's active checks ({$VEHICLE.GEOFENCES}), with a gps collector
    # active_checks_interval = 60
    # Optional: explain refused values through the API
    # api_url = "https://zabbix.example.net/api_jsonrpc.php"
    # api_token_file = "/etc/trapline/zabbix-api-token"     (or api_user + api_password_file)
"""

from __future__ import annotations

import platform
import re

from trapline.core.config import ConfigError, Section, read_psk_file
from trapline.core.plugin import Destination
from trapline.exporters.zabbix.autoregistration import AutoRegistration, host_metadata
from trapline.exporters.zabbix.client import (
    PSK_SUPPORTED,
    ClusterClient,
    PskSettings,
    TlsMode,
    TlsSettings,
    parse_cluster,
)
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.exporters.zabbix.diagnose import ApiDiagnoser, Diagnoser

__all__ = ["ZabbixDestination", "build_destinations"]


_PSK_KEYS = ("tls_psk_identity", "tls_psk_file")
# What Zabbix allows in a host's technical name.
_ZABBIX_HOST = re.compile(r"[0-9A-Za-z._ -]{1,128}")
_IDENTITY_MAX = 128  # characters, Zabbix's limit on a PSK identity


def _psk(section: Section) -> PskSettings | None:
    given = [key for key in _PSK_KEYS if section.has(key)]
    if not given:
        return None
    if not PSK_SUPPORTED:
        raise section.error(given[0], (
            f"TLS-PSK needs Python 3.13 or later, and this is Python {platform.python_version()}; "
            "use the proxy uplink instead: a Zabbix proxy beside the agent sends to the server "
            "with the PSK (deploy/raspberrypi/README.md, 'Proxy or direct')"
        ))
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if section.has(key):
            raise section.error(key, "certificates and tls_psk_* exclude each other: choose one")
    identity = section.text("tls_psk_identity")
    if not identity or len(identity) > _IDENTITY_MAX:
        raise section.error("tls_psk_identity", f"expected 1 to {_IDENTITY_MAX} characters")
    try:
        psk = read_psk_file(section.path("tls_psk_file"))
    except ConfigError as exc:
        raise section.error("tls_psk_file", str(exc)) from None
    return PskSettings(identity, psk)


def _tls(section: Section) -> TlsMode | None:
    psk = _psk(section)
    if psk is not None:
        return psk
    files = section.tls_files()
    server_name = section.text("tls_server_name") if section.has("tls_server_name") else None
    if not files.any and server_name is None:
        return None
    return TlsSettings(files.ca_file, files.cert_file, files.key_file, server_name)


def _registration(section: Section) -> tuple[str, str] | None:
    """(host, host metadata) to autoregister, if asked."""
    if not section.has("autoregistration_host"):
        if section.has("autoregistration_role"):
            raise section.error("autoregistration_role", "given without autoregistration_host")
        return None
    host = section.text("autoregistration_host")
    if not _ZABBIX_HOST.fullmatch(host):
        raise section.error(
            "autoregistration_host", "expected a Zabbix host name: 1 to 128 of A-Z a-z 0-9 . _ - and space"
        )
    role = section.text("autoregistration_role", "vehicle")
    if not role or not role.isidentifier():
        raise section.error("autoregistration_role", "expected one word, e.g. vehicle")
    return host, host_metadata(role)


def _diagnoser(section: Section, timeout: float) -> Diagnoser | None:
    if not section.has("api_url"):
        for key in ("api_token_file", "api_token_env", "api_user", "api_password_file", "api_password_env"):
            if section.has(key):
                raise section.error(key, "given without api_url")
        return None
    url = section.url("api_url", ("http", "https"))
    # The API client (pyzabbix, with requests) is the admin commands' library, not the base's.
    section.require_extra("api_url", "admin", ("pyzabbix",))
    if section.has("api_user"):
        user = section.text("api_user")
        password = section.secret("api_password")
        return ApiDiagnoser(url, user=user, password=password, timeout=timeout)
    return ApiDiagnoser(url, token=section.secret("api_token"), timeout=timeout)


def build_destinations(section: Section) -> list[Destination]:
    """One destination per ``servers`` entry of the ``[zabbix]`` section."""
    entries = section.strings("servers")
    if not entries:
        raise section.error("servers", "expected at least one server")
    batch_size = section.integer("batch_size", 250, minimum=1)
    concurrency = section.integer("concurrency", 4, minimum=1)
    compress = section.boolean("compress", False)
    timeout = section.number("timeout", 10.0, minimum=0.1)
    tls = _tls(section)
    registration = _registration(section)
    active_checks_interval = section.number("active_checks_interval", 60.0, minimum=1.0)
    diagnoser = _diagnoser(section, timeout)
    section.done()
    destinations: list[Destination] = []
    for index, entry in enumerate(entries):
        try:
            nodes = parse_cluster(entry)
        except ValueError as exc:
            raise section.error(f"servers[{index}]", str(exc)) from None
        section.hosts.extend((section.where(f"servers[{index}]"), node.host) for node in nodes)
        client = ClusterClient(nodes, timeout=timeout, tls=tls)
        destinations.append(
            ZabbixDestination(
                f"zabbix[{entry}]", client, batch_size, concurrency, compress, diagnoser=diagnoser,
                registration=AutoRegistration(client, *registration) if registration else None,
                active_checks_interval=active_checks_interval,
            )
        )
    return destinations
