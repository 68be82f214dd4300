"""Normalization: one spelling for units, keys and values before anything is filtered or spooled.

A reading that cannot be made valid raises :class:`Rejected` with the reason;
the pipeline counts and logs it instead of passing garbage to Zabbix, where it
would fail silently (or turn the item unsupported).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping

from msgspec.structs import replace

from trapline.core.model import Item, Reading, Value
from trapline.core.units import unit_table

# Zabbix item key: name [a-zA-Z0-9_.-]+ with optional [params] (params are free text).
_KEY_RE = re.compile(r"^([A-Za-z0-9_.\-]+)(\[.*\])?$", re.DOTALL)
# Zabbix technical host name: alphanumerics, space, dot, dash, underscore; max 128.
_HOST_RE = re.compile(r"^[A-Za-z0-9 ._\-]{1,128}$")
MAX_KEY_LENGTH = 2048  # items.key_ in the Zabbix schema
MAX_VALUE_LENGTH = 65535  # a TEXT history value; longer would be cut by the server
# Zabbix stores integers as signed or unsigned 64-bit numbers; the spool holds the same range.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1


class Rejected(ValueError):
    """The reading is invalid; ``str()`` is the reason counted in self-metrics."""


def normalize_key(key: str) -> str:
    """Lowercase the key name (not its parameters) and check it is a valid Zabbix key."""
    if len(key) > MAX_KEY_LENGTH:
        raise Rejected("item key longer than 2048 characters")
    if valid_text(key) != key:
        raise Rejected("item key holds a lone surrogate (not Unicode text)")
    m = _KEY_RE.match(key)
    if m is None:
        raise Rejected(f"invalid item key {key[:80]!r}")
    name, params = m.group(1), m.group(2) or ""
    return name.lower() + params if not name.islower() else key


def check_host(host: str) -> None:
    if not _HOST_RE.match(host):
        raise Rejected(f"invalid Zabbix host name {host[:80]!r}")


# Host names and keys that passed, each key with its canonical spelling: collectors
# repeat the same few thousand all day, and a dict lookup costs a fraction of the
# regex and text checks (bench/RESULTS.md, "Code shapes").  Only text that passed is
# kept, so every rejection still happens each time.  Bounded: cleared when full.
_CHECKED_HOSTS: dict[str, str] = {}
_CANONICAL_KEYS: dict[str, str] = {}
_CHECKED_MAX = 100_000


def _remember(checked: dict[str, str], text: str, canonical: str) -> None:
    if len(checked) >= _CHECKED_MAX:
        checked.clear()
    checked[text] = canonical


def _canonical_key(key: str) -> str:
    canonical = _CANONICAL_KEYS.get(key)
    if canonical is None:
        canonical = normalize_key(key)
        _remember(_CANONICAL_KEYS, key, canonical)
    return canonical


def coerce_value(value: object) -> Value:
    """Turn what a collector produced into int, float or str, or reject it."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise Rejected(f"value longer than {MAX_VALUE_LENGTH} characters")
        return valid_text(value)
    if isinstance(value, bool):  # before int: bool is an int subclass
        return int(value)
    if isinstance(value, int):
        if not MIN_INT <= value <= MAX_INT:
            raise Rejected("integer outside the 64-bit range Zabbix stores")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Rejected("value is not a finite number")
        return value
    if value is None:
        raise Rejected("missing value")
    raise Rejected(f"unsupported value type {type(value).__name__}")


def convert_unit(value: Value, unit: str) -> tuple[Value, str]:
    """Convert a numeric value to the canonical unit; unknown units pass unchanged."""
    rule = unit_table().rules.get(unit)
    if rule is None:
        return value, unit
    if rule.factor == 1.0 and rule.offset == 0.0:
        return value, rule.unit
    if isinstance(value, str):
        raise Rejected(f"non-numeric value for unit {unit!r}")
    return value * rule.factor + rule.offset, rule.unit


def valid_text(text: str) -> str:
    """``text`` with lone surrogates (from a badly decoded source) replaced by ``?``.

    Neither the spool nor the wire can carry them: UTF-8 has no encoding for them.
    """
    if text.isascii():  # the usual case, cheaply
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _valid_mapping(mapping: Mapping[str, str]) -> Mapping[str, str]:
    try:
        if "".join([*mapping, *mapping.values()]).isascii():  # the usual case, cheaply
            return mapping
    except (TypeError, AttributeError):  # not a mapping of text to text (a collector's bug)
        raise Rejected("labels or LLD rows must map text to text") from None
    cleaned = {valid_text(name): valid_text(value) for name, value in mapping.items()}
    return mapping if cleaned == mapping else cleaned


def normalize(item: Item) -> Item:
    """Validate and canonicalize one item; raises Rejected."""
    if item.host not in _CHECKED_HOSTS:  # checked here, not in a helper: this runs per reading
        check_host(item.host)
        _remember(_CHECKED_HOSTS, item.host, item.host)
    if not isinstance(item, Reading):  # a Discovery (asked this way round: see filters.admit)
        key = _canonical_key(item.rule)
        rows = tuple(_valid_mapping(row) for row in item.rows)
        if key == item.rule and all(map(operator.is_, rows, item.rows)):
            return item
        return replace(item, rule=key, rows=rows)
    key = _CANONICAL_KEYS.get(item.key) or _canonical_key(item.key)  # the cache asked first: no call
    value = item.value
    # The usual text value (str.isascii costs nothing: CPython keeps the answer) skips
    # coerce_value's checks, which it would pass unchanged.
    if not (type(value) is str and value.isascii() and len(value) <= MAX_VALUE_LENGTH):
        value = coerce_value(value)
    value, unit = convert_unit(value, item.unit) if item.unit else (value, "")
    labels = _valid_mapping(item.labels) if item.labels else item.labels
    if key == item.key and value is item.value and unit == item.unit and labels is item.labels:
        return item
    return Reading(item.host, key, value, item.clock, item.ns, unit, labels)
