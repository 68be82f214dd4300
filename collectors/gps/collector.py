"""GPS collector: position and fix quality from gpsd, through gpsd-py3.

Settings: ``sample.toml``; items: ``README.md``, both beside this file.

gpsd-py3 keeps one connection in module globals, has no socket timeout, raises
on a missing fix or device, and reads only the pre-3.20 ``alt`` key.  So: one GPS
collector per process, every call in a worker thread with a deadline (a hung
gpsd is cut off by closing the socket), every failure a reconnect with backoff,
no fix a value of ``gps.fix.mode``, and altitude taken from the raw report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gpsd

from trapline.collectors.gps.vehicle_derived import (
    GEOFENCE_DISCOVERY,
    GEOFENCES_MACRO,
    DerivedSettings,
    EdgeDerivations,
)
from trapline.core.backoff import Backoff
from trapline.core.blocking import BlockingWorker, DeadlineMissed
from trapline.core.config import ConfigError, Section
from trapline.core.model import Discovery, Reading, Value
from trapline.core.plugin import Outbox
from trapline.wire.vehicle_state import DEFAULT_STATE_DIR, UnreadableState, open_state

log = logging.getLogger(__name__)

_MPS_TO_KMH = 3.6
_COORDINATE_DECIMALS = 6
# The vehicle template's active item whose key carries {$VEHICLE.GEOFENCES}.
GEOFENCES_ITEM = "trapline.geofences"
MACRO_STATUS = "vehicle.geofence.macro.status"
_GPSD_MODULE = threading.Lock()  # gpsd-py3's connection is module-global: one user at a time


class GpsdError(Exception):
    """gpsd went away or sent something unexpected; reconnect."""


@dataclass(frozen=True, slots=True)
class GpsSettings:
    host: str
    server: str = "127.0.0.1"
    port: int = 2947
    interval: float = 5.0
    call_timeout: float = 5.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    derived: DerivedSettings = field(default_factory=DerivedSettings)
    state_dir: Path = DEFAULT_STATE_DIR


def build(name: str, section: Section) -> GpsCollector:
    settings = GpsSettings(
        host=section.text("host"),
        server=section.host("server", "127.0.0.1"),
        port=section.port("port", 2947),
        interval=section.number("interval", 5.0, minimum=0.05),
        call_timeout=section.number("call_timeout", 5.0, minimum=0.1),
        retry_initial=section.number("retry_initial", 1.0, minimum=0.01),
        retry_max=section.number("retry_max", 60.0, minimum=0.01),
        derived=DerivedSettings.from_section(section),
        state_dir=section.path("state_dir", DEFAULT_STATE_DIR),
    )
    section.text("type")
    section.done()
    return GpsCollector(name, settings)


def _connect(server: str, port: int, timeout: float) -> None:
    gpsd.connect(host=server, port=port)
    gpsd.gpsd_socket.settimeout(timeout)  # gpsd-py3 never sets one


def _poll() -> dict[str, Any]:
    """One ``?POLL`` over gpsd-py3's connection, returned raw (gpsd-py3 drops fields we need)."""
    gpsd.gpsd_stream.write("?POLL;\n")
    gpsd.gpsd_stream.flush()
    line = gpsd.gpsd_stream.readline()
    if not line:
        raise GpsdError("gpsd closed the connection")
    try:
        packet = json.loads(line)
    except json.JSONDecodeError:
        raise GpsdError(f"gpsd sent something that is not JSON: {line[:60]!r}") from None
    if not isinstance(packet, dict) or packet.get("class") != "POLL":
        raise GpsdError(f"expected a POLL answer, got {str(packet)[:60]!r}")
    return packet


def _drop_connection() -> None:
    """Unblock and close gpsd-py3's socket from any thread."""
    sock = gpsd.gpsd_socket
    gpsd.gpsd_socket = gpsd.gpsd_stream = None
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _number(report: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = report.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def fix_readings(packet: Mapping[str, Any], now: datetime) -> dict[str, tuple[Value, str]]:
    """{key: (value, unit)} from a raw POLL answer; what a report lacks is left out."""
    tpvs = packet.get("tpv") or [{}]
    skies = packet.get("sky") or [{}]
    tpv: Mapping[str, Any] = tpvs[-1] if isinstance(tpvs[-1], dict) else {}
    sky: Mapping[str, Any] = skies[-1] if isinstance(skies[-1], dict) else {}
    mode = int(_number(tpv, "mode") or 0) if packet.get("active") else 0
    out: dict[str, tuple[Value, str]] = {"gps.fix.mode": (mode, "")}
    used = _number(sky, "uSat")
    if used is None and isinstance(sky.get("satellites"), list):
        used = sum(1 for s in sky["satellites"] if isinstance(s, dict) and s.get("used") is True)
    if used is not None:
        out["gps.satellites.used"] = (int(used), "")
    if mode < 2:
        return out
    lat, lon = _number(tpv, "lat"), _number(tpv, "lon")
    if lat is not None and lon is not None:
        out["gps.latitude"] = (round(lat, _COORDINATE_DECIMALS), "°")
        out["gps.longitude"] = (round(lon, _COORDINATE_DECIMALS), "°")
    speed = _number(tpv, "speed")
    if speed is not None:
        out["gps.speed"] = (round(speed * _MPS_TO_KMH, 2), "km/h")
    track = _number(tpv, "track")
    if track is not None:
        out["gps.track"] = (track, "°")
    horizontal = [e for e in (_number(tpv, "epx"), _number(tpv, "epy")) if e is not None]
    if horizontal:
        out["gps.error.horizontal"] = (max(horizontal), "m")
    vertical = _number(tpv, "epv")
    if vertical is not None:
        out["gps.error.vertical"] = (vertical, "m")
    if mode >= 3:
        altitude = _number(tpv, "altMSL", "alt")
        if altitude is not None:
            out["gps.altitude"] = (altitude, "m")
    if isinstance(tpv.get("time"), str):
        try:
            fixed = datetime.fromisoformat(tpv["time"].replace("Z", "+00:00"))
            out["gps.fix.age"] = (round((now - fixed).total_seconds(), 3), "s")
        except ValueError:
            pass  # a malformed time only costs the age
    return out


class GpsCollector:
    def __init__(self, name: str, settings: GpsSettings) -> None:
        self.name = name
        self.settings = settings
        self.state = open_state(settings.state_dir, settings.host)
        self.derived: EdgeDerivations | None = None  # made once the state file is read
        self._macro_seen: str | None = None  # the last {$VEHICLE.GEOFENCES} value the poller gave
        self._macro_pending: str | None = None  # one not yet taken by run()

    def active_check(self) -> tuple[str, str]:
        return self.settings.host, GEOFENCES_ITEM

    def active_check_params(self, params: Sequence[str] | None) -> None:
        text = params[0] if params else ""
        if text != self._macro_seen:
            self._macro_seen = self._macro_pending = text

    def _take_macro(self, out: Outbox) -> None:
        """Apply a new {$VEHICLE.GEOFENCES}: its discovery and its status now, its states at the next fix.

        A bad value keeps the geofences the macro gave before (and those of the config)."""
        text, self._macro_pending = self._macro_pending, None
        if text is None or self.derived is None:
            return
        host = self.settings.host
        try:
            changed = self.derived.set_macro_geofences(text)
        except ConfigError as exc:
            out.error(f"gps: {self.name}: {exc}", GEOFENCES_MACRO)
            out.put(Reading.now(host, MACRO_STATUS, f"error: {exc}"))
            return
        out.resolved(GEOFENCES_MACRO, f"gps: {self.name}: {GEOFENCES_MACRO} is valid again")
        count = len(self.derived.macro_fences)
        fences = f"{count} geofence" + ("" if count == 1 else "s")
        out.put(Reading.now(host, MACRO_STATUS, f"ok: {fences}"))
        if changed:
            log.info("gps: %s: %s from %s", self.name, fences, GEOFENCES_MACRO)
            out.put(Discovery.now(host, GEOFENCE_DISCOVERY, self.derived.discovery_rows()))

    async def run(self, out: Outbox) -> None:
        if self.derived is None:
            try:
                self.state.load()
            except UnreadableState as exc:
                out.error(f"gps: {self.name}: {exc}")
            self.derived = EdgeDerivations(self.settings.derived, self.state)
        if not _GPSD_MODULE.acquire(blocking=False):
            out.error(f"gps: {self.name}: another GPS collector holds gpsd-py3's only connection")
            await asyncio.Event().wait()  # stay idle until cancelled; never crash the agent
        try:
            await self._run(out)
        finally:
            _drop_connection()
            _GPSD_MODULE.release()

    async def _run(self, out: Outbox) -> None:
        s = self.settings
        backoff = Backoff(s.retry_initial, max(s.retry_max, s.retry_initial))
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            worker = BlockingWorker(f"gps-{self.name}")
            try:
                await worker.call(lambda: _connect(s.server, s.port, s.call_timeout), s.call_timeout,
                                  f"connect to gpsd {s.server}:{s.port}")
                backoff.reset()
                out.resolved("gpsd", f"gps: {self.name}: connected to gpsd {s.server}:{s.port}")
                fences = self.derived.discovery_rows() if self.derived is not None else []
                if fences:
                    out.put(Discovery.now(s.host, GEOFENCE_DISCOVERY, fences))
                while True:
                    packet = await worker.call(_poll, s.call_timeout, "gpsd poll")
                    await self._emit(out, packet)
                    await asyncio.sleep(s.interval)
            except (DeadlineMissed, GpsdError, OSError, ValueError, KeyError) as exc:
                delay = backoff.next_delay()
                out.error(f"gps: {type(exc).__name__}: {exc}; reconnecting", "gpsd")
            finally:
                worker.abandon()
                _drop_connection()

    async def _emit(self, out: Outbox, packet: Mapping[str, Any]) -> None:
        self._take_macro(out)
        now = datetime.now(UTC)
        readings = fix_readings(packet, now)
        lat, lon = readings.get("gps.latitude"), readings.get("gps.longitude")
        speed = readings.get("gps.speed")
        if lat is not None and lon is not None and speed is not None and self.derived is not None:
            derived = self.derived.update(now.timestamp(), float(lat[0]), float(lon[0]), float(speed[0]))
            readings.update(derived)
            # before sending: after a restart no total is below what Zabbix already has
            await self.state.save_or_report(out, f"gps: {self.name}")
        for key, (value, unit) in readings.items():
            out.put(Reading.now(self.settings.host, key, value, unit))
