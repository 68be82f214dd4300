"""Exporters: acknowledging destinations (Zabbix, MQTT) and live observers (Prometheus).

Each config section maps to ``module:function``; modules load only when configured.
A destination builder returns a list (one ``[zabbix]`` section may name several
independent servers); an observer builder returns one observer.
"""

DESTINATIONS: dict[str, str] = {
    "zabbix": "trapline.exporters.zabbix:build_destinations",
    "mqtt": "trapline.exporters.mqtt:build_destinations",
}

OBSERVERS: dict[str, str] = {
    "prometheus": "trapline.exporters.prometheus:build",
}
