"""Prometheus exporter: the latest value of every numeric reading, served on /metrics.

Sample config::

    [prometheus]
    listen = "127.0.0.1:9708"   # address:port; loopback unless you mean it
    stale_after = 600           # seconds without a value before a series is removed

Names follow Prometheus conventions: ``trapline_`` + the key with dots as
underscores + the base unit (``_celsius``, ``_seconds``...), counters end in
``_total``; the Zabbix host is the ``host`` label.  Series whose source went
silent for ``stale_after`` disappear instead of showing a frozen value.
Served by a small asyncio HTTP handler, so the agent needs no extra thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from trapline.core.config import Section
from trapline.core.keys import split_params
from trapline.core.model import Item, Reading
from trapline.core.units import PrometheusUnit, unit_table
from trapline.exporters.prometheus.expand import Expander, Sample

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9708"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_KEY = re.compile(r"^([^\[]+)(?:\[(.*)\])?$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    kind: str  # "gauge" | "counter"
    param_labels: tuple[str, ...]
    help: str
    name: str  # the name the key's metric takes; the key itself unless the catalog says otherwise


@cache
def catalog() -> dict[str, MetricSpec]:
    raw = tomllib.loads(
        resources.files("trapline.exporters.prometheus").joinpath("catalog.toml").read_text("utf-8")
    )
    return {
        key: MetricSpec(
            kind=spec.get("type", "gauge"),
            param_labels=tuple(spec.get("param_labels", ())),
            help=spec["help"],
            name=spec.get("name", key),
        )
        for key, spec in raw["metric"].items()
    }


def prometheus_unit(unit: str) -> PrometheusUnit:
    """The base unit a metric is exposed in; unknown units become a plain suffix."""
    known = unit_table().prometheus.get(unit)
    return known if known is not None else PrometheusUnit(_INVALID.sub("_", unit).lower(), 1.0)


def metric_name(key_name: str, suffix: str) -> str:
    base = key_name if key_name.startswith("trapline.") else f"trapline.{key_name}"
    name = _INVALID.sub("_", base.replace(".", "_"))
    if suffix and not name.endswith("_" + suffix):
        name = f"{name}_{suffix}"
    return name


@dataclass(slots=True)
class _Series:
    value: float
    seen: float  # monotonic time of the last update


class PrometheusExporter:
    def __init__(self, host: str, port: int, stale_after: float) -> None:
        self.name = "prometheus"
        self.host = host
        self.port = port
        self.stale_after = stale_after
        # (metric name, kind, help) -> label names -> label values -> series
        self._families: dict[tuple[str, str, str], dict[tuple[str, ...], dict[tuple[str, ...], _Series]]] = {}
        # JSON master values (mist.ap.raw) become many series: expand.toml
        self.expander = Expander.shipped()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: asyncio.Server | None = None

    # -- Observer ---------------------------------------------------------------
    def observe(self, item: Item) -> None:
        if isinstance(item, Reading) and (samples := self.expander.expand(item)) is not None:
            self._store_expanded(item, samples)
            return
        if not isinstance(item, Reading) or isinstance(item.value, str):
            return  # text and discovery have no place in a numeric time series
        m = _KEY.match(item.key)
        if m is None:
            return
        key_name, params = m.group(1), m.group(2)
        spec = catalog().get(key_name)
        kind = spec.kind if spec else "gauge"
        labels: dict[str, str] = {"host": item.host}
        labels.update(item.labels)
        if params is not None and spec and spec.param_labels:
            for label, value in zip(spec.param_labels, split_params(params), strict=False):
                labels[label] = value
        elif params is not None and not item.labels:
            labels["param"] = params
        help_text = spec.help if spec else f"trapline reading {key_name}"
        name = spec.name if spec else key_name
        self._store(name, kind, help_text, unit=item.unit, labels=labels, value=float(item.value))

    def _store_expanded(self, item: Reading, samples: list[Sample]) -> None:
        for sample in samples:
            m = sample.metric
            labels = {"host": item.host, **item.labels, **sample.labels}
            self._store(m.name, m.kind, m.help, unit=m.unit, labels=labels, value=sample.value)

    def _store(
        self, key_name: str, kind: str, help_text: str, *, unit: str, labels: dict[str, str], value: float
    ) -> None:
        base = prometheus_unit(unit)
        name = metric_name(key_name, base.suffix)
        names = tuple(sorted(labels))
        family = self._families.setdefault((name, kind, help_text), {})
        family.setdefault(names, {})[tuple(labels[n] for n in names)] = _Series(
            value * base.factor, time.monotonic()
        )

    def collect(self) -> Iterator[Metric]:
        cutoff = time.monotonic() - self.stale_after
        for (name, kind, help_text), by_labels in list(self._families.items()):
            for label_names, series in list(by_labels.items()):
                for values in [v for v, s in series.items() if s.seen < cutoff]:
                    del series[values]
                if not series:
                    del by_labels[label_names]
                    continue
                family: GaugeMetricFamily | CounterMetricFamily
                if kind == "counter":
                    family = CounterMetricFamily(name, help_text, labels=label_names)
                else:
                    family = GaugeMetricFamily(name, help_text, labels=label_names)
                for values, s in series.items():
                    family.add_metric(list(values), s.value)
                yield family
            if not by_labels:
                del self._families[(name, kind, help_text)]

    # -- HTTP -------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("Prometheus metrics on http://%s:%d/metrics", self.host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                body, status = generate_latest(self.registry), b"200 OK"
            else:
                body, status = b"see /metrics\n", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # a broken scrape is the scraper's problem, never the agent's
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def build(section: Section) -> PrometheusExporter:
    host, port = section.host_port("listen", None, DEFAULT_LISTEN, lowest_port=0)
    try:
        # A local address to listen on: unlike a remote peer it cannot come up later, so a name
        # that does not resolve here is a config mistake, found before the agent starts.
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise section.error("listen", f"cannot resolve {host!r} on this machine ({exc})") from None
    stale_after = section.number("stale_after", 600.0, minimum=1)
    exporter = PrometheusExporter(host, port, stale_after)
    section.done()
    return exporter
