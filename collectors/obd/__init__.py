"""OBD-II collector (ELM327 adapter, own line protocol in elm327.py); see ``collector.py`` and README.md."""

from trapline.collectors.obd.collector import build

__all__ = ["build"]
