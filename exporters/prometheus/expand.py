"""JSON master values as many Prometheus series, defined as data in ``expand.toml``.

A Zabbix template reads a JSON master item (``mist.ap.raw``: one AP's merged
state) with dependent items, one JSONPath each.  Prometheus has no such thing,
so the exporter does the same here: each row of the table takes one number
from the document (or one per entry of a map such as ``port_stat``, the entry
name becoming a label) and names the metric it feeds.  The exporter adds the
reading's own labels (org, site, ap, mac) and the base-unit suffix.

A state sent as text becomes the number of the template's value map (the
``[codes]`` tables); a key sent with ``[params]`` (one Glue job's runs) is
expanded with its params as labels; a key whose value is one word, not JSON,
is listed in ``plain_text``.

A value that is not JSON is counted and logged (throttled); the reading
yields no sample and nothing else is affected.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from trapline.core.keys import split_params
from trapline.core.logutil import ThrottledLog
from trapline.core.model import Reading
from trapline.core.units import unit_table

log = logging.getLogger(__name__)

DATA_FILE = "expand.toml"
_KINDS = ("gauge", "counter")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METRIC = re.compile(r"[a-zA-Z_][a-zA-Z0-9_.]*")
_RESERVED_LABELS = frozenset({"host"})  # set by the exporter for every series
_EVERY_ENTRY = "*"
_OTHER_TEXT = "*"  # in a [codes] table: the number of any text not listed
_KEY = re.compile(r"^([^\[]+)\[(.*)\]$", re.DOTALL)


class ExpansionError(ValueError):
    """The data file is inconsistent; ``str()`` names the entry."""


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str  # key-style name; the exporter derives the Prometheus name from it and the unit
    unit: str  # a canonical unit of trapline/core/units.toml
    kind: str  # "gauge" | "counter"
    help: str


@dataclass(frozen=True, slots=True)
class Sample:
    metric: MetricDef
    labels: Mapping[str, str]  # added to the reading's labels (the map entry's name)
    value: float


@dataclass(frozen=True, slots=True)
class _Row:
    metric: MetricDef
    head: tuple[str, ...]  # members from the root (to the map, when there is a "*")
    tail: tuple[str, ...]  # members inside each map entry
    label: str | None  # set exactly when the path has a "*" or label_path is given
    scale: float
    constant: float | None  # a row with `value` instead of `path`
    codes: Mapping[str, float] | None = None  # text -> number (a [codes] table)
    label_path: tuple[str, ...] | None = None  # members of the text that labels the sample
    fold_case: bool = False  # the text is looked up in codes in lower case (as the template's script does)
    # With "*": only the entries with one of these (member, text) ("*": any text), as an LLD filter
    where: tuple[tuple[str, str], ...] = ()

    def samples(self, document: object) -> Iterator[Sample]:
        if self.constant is not None:
            yield Sample(self.metric, {}, self.constant)
            return
        found = _member(document, self.head)
        if self.label is None or self.label_path is not None:
            value = self._value(found)
            labels = self._labels_from(document)
            if value is not None and labels is not None:
                yield Sample(self.metric, labels, value * self.scale)
            return
        if not isinstance(found, dict):
            return
        for entry, inner in found.items():
            if self.where and not any(_is_text(inner, member, text) for member, text in self.where):
                continue
            value = self._value(_member(inner, self.tail))
            if value is not None:
                yield Sample(self.metric, {self.label: entry}, value * self.scale)

    def _value(self, found: object) -> float | None:
        if self.codes is None:
            return _number(found)
        if not isinstance(found, str):
            return None
        text = found.lower() if self.fold_case else found
        return self.codes.get(text, self.codes.get(_OTHER_TEXT))

    def _labels_from(self, document: object) -> dict[str, str] | None:
        """The label a label_path gives ({} without one); None when the document has no text there."""
        if self.label is None or self.label_path is None:
            return {}
        text = _member(document, self.label_path)
        return {self.label: text} if isinstance(text, str) and text else None


def _is_text(entry: object, member: str, text: str) -> bool:
    """Whether a map entry's ``member`` is ``text`` (any text for "*")."""
    found = entry.get(member) if isinstance(entry, dict) else None
    return isinstance(found, str) and text in ("*", found)


def _member(document: object, names: tuple[str, ...]) -> object:
    for name in names:
        if not isinstance(document, dict):
            return None
        document = document.get(name)
    return document


def _number(value: object) -> float | None:
    """Booleans as 1/0, finite numbers as floats; anything else is no sample."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class Expander:
    """Turns readings of the expanded keys into samples; other keys are not its business."""

    def __init__(
        self,
        rows: Mapping[str, tuple[_Row, ...]],
        params: Mapping[str, tuple[str, ...]] | None = None,
        plain_text: frozenset[str] = frozenset(),
    ) -> None:
        self._rows = dict(rows)
        self._params = dict(params or {})  # key name -> label names of its [params]
        self._plain_text = plain_text  # keys whose value is the text itself, not JSON
        self.invalid = 0  # values of an expanded key that were not JSON
        self._throttled = ThrottledLog(log)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Expander:
        """From a parsed data file; raises ExpansionError naming the bad entry."""
        return cls(*_parse(data))

    @classmethod
    def shipped(cls) -> Expander:
        """From the data file shipped beside this module (read and checked once per process)."""
        return cls(*_shipped_rows())

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._rows)

    def metrics(self) -> dict[str, MetricDef]:
        return {row.metric.name: row.metric for rows in self._rows.values() for row in rows}

    def expand(self, reading: Reading) -> list[Sample] | None:
        """The samples of one reading; None when its key is not expanded (the caller handles it)."""
        rows, labels = self._rows.get(reading.key), {}
        if rows is None and (m := _KEY.match(reading.key)) is not None and m.group(1) in self._params:
            rows = self._rows.get(m.group(1))
            labels = dict(zip(self._params[m.group(1)], split_params(m.group(2)), strict=False))
        if rows is None:
            return None
        document: Any = reading.value
        if isinstance(document, str) and reading.key not in self._plain_text:
            try:
                document = json.loads(document)
            except (ValueError, RecursionError):
                self.invalid += 1
                self._throttled.warning(
                    "invalid:" + reading.key,
                    "prometheus: %s on %s is not JSON; no series from it",
                    reading.key,
                    reading.host,
                )
                return []
        return [
            Sample(sample.metric, {**labels, **sample.labels}, sample.value) if labels else sample
            for row in rows
            for sample in row.samples(document)
        ]


def _parse_path(where: str, path: object) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """``$.a.*.b`` -> (("a",), ("b",), True)."""
    if not isinstance(path, str) or not (path == "$" or path.startswith("$.")):
        raise ExpansionError(f"{where}: path must be '$' or start with '$.', got {path!r}")
    members = tuple(path.split(".")[1:])
    if any(not m for m in members):
        raise ExpansionError(f"{where}: empty member in path {path!r}")
    wildcards = members.count(_EVERY_ENTRY)
    if wildcards > 1:
        raise ExpansionError(f"{where}: at most one '*' per path, got {path!r}")
    if wildcards == 0:
        return members, (), False
    split = members.index(_EVERY_ENTRY)
    return members[:split], members[split + 1 :], True


def _metric_defs(raw: Mapping[str, Any]) -> dict[str, MetricDef]:
    canonical_units = unit_table().prometheus
    defs = {}
    for name, spec in raw.items():
        where = f"{DATA_FILE}: metric {name!r}"
        if not _METRIC.fullmatch(name):
            raise ExpansionError(f"{where}: letters, digits, '_' and '.' only")
        unknown = set(spec) - {"unit", "type", "help"}
        if unknown:
            raise ExpansionError(f"{where}: unknown field(s) {sorted(unknown)}")
        unit, kind, help_text = spec.get("unit", ""), spec.get("type", "gauge"), spec.get("help")
        if unit not in canonical_units:
            raise ExpansionError(f"{where}: unit {unit!r} is not a canonical unit of units.toml")
        if kind not in _KINDS:
            raise ExpansionError(f"{where}: type must be one of {_KINDS}, got {kind!r}")
        if not isinstance(help_text, str) or not help_text:
            raise ExpansionError(f"{where}: help is required")
        defs[name] = MetricDef(name, unit, kind, help_text)
    return defs


def _codes(raw: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    tables = {}
    for name, table in raw.items():
        where = f"{DATA_FILE}: codes {name!r}"
        if not isinstance(table, dict) or not table:
            raise ExpansionError(f"{where}: a table of text = number")
        if any(isinstance(code, bool) or not isinstance(code, int) for code in table.values()):
            raise ExpansionError(f"{where}: every code must be an integer")
        tables[name] = {text: float(code) for text, code in table.items()}
    return tables


def _row(
    where: str, spec: Mapping[str, Any], defs: Mapping[str, MetricDef], codes: Mapping[str, dict[str, float]]
) -> _Row:
    unknown = set(spec) - {
        "path", "value", "metric", "label", "label_path", "scale", "codes", "fold_case", "where",
    }
    if unknown:
        raise ExpansionError(f"{where}: unknown field(s) {sorted(unknown)}")
    metric = defs.get(spec.get("metric", ""))
    if metric is None:
        raise ExpansionError(f"{where}: metric {spec.get('metric')!r} is not defined under [metric]")
    scale = spec.get("scale", 1.0)
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        raise ExpansionError(f"{where}: scale must be a number")
    if ("path" in spec) == ("value" in spec):
        raise ExpansionError(f"{where}: give either path or value")
    if "value" in spec:
        constant = _number(spec["value"])
        if constant is None or "label" in spec:
            raise ExpansionError(f"{where}: value must be a number, without label")
        return _Row(metric, (), (), None, 1.0, constant)
    head, tail, every_entry = _parse_path(where, spec["path"])
    label = spec.get("label")
    label_path = None
    if "label_path" in spec:
        label_head, _, label_every = _parse_path(where, spec["label_path"])
        if every_entry or label_every or label is None:
            raise ExpansionError(f"{where}: label_path needs a label, and paths without '*'")
        label_path = label_head
    elif every_entry != (label is not None):
        raise ExpansionError(f"{where}: a path with '*' needs a label, and only such a path has one")
    if label is not None and (not _LABEL.fullmatch(label) or label in _RESERVED_LABELS):
        raise ExpansionError(f"{where}: {label!r} cannot be a label name")
    table = None
    if "codes" in spec:
        table = codes.get(spec["codes"])
        if table is None:
            raise ExpansionError(f"{where}: codes {spec['codes']!r} is not defined under [codes]")
    fold_case = spec.get("fold_case", False)
    if not isinstance(fold_case, bool) or (fold_case and table is None):
        raise ExpansionError(f"{where}: fold_case is true or false, and only with codes")
    only = spec.get("where", {})
    if not isinstance(only, dict) or not all(isinstance(t, str) for t in only.values()) or (
        only and not every_entry
    ):
        raise ExpansionError(f"{where}: where is a table of member = text, on a path with '*'")
    return _Row(
        metric, head, tail, label, float(scale), None, table, label_path, fold_case, tuple(only.items())
    )


_Parsed = tuple[dict[str, tuple[_Row, ...]], dict[str, tuple[str, ...]], frozenset[str]]


def _parse(data: Mapping[str, Any]) -> _Parsed:
    defs = _metric_defs(data.get("metric", {}))
    codes = _codes(data.get("codes", {}))
    rows: dict[str, tuple[_Row, ...]] = {}
    labels_of: dict[str, str | None] = {}  # every series of one metric has the same label names
    for key, specs in data.get("expand", {}).items():
        built = []
        for index, spec in enumerate(specs):
            row = _row(f"{DATA_FILE}: expand {key!r} row {index + 1}", spec, defs, codes)
            if labels_of.setdefault(row.metric.name, row.label) != row.label:
                raise ExpansionError(f"{DATA_FILE}: metric {row.metric.name!r} is fed with different labels")
            built.append(row)
        rows[key] = tuple(built)
    params: dict[str, tuple[str, ...]] = {}
    for key, names in data.get("params", {}).items():
        if key not in rows:
            raise ExpansionError(f"{DATA_FILE}: params {key!r}: no such key under [expand]")
        bad = [n for n in names if not isinstance(n, str) or not _LABEL.fullmatch(n) or n in _RESERVED_LABELS]
        if bad or not names:
            raise ExpansionError(f"{DATA_FILE}: params {key!r}: label names expected, got {names!r}")
        params[key] = tuple(names)
    plain_text = frozenset(data.get("plain_text", ()))
    if plain_text - set(rows):
        raise ExpansionError(f"{DATA_FILE}: plain_text {sorted(plain_text - set(rows))}: not under [expand]")
    return rows, params, plain_text


@cache
def _shipped_rows() -> _Parsed:
    text = resources.files("trapline.exporters.prometheus").joinpath(DATA_FILE).read_text("utf-8")
    return _parse(tomllib.loads(text))
