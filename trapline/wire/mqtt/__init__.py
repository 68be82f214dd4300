"""The MQTT envelope the edge exporter writes and the bridge reads, and the broker link both use
(the format itself: exporters/MQTT.md)."""
