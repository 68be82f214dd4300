"""The unit table (units.toml): each unit's canonical spelling, its aliases with their
conversion, and the Prometheus base unit it is exported in."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True, slots=True)
class UnitRule:
    unit: str
    factor: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class PrometheusUnit:
    suffix: str  # appended to the metric name ("" = none)
    factor: float  # canonical value * factor = value in the Prometheus base unit


@dataclass(frozen=True, slots=True)
class UnitTable:
    rules: dict[str, UnitRule]
    prometheus: dict[str, PrometheusUnit]


@cache
def unit_table() -> UnitTable:
    raw = tomllib.loads(resources.files("trapline.core").joinpath("units.toml").read_text("utf-8"))
    rules = {name: UnitRule(name) for name in raw["canonical"]}
    for alias, spec in raw["alias"].items():
        rules[alias] = UnitRule(spec["unit"], spec.get("factor", 1.0), spec.get("offset", 0.0))
    prometheus = {
        name: PrometheusUnit(spec["prometheus"], spec.get("prometheus_factor", 1.0))
        for name, spec in raw["canonical"].items()
    }
    return UnitTable(rules, prometheus)
