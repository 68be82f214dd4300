"""Collectors: one module per source, each with ``build(name, section) -> Collector``.

The registry maps a ``type`` in ``[collectors.<name>]`` to its builder and to the
extra (pyproject.toml) that installs its libraries. Modules are imported only
when configured, so an agent without AWS never loads boto3, and one installed
without ``trapline[aws]`` says so in one line when its config asks for AWS.
"""

from trapline.core.plugin import PluginSpec

REGISTRY: dict[str, PluginSpec] = {
    "synthetic": PluginSpec("trapline.collectors.synthetic:build"),
    "obd": PluginSpec("trapline.collectors.obd:build", "vehicle", ("serial", "obd")),
    "gps": PluginSpec("trapline.collectors.gps:build", "vehicle", ("gpsd",), one_per_agent=True),
    "mist": PluginSpec("trapline.collectors.mist:build", "mist", ("websockets",)),
    "aws": PluginSpec("trapline.collectors.aws:build", "aws", ("boto3", "botocore")),
    "mqtt_bridge": PluginSpec("trapline.collectors.mqtt_bridge:build", "mqtt", ("paho",)),
}
