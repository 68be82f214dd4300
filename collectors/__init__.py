"""Collectors: one module per source, each with ``build(name, section) -> Collector``.

The registry maps a ``type`` in ``[collectors.<name>]`` to ``module:function``;
modules are imported only when configured, so an agent without AWS never
loads boto3.
"""

REGISTRY: dict[str, str] = {
    "synthetic": "trapline.collectors.synthetic:build",
    "obd": "trapline.collectors.obd:build",
    "gps": "trapline.collectors.gps:build",
    "mist": "trapline.collectors.mist:build",
    "aws": "trapline.collectors.aws:build",
    "mqtt_bridge": "trapline.collectors.mqtt_bridge:build",
}
