"""The settings the pipeline itself runs by: the [agent] and [spool] sections, once validated
(trapline/app/settings.py reads them from the file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AgentSettings:
    host: str | None  # Zabbix host that receives the agent's own readings
    self_interval: float
    flush_interval: float
    shutdown_timeout: float
    stall_timeout: float = 1800.0  # a collector this long without progress stops the watchdog pings


@dataclass(frozen=True, slots=True)
class SpoolSettings:
    path: Path
    max_readings: int
    sync: str
    max_retry_age: float  # refused values are retried this long, then rejected
    retry_initial: float
    retry_cap: float
    batch: int  # rows claimed per delivery round
    # Readings held in memory while the spool cannot be written (estimated bytes).
    max_memory_bytes: int = 16 * 1024 * 1024
