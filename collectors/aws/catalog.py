"""The CloudWatch metric catalog (``metrics.toml``): which metrics to ask for, and as what."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUILTIN_CATALOG = Path(__file__).with_name("metrics.toml")
SERVICES = ("emr", "emr_serverless", "glue")
STATISTICS = ("Average", "Maximum", "Minimum", "Sum", "SampleCount")


class CatalogError(ValueError):
    """The catalog file is unusable; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    stat: str
    key: str
    unit: str = ""
    scale: float = 1.0
    dimensions: tuple[tuple[str, str], ...] = ()
    requires: str | None = None


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    service: str
    namespace: str
    resource_dimension: str
    period: int
    delay: int
    periods: int
    metrics: tuple[MetricSpec, ...]


def load_catalog(path: Path = BUILTIN_CATALOG) -> dict[str, NamespaceSpec]:
    """Parse and check the catalog; raise :class:`CatalogError` naming the bad entry."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(SERVICES))
    if unknown:
        raise CatalogError(f"{path}: [{unknown[0]}]: unknown service, expected one of {', '.join(SERVICES)}")
    return {service: _namespace(path, service, table) for service, table in data.items()}


def _namespace(path: Path, service: str, table: Any) -> NamespaceSpec:
    where = f"{path}: [{service}]"
    if not isinstance(table, dict):
        raise CatalogError(f"{where}: expected a table")
    entries = table.get("metrics", [])
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{where}.metrics: expected a non-empty array of tables")
    metrics = tuple(_metric(f"{where}.metrics[{i}]", entry) for i, entry in enumerate(entries))
    keys = [m.key for m in metrics]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate:
        raise CatalogError(f"{where}: key {duplicate!r} appears twice")
    return NamespaceSpec(
        service=service,
        namespace=_text(where, table, "namespace"),
        resource_dimension=_text(where, table, "resource_dimension"),
        period=_seconds(where, table, "period", minimum=1),
        delay=_seconds(where, table, "delay", minimum=0),
        periods=_seconds(where, table, "periods", minimum=1),
        metrics=metrics,
    )


def _metric(where: str, entry: Any) -> MetricSpec:
    if not isinstance(entry, dict):
        raise CatalogError(f"{where}: expected a table")
    allowed = {"name", "stat", "key", "unit", "scale", "dimensions", "requires"}
    extra = sorted(set(entry) - allowed)
    if extra:
        raise CatalogError(f"{where}.{extra[0]}: unknown field")
    stat = _text(where, entry, "stat")
    if stat not in STATISTICS:
        raise CatalogError(f"{where}.stat: expected one of {', '.join(STATISTICS)}, got {stat!r}")
    scale = entry.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
        raise CatalogError(f"{where}.scale: expected a positive number, got {scale!r}")
    dimensions = entry.get("dimensions", {})
    if not isinstance(dimensions, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in dimensions.items()
    ):
        raise CatalogError(f"{where}.dimensions: expected a table of strings")
    requires = entry.get("requires")
    if requires is not None and not isinstance(requires, str):
        raise CatalogError(f"{where}.requires: expected a string")
    return MetricSpec(
        name=_text(where, entry, "name"),
        stat=stat,
        key=_text(where, entry, "key"),
        unit=_text(where, entry, "unit", ""),
        scale=float(scale),
        dimensions=tuple(sorted(dimensions.items())),
        requires=requires,
    )


def _text(where: str, table: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise CatalogError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value


def _seconds(where: str, table: Mapping[str, Any], key: str, minimum: int) -> int:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CatalogError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
    return value
