"""The ``gps`` collector: position, speed and fix quality from gpsd, and what the van's movement says
(trips, geofence, overspeed).  Settings: sample.toml; documentation: README.md."""

from trapline.collectors.gps.collector import GpsCollector, build

__all__ = ["GpsCollector", "build"]
