"""The whole agent configuration: read one TOML file, validate every section, build the plugins.

Everything is built before anything runs, so a mistake anywhere ends the
start with one line naming the file and key (exit code 2).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trapline.collectors import REGISTRY as COLLECTOR_TYPES
from trapline.core import redact
from trapline.core.config import Section, load_toml
from trapline.core.plugin import ActiveCheckFollower, Collector, Destination, Observer, PluginSpec
from trapline.exporters import DESTINATIONS, OBSERVERS
from trapline.exporters.zabbix.active_checks import active_checks_poller
from trapline.middleware.filters import Filters
from trapline.middleware.pipeline import Pipeline
from trapline.middleware.settings import AgentSettings, SpoolSettings
from trapline.middleware.spool import Spool
from trapline.middleware.watchdog import Watchdog

_SECTIONS = ("agent", "spool", "filters", "zabbix", "prometheus", "mqtt", "collectors", "logging")


@dataclass(slots=True)
class Settings:
    file: Path
    agent: AgentSettings
    spool: SpoolSettings
    filters: Filters
    log_level: str
    collectors: list[Collector] = field(default_factory=list)
    destinations: list[Destination] = field(default_factory=list)
    observers: list[Observer] = field(default_factory=list)
    hosts: list[tuple[str, str]] = field(default_factory=list)  # (where in the file, host name)


def _load_builder(spec: PluginSpec, sec: Section, key: str) -> Callable[..., Any]:
    """The plugin's builder, or a ConfigError at ``key`` naming the extra to install."""
    if spec.extra is not None:
        sec.require_extra(key, spec.extra, spec.needs)
    module_name, _, attr = spec.builder.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a library outside the listed extras: still one line
        raise sec.error(key, f"{module_name} cannot be loaded: {exc}") from None
    builder: Callable[..., Any] = getattr(module, attr)
    return builder


def load_settings(path: Path) -> Settings:
    root = load_toml(path)
    for name in root.names():
        if name not in _SECTIONS:
            raise root.error(name, f"unknown section (expected one of: {', '.join(_SECTIONS)})")

    agent_sec = root.table("agent")
    agent = AgentSettings(
        host=agent_sec.text("host", "") or None,
        self_interval=agent_sec.number("self_interval", 60.0, minimum=1),
        flush_interval=agent_sec.number("flush_interval", 0.2, minimum=0.001),
        shutdown_timeout=agent_sec.number("shutdown_timeout", 5.0, minimum=0),
        stall_timeout=agent_sec.number("stall_timeout", 1800.0, minimum=1),
    )
    agent_sec.done()

    spool_sec = root.table("spool")
    spool = SpoolSettings(
        path=spool_sec.path("path", Path("/var/lib/trapline/spool.db")),
        max_readings=spool_sec.integer("max_readings", 1_000_000, minimum=1000),
        sync=spool_sec.choice("sync", ("full", "normal"), "full"),
        max_retry_age=spool_sec.number("max_retry_age", 3600.0, minimum=0),
        retry_initial=spool_sec.number("retry_initial", 5.0, minimum=0.01),
        retry_cap=spool_sec.number("retry_cap", 60.0, minimum=0.01),
        batch=spool_sec.integer("batch", 10_000, minimum=1),
        max_memory_bytes=spool_sec.integer("max_memory_bytes", 16 * 1024 * 1024, minimum=64 * 1024),
    )
    spool_sec.done()

    log_sec = root.table("logging")
    log_level = log_sec.choice("level", ("debug", "info", "warning", "error"), "info")
    log_sec.done()

    settings = Settings(path, agent, spool, Filters.from_config(root.table("filters")), log_level)

    for kind, spec in DESTINATIONS.items():
        if root.has(kind):
            sec = root.table(kind)
            settings.destinations.extend(_load_builder(spec, sec, "")(sec))
    for kind, spec in OBSERVERS.items():
        if root.has(kind):
            sec = root.table(kind)
            settings.observers.append(_load_builder(spec, sec, "")(sec))
    first_of_kind: dict[str, str] = {}
    for name, sec in root.table("collectors").subsections():
        kind = sec.text("type") if sec.has("type") else ""
        known = COLLECTOR_TYPES.get(kind)
        if known is not None and known.one_per_agent and kind in first_of_kind:
            raise sec.error("type", f"a second {kind!r} collector (the first is {first_of_kind[kind]!r}): "
                                    "one per agent")
        first_of_kind.setdefault(kind, name)
        settings.collectors.append(_build_collector(name, sec))
    # Collectors steered from Zabbix (the GPS collector's {$VEHICLE.GEOFENCES}) learn it
    # through the Zabbix exporter; the poller runs, and fails, as a collector of its own.
    followers = [c for c in settings.collectors if isinstance(c, ActiveCheckFollower)]
    poller = active_checks_poller(settings.destinations, followers)
    if poller is not None:
        settings.collectors.append(poller)
    settings.hosts = root.hosts
    return settings


def _build_collector(name: str, sec: Section) -> Collector:
    kind = sec.text("type")
    spec = COLLECTOR_TYPES.get(kind)
    if spec is None:
        known = ", ".join(sorted(COLLECTOR_TYPES))
        raise sec.error("type", f"unknown collector type {kind!r} (known: {known})")
    collector: Collector = _load_builder(spec, sec, "type")(name, sec)
    return collector


def configure_logging(level: str) -> None:
    """One stderr handler on the root logger, every library routed through it, secrets masked."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    adopt_library_loggers()
    redact.install()


def adopt_library_loggers() -> None:
    """Take their own console handlers away from libraries that add one at import (python-OBD).

    Such a logger also propagates to the root handler, so each of its messages was
    printed twice, once without our format or redaction.  Its level goes back to
    NOTSET so that ``--log-level`` decides for it as for every other logger.
    """
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger) or not logger.propagate:
            continue
        own = [h for h in logger.handlers if type(h) is logging.StreamHandler]
        for handler in own:
            logger.removeHandler(handler)
        if own:
            logger.setLevel(logging.NOTSET)


def build_pipeline(settings: Settings) -> Pipeline:
    """The agent as ``trapline run`` builds it: every plugin of the config, its spool opened."""
    spool = Spool(settings.spool.path, settings.spool.max_readings, settings.spool.sync)
    return Pipeline(
        agent=settings.agent,
        spool_settings=settings.spool,
        spool=spool,
        filters=settings.filters,
        collectors=settings.collectors,
        destinations=settings.destinations,
        observers=settings.observers,
        watchdog=Watchdog.from_environ(),
    )
