"""OBD-II collector (ELM327 adapter via python-OBD); see ``collector.py`` and README.md."""

from trapline.collectors.obd.collector import build

__all__ = ["build"]
