"""The OBD-II collector: one ELM327 adapter, polled through python-OBD.

Sample configuration section (all keys but ``type``, ``host`` and ``device``
are optional; durations in seconds)::

    [collectors.van17_obd]
    type = "obd"
    host = "van-17"                  # Zabbix host of the vehicle
    device = "/dev/rfcomm0"          # or "socket://192.168.0.10:35000"
    baudrate = 38400                 # default: auto-detect (38400 for socket://)
    protocol = "6"                   # ELM327 protocol number; default: auto
    call_timeout = 5.0               # deadline of every adapter call
    connect_timeout = 30.0           # deadline of a connection attempt
    retry_initial = 1.0              # backoff while no adapter answers ...
    retry_max = 60.0                 # ... doubling up to this
    idle_interval = 60.0             # ATRV + ignition probe while the ignition is off
    unusable_max = 5                 # unusable answers in a row before reconnecting
    multi_pid = true                 # several PIDs per request on CAN
    max_pids_per_request = 6
    dtc_interval = 300.0

    [collectors.van17_obd.tiers.fast]
    interval = 1.0
    pids = ["SPEED", "RPM", "ENGINE_LOAD", "THROTTLE_POS"]

    [collectors.van17_obd.tiers.slow]
    interval = 30.0
    pids = ["COOLANT_TEMP", "INTAKE_TEMP", "FUEL_LEVEL", "CONTROL_MODULE_VOLTAGE"]

Item keys are listed in ``README.md`` beside this file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from trapline.collectors.obd.adapter import Adapter, Answer, Reach
from trapline.collectors.obd.catalog import DecodeError, PidSpec, pid_table
from trapline.collectors.obd.link import Link, LinkState
from trapline.collectors.obd.payload import (
    MAX_PIDS_PER_REQUEST,
    MODE_03_ANSWER,
    MODE_07_ANSWER,
    PayloadError,
    decode_dtcs,
    decode_monitor_status,
    decode_vin,
    describe_dtc,
    ecu_answered_0100,
    parse_voltage,
    pids_from_ecus,
    split_pids,
)
from trapline.middleware.blocking import BlockingWorker, DeadlineMissed
from trapline.middleware.config import Section
from trapline.middleware.model import Discovery, Reading, Value
from trapline.middleware.plugin import Outbox

T = TypeVar("T")

log = logging.getLogger(__name__)

PID_DISCOVERY = "obd.pid.discovery"
DTC_DISCOVERY = "obd.dtc.discovery"
_MONITOR_STATUS_PID = 0x01
_MULTI_PID_REFUSALS_MAX = 2  # refused multi-PID requests before single PIDs only
_DTC_SERVICES = (("stored", "03", MODE_03_ANSWER), ("pending", "07", MODE_07_ANSWER))

DEFAULT_TIERS = {
    "fast": (1.0, ("SPEED", "RPM", "ENGINE_LOAD", "THROTTLE_POS")),
    "slow": (30.0, ("COOLANT_TEMP", "INTAKE_TEMP", "FUEL_LEVEL", "CONTROL_MODULE_VOLTAGE")),
}


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    interval: float
    pids: tuple[PidSpec, ...]


@dataclass(frozen=True, slots=True)
class ObdSettings:
    host: str
    device: str
    baudrate: int | None
    protocol: str | None
    tiers: tuple[Tier, ...]
    call_timeout: float = 5.0
    connect_timeout: float = 30.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    idle_interval: float = 60.0
    unusable_max: int = 5
    multi_pid: bool = True
    max_pids_per_request: int = MAX_PIDS_PER_REQUEST
    dtc_interval: float = 300.0


def _read_tiers(section: Section) -> tuple[Tier, ...]:
    table = pid_table()
    raw = section.table("tiers")
    entries = [(name, sub.number("interval", minimum=0.05), sub.strings("pids"), sub)
               for name, sub in raw.subsections()]
    if not entries:
        return tuple(
            Tier(name, interval, tuple(table[p] for p in pids))
            for name, (interval, pids) in DEFAULT_TIERS.items()
        )
    tiers = []
    for name, interval, pids, sub in entries:
        unknown = [p for p in pids if p not in table]
        if unknown:
            raise sub.error("pids", f"unknown PID {unknown[0]!r} (known: see pids.toml)")
        sub.done()
        tiers.append(Tier(name, interval, tuple(table[p] for p in pids)))
    return tuple(tiers)


def read_settings(section: Section) -> ObdSettings:
    device = section.text("device")
    # baud detection never succeeds over TCP, so socket:// gets the usual 38400
    default_baud = 38400 if device.startswith("socket://") else None
    baudrate = section.integer("baudrate", 0, minimum=0) or default_baud
    protocol = section.text("protocol", "") or None
    settings = ObdSettings(
        host=section.text("host"),
        device=device,
        baudrate=baudrate,
        protocol=protocol,
        tiers=_read_tiers(section),
        call_timeout=section.number("call_timeout", 5.0, minimum=0.1),
        connect_timeout=section.number("connect_timeout", 30.0, minimum=0.5),
        retry_initial=section.number("retry_initial", 1.0, minimum=0.01),
        retry_max=section.number("retry_max", 60.0, minimum=0.01),
        idle_interval=section.number("idle_interval", 60.0, minimum=0.05),
        unusable_max=section.integer("unusable_max", 5, minimum=1),
        multi_pid=section.boolean("multi_pid", True),
        max_pids_per_request=section.integer("max_pids_per_request", MAX_PIDS_PER_REQUEST, minimum=1),
        dtc_interval=section.number("dtc_interval", 300.0, minimum=0.05),
    )
    if settings.max_pids_per_request > MAX_PIDS_PER_REQUEST:
        raise section.error("max_pids_per_request", f"at most {MAX_PIDS_PER_REQUEST} (SAE J1979)")
    section.text("type")
    section.done()
    return settings


def build(name: str, section: Section) -> ObdCollector:
    return ObdCollector(name, read_settings(section))


def _chunks(specs: Sequence[PidSpec], size: int) -> list[list[PidSpec]]:
    return [list(specs[i : i + size]) for i in range(0, len(specs), size)]


@dataclass(slots=True)
class _Connection:
    """What one connection to the adapter knows; thrown away on reconnect."""

    adapter: Adapter
    worker: BlockingWorker
    supported: frozenset[str] = frozenset()
    multi_ok: bool = False
    multi_refusals: int = 0
    polled: tuple[PidSpec, ...] = field(default_factory=tuple)


class ObdCollector:
    def __init__(self, name: str, settings: ObdSettings) -> None:
        self.name = name
        self.settings = settings
        self.link = Link(settings.retry_initial, settings.retry_max, settings.unusable_max)
        self._dtcs_reported: set[tuple[str, str]] = set()
        self._out: Outbox | None = None

    # -- helpers -------------------------------------------------------------
    @property
    def out(self) -> Outbox:
        assert self._out is not None, "run() sets the outbox"
        return self._out

    def _put(self, key: str, value: Value, unit: str = "", labels: dict[str, str] | None = None) -> None:
        self.out.put(Reading.now(self.settings.host, key, value, unit, labels))

    def _report_state(self) -> None:
        self._put("obd.state", int(self.link.state), labels={"state": self.link.state.name.lower()})

    async def _call(self, conn: _Connection, fn: Callable[[], T], deadline: float, what: str) -> T | None:
        """A python-OBD call in the worker; None (link marked lost) when it fails or hangs."""
        try:
            return await conn.worker.call(fn, deadline, what)
        except DeadlineMissed as exc:
            self.out.error(f"obd: {exc}; abandoning the connection")
            conn.adapter.abort()
        except Exception as exc:  # python-OBD raises on some garbage; never fatal here
            self.out.error(f"obd: {what} failed: {type(exc).__name__}: {exc}")
        self.link.lost()
        return None

    async def _request(self, conn: _Connection, command: str) -> Answer | None:
        answer = await self._call(
            conn, lambda: conn.adapter.request(command), self.settings.call_timeout, f"request {command}"
        )
        if answer is not None and conn.adapter.lost():
            self.out.error(f"obd: adapter connection lost during {command}")
            self.link.lost()
            return None
        return answer

    # -- main loop -------------------------------------------------------------
    async def run(self, out: Outbox) -> None:
        self._out = out
        while True:
            await asyncio.sleep(self.link.retry_delay())
            conn = _Connection(
                Adapter(self.settings.device, self.settings.baudrate, self.settings.protocol),
                BlockingWorker(f"obd-{self.name}"),
            )
            try:
                await self._serve(conn)
            finally:
                if conn.worker.usable:
                    conn.worker.submit_last(conn.adapter.close)
                else:
                    conn.adapter.abort()

    async def _serve(self, conn: _Connection) -> None:
        reach = await self._call(
            conn, conn.adapter.connect, self.settings.connect_timeout, f"connect to {self.settings.device}"
        )
        changed = self.link.connected(Reach.NOTHING if reach is None else reach)
        if changed:
            log.info("%s: OBD link is now %s", self.name, self.link.state.name.lower())
        self._report_state()
        if self.link.state is LinkState.RUNNING:
            await self._serve_car(conn)
        elif self.link.state is LinkState.IGNITION_OFF:
            await self._serve_ignition_off(conn)

    async def _serve_ignition_off(self, conn: _Connection) -> None:
        """Adapter powered, car silent: battery voltage now and then, and watch for the ECU."""
        while not self.link.needs_reconnect():
            await self._read_voltage(conn)
            answer = await self._request(conn, "0100")
            if answer is not None and ecu_answered_0100(answer.lines):
                log.info("%s: the ECU answers again (ignition on); reconnecting", self.name)
                self.link.lost()
                return
            if self.link.needs_reconnect():
                return
            self._report_state()
            await asyncio.sleep(self.settings.idle_interval)

    async def _serve_car(self, conn: _Connection) -> None:
        s = self.settings
        supported = await self._call(conn, conn.adapter.supported_pids, s.call_timeout, "supported PIDs")
        conn.supported = supported or frozenset()
        conn.multi_ok = s.multi_pid and s.max_pids_per_request > 1 and bool(
            await self._call(conn, conn.adapter.is_can, s.call_timeout, "protocol")
        )
        protocol = await self._call(conn, conn.adapter.protocol_name, s.call_timeout, "protocol")
        if protocol:
            self._put("obd.protocol", protocol)
        self._discover_pids(conn)
        await self._read_vin(conn)
        await self._poll_dtcs(conn)

        now = time.monotonic()
        due = {tier.name: now for tier in s.tiers}
        dtc_due = now + s.dtc_interval
        housekeeping_due = now
        while not self.link.needs_reconnect():
            now = time.monotonic()
            for tier in s.tiers:
                if due[tier.name] <= now and not self.link.needs_reconnect():
                    await self._poll_tier(conn, tier)
                    due[tier.name] = max(due[tier.name] + tier.interval, time.monotonic())
            if dtc_due <= now and not self.link.needs_reconnect():
                await self._poll_dtcs(conn)
                dtc_due = time.monotonic() + s.dtc_interval
            if housekeeping_due <= now and not self.link.needs_reconnect():
                await self._read_voltage(conn)
                self._report_state()
                housekeeping_due = time.monotonic() + s.idle_interval
            next_due = min([*due.values(), dtc_due, housekeeping_due])
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))

    # -- what is polled ------------------------------------------------------------
    def _discover_pids(self, conn: _Connection) -> None:
        polled: dict[str, PidSpec] = {}
        for tier in self.settings.tiers:
            for spec in tier.pids:
                if spec.name in conn.supported:
                    polled.setdefault(spec.name, spec)
                else:
                    log.info("%s: ECU does not support %s; not polled", self.name, spec.name)
        conn.polled = tuple(polled.values())
        rows = [{"{#PID}": p.name, "{#NAME}": p.description, "{#UNIT}": p.unit} for p in conn.polled]
        self.out.put(Discovery.now(self.settings.host, PID_DISCOVERY, rows))

    async def _poll_tier(self, conn: _Connection, tier: Tier) -> None:
        specs = [spec for spec in tier.pids if spec in conn.polled]
        size = self.settings.max_pids_per_request if conn.multi_ok else 1
        for group in _chunks(specs, size):
            if self.link.needs_reconnect():
                return
            for spec, data in (await self._read_pids(conn, group)).items():
                try:
                    value = spec.decode(data)
                except DecodeError as exc:
                    self.out.error(f"obd: {exc}")
                    continue
                self._put(f"obd.pid[{spec.name}]", value, spec.unit, {"pid": spec.name})

    async def _read_pids(self, conn: _Connection, group: list[PidSpec]) -> dict[PidSpec, bytes]:
        """Read a group of PIDs in one request; single requests for what it left out."""
        answer = await self._request(conn, "01" + "".join(f"{spec.pid:02X}" for spec in group))
        if answer is None:
            return {}
        by_pid = {spec.pid: spec for spec in group}
        values, rejected = pids_from_ecus(answer.payloads, {pid: spec.size for pid, spec in by_pid.items()})
        for reason in rejected:
            self.out.error(f"obd: {reason}")
        found = {by_pid[pid]: data for pid, data in values.items()}
        if found:
            self.link.answered()
        else:
            self.link.unusable()
        if len(group) == 1:
            return found
        if answer.payloads:  # garbled or partial is not a refusal: single PIDs fill the gaps
            conn.multi_refusals = 0
        else:
            conn.multi_refusals += 1
            if conn.multi_refusals >= _MULTI_PID_REFUSALS_MAX:
                conn.multi_ok = False
                log.warning("%s: multi-PID requests refused (%s); single PIDs from now on",
                            self.name, " / ".join(answer.lines) or "no answer")
        for spec in group:
            if spec not in found and not self.link.needs_reconnect():
                found.update(await self._read_pids(conn, [spec]))
        return found

    async def _read_voltage(self, conn: _Connection) -> None:
        answer = await self._request(conn, "ATRV")
        if answer is None:
            return
        try:
            volts = parse_voltage(answer.lines[0] if answer.lines else "")
        except PayloadError as exc:
            self.out.error(f"obd: {exc}")
            self.link.unusable()
            return
        self.link.answered()
        self._put("obd.voltage", volts, "V")

    async def _read_vin(self, conn: _Connection) -> None:
        answer = await self._request(conn, "0902")
        if answer is None or answer.empty:
            log.info("%s: no VIN from the ECU", self.name)
            return
        try:
            vin = decode_vin(answer.payloads[0])
        except PayloadError as exc:
            self.out.error(f"obd: {exc}")
            return
        self._put("obd.vin", vin)

    async def _poll_dtcs(self, conn: _Connection) -> None:
        """Stored and pending DTCs, MIL; all or nothing, so a failed read never loses codes."""
        present: list[tuple[str, str]] = []
        for state, service, answer_byte in _DTC_SERVICES:
            answer = await self._request(conn, service)
            if answer is None:
                return
            try:
                if answer.empty:
                    raise PayloadError(f"no answer to mode {service} ({' / '.join(answer.lines)})")
                codes = decode_dtcs(answer.payloads, answer_byte)
            except PayloadError as exc:
                self.out.error(f"obd: {exc}")
                self.link.unusable()
                return
            self.link.answered()
            present += [(code, state) for code in codes]
        await self._read_mil(conn)

        rows = [{"{#DTC}": code, "{#DESCRIPTION}": describe_dtc(code), "{#STATE}": state}
                for code, state in present]
        self.out.put(Discovery.now(self.settings.host, DTC_DISCOVERY, rows))
        for code, state in present:
            self._put(f"obd.dtc[{code},{state}]", 1, labels={"code": code, "state": state})
        for code, state in sorted(self._dtcs_reported - set(present)):  # cleared since last poll
            self._put(f"obd.dtc[{code},{state}]", 0, labels={"code": code, "state": state})
        self._dtcs_reported = set(present)
        for state, _, _ in _DTC_SERVICES:
            count = sum(1 for _, s in present if s == state)
            self._put(f"obd.dtc.count[{state}]", count, labels={"state": state})

    async def _read_mil(self, conn: _Connection) -> None:
        answer = await self._request(conn, "0101")
        if answer is None or answer.empty:
            return
        try:
            data = split_pids(answer.payloads[0], {_MONITOR_STATUS_PID: 4})[_MONITOR_STATUS_PID]
            mil, _ = decode_monitor_status(data)
        except (PayloadError, KeyError) as exc:
            self.out.error(f"obd: monitor status: {exc}")
            return
        self._put("obd.mil", int(mil))
