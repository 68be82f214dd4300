"""The ``[collectors.<name>]`` section of a Mist collector, validated once at start."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources

from trapline.collectors.mist.fleet import HOSTED_KINDS
from trapline.collectors.mist.shard import ALL_SITES, Shard
from trapline.core.config import Secret, Section

# Mist ids are UUIDs; anything else would end up inside a URL path.
_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
# Zabbix technical host names: alphanumerics, space, dot, dash, underscore.
_HOST_PREFIX = re.compile(r"[0-9A-Za-z._ -]{0,40}")


def cloud_regions() -> dict[str, str]:
    """Region name -> cloud domain, from ``regions.toml``."""
    text = resources.files(__package__).joinpath("regions.toml").read_text(encoding="utf-8")
    return {str(k): str(v) for k, v in tomllib.loads(text).items()}


@dataclass(frozen=True, slots=True)
class MistSettings:
    discovery_host: str
    stream_url: str
    rest_url: str
    orgs: tuple[str, ...]
    sites: tuple[str, ...]
    device_types: frozenset[str]
    node_prefix: str
    channels_per_connection: int
    stale_after: float
    min_interval: float
    lld_min_interval: float
    lld_refresh: float
    site_refresh: float
    rest_calls_per_hour: int
    rest_timeout: float
    ping_interval: float
    ping_timeout: float
    subscribe_timeout: float
    retry_min: float
    retry_max: float
    max_frame_bytes: int
    compression: bool  # permessage-deflate offered to the server
    state_interval: float  # how often the collector's own state goes to the discovery host
    shard: Shard = ALL_SITES  # the share of the sites this instance subscribes to
    switch_prefix: str = "mist-switch-"  # switch host name = prefix + MAC
    gateway_prefix: str = "mist-gateway-"

    @property
    def tick(self) -> float:
        """How often pending updates, staleness and LLD refreshes are checked."""
        candidates = (self.min_interval, self.stale_after, self.lld_min_interval, self.state_interval, 4.0)
        finest = min(x for x in candidates if x > 0)
        return max(0.02, finest / 4)


def _host_prefix(section: Section, key: str, default: str) -> str:
    prefix = section.text(key, default)
    if not _HOST_PREFIX.fullmatch(prefix):
        raise section.error(key, "expected up to 40 letters, digits, '.', '_', '-' or spaces")
    return prefix


def _ids(section: Section, key: str) -> tuple[str, ...]:
    values = section.strings(key, [])
    for value in values:
        if not _ID.fullmatch(value):
            raise section.error(key, f"{value!r} is not a Mist id (letters, digits and dashes)")
    return tuple(dict.fromkeys(values))


def _shard(section: Section) -> Shard:
    try:
        return Shard.parse(section.text("shard", str(ALL_SITES)))
    except ValueError as exc:
        raise section.error("shard", str(exc)) from None


def parse_settings(section: Section) -> tuple[MistSettings, Secret]:
    section.text("type", "mist")
    regions = cloud_regions()
    cloud = section.choice("cloud", tuple(regions), "global01")
    domain = regions[cloud]
    stream_url = section.url("stream_url", ("ws", "wss"), f"wss://api-ws.{domain}/api-ws/v1/stream")
    rest_url = section.url("rest_url", ("http", "https"), f"https://api.{domain}").rstrip("/")
    token = section.secret("token")
    if token is None:  # required=True raises first; this only narrows the type
        raise section.error("token_file", "missing")
    orgs, sites = _ids(section, "orgs"), _ids(section, "sites")
    if not orgs and not sites:
        raise section.error("sites", "configure at least one site id in sites or one org id in orgs")
    node_prefix, switch_prefix, gateway_prefix = (
        _host_prefix(section, key, default)
        for key, default in (
            ("node_prefix", "mist-ap-"),
            ("switch_prefix", "mist-switch-"),
            ("gateway_prefix", "mist-gateway-"),
        )
    )
    device_types = frozenset(section.strings("device_types", ["ap"]))
    if unknown := device_types - set(HOSTED_KINDS):
        kinds, named = ", ".join(HOSTED_KINDS), ", ".join(sorted(unknown))
        raise section.error("device_types", f"{named}: no template for it (one of {kinds})")
    shard = _shard(section)
    retry_min = section.number("retry_min", 1.0, minimum=0.01)
    retry_max = section.number("retry_max", 60.0, minimum=0.01)
    if retry_max < retry_min:
        raise section.error("retry_max", f"must be >= retry_min ({retry_min})")
    settings = MistSettings(
        discovery_host=section.text("host"),
        stream_url=stream_url,
        rest_url=rest_url,
        orgs=orgs,
        sites=sites,
        device_types=device_types,
        node_prefix=node_prefix,
        switch_prefix=switch_prefix,
        gateway_prefix=gateway_prefix,
        channels_per_connection=section.integer("channels_per_connection", 1000, minimum=1),
        stale_after=section.number("stale_after", 300.0, minimum=0.05),
        min_interval=section.number("min_interval", 0.0, minimum=0.0),
        lld_min_interval=section.number("lld_min_interval", 10.0, minimum=0.0),
        lld_refresh=section.number("lld_refresh", 3600.0, minimum=0.05),
        site_refresh=section.number("site_refresh", 3600.0, minimum=0.05),
        rest_calls_per_hour=section.integer("rest_calls_per_hour", 5000, minimum=1),
        rest_timeout=section.number("rest_timeout", 30.0, minimum=0.1),
        ping_interval=section.number("ping_interval", 30.0, minimum=0.05),
        ping_timeout=section.number("ping_timeout", 20.0, minimum=0.05),
        subscribe_timeout=section.number("subscribe_timeout", 15.0, minimum=0.05),
        retry_min=retry_min,
        retry_max=retry_max,
        max_frame_bytes=section.integer("max_frame_bytes", 1 << 20, minimum=1024),
        compression=section.choice("compression", ("deflate", "none"), "deflate") == "deflate",
        state_interval=section.number("state_interval", 30.0, minimum=0.05),
        shard=shard,
    )
    section.done()
    return settings, token
