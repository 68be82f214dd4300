"""Juniper Mist: AP statistics from the Mist websocket stream, for Zabbix and Prometheus.

Sample configuration (all keys: README.md in this folder)::

    [collectors.mist]
    type = "mist"
    host = "Mist discovery"          # the Zabbix host that receives the AP LLD
    cloud = "emea01"                 # region, see regions.toml
    token_file = "/etc/trapline/mist.token"   # mode 0600
    orgs = ["9777c1a0-6ef6-11e6-8bbf-02e208b2d34f"]
"""

from __future__ import annotations

from trapline.collectors.mist.collector import MistCollector
from trapline.collectors.mist.settings import parse_settings
from trapline.core.config import Section


def build(name: str, section: Section) -> MistCollector:
    settings, token = parse_settings(section)
    return MistCollector(name, settings, token)


__all__ = ["MistCollector", "build"]
