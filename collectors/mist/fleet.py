"""The merged state of every AP and what of it goes to Zabbix, and when.

Mist sends partial and full stats updates for a device; each one is filtered
down to the fields the template reads (``fields.toml``) and deep-merged into
that device's state, so a partial update never erases what a full one said.

What leaves the fleet (see README.md):

* the discovery host gets one LLD value (``mist.ap.discovery``), the full AP list,
  when the list changes (at most every ``lld_min_interval``) and every
  ``lld_refresh`` so that Zabbix never marks a quiet AP as lost;
* each AP host gets its merged state as one ``mist.ap.raw`` value per update
  (at most one per ``min_interval``; faster updates are merged, not dropped),
  only after the AP was announced in an LLD value;
* ``mist.ap.stale`` = 1 when an AP was silent for ``stale_after``, 0 when it speaks again.

Time is passed in (monotonic seconds), so all of this is tested without sleeping.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from trapline.collectors.mist.frames import FrameError
from trapline.middleware.model import Discovery, Item, Reading, now_clock

LLD_KEY = "mist.ap.discovery"
RAW_KEY = "mist.ap.raw"
STALE_KEY = "mist.ap.stale"

# Bounds against a misbehaving stream: memory stays finite whatever arrives.
MAX_DEVICES = 100_000
MAX_MAP_ENTRIES = 64
MAX_TEXT = 1024

_MAC = re.compile(r"[0-9a-f]{12}")
_MAC_SEPARATORS = str.maketrans("", "", ":-.")
# Mist device ids end in the device MAC: 00000000-0000-0000-1000-5c5b35000001.
_MAC_IN_DEVICE_ID = re.compile(r".*-([0-9a-fA-F]{12})")

Scalar = str | int | float | bool | None

# Built once: json.dumps with options makes a new encoder on every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


@dataclass(frozen=True, slots=True)
class SiteInfo:
    site_id: str
    name: str
    org_id: str
    org_name: str

    @classmethod
    def unnamed(cls, site_id: str) -> SiteInfo:
        """Until the REST lookup succeeded, a site is known by its id only."""
        return cls(site_id, site_id, "", "")


def _is_scalar(value: object) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return value is None or isinstance(value, int | float | bool)


@dataclass(frozen=True, slots=True)
class FieldSchema:
    """Which fields of a stats update are kept (loaded from ``fields.toml``)."""

    scalars: frozenset[str]
    objects: Mapping[str, frozenset[str]]
    maps: Mapping[str, frozenset[str]]

    @classmethod
    def load(cls) -> FieldSchema:
        text = resources.files(__package__).joinpath("fields.toml").read_text(encoding="utf-8")
        data = tomllib.loads(text)
        return cls(
            frozenset(data["scalars"]),
            {k: frozenset(v) for k, v in data.get("objects", {}).items()},
            {k: frozenset(v) for k, v in data.get("maps", {}).items()},
        )

    def filter(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The kept fields of ``payload`` and a reason for every kept field that had a wrong type."""
        kept: dict[str, Any] = {}
        problems: list[str] = []
        for name, value in payload.items():
            if name in self.scalars:
                if _is_scalar(value):
                    kept[name] = value
                else:
                    problems.append(f"field {name}: expected a scalar, got {type(value).__name__}")
            elif name in self.objects:
                if isinstance(value, dict):
                    kept[name] = self._members(name, value, self.objects[name], problems)
                else:
                    problems.append(f"field {name}: expected an object, got {type(value).__name__}")
            elif name in self.maps:
                if isinstance(value, dict) and len(value) <= MAX_MAP_ENTRIES:
                    kept[name] = self._entries(name, value, self.maps[name], problems)
                else:
                    problems.append(f"field {name}: expected an object of at most {MAX_MAP_ENTRIES} entries")
        return kept, problems

    @staticmethod
    def _members(
        name: str, value: Mapping[str, Any], wanted: frozenset[str], problems: list[str]
    ) -> dict[str, Any]:
        members: dict[str, Any] = {}
        for member, inner in value.items():
            if member not in wanted:
                continue
            if _is_scalar(inner):
                members[member] = inner
            else:
                problems.append(f"field {name}.{member}: expected a scalar, got {type(inner).__name__}")
        return members

    def _entries(
        self, name: str, value: Mapping[str, Any], wanted: frozenset[str], problems: list[str]
    ) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for entry, inner in value.items():
            if len(entry) > 64:
                problems.append(f"field {name}: entry name longer than 64 characters")
            elif isinstance(inner, dict):
                entries[entry] = self._members(f"{name}.{entry}", inner, wanted, problems)
            else:
                problems.append(f"field {name}.{entry}: expected an object, got {type(inner).__name__}")
        return entries


def deep_merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Merge ``update`` into ``into``; nested objects merge member by member."""
    for key, value in update.items():
        current = into.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            deep_merge(current, value)
        elif isinstance(value, dict):
            into[key] = {}
            deep_merge(into[key], value)
        else:
            into[key] = value


def normalize_mac(value: object) -> str | None:
    """``5C:5B:35:00:00:01`` -> ``5c5b35000001``; None when it is no MAC."""
    if not isinstance(value, str):
        return None
    mac = value.lower().translate(_MAC_SEPARATORS)
    return mac if _MAC.fullmatch(mac) else None


@dataclass(slots=True)
class _Device:
    site_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    mac: str | None = None
    updated: float = 0.0  # monotonic time of the last update
    clock: tuple[int, int] = (0, 0)  # wall clock of the last update, sent with the value
    emitted: float | None = None  # monotonic time of the last mist.ap.raw
    stale: bool = False


@dataclass(frozen=True, slots=True)
class FleetPolicy:
    discovery_host: str
    node_prefix: str
    device_types: frozenset[str]
    stale_after: float
    min_interval: float
    lld_min_interval: float
    lld_refresh: float


class Fleet:
    def __init__(self, policy: FleetPolicy, schema: FieldSchema) -> None:
        self.policy = policy
        self.schema = schema
        self._devices: dict[str, _Device] = {}
        self._sites: dict[str, SiteInfo] = {}
        self._pending: set[str] = set()  # devices with an update not yet sent
        self._queued: list[Item] = []  # sent at the next due(), before anything else
        self._lld_dirty = True
        self._lld_rows: tuple[dict[str, str], ...] = ()
        self._lld_sent: tuple[dict[str, str], ...] | None = None
        self._lld_sent_at: float | None = None
        self._announced: frozenset[str] = frozenset()

    # -- input ---------------------------------------------------------------
    def set_sites(self, sites: Mapping[str, SiteInfo]) -> None:
        """The sites now subscribed; devices of other sites are forgotten."""
        if dict(sites) == self._sites:
            return
        self._sites = dict(sites)
        for key in [k for k, d in self._devices.items() if d.site_id not in self._sites]:
            del self._devices[key]
            self._pending.discard(key)
        self._lld_dirty = True

    def update(self, site_id: str, payload: Mapping[str, Any], now: float) -> list[str]:
        """Merge one stats update; returns reasons for the parts that were dropped.

        Raises FrameError when the update names no device at all.
        """
        key = payload.get("id") if isinstance(payload.get("id"), str) else None
        mac = normalize_mac(payload.get("mac"))
        key = key or mac
        if not key or len(key) > 64:
            raise FrameError("device update without a usable id or mac")
        device = self._devices.get(key)
        if device is None:
            if len(self._devices) >= MAX_DEVICES:
                raise FrameError(f"more than {MAX_DEVICES} devices; update ignored")
            device = self._devices[key] = _Device(site_id)
        fields, problems = self.schema.filter(payload)
        if mac is not None:
            fields["mac"] = mac  # one spelling, whatever the update used
        elif "mac" in payload:
            problems.append("field mac: not a MAC address")
            fields.pop("mac", None)
        before = self._identity(device)
        deep_merge(device.fields, fields)
        device.site_id = site_id
        device.mac = device.mac or mac or _mac_from_device_id(key)
        device.updated = now
        device.clock = now_clock()
        if self._identity(device) != before:
            self._lld_dirty = True
        if self._eligible(device):
            self._pending.add(key)
            if device.stale:
                device.stale = False
                self._queued.append(self._stale_reading(device, 0))
        return problems

    # -- output --------------------------------------------------------------
    def due(self, now: float, sweep: bool = True) -> list[Item]:
        """Everything to send now.  ``sweep`` also checks every device for staleness."""
        items, self._queued = self._queued, []
        if sweep:
            items.extend(self._newly_stale(now))
        lld = self._discovery_due(now)
        if lld is not None:
            items.append(lld)
        for key in list(self._pending):
            device = self._devices[key]
            if self._node_id(device) not in self._announced:
                continue  # its host does not exist before the LLD value reached Zabbix
            if device.emitted is None or now - device.emitted >= self.policy.min_interval:
                items.append(self._raw_reading(device, now))
                self._pending.discard(key)
        return items

    def flush(self) -> list[Item]:
        """On shutdown: every update not sent yet, whatever the interval or LLD state."""
        items, self._queued = self._queued, []
        rows = self.lld_rows()
        if rows and rows != self._lld_sent:
            items.append(self._discovery(rows, 0.0))
        items.extend(self._raw_reading(self._devices[k], 0.0) for k in sorted(self._pending))
        self._pending.clear()
        return items

    def lld_rows(self) -> tuple[dict[str, str], ...]:
        if self._lld_dirty:
            rows = [self._lld_row(d) for d in self._devices.values() if self._eligible(d)]
            self._lld_rows = tuple(sorted(rows, key=lambda r: r["{#NODEID}"]))
            self._lld_dirty = False
        return self._lld_rows

    @property
    def sites(self) -> Mapping[str, SiteInfo]:
        return self._sites

    def __len__(self) -> int:
        return len(self._devices)

    # -- helpers -------------------------------------------------------------
    def _eligible(self, device: _Device) -> bool:
        return device.mac is not None and device.fields.get("type") in self.policy.device_types

    def _identity(self, device: _Device) -> tuple[object, ...]:
        f = device.fields
        return (device.site_id, device.mac, f.get("type"), f.get("name"), f.get("model"))

    def _node_id(self, device: _Device) -> str:
        return f"{self.policy.node_prefix}{device.mac}"

    def _site(self, device: _Device) -> SiteInfo:
        return self._sites.get(device.site_id) or SiteInfo.unnamed(device.site_id)

    def _lld_row(self, device: _Device) -> dict[str, str]:
        site = self._site(device)
        return {
            "{#NODEID}": self._node_id(device),
            "{#NAME}": _text(device.fields.get("name")) or str(device.mac),
            "{#SITENAME}": site.name,
            "{#SITEID}": site.site_id,
            "{#MAC}": str(device.mac),
            "{#ORGNAME}": site.org_name,
            "{#MODEL}": _text(device.fields.get("model")),
        }

    def _labels(self, device: _Device) -> dict[str, str]:
        # Identity for the Prometheus exporter: enough to label per-AP series.
        site = self._site(device)
        return {
            "org": site.org_name or site.org_id,
            "site": site.name,
            "ap": _text(device.fields.get("name")) or str(device.mac),
            "mac": str(device.mac),
        }

    def _discovery_due(self, now: float) -> Discovery | None:
        rows = self.lld_rows()
        sent_at = self._lld_sent_at
        changed = rows != self._lld_sent
        if sent_at is None:
            due = bool(rows)  # nothing to say yet: an empty first list would only delete
        elif changed:
            due = now - sent_at >= self.policy.lld_min_interval
        else:
            due = now - sent_at >= self.policy.lld_refresh
        return self._discovery(rows, now) if due else None

    def _discovery(self, rows: tuple[dict[str, str], ...], now: float) -> Discovery:
        self._lld_sent, self._lld_sent_at = rows, now
        self._announced = frozenset(r["{#NODEID}"] for r in rows)
        return Discovery.now(self.policy.discovery_host, LLD_KEY, rows)

    def _raw_reading(self, device: _Device, now: float) -> Reading:
        device.emitted = now
        value = _COMPACT_JSON(device.fields)
        clock, ns = device.clock
        return Reading(self._node_id(device), RAW_KEY, value, clock, ns, "", self._labels(device))

    def _stale_reading(self, device: _Device, value: int) -> Reading:
        return Reading.now(self._node_id(device), STALE_KEY, value, labels=self._labels(device))

    def _newly_stale(self, now: float) -> list[Reading]:
        out = []
        for device in self._devices.values():
            silent = now - device.updated >= self.policy.stale_after
            if silent and not device.stale and self._node_id(device) in self._announced:
                device.stale = True
                out.append(self._stale_reading(device, 1))
        return out


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mac_from_device_id(device_id: str) -> str | None:
    match = _MAC_IN_DEVICE_ID.fullmatch(device_id)
    return match.group(1).lower() if match else None
