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
  only after the AP was announced in an LLD value; the per-second rates of the
  counters the update measured ride along under ``rates``, for the template's rate items;
* ``mist.ap.stale`` = 1 when an AP was silent for ``stale_after``, 0 when it speaks again.

Per AP only the merged state as the JSON text last built, the identity
fields and each counter's last measurement are kept (``bench/mist.py``); the LLD rows
are rebuilt when an LLD value may be due, and only their digest is kept.

Time is passed in (monotonic seconds), so all of this is tested without sleeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from itertools import compress, islice, repeat
from operator import is_not
from typing import Annotated, Any

import msgspec
from msgspec.structs import astuple

from trapline.collectors.mist.frames import FrameError, parse_json, parse_payload
from trapline.core.model import Discovery, Item, Reading

logger = logging.getLogger(__name__)

# The device kinds that become Zabbix hosts, each with a template of its own and its own
# discovery rule on the discovery host (mist.<kind>.discovery): a host prototype links one
# template, so one rule per kind is what lets each kind have its own (README, "Device kinds").
HOSTED_KINDS = ("ap", "switch", "gateway")


def lld_key(kind: str) -> str:
    return f"mist.{kind}.discovery"


def raw_key(kind: str) -> str:
    return f"mist.{kind}.raw"


def stale_key(kind: str) -> str:
    return f"mist.{kind}.stale"


LLD_KEY = lld_key("ap")
UNKNOWN_ORG = "(organization not known yet)"  # {#ORGNAME} until the REST API named it
RAW_KEY = raw_key("ap")
# The member of a mist.ap.raw value holding the per-second rates of the counters its update
# measured (and only those): the template's rate items read them there, nothing else does.
RATES_MEMBER = "rates"
STALE_KEY = stale_key("ap")

# Bounds against a misbehaving stream: memory stays finite whatever arrives.
MAX_DEVICES = 100_000
MAX_MAP_ENTRIES = 64  # per map, unless fields.toml gives its own max_entries
MAX_TEXT = 1024
MAX_SHAPES = 1024  # distinct state shapes kept (each shared by every device that has it)

_MAC = re.compile(r"[0-9a-f]{12}")
_MAC_SEPARATORS = str.maketrans("", "", ":-.")

# The exact Python types a JSON parser makes for each type fields.toml may declare
# (a bool is no number: ``type()``, not ``isinstance``, tells them apart).
_JSON_TYPES: Mapping[str, frozenset[type]] = {
    "text": frozenset({str}),
    "number": frozenset({int, float}),
    "bool": frozenset({bool}),
}
_NS_PER_S = 1_000_000_000
_NUMBERS = _JSON_TYPES["number"]

# The standard library's spelling of compact sorted JSON, for what msgspec refuses
# to write (lone surrogates, which the careful parser lets through); built once, as
# json.dumps with options makes a new encoder on every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


# Sorts the keys of dicts; the fields of the kept-fields structs are declared sorted,
# so a struct and the dict of the same fields give the same text.  It writes a sorted
# dict ~2x faster than orjson with OPT_SORT_KEYS, and a struct faster still.
_ENCODER = msgspec.json.Encoder(order="deterministic")


def encode_json(value: object) -> bytes:
    """Compact JSON with sorted keys: equal states give equal bytes."""
    try:
        return _ENCODER.encode(value)
    except UnicodeEncodeError:
        return _COMPACT_JSON(value).encode()


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


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """What a site's device inventory (the REST API) says about one MAC: its kind, and its name if any."""

    kind: str
    name: str | None


# The scalars filter() keeps, as msgspec types: an update whose kept fields all
# fit is read in one pass; any other is read the careful way.  Integers beyond
# signed 64 bits (msgspec's limit for bounds) take the careful way too, where
# orjson reads them, so both ways give the same state.
_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
_EntryName = Annotated[str, msgspec.Meta(max_length=64)]
_MSGSPEC_TYPES: Mapping[str, Any] = {"text": _Text, "number": _Int | float, "bool": bool}

# A field's declared type, per level of fields.toml ("" the top one, else the object or map).
Declared = Mapping[str, Mapping[str, str]]


# The structs live only between decoding an update and converting it to dicts, and
# decoded JSON holds no cycles: they need not be tracked by the garbage collector.
_STRUCT_OPTIONS: dict[str, Any] = {"omit_defaults": True, "gc": False}


def _scalar_fields(declared: Mapping[str, str]) -> list[tuple[str, Any, Any]]:
    return [
        (member, _MSGSPEC_TYPES[kind] | msgspec.UnsetType, msgspec.UNSET)
        for member, kind in sorted(declared.items())
    ]


def _members_type(name: str, declared: Mapping[str, str]) -> Any:
    return msgspec.defstruct(name, _scalar_fields(declared), **_STRUCT_OPTIONS)


def _kept_fields_decoder(
    declared: Declared, maps: Mapping[str, int], arrays: frozenset[str]
) -> msgspec.json.Decoder[Any]:
    """A JSON decoder that builds only the kept fields (unset ones are left out) and checks their types.

    A null or a value of another type fails the whole update over to :meth:`FieldSchema.filter`.
    The arrays (``[lists]`` sources) are only found, not read: an update that has one goes to
    :meth:`FieldSchema.filter`, which turns them into maps (APs never send them).
    """
    fields = _scalar_fields(declared[""])
    for name, members in sorted(declared.items()):
        if not name or name in maps:
            continue
        fields.append((name, _members_type(name, members) | msgspec.UnsetType, msgspec.UNSET))
    for name, limit in sorted(maps.items()):
        # Types built at run time from fields.toml: mypy cannot follow them.
        entries: Any = dict[_EntryName, _members_type(name, declared[name])]  # type: ignore[misc]
        bounded: Any = Annotated[entries, msgspec.Meta(max_length=limit)]
        fields.append((name, bounded | msgspec.UnsetType, msgspec.UNSET))
    fields.extend((name, msgspec.Raw | msgspec.UnsetType, msgspec.UNSET) for name in sorted(arrays))
    # Sorted like the stored state's JSON, so an update and a state of the same fields have equal shapes.
    fields.sort()
    return msgspec.json.Decoder(msgspec.defstruct("KeptFields", fields, **_STRUCT_OPTIONS))


# The names at every level of filtered fields (FieldSchema.shape).
Shape = tuple[tuple[str, ...], ...]

# Fields the fleet reads from every update, so fields.toml must keep them.
IDENTITY_FIELDS = frozenset({"id", "mac", "type", "name", "model"})
_UNSET = msgspec.UNSET


def _set_fields(struct: Any, complete: tuple[str, ...]) -> tuple[str, ...]:
    """The names of the fields of a kept-fields struct that the update had, in declaration order
    (``complete`` when it had them all: no tuple to build, and one that compares by identity)."""
    values = astuple(struct)
    if _UNSET not in values:
        return complete
    return tuple(compress(complete, map(is_not, values, repeat(_UNSET))))


def _load_declared(table: Mapping[str, Any], where: str) -> dict[str, str]:
    """The members of one fields.toml table with their declared types, checked."""
    for name, kind in table.items():
        if kind not in _JSON_TYPES:
            known = ", ".join(_JSON_TYPES)
            raise ValueError(f"fields.toml: {where}{name}: unknown type {kind!r} (one of {known})")
    return dict(table)


@dataclass(frozen=True, slots=True)
class ListSpec:
    """How one ``[lists]`` table of fields.toml turns an array of the update into a map of the state."""

    source: str  # the update's field holding the array
    within: str  # "" for the array itself, else the array member of each source item to read
    key: str  # the member naming an entry ("" = the item's position)
    max_entries: int


@dataclass(frozen=True, slots=True)
class FieldSchema:
    """Which fields of a stats update are kept (loaded from ``fields.toml``)."""

    scalars: frozenset[str]
    objects: Mapping[str, frozenset[str]]
    maps: Mapping[str, frozenset[str]]
    nested: frozenset[str]  # the fields of objects and maps
    nested_kinds: tuple[tuple[str, bool], ...]  # the same, sorted, each with whether it is a map
    # Per level ("" the top one, else the object or map), each member's accepted Python types.
    accepted: Mapping[str, Mapping[str, frozenset[type]]]
    decoder: msgspec.json.Decoder[Any]  # reads these fields, and only these, from JSON text
    # The sorted names of every field at each level ("" the top one): a shape's part when none is
    # missing.  Shapes keep these very tuples (canonical), so that comparing them is cheap.
    complete: Mapping[str, tuple[str, ...]]
    # Map -> member -> key (without its parameter) of the template's rate item for the counters whose
    # rates travel in the RATES_MEMBER of mist.ap.raw.
    counters: Mapping[str, Mapping[str, str]]
    # Map name in the state -> the array it is made of (fields.toml [lists]).
    lists: Mapping[str, ListSpec]
    limits: Mapping[str, int]  # most entries of each map or list-made map
    direct: frozenset[str]  # the objects and maps an update carries as such (not made of lists)

    @classmethod
    def load(cls) -> FieldSchema:
        text = resources.files(__package__).joinpath("fields.toml").read_text(encoding="utf-8")
        data = tomllib.loads(text)
        declared: dict[str, dict[str, str]] = {"": _load_declared(data["scalars"], "")}
        for group in ("objects", "maps"):
            for name, table in data.get(group, {}).items():
                declared[name] = _load_declared(table, f"{name}.")
        lists = _load_lists(data.get("lists", {}), declared)
        scalars = frozenset(declared[""])
        if RATES_MEMBER in declared:
            raise ValueError(f"fields.toml: {RATES_MEMBER} is taken: mist.ap.raw holds the rates there")
        if missing := IDENTITY_FIELDS - scalars:
            raise ValueError(f"fields.toml: the scalars must include {', '.join(sorted(missing))}")
        if declared[""]["type"] != "text" or declared[""]["model"] != "text":
            raise ValueError("fields.toml: type and model must be text (they classify devices)")
        objects = {k: frozenset(declared[k]) for k in data.get("objects", {})}
        maps = {k: frozenset(declared[k]) for k in [*data.get("maps", {}), *lists]}
        direct = frozenset(objects.keys() | data.get("maps", {}).keys())
        nested = frozenset(objects.keys() | maps.keys())
        limits = {name: MAX_MAP_ENTRIES for name in maps} | {n: s.max_entries for n, s in lists.items()}
        limits |= {name: int(limit) for name, limit in data.get("max_entries", {}).items() if name in maps}
        arrays = frozenset(spec.source for spec in lists.values())
        if clash := arrays & (scalars | direct):
            raise ValueError(f"fields.toml: {', '.join(sorted(clash))}: both a list source and another field")
        decoder = _kept_fields_decoder(
            {k: v for k, v in declared.items() if k not in lists},
            {k: limits[k] for k in data.get("maps", {})},
            arrays,
        )
        kinds = tuple((name, name in maps) for name in sorted(nested))
        accepted = {
            level: {member: _JSON_TYPES[kind] for member, kind in members.items()}
            for level, members in declared.items()
        }
        complete = {"": tuple(sorted(scalars | direct | arrays))} | {
            name: tuple(sorted(members)) for name, members in (objects | maps).items()
        }
        counters = {name: dict(members) for name, members in data.get("counters", {}).items()}
        for name, members in counters.items():
            if not members.keys() <= maps.get(name, frozenset()):
                raise ValueError(f"fields.toml: counters.{name}: only members of maps.{name} can be counters")
        return cls(
            scalars, objects, maps, nested, kinds, accepted, decoder, complete, counters,
            lists, limits, direct,
        )

    def measured(self, update: Any) -> dict[str, dict[str, dict[str, Any]]]:
        """The counters ``update`` (kept fields, as dicts or as the decoded struct) carries:
        ``{map: {entry: {member: value}}}``, empty when it carries none."""
        as_dict = isinstance(update, dict)
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for name, members in self.counters.items():
            entries = update.get(name) if as_dict else getattr(update, name, None)
            if not isinstance(entries, dict):
                continue
            for entry, stats in entries.items():
                # Numbers only: an unset struct member or a member missing from a dict is no measurement.
                values = {
                    member: value
                    for member in members
                    if type(value := stats.get(member) if as_dict else getattr(stats, member)) in _NUMBERS
                }
                if values:
                    found.setdefault(name, {})[entry] = values
        return found

    def decode_kept(self, text: str) -> Any:
        """The kept fields of an update's JSON text as a struct, or None when any of them is malformed.

        Unknown fields are skipped by the parser without building them: about 3x
        cheaper than parsing everything and filtering (bench/mist.py).  None sends
        the update to :meth:`filter`, which keeps what it can and says what it dropped.
        """
        try:
            kept = self.decoder.decode(text)
        except msgspec.DecodeError:  # malformed JSON or a field of the wrong type or size
            return None
        for spec in self.lists.values():
            if getattr(kept, spec.source) is not _UNSET:
                return None  # a switch's or gateway's arrays: filter() makes them maps
        return kept

    def filter(self, payload: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The kept fields of ``payload`` and a reason for every kept field that had a wrong type."""
        problems: list[str] = []
        kept = self._members("", payload, self.accepted[""], problems)
        self._lists(payload, kept, problems)
        for name in payload.keys() & self.direct:
            value = payload[name]
            if value is None:
                continue  # null: Mist does not know, as if the field were absent
            if name in self.objects:
                if isinstance(value, dict):
                    kept[name] = self._members(f"{name}.", value, self.accepted[name], problems)
                else:
                    problems.append(f"field {name}: expected an object, got {type(value).__name__}")
            elif isinstance(value, dict) and len(value) <= self.limits[name]:
                kept[name] = self._entries(name, value, self.accepted[name], problems)
            else:
                problems.append(f"field {name}: expected an object of at most {self.limits[name]} entries")
        return kept, problems

    def _lists(self, payload: Mapping[str, Any], kept: dict[str, Any], problems: list[str]) -> None:
        """Into ``kept``, the ``[lists]`` maps made of the arrays in ``payload``; items left out are named."""
        for name, spec in self.lists.items():
            items = payload.get(spec.source)
            if items is None:
                continue
            if not isinstance(items, list):
                if not spec.within:  # one problem per array, not one per map made of it
                    problems.append(f"field {spec.source}: expected an array, got {type(items).__name__}")
                continue
            entries: dict[str, Any] = {}
            for where, key, item in self._list_items(spec, items, problems):
                if not isinstance(item, dict):
                    problems.append(f"field {where}: expected an object, got {type(item).__name__}")
                elif key is None:
                    problems.append(f"field {where}: no usable {spec.key}")
                elif len(entries) >= spec.max_entries and key not in entries:
                    problems.append(f"field {where}: more than {spec.max_entries} entries")
                else:
                    # Two items of one id (a port listed twice) merge by member, as updates do.
                    members = self._members(f"{name}.{key}.", item, self.accepted[name], problems)
                    entries.setdefault(key, {}).update(members)
            if entries:
                kept[name] = entries

    def _list_items(
        self, spec: ListSpec, items: list[Any], problems: list[str]
    ) -> list[tuple[str, str | None, Any]]:
        """(where, entry name or None, item) of every item a list-made map reads from ``items``."""
        if not spec.within:
            return [(f"{spec.source}[{i}]", _entry_name(it, spec.key, i), it) for i, it in enumerate(items)]
        outer_key = self.lists[spec.source].key
        found: list[tuple[str, str | None, Any]] = []
        for i, outer in enumerate(items):
            inner = outer.get(spec.within) if isinstance(outer, dict) else None
            if inner is None:
                continue  # this module reports none (the array's own map names a bad item)
            where = f"{spec.source}[{i}].{spec.within}"
            prefix = _entry_name(outer, outer_key, i)
            if not isinstance(inner, list):
                problems.append(f"field {where}: expected an array, got {type(inner).__name__}")
            elif prefix is None:
                if inner:  # items with no entry to go to; an empty array loses nothing
                    problems.append(f"field {where}: its {spec.source} item has no usable {outer_key}")
            else:
                for j, item in enumerate(inner):
                    key = _entry_name(item, spec.key, j)
                    found.append((f"{where}[{j}]", None if key is None else f"{prefix}/{key}", item))
        return found

    @staticmethod
    def _members(
        prefix: str, value: Mapping[str, Any], wanted: Mapping[str, frozenset[type]], problems: list[str]
    ) -> dict[str, Any]:
        """The members of ``value`` named in ``wanted`` that have their declared type (the hot loop)."""
        members = {
            member: inner
            for member, inner in value.items()
            if type(inner) in wanted.get(member, ()) and (type(inner) is not str or len(inner) <= MAX_TEXT)
        }
        if len(members) != len(value.keys() & wanted.keys()):  # rare: name what was dropped
            problems.extend(
                _wrong_type(prefix + member, inner)
                for member, inner in value.items()
                if member in wanted and member not in members and inner is not None
            )
        return members

    def _entries(
        self, name: str, value: Mapping[str, Any], wanted: Mapping[str, frozenset[type]], problems: list[str]
    ) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        for entry, inner in value.items():
            if len(entry) > 64:
                problems.append(f"field {name}: entry name longer than 64 characters")
            elif isinstance(inner, dict):
                entries[entry] = self._members(f"{name}.{entry}.", inner, wanted, problems)
            else:
                problems.append(f"field {name}.{entry}: expected an object, got {type(inner).__name__}")
        return entries

    def shape(self, kept: Mapping[str, Any]) -> Shape:
        """The names at every level of filtered fields, in their order.

        Merging fields into a state of the same shape replaces every value, so
        the result is the fields themselves: a device whose updates keep their
        shape (Mist's periodic full updates) needs its state neither read nor
        merged.  Names in another order only make the shapes differ, which
        costs a merge, never a wrong state.
        """
        parts = [tuple(kept)]
        for name, is_map in self.nested_kinds:  # the few nested fields, not every field: this runs per update
            value = kept.get(name)
            if value is not None:  # filtered and merged fields hold a dict here, or nothing
                parts.append(tuple(value))
                if is_map:
                    parts.extend(map(tuple, value.values()))
        return tuple(parts)

    def struct_shape(self, kept: Any, like: Shape | None) -> Shape | None:
        """:meth:`shape` of ``msgspec.to_builtins(kept)`` for a struct from :meth:`decode_kept`, without
        building those dicts (the struct declares its fields in the dicts' order and they leave unset
        ones out); None, cheaply, when it cannot equal ``like``: it has another number of fields.
        """
        names = self.complete[""]
        values = astuple(kept)
        unset = values.count(_UNSET)
        if like is None or len(names) - unset != len(like[0]):
            return None  # a partial update (it merges: its dicts are needed anyway) or a first one
        parts = [tuple(compress(names, map(is_not, values, repeat(_UNSET)))) if unset else names]
        for name, is_map in self.nested_kinds:
            value = getattr(kept, name, _UNSET)  # list-made maps are no struct fields (decode_kept)
            if value is _UNSET:
                continue
            complete = self.complete[name]
            if is_map:
                parts.append(tuple(value))
                parts.extend([_set_fields(entry, complete) for entry in value.values()])
            else:
                parts.append(_set_fields(value, complete))
        return tuple(parts)

    def canonical(self, shape: Shape) -> Shape:
        """``shape`` with its complete parts replaced by the tuples in :attr:`complete`."""
        by_value = {names: names for names in self.complete.values()}
        return tuple(by_value.get(part, part) for part in shape)

    def merge(self, state: dict[str, Any], kept: Mapping[str, Any]) -> None:
        """Merge filtered fields into ``state``: scalars replace, objects and map entries merge by member.

        Both sides are shaped by :meth:`filter` (objects hold scalars only), so
        every level merges with a C-level ``dict.update``.
        """
        earlier = {n: state[n] for n in kept.keys() & self.nested if isinstance(state.get(n), dict)}
        state.update(kept)
        for name, current in earlier.items():
            update = kept[name]
            if name in self.maps:  # list-made maps too
                for entry, members in update.items():
                    known = current.get(entry)
                    if isinstance(known, dict):
                        known.update(members)
                    else:
                        current[entry] = members
            else:
                current.update(update)
            state[name] = current


def _entry_name(item: object, key: str, position: int) -> str | None:
    """The name of an array item's map entry: its ``key`` member as text (its position when ``key``
    is ""); None when that member is missing, not a text or integer, or no usable name."""
    if not key:
        return str(position)
    value = item.get(key) if isinstance(item, dict) else None
    if type(value) is int:
        return str(value)
    if type(value) is str and 0 < len(value) <= 64:
        return value
    return None


def _load_lists(tables: Mapping[str, Any], declared: dict[str, dict[str, str]]) -> dict[str, ListSpec]:
    """fields.toml's [lists], checked; each list's members are added to ``declared`` under its name."""
    specs: dict[str, ListSpec] = {}
    for name, table in tables.items():
        within = table.get("within", "")
        source = table.get("source", name if not within else "")
        spec = ListSpec(source, within, table.get("key", ""), table.get("max_entries", MAX_MAP_ENTRIES))
        if name in declared or not source or (within and source not in tables):
            raise ValueError(f"fields.toml: lists.{name}: a new name, and a source list when it has within")
        declared[name] = _load_declared(table["members"], f"{name}.")
        specs[name] = spec
    return specs


def _wrong_type(field: str, value: object) -> str:
    return f"field {field}: {type(value).__name__} value not of the type fields.toml declares (or too long)"


def normalize_mac(value: object) -> str | None:
    """``5C:5B:35:00:00:01`` -> ``5c5b35000001``; None when it is no MAC."""
    if not isinstance(value, str):
        return None
    mac = value.lower()
    if len(mac) != 12:  # with separators; a 12-character one with any would fail the match anyway
        mac = mac.translate(_MAC_SEPARATORS)
    return mac if _MAC.fullmatch(mac) else None


def _shared(value: object) -> object:
    # Types and models repeat across the fleet: one string object for all APs.
    return sys.intern(value) if isinstance(value, str) else value


class _Device:
    """One device, kept small: at 10,000 APs every byte here counts 10,000 times.

    The merged state is kept as the JSON sent to Zabbix (text), not as a tree
    of dicts: half the memory, and a full update is encoded straight from its
    struct (bench/RESULTS.md, "The Mist fleet state: text or plain data").
    Identity fields are copied out for LLD rows and labels.
    """

    __slots__ = (
        "announced",
        "clock_ns",
        "counted",
        "emitted",
        "kind",
        "mac",
        "model",
        "name",
        "rates",
        "shape",
        "site_id",
        "stale",
        "state",
        "updated",
    )

    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        self.mac: str | None = None
        self.kind: object = None  # the Mist "type" field
        self.name: object = None
        self.model: object = None
        # Merged fields as compact sorted JSON text ("" before the first update): the
        # mist.ap.raw value itself.  Text, not bytes: an encoder's bytes may keep its
        # write buffer allocated, decoding gives an exact-size copy.
        self.state = ""
        self.shape: Shape | None = None  # FieldSchema.shape of state, one object shared across devices
        self.updated = 0.0  # monotonic time of the last update
        self.clock_ns = 0  # wall clock of the last update, sent with the value
        # Each counter's last measurement, {map: {entry: {member: [value, clock_ns]}}} as JSON text
        # ("" before the first), and the rates the last update's counters gave, until its state is sent.
        self.counted = ""
        self.rates = ""
        # Monotonic time of the last mist.ap.raw; only kept when min_interval needs it.
        self.emitted: float | None = None
        self.stale = False
        self.announced = False  # named in the last LLD value sent (its Zabbix host exists)


@dataclass(frozen=True, slots=True)
class FleetPolicy:
    discovery_host: str
    node_prefix: str  # of AP hosts
    device_types: frozenset[str]
    stale_after: float
    min_interval: float
    lld_min_interval: float
    lld_refresh: float
    switch_prefix: str = "mist-switch-"
    gateway_prefix: str = "mist-gateway-"

    def prefix(self, kind: str) -> str:
        return {"switch": self.switch_prefix, "gateway": self.gateway_prefix}.get(kind, self.node_prefix)


@dataclass(slots=True)
class _Listing:
    """What was built and sent of one kind's LLD list: its rows are rebuilt when a value may be due,
    only their digest is kept."""

    dirty: bool = True  # an identity changed since the rows were last built
    digest: bytes | None = None  # of the rows last built
    count: int = 0  # rows last built
    sent_digest: bytes | None = None
    sent_at: float | None = None


class Fleet:
    def __init__(self, policy: FleetPolicy, schema: FieldSchema) -> None:
        self.policy = policy
        self.schema = schema
        self._devices: dict[str, _Device] = {}
        self._shapes: dict[Shape, Shape] = {}  # every state shape once
        # (id of a shape in _shapes, shape of an update) -> shape after merging them
        self._merged_shapes: dict[tuple[int, Shape], Shape] = {}
        self._sites: dict[str, SiteInfo] = {}
        # Devices with an update not sent yet: those that may go at the next due(),
        # and those held (not announced yet, or inside min_interval).  Per update
        # only the device at hand is looked at; the held ones are looked at again
        # on a sweep or after an LLD value, so a large fleet costs O(1) per update.
        self._ready: set[str] = set()
        self._held: set[str] = set()
        self._queued: list[Item] = []  # sent at the next due(), before anything else
        # One LLD list per kind monitored (a rule each on the discovery host).
        self._listings = {k: _Listing() for k in HOSTED_KINDS if k in policy.device_types}
        # No LLD value can be due sooner than this after one was sent: checked per update.
        self._lld_quiet = min(policy.lld_min_interval, policy.lld_refresh)
        # Keys of the devices not monitored whose reason was logged (named once, not per update).
        self._named: dict[str, str] = {}
        # Keys of the devices with a MAC whose kind is not known yet (held): only the inventory can tell.
        self._unknown: set[str] = set()
        # Site -> MAC -> what its device inventory says (learn_inventory), for devices whose updates don't.
        self._inventory: dict[str, dict[str, KnownDevice]] = {}
        # Silence is counted from here at the earliest: the last time a stream was down.  While the
        # agent hears nothing, APs are not stale (that is one problem, on the discovery host).
        self._heard_since = float("-inf")

    # -- input ---------------------------------------------------------------
    def set_sites(self, sites: Mapping[str, SiteInfo]) -> None:
        """The sites now subscribed; devices of other sites are forgotten."""
        if dict(sites) == self._sites:
            return
        self._sites = dict(sites)
        for key in [k for k, d in self._devices.items() if d.site_id not in self._sites]:
            del self._devices[key]
            self._named.pop(key, None)
            self._ready.discard(key)
            self._held.discard(key)
            self._unknown.discard(key)
        for site_id in self._inventory.keys() - self._sites.keys():
            del self._inventory[site_id]
        self._mark_dirty()

    def update(self, site_id: str, data: str | dict[str, Any], now: float) -> list[str]:
        """Merge one stats update (JSON text or object); returns reasons for the parts that were dropped.

        Raises FrameError when the update is no JSON object or names no device at all.
        """
        kept: Any = self.schema.decode_kept(data) if isinstance(data, str) else None
        key = None if kept is None else self._known_key(kept.id, kept.mac)
        # A known device's update that may be shaped like its state (Mist's periodic full
        # updates) has its shape read from the struct: no dicts are built unless it merges.
        shape = None if key is None else self.schema.struct_shape(kept, self._devices[key].shape)
        fields: dict[str, Any] | None = None
        problems: list[str] = []
        if shape is None or key is None:
            if kept is None:
                payload = parse_payload(data)
                fields, problems = self.schema.filter(payload)
            else:
                fields = payload = msgspec.to_builtins(kept)  # every field it has is a kept one
            if key is None:
                kept = None  # _identify may rewrite the mac in fields
                key = self._identify(site_id, payload, fields, problems)
            shape = self.schema.shape(fields)
        device = self._devices[key]
        if shape == device.shape:  # Mist's periodic full updates: the fields are the merged state
            device.state = encode_json(fields if kept is None else kept).decode()
            kind, name, model = _struct_identity(kept) if fields is None else _identity(fields)
        else:
            if fields is None:
                fields = msgspec.to_builtins(kept)
            if device.state:
                # orjson would cache a UTF-8 copy inside non-ASCII text for as long as it lives.
                state = parse_json(device.state if device.state.isascii() else device.state.encode())
                self.schema.merge(state, fields)
                shape = self._merged_shape(device.shape, shape, state)
            else:
                state = fields  # the first update
            device.state = encode_json(state).decode()
            if shape is not device.shape:  # a partial update merged into a state of the same shape keeps it
                # Beyond MAX_SHAPES a device keeps no shape and every update merges.
                device.shape = self._kept_shape(shape)
            kind, name, model = _identity(state)
        # The schema makes "type" optional: else what is known of this MAC (an earlier update, the
        # site's inventory), else its model family.  The inventory's name stands in for a missing one.
        known = None
        if not (isinstance(kind, str) and kind) or name is None:
            known = self._known(site_id, device.mac)
        if not (isinstance(kind, str) and kind):
            kind = device.kind or (known.kind if known is not None else kind_of_model(model))
        if name is None and known is not None:
            name = known.name
        if site_id != device.site_id or kind != device.kind or name != device.name or model != device.model:
            device.site_id, device.kind, device.model = sys.intern(site_id), _shared(kind), _shared(model)
            device.name = name
            self._mark_dirty()
        device.updated = now
        device.clock_ns = time.time_ns()
        if device.kind is None:
            if device.mac is not None:
                self._unknown.add(key)
        elif self._unknown:  # nearly always empty: no set lookup per update
            self._unknown.discard(key)
        if not self._eligible(device):
            self._name_unmonitored(key, device)
        else:
            measured = self.schema.measured(kept if fields is None else fields)
            device.rates = self._rates(device, measured, self.schema.limits) if measured else ""
            # An update with rates is not held back by min_interval (which merges updates):
            # a later update would replace its rates, and they would be lost.
            if self._may_send(device, now) or (device.rates and device.announced):
                self._ready.add(key)
                self._held.discard(key)
            else:
                self._held.add(key)
            if device.stale:
                device.stale = False
                self._queued.append(self._stale_reading(device, 0))
        return problems

    def sites_with_unknown_kinds(self) -> set[str]:
        """The sites holding a device of unknown kind: only their device inventory can tell it now."""
        return {self._devices[key].site_id for key in self._unknown}

    def learn_inventory(self, site_id: str, devices: Mapping[str, KnownDevice]) -> int:
        """What a site's device inventory lists (MAC -> kind and name); returns how many held
        devices it classified.

        A device of unknown kind that it names takes that kind (and its name when its updates
        gave none) and, when monitored, goes out with everything merged while it was held.
        The inventory is kept for devices that speak later, bounded by MAX_DEVICES in all.
        """
        if site_id not in self._sites:
            return 0  # unsubscribed while the call was under way
        others = sum(len(v) for s, v in self._inventory.items() if s != site_id)
        room = max(0, MAX_DEVICES - others)
        self._inventory[site_id] = dict(islice(devices.items(), room))
        classified = 0
        for key in [k for k in self._unknown if self._devices[k].site_id == site_id]:
            device = self._devices[key]
            known = self._inventory[site_id].get(str(device.mac))
            if known is None:
                continue
            self._unknown.discard(key)
            device.kind = _shared(known.kind)
            if device.name is None:
                device.name = known.name
            self._mark_dirty()
            classified += 1
            if self._eligible(device):
                self._held.add(key)  # released once an LLD value has announced it
            else:
                self._name_unmonitored(key, device)
        return classified

    def _known(self, site_id: str, mac: str | None) -> KnownDevice | None:
        listed = self._inventory.get(site_id)
        return None if listed is None or mac is None else listed.get(mac)

    def _known_key(self, device_id: object, mac: object) -> str | None:
        """The key of a device known by its MAC, for an update as Mist sends nearly all of them.

        That is: an ``id`` ending in ``-`` and the MAC, and that same MAC in
        ``mac``, exactly as stored (so it was checked when it came first);
        :meth:`_identify` would find the same device, only slower.
        """
        if type(device_id) is not str or type(mac) is not str or device_id[-13:-12] != "-":
            return None
        device = self._devices.get(mac)
        return mac if device is not None and device.mac == mac and device_id.endswith(mac) else None

    def _identify(
        self, site_id: str, payload: Mapping[str, Any], fields: dict[str, Any], problems: list[str]
    ) -> str:
        """The key of the device an update is about, created when new; its MAC is written into ``fields``."""
        device_id = payload.get("id") if isinstance(payload.get("id"), str) else None
        mac = normalize_mac(payload.get("mac"))
        mac_in_id = mac_from_device_id(device_id) if device_id else None
        # A device is known by its MAC (as its Zabbix host is): the one in its id,
        # else the one it sends; by its id only when it has neither.
        key = mac_in_id or device_id or mac
        if not key or len(key) > 64:
            raise FrameError("device update without a usable id or mac")
        device = self._devices.get(key)
        if device is None:
            if len(self._devices) >= MAX_DEVICES:
                raise FrameError(f"more than {MAX_DEVICES} devices; update ignored")
            device = self._devices[key] = _Device(site_id)
        if mac is not None:
            fields["mac"] = mac  # one spelling, whatever the update used
        elif "mac" in payload:
            problems.append("field mac: not a MAC address")
            fields.pop("mac", None)
        device_mac = device.mac or mac or mac_in_id
        if device_mac != device.mac:
            device.mac = key if device_mac == key else device_mac  # one string object for both
            self._mark_dirty()
        return key

    def _merged_shape(self, before: Shape | None, update: Shape, state: Mapping[str, Any]) -> Shape:
        """The shape of ``state``, just merged from a state shaped ``before`` and an update shaped ``update``.

        It depends on those two shapes alone (the stored state is read back in
        sorted order), so it is worked out once per pair: partial updates,
        merged every time, then skip a walk over the whole state.
        """
        if before is None:  # beyond MAX_SHAPES
            return self.schema.shape(state)
        pair = (id(before), update)  # shapes in _shapes live as long as the fleet: their ids stay theirs
        merged = self._merged_shapes.get(pair)
        if merged is None:
            merged = self.schema.shape(state)
            merged = self._kept_shape(merged) or merged
            if len(self._merged_shapes) < MAX_SHAPES:
                self._merged_shapes[pair] = merged
        return merged

    def _kept_shape(self, shape: Shape) -> Shape | None:
        """The one object kept for ``shape`` (added while there is room); None beyond MAX_SHAPES."""
        kept = self._shapes.get(shape)
        if kept is None and len(self._shapes) < MAX_SHAPES:
            kept = self._shapes[shape] = self.schema.canonical(shape)
        return kept

    # -- output --------------------------------------------------------------
    def due(self, now: float, sweep: bool = True, streams_up: bool = True) -> list[Item]:
        """Everything to send now.

        ``sweep`` (the collector's periodic tick) also checks every device for
        staleness and releases held updates whose time has come; without it (after
        each update) only what is ready goes, at a cost independent of fleet size.
        ``streams_up`` False (a stream channel is not subscribed) stops the staleness
        clock of every device until ``stale_after`` after the streams are back.
        """
        items, self._queued = self._queued, []
        if not streams_up:
            self._heard_since = now
        elif sweep:
            items.extend(self._newly_stale(now))
        lld = self._discoveries_due(now)
        items.extend(lld)
        if sweep or lld:  # an LLD value may just have announced held devices
            self._release_held(now)
        ready, self._ready = self._ready, set()  # a new set: a drained one keeps its peak size
        for key in ready:
            device = self._devices[key]
            if device.announced:
                items.append(self._raw_reading(device, now))
            else:  # left out of an LLD value since its update: its host is going away
                self._held.add(key)
        return items

    def flush(self) -> list[Item]:
        """On shutdown: every update not sent yet, whatever the interval or LLD state."""
        items, self._queued = self._queued, []
        for kind, listing in self._listings.items():
            rows = self.lld_rows(kind)
            if rows and listing.digest != listing.sent_digest:
                items.append(self._discovery(kind, rows, 0.0))
        unsent = sorted(self._ready | self._held)
        items.extend(self._raw_reading(self._devices[k], 0.0) for k in unsent)
        self._ready.clear()
        self._held.clear()
        return items

    def lld_rows(self, kind: str = "ap") -> tuple[dict[str, str], ...]:
        """The LLD rows of every eligible device of ``kind``, built now, sorted by node id."""
        rows = [self._lld_row(d) for d in self._devices.values() if d.kind == kind and self._eligible(d)]
        rows.sort(key=lambda r: r["{#NODEID}"])
        listing = self._listings[kind]
        listing.digest = hashlib.blake2b(encode_json(rows), digest_size=16).digest()
        listing.count = len(rows)
        listing.dirty = False
        return tuple(rows)

    def _mark_dirty(self) -> None:
        for listing in self._listings.values():
            listing.dirty = True

    @property
    def sites(self) -> Mapping[str, SiteInfo]:
        return self._sites

    def __len__(self) -> int:
        return len(self._devices)

    # -- helpers -------------------------------------------------------------
    def _may_send(self, device: _Device, now: float) -> bool:
        # A device's host exists only once an LLD value named it; min_interval spaces its values.
        return device.announced and (
            device.emitted is None or now - device.emitted >= self.policy.min_interval
        )

    def _release_held(self, now: float) -> None:
        still: set[str] = set()
        for key in self._held:
            (self._ready if self._may_send(self._devices[key], now) else still).add(key)
        self._held = still

    def _eligible(self, device: _Device) -> bool:
        return device.mac is not None and device.kind in self._listings

    def _unmonitored_reason(self, device: _Device) -> str:
        if device.mac is None:
            return "no MAC"
        if device.kind is None:
            return "kind unknown"  # held: its merged state goes out once an update tells its kind
        return f"type {device.kind}"

    def _name_unmonitored(self, key: str, device: _Device) -> None:
        """Log once per device and reason why it is not monitored."""
        reason = self._unmonitored_reason(device)
        if self._named.get(key) != reason:
            self._named[key] = reason
            logger.info(
                "Mist device %s (%s, model %s) not monitored: %s (device_types: %s)",
                key, _text(device.name) or "unnamed", _text(device.model) or "unknown", reason,
                ", ".join(sorted(self.policy.device_types)),
            )

    def unmonitored(self) -> Counter[str]:
        """How many devices are not monitored, per reason (self-metrics)."""
        return Counter(self._unmonitored_reason(d) for d in self._devices.values() if not self._eligible(d))

    def _node_id(self, device: _Device) -> str:
        return f"{self.policy.prefix(str(device.kind))}{device.mac}"

    def _site(self, device: _Device) -> SiteInfo:
        return self._sites.get(device.site_id) or SiteInfo.unnamed(device.site_id)

    def _lld_row(self, device: _Device) -> dict[str, str]:
        site = self._site(device)
        return {
            "{#NODEID}": self._node_id(device),
            "{#NAME}": _text(device.name) or str(device.mac),
            "{#SITENAME}": site.name,
            "{#SITEID}": site.site_id,
            "{#MAC}": str(device.mac),
            # Never empty: the template's group prototypes "Mist/{#ORGNAME}/..." would be refused.
            "{#ORGNAME}": site.org_name or UNKNOWN_ORG,
            "{#MODEL}": _text(device.model),
        }

    def _labels(self, device: _Device) -> dict[str, str]:
        # Identity for the Prometheus exporter: enough to label per-AP series.  Built per
        # reading, not kept: per AP it would cost more memory than the 2 KB budget leaves.
        site = self._sites.get(device.site_id) or SiteInfo.unnamed(device.site_id)
        name, mac = device.name, str(device.mac)
        return {
            "org": site.org_name or site.org_id,
            "site": site.name,
            # Named by kind ("ap", "switch", "gateway"): a switch's series never pose as an AP's.
            str(device.kind): name if isinstance(name, str) and name else mac,
            "mac": mac,
        }

    def _discoveries_due(self, now: float) -> list[Discovery]:
        return [d for kind in self._listings if (d := self._discovery_due(kind, now)) is not None]

    def _discovery_due(self, kind: str, now: float) -> Discovery | None:
        policy, listing = self.policy, self._listings[kind]
        sent_at = listing.sent_at
        if sent_at is not None and now - sent_at < self._lld_quiet:
            return None  # nothing can be due yet: the rows need not be built
        rows = self.lld_rows(kind) if listing.dirty else None
        if sent_at is None:
            due = listing.count > 0  # nothing to say yet: an empty first list would only delete
        elif listing.digest != listing.sent_digest:
            due = now - sent_at >= policy.lld_min_interval
        else:
            due = now - sent_at >= policy.lld_refresh
        if not due:
            return None
        return self._discovery(kind, self.lld_rows(kind) if rows is None else rows, now)

    def _discovery(self, kind: str, rows: tuple[dict[str, str], ...], now: float) -> Discovery:
        """The LLD value for ``rows`` (just built by lld_rows); its devices count as announced."""
        listing = self._listings[kind]
        listing.sent_digest, listing.sent_at = listing.digest, now
        named = {r["{#NODEID}"] for r in rows}
        for device in self._devices.values():
            if device.kind == kind:
                device.announced = device.mac is not None and self._node_id(device) in named
        return Discovery.now(self.policy.discovery_host, lld_key(kind), rows)

    def _raw_reading(self, device: _Device, now: float) -> Reading:
        if self.policy.min_interval:
            device.emitted = now
        clock, ns = divmod(device.clock_ns, _NS_PER_S)
        labels = self._labels(device)
        value, rates = device.state, device.rates
        if rates:
            # The merged state with the update's rates as one more member (after the sorted ones),
            # sent once: a value without it is discarded by the rate items.
            value = f'{value[:-1]}{"," if len(value) > 2 else ""}"{RATES_MEMBER}":{rates}}}'
            device.rates = ""
        return Reading(self._node_id(device), raw_key(str(device.kind)), value, clock, ns, "", labels)

    @staticmethod
    def _rates(
        device: _Device, measured: Mapping[str, Mapping[str, Mapping[str, Any]]], limits: Mapping[str, int]
    ) -> str:
        """The per-second rates of the counters just measured, as JSON text ("" when none has one yet).

        A rate is taken between a counter's two last measurements, each at the time of the
        update that carried it, whatever updates without it came between.  It is worked out
        here, not by Zabbix's change per second: a dependent item that discards the values
        without the counter (partial updates) loses the sample that step keeps (seen on 6.0
        and 7.0), and one trapper value per counter costs the pipeline ~5x per update.  As
        Zabbix does, a counter that went down (reset, wrap) or a clock that did not move
        gives no rate, only a new first sample.
        """
        now_ns = device.clock_ns
        last: dict[str, Any] = parse_json(device.counted) if device.counted else {}
        rates: dict[str, dict[str, dict[str, float]]] = {}
        for name, entries in measured.items():
            known_entries = last.setdefault(name, {})
            for entry, members in entries.items():
                if entry not in known_entries and len(known_entries) >= limits[name]:
                    continue  # a stream that keeps naming new entries: memory stays bounded
                known = known_entries.setdefault(entry, {})
                for member, value in members.items():
                    before = known.get(member)
                    known[member] = [value, now_ns]
                    if before is not None and now_ns > before[1] and value >= before[0]:
                        rate = (value - before[0]) * _NS_PER_S / (now_ns - before[1])
                        # a counter near float's limit jumps to infinity, which JSON cannot carry
                        if math.isfinite(rate):
                            rates.setdefault(name, {}).setdefault(entry, {})[member] = rate
        device.counted = encode_json(last).decode()
        return encode_json(rates).decode() if rates else ""

    def _stale_reading(self, device: _Device, value: int) -> Reading:
        key = stale_key(str(device.kind))
        return Reading.now(self._node_id(device), key, value, labels=self._labels(device))

    def _newly_stale(self, now: float) -> list[Reading]:
        out = []
        for device in self._devices.values():
            silent = now - max(device.updated, self._heard_since) >= self.policy.stale_after
            if silent and not device.stale and device.announced:
                device.stale = True
                out.append(self._stale_reading(device, 1))
        return out


# Model name prefixes of each device kind, from Juniper's hardware lists for Mist
# (access points AP12 ... AP64 and BT11 beacons; EX and QFX switches; SRX and SSR
# gateways).  Longest first, so that no prefix hides a longer one.
MODEL_FAMILIES: tuple[tuple[str, str], ...] = (
    ("QFX", "switch"),
    ("SRX", "gateway"),
    ("SSR", "gateway"),
    ("AP", "ap"),
    ("BT", "ble"),
    ("EX", "switch"),
)


def kind_of_model(model: object) -> str | None:
    """The device kind a model name implies (``AP45`` -> ``ap``), None when no family matches."""
    if not isinstance(model, str):
        return None
    upper = model.upper()
    return next((kind for prefix, kind in MODEL_FAMILIES if upper.startswith(prefix)), None)


def _struct_identity(kept: Any) -> tuple[object, object, object]:
    """:func:`_identity` of a kept-fields struct."""
    kind, name, model = kept.type, kept.name, kept.model
    return (
        None if kind is _UNSET else kind,
        None if name is _UNSET else name,
        None if model is _UNSET else model,
    )


def _identity(fields: Mapping[str, Any]) -> tuple[object, object, object]:
    """type, name and model (None where missing): what names a device in its LLD row."""
    return fields.get("type"), fields.get("name"), fields.get("model")


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def mac_from_device_id(device_id: str) -> str | None:
    """Mist device ids end in the device MAC: 00000000-0000-0000-1000-5c5b35000001."""
    return normalize_mac(device_id[-12:]) if device_id[-13:-12] == "-" else None
