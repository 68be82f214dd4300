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
    # TLS with certificates (Python's ssl has no PSK; see client.py)
    # tls_ca_file = "/etc/trapline/zabbix-ca.pem"
    # tls_cert_file = "/etc/trapline/trapline.crt"
    # tls_key_file = "/etc/trapline/trapline.key"
    # tls_server_name = "zabbix.example.net"
    # Optional: explain refused values through the API
    # api_url = "https://zabbix.example.net/api_jsonrpc.php"
    # api_token_file = "/etc/trapline/zabbix-api-token"     (or api_user + api_password_file)
"""

from __future__ import annotations

from trapline.core.config import Section
from trapline.core.plugin import Destination
from trapline.exporters.zabbix.client import ClusterClient, TlsSettings, parse_cluster
from trapline.exporters.zabbix.destination import ZabbixDestination
from trapline.exporters.zabbix.diagnose import ApiDiagnoser, Diagnoser

__all__ = ["ZabbixDestination", "build_destinations"]


def _tls(section: Section) -> TlsSettings | None:
    files = section.tls_files()
    server_name = section.text("tls_server_name") if section.has("tls_server_name") else None
    if not files.any and server_name is None:
        return None
    return TlsSettings(files.ca_file, files.cert_file, files.key_file, server_name)


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
                f"zabbix[{entry}]", client, batch_size, concurrency, compress, diagnoser=diagnoser
            )
        )
    return destinations
