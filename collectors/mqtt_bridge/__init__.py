"""The ``mqtt_bridge`` collector: the centre side of the MQTT uplink (exporters/MQTT.md).
Settings: sample.toml; documentation: README.md."""

from trapline.collectors.mqtt_bridge.collector import MqttBridge, build

__all__ = ["MqttBridge", "build"]
