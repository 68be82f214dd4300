"""Exporters: acknowledging destinations (Zabbix, MQTT) and live observers (Prometheus).

Each config section maps to its builder (and the extra that installs its
libraries, as for collectors); modules load only when configured.
A destination builder returns a list (one ``[zabbix]`` section may name several
independent servers); an observer builder returns one observer.
"""

from trapline.core.plugin import PluginSpec

# Zabbix and Prometheus are in the base install: every role sends to Zabbix, and any
# may serve its metrics (prometheus-client is small and pure Python).
DESTINATIONS: dict[str, PluginSpec] = {
    "zabbix": PluginSpec("trapline.exporters.zabbix:build_destinations"),
    "mqtt": PluginSpec("trapline.exporters.mqtt:build_destinations", "mqtt", ("paho",)),
}

OBSERVERS: dict[str, PluginSpec] = {
    "prometheus": PluginSpec("trapline.exporters.prometheus:build"),
}
