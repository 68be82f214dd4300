"""The ``[prometheus]`` observer: the latest readings as a scrape endpoint.
Settings: sample.toml; documentation: README.md."""

from trapline.exporters.prometheus.exporter import PrometheusExporter, build

__all__ = ["PrometheusExporter", "build"]
