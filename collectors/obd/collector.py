"""The OBD-II collector: one ELM327 adapter, polled over its own line protocol (elm327.py).

Settings: ``sample.toml``; item keys: ``README.md``, both beside this file.

Every adapter call runs in the connection's worker thread with its own
deadline.  The requests of one polling round (the PIDs of every tier that is
due, the DTC services) go to the thread as one job: one hop there and back per
round instead of per request, which is what the adapter's round trips leave
for the agent's own work.  When tiers will be due again by the time a round
ends (polling back to back), the next round is queued behind it before its
answers are decoded, so the adapter never waits for the event loop between
rounds.

The vehicle totals (:mod:`trapline.wire.vehicle_state`, shared with a GPS
collector of the same host): every ``ODOMETER`` answer sets the odometer, every
``RPM`` answer is an engine time sample.  ``vehicle.odometer``,
``vehicle.engine.time`` and ``vehicle.distance.today`` are written to
``state_dir`` and then sent every ``idle_interval``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from trapline.collectors.obd.adapter import Adapter, Answer, Reach
from trapline.collectors.obd.battery import BatteryWatch, Change, GuardSettings
from trapline.collectors.obd.catalog import DecodeError, PidSpec, pid_table
from trapline.collectors.obd.custom import AnswerError, CustomPid, read_custom_pids
from trapline.collectors.obd.dtc_memory import Dtc, DtcMemory, UnreadableMemory, memory_path
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
from trapline.core.blocking import BlockingWorker, DeadlineMissed, Job
from trapline.core.config import Section
from trapline.core.model import Discovery, Reading, Value
from trapline.core.plugin import Outbox
from trapline.wire.vehicle_state import DEFAULT_STATE_DIR, UnreadableState, open_state

T = TypeVar("T")

log = logging.getLogger(__name__)
_ADAPTER = "adapter"  # the condition key of a lost or failing adapter

PID_DISCOVERY = "obd.pid.discovery"
DTC_DISCOVERY = "obd.dtc.discovery"
_MONITOR_STATUS_PID = 0x01
_MULTI_PID_REFUSALS_MAX = 2  # refused multi-PID requests before single PIDs only
_DTC_SERVICES = (("stored", "03", MODE_03_ANSWER), ("pending", "07", MODE_07_ANSWER))
_MONITOR_STATUS_REQUEST = "0101"
_SEND_FIRST = 0.001  # s the event loop steps aside after a round, see _finish_round
# A sample of these PIDs counts for this many of its polling intervals: one missed
# answer is not a gap in engine time, nor a reason to let GPS count the distance.
_SAMPLE_LIFETIME = 3

DEFAULT_TIERS = {
    "fast": (1.0, ("SPEED", "RPM", "ENGINE_LOAD", "THROTTLE_POS")),
    "slow": (30.0, ("COOLANT_TEMP", "INTAKE_TEMP", "FUEL_LEVEL", "CONTROL_MODULE_VOLTAGE", "ODOMETER")),
}


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    interval: float
    pids: tuple[PidSpec, ...]
    custom: tuple[CustomPid, ...] = ()  # operator-defined, each polled as its own request


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
    state_dir: Path = DEFAULT_STATE_DIR
    battery: GuardSettings = field(default_factory=GuardSettings)


def _read_tiers(section: Section) -> tuple[Tier, ...]:
    table = pid_table()
    raw = section.table("tiers")
    entries = [(name, sub.number("interval", minimum=0.05), sub.strings("pids"), sub)
               for name, sub in raw.subsections()]
    tiers: list[Tier] = []
    if not entries:
        tiers += (Tier(name, interval, tuple(table[p] for p in pids))
                  for name, (interval, pids) in DEFAULT_TIERS.items())
    for name, interval, pids, sub in entries:
        unknown = [p for p in pids if p not in table]
        if unknown:
            raise sub.error("pids", f"unknown PID {unknown[0]!r} (known: see pids.toml)")
        sub.done()
        tiers.append(Tier(name, interval, tuple(table[p] for p in pids)))
    custom = read_custom_pids(section.tables("custom_pids"), table, [tier.name for tier in tiers])
    return tuple(
        Tier(tier.name, tier.interval, tier.pids, tuple(c for c in custom if c.tier == tier.name))
        for tier in tiers
    )


def _read_battery_guard(section: Section) -> GuardSettings:
    d = GuardSettings()
    guard = GuardSettings(
        voltage=section.number("battery_guard_voltage", d.voltage, minimum=0.0, maximum=30.0),
        after=section.number("battery_guard_after", d.after, minimum=0.0),
        resume=section.number("battery_guard_resume", d.resume, minimum=0.0, maximum=30.0),
        shutdown=section.boolean("battery_guard_shutdown", d.shutdown),
        shutdown_command=tuple(section.strings("battery_guard_shutdown_command", list(d.shutdown_command))),
        probe_interval=section.number("battery_guard_probe", d.probe_interval, minimum=0.05),
        crank_window=section.number("crank_window", d.crank_window, minimum=0.05),
    )
    if guard.voltage and guard.resume <= guard.voltage:
        above = f"must be above battery_guard_voltage ({guard.voltage:g} V)"
        raise section.error("battery_guard_resume", above)
    if guard.shutdown and not guard.shutdown_command:
        raise section.error("battery_guard_shutdown_command", "empty, but battery_guard_shutdown is on")
    return guard


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
        state_dir=section.path("state_dir", DEFAULT_STATE_DIR),
        battery=_read_battery_guard(section),
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


def _link_alive(answer: Answer) -> bool:
    return not answer.lost


def _mode_01_request(group: Sequence[PidSpec]) -> str:
    return "01" + "".join(spec.code for spec in group)


@dataclass(slots=True)
class _Connection:
    """What one connection to the adapter knows; thrown away on reconnect."""

    adapter: Adapter
    worker: BlockingWorker
    supported: frozenset[str] = frozenset()
    multi_ok: bool = False
    multi_refusals: int = 0
    polled: tuple[PidSpec, ...] = field(default_factory=tuple)
    seconds_per_request: float | None = None  # measured; None until a round has run
    low_power: bool = False  # sent ATLP: closed without a word, since ATZ would wake the adapter


@dataclass(frozen=True, slots=True)
class _Round:
    """PID requests queued in the worker as one job, not yet read: the mode 01
    requests of the shipped PIDs, then one request per custom PID."""

    groups: list[list[PidSpec]]  # the PIDs of each mode 01 request
    custom: list[CustomPid]  # the custom PID of each request after those
    commands: list[str]
    job: Job[Answer]
    voltage: bool = False  # an AT RV ends the round (watching for an engine start)


class ObdCollector:
    def __init__(self, name: str, settings: ObdSettings) -> None:
        self.name = name
        self.settings = settings
        self.link = Link(settings.retry_initial, settings.retry_max, settings.unusable_max)
        self._dtc_memory = DtcMemory(memory_path(settings.state_dir, name), settings.host)
        self._dtcs_reported: set[Dtc] = set()
        self._out: Outbox | None = None
        self._vehicle = open_state(settings.state_dir, settings.host)
        self._battery = BatteryWatch(settings.battery)
        # how long an answer of a PID stays valid: a few of its shortest polling interval
        self._lifetime: dict[str, float] = {}
        self._custom = tuple(dict.fromkeys(c for tier in settings.tiers for c in tier.custom))
        for tier in sorted(settings.tiers, key=lambda t: -t.interval):
            self._lifetime.update((spec.name, _SAMPLE_LIFETIME * tier.interval) for spec in tier.pids)

    # -- helpers -------------------------------------------------------------
    @property
    def out(self) -> Outbox:
        assert self._out is not None, "run() sets the outbox"
        return self._out

    def _put(self, key: str, value: Value, unit: str = "", labels: dict[str, str] | None = None) -> None:
        self.out.put(Reading.now(self.settings.host, key, value, unit, labels))

    def _put_from(self, answer: Answer, key: str, value: Value, unit: str, labels: dict[str, str]) -> None:
        """A reading stamped with the time its answer arrived (a round is handed back whole)."""
        clock, ns = divmod(answer.received_ns, 1_000_000_000)
        self.out.put(Reading(self.settings.host, key, value, clock, ns, unit, labels))

    def _report_state(self) -> None:
        self._put("obd.state", int(self.link.state), labels={"state": self.link.state.name.lower()})
        self._put("obd.battery.guard", int(self._battery.tripped))

    async def _call(self, conn: _Connection, fn: Callable[[], T], deadline: float, what: str) -> T | None:
        """A python-OBD call in the worker; None (link marked lost) when it fails or hangs."""
        results = await self._results(conn, conn.worker.submit_each((fn,)), deadline, what)
        return None if results is None else results[0]

    async def _results(self, conn: _Connection, job: Job[T], deadline: float, what: str) -> list[T] | None:
        """A job's results; None (link marked lost) when a call fails or hangs."""
        try:
            return await job.result(deadline, what)
        except DeadlineMissed as exc:
            self.out.error(f"obd: {exc}; abandoning the connection", _ADAPTER)
            conn.adapter.abort()
        except Exception as exc:  # python-OBD raises on some garbage; never fatal here
            self.out.error(f"obd: {what} failed: {type(exc).__name__}: {exc}", _ADAPTER)
        self.link.lost()
        return None

    @staticmethod
    def _submit_requests(
        conn: _Connection, commands: Sequence[str], headers: Sequence[str | None] = ()
    ) -> Job[Answer]:
        """Queue request lines to be sent back to back as one worker job; ``headers``
        (as many, or none: every ECU) say which ECU each one goes to."""
        calls = [functools.partial(conn.adapter.request, command, header)
                 for command, header in zip(commands, headers or [None] * len(commands), strict=True)]
        return conn.worker.submit_each(calls, keep_going=_link_alive)

    async def _requests(self, conn: _Connection, commands: Sequence[str]) -> list[Answer]:
        """Send request lines back to back as one worker job, each under ``call_timeout``."""
        return await self._answers(conn, self._submit_requests(conn, commands), commands)

    async def _answers(self, conn: _Connection, job: Job[Answer], commands: Sequence[str]) -> list[Answer]:
        """The answers of a job of requests, in order, up to the first failure (a
        serial error, a missed deadline: the link is then marked lost)."""
        what = f"request {' '.join(commands)}"
        answers = await self._results(conn, job, self.settings.call_timeout, what)
        if answers is None:
            return []
        if answers and answers[-1].lost:
            self.out.error(f"obd: adapter connection lost during {commands[len(answers) - 1]}")
            self.link.lost()
            answers.pop()
        return answers

    async def _request(self, conn: _Connection, command: str) -> Answer | None:
        answers = await self._requests(conn, (command,))
        return answers[0] if answers else None

    # -- main loop -------------------------------------------------------------
    async def run(self, out: Outbox) -> None:
        self._out = out
        try:
            self._dtcs_reported = self._dtc_memory.load()
        except UnreadableMemory as exc:
            out.error(f"obd: {exc}; codes cleared while the agent was stopped are not resolved")
        try:
            self._vehicle.load()
        except UnreadableState as exc:
            out.error(f"obd: {self.name}: {exc}")
        while True:
            # a tripped battery guard leaves the adapter asleep between voltage probes
            await asyncio.sleep(self.settings.battery.probe_interval if self._battery.tripped
                                else self.link.retry_delay())
            conn = _Connection(
                Adapter(self.settings.device, self.settings.baudrate, self.settings.protocol),
                BlockingWorker(f"obd-{self.name}"),
            )
            try:
                await self._serve(conn)
            finally:
                if conn.worker.usable and not conn.low_power:
                    conn.worker.submit_last(conn.adapter.close)
                else:
                    conn.adapter.abort()
                    # an asleep adapter's worker is idle, not stuck: it must end too, or
                    # every voltage probe of a held battery guard leaves a thread behind
                    conn.worker.abandon()

    async def _serve(self, conn: _Connection) -> None:
        reach = await self._call(
            conn, conn.adapter.connect, self.settings.connect_timeout, f"connect to {self.settings.device}"
        )
        changed = self.link.connected(Reach.NOTHING if reach is None else reach)
        if reach is not None:
            self.out.resolved(_ADAPTER, f"obd: {self.name}: adapter answers again")
        if changed:
            log.info("%s: OBD link is now %s", self.name, self.link.state.name.lower())
        self._report_state()
        if self.link.state is LinkState.RUNNING:
            await self._serve_car(conn)
        elif self.link.state is LinkState.IGNITION_OFF:
            await self._serve_ignition_off(conn)
        if self._battery.tripped and not self.link.needs_reconnect():
            await self._sleep_adapter(conn)

    async def _sleep_adapter(self, conn: _Connection) -> None:
        """Battery guard: stop polling and put the adapter into low power where it has one."""
        answer = await self._request(conn, "ATLP")
        conn.low_power = answer is not None and "OK" in answer.lines
        if not conn.low_power:
            log.info("%s: the adapter has no low power mode (ATLP: %s)", self.name,
                     " / ".join(answer.lines) if answer else "no answer")
        self._report_state()
        log.info("%s: battery guard: adapter asleep; its voltage is probed every %g s",
                 self.name, self.settings.battery.probe_interval)

    async def _serve_ignition_off(self, conn: _Connection) -> None:
        """Adapter powered, car silent: battery voltage now and then, and watch for the ECU."""
        while not self.link.needs_reconnect():
            answers = await self._requests(conn, ("ATRV", "0100"))
            if answers:
                self._engine_sample(answers[0], running=False)  # no ECU, no engine
                await self._report_voltage(answers[0])
            if self._battery.tripped:
                return
            if len(answers) > 1 and ecu_answered_0100(answers[1].lines):
                log.info("%s: the ECU answers again (ignition on); reconnecting", self.name)
                self.link.lost()
                return
            if self.link.needs_reconnect():
                return
            self._report_state()
            await self._report_totals()  # the engine time of the drive that just ended, if not yet saved
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
        await self._read_voltage(conn)  # with the other reads at connect, not amid the first rounds

        now = time.monotonic()
        due = {tier.name: now for tier in s.tiers}
        dtc_due = now + s.dtc_interval
        housekeeping_due = now + s.idle_interval
        queued: _Round | None = None  # the next round, already behind the one being read
        try:
            while not self.link.needs_reconnect():
                now = time.monotonic()
                current = queued or self._start_round(conn, self._take_due(due, now))
                queued = None
                if current is not None:
                    ends = self._expected_end(conn, current)
                    if ends is not None:
                        queued = self._start_round(conn, self._take_due(due, ends))
                    await self._finish_round(conn, current, queued is not None)
                if dtc_due <= now and not self.link.needs_reconnect():
                    await self._poll_dtcs(conn)
                    dtc_due = time.monotonic() + s.dtc_interval
                if housekeeping_due <= now and not self.link.needs_reconnect():
                    await self._read_voltage(conn)
                    self._report_state()
                    await self._report_totals()
                    housekeeping_due = time.monotonic() + s.idle_interval
                if self._battery.tripped:
                    return
                if queued is None:
                    next_due = min([*due.values(), dtc_due, housekeeping_due])
                    await asyncio.sleep(max(0.0, next_due - time.monotonic()))
        finally:
            if queued is not None:  # reconnecting or stopped: its answers would come too late
                queued.job.discard()

    def _take_due(self, due: dict[str, float], by: float) -> list[Tier]:
        """The tiers due by ``by``, each then due again ``interval`` later (not before ``by``)."""
        taken = [tier for tier in self.settings.tiers if due[tier.name] <= by]
        for tier in taken:
            due[tier.name] = max(due[tier.name] + tier.interval, by)
        return taken

    def _expected_end(self, conn: _Connection, current: _Round) -> float | None:
        """When ``current`` should end; None where no round may be queued behind it yet.

        Not before a round has been timed, nor while multi-PID requests are in
        doubt (a round built before the answer that settles it would repeat a
        refused request).
        """
        if conn.seconds_per_request is None or (conn.multi_ok and conn.multi_refusals):
            return None
        start = current.job.started or time.monotonic()
        return start + len(current.commands) * conn.seconds_per_request

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
        # the ECU's bitmaps say nothing of them: configured means polled
        rows += [{"{#PID}": c.key, "{#NAME}": c.name, "{#UNIT}": c.unit} for c in self._custom]
        self.out.put(Discovery.now(self.settings.host, PID_DISCOVERY, rows))

    def _start_round(self, conn: _Connection, tiers: Sequence[Tier]) -> _Round | None:
        """Queue one polling round over the supported PIDs of ``tiers`` (a PID in several tiers once)."""
        specs = list(dict.fromkeys(spec for tier in tiers for spec in tier.pids if spec in conn.polled))
        # those of one ECU together, after the broadcast ones: each header is set once per round
        custom = sorted({c for tier in tiers for c in tier.custom}, key=lambda c: (c.header or "", c.key))
        per_request = self.settings.max_pids_per_request if conn.multi_ok else 1
        # ignition on, engine off: the voltage with every round, so that the starter's dip is caught
        return self._submit_pids(conn, specs, per_request, custom, voltage=self._battery.before_start)

    def _submit_pids(
        self,
        conn: _Connection,
        specs: Sequence[PidSpec],
        per_request: int,
        custom: Sequence[CustomPid] = (),
        voltage: bool = False,
    ) -> _Round | None:
        if not specs and not custom:
            return None
        groups = _chunks(specs, per_request)
        commands = [_mode_01_request(group) for group in groups] + [c.request for c in custom]
        headers: list[str | None] = [None for _ in groups]
        headers += [c.header for c in custom]
        if voltage:
            commands.append("ATRV")
            headers.append(headers[-1])  # AT commands ignore the header: no switch for it
        job = self._submit_requests(conn, commands, headers)
        return _Round(groups, list(custom), commands, job, voltage)

    async def _finish_round(self, conn: _Connection, polled: _Round, queued_behind: bool = False) -> None:
        """Report a round's values; re-read singly what multi-PID requests left out."""
        answers = await self._answers(conn, polled.job, polled.commands)
        if queued_behind:
            # Decoding holds the GIL, which the worker needs to send the next round's first
            # request: let that request go out first (it then waits ~the adapter's latency).
            await asyncio.sleep(_SEND_FIRST)
        ran_for = polled.job.ran_for
        if answers and ran_for is not None and not polled.voltage:
            # timed on PID requests alone: a quick AT RV would make the next rounds look shorter
            conn.seconds_per_request = ran_for / len(answers)
        left_out: list[PidSpec] = []
        for group, answer in zip(polled.groups, answers, strict=False):  # fewer answers if the link failed
            found = self._report_pids(conn, group, answer)
            if len(group) > 1:
                left_out += [spec for spec in group if spec not in found]
        for pid, answer in zip(polled.custom, answers[len(polled.groups):], strict=False):
            self._report_custom(pid, answer)
        if polled.voltage and len(answers) == len(polled.commands):
            await self._report_voltage(answers[-1])
        if left_out and not self.link.needs_reconnect():
            singles = self._submit_pids(conn, left_out, 1)
            if singles is not None:
                await self._finish_round(conn, singles)

    def _report_pids(self, conn: _Connection, group: Sequence[PidSpec], answer: Answer) -> set[PidSpec]:
        """Decode and report one answer to a mode 01 request; the PIDs it carried."""
        by_pid = {spec.pid: spec for spec in group}
        values, rejected = pids_from_ecus(answer.payloads, {pid: spec.size for pid, spec in by_pid.items()})
        for reason in rejected:
            self.out.error(f"obd: {reason}")
        if values:
            self.link.answered()
        else:
            self.link.unusable()
        if len(group) > 1:
            self._count_multi_pid_refusal(conn, answer)
        for pid, data in values.items():
            spec = by_pid[pid]
            try:
                value = spec.decode(data)
            except DecodeError as exc:
                self.out.error(f"obd: {exc}")
                continue
            self._put_from(answer, f"obd.pid[{spec.name}]", value, spec.unit, {"pid": spec.name})
            self._feed_totals(spec.name, value, answer.received_ns / 1e9)
            if spec.name == "RPM":
                self._engine_sample(answer, value > 0)
        return {by_pid[pid] for pid in values}

    def _report_custom(self, pid: CustomPid, answer: Answer) -> None:
        """One custom PID's value, or an error kept open until it answers again.

        Its silence says nothing of the link (the ECU may just not know it), so
        it neither counts towards a reconnect nor holds one off.
        """
        condition = f"custom:{pid.key}"
        try:
            value = pid.decode(answer.payloads)
        except AnswerError as exc:
            shown = " / ".join(answer.lines[:3]) or "nothing"
            self.out.error(f"obd: {exc} ({shown})", condition)
            return
        self.out.resolved(condition, f"obd: {self.name}: custom PID {pid.key} answers again")
        self._put_from(answer, f"obd.pid[{pid.key}]", value, pid.unit, {"pid": pid.key})

    def _feed_totals(self, name: str, value: float, clock: float) -> None:
        if name == "ODOMETER":
            self._vehicle.ecu_odometer(clock, value, self._lifetime[name])
        elif name == "RPM":
            self._vehicle.engine_sample(clock, value > 0, self._lifetime[name])

    async def _report_totals(self) -> None:
        """Write the vehicle totals, then send them: what Zabbix has is always on disk."""
        await self._vehicle.save_or_report(self.out, f"obd: {self.name}")
        totals = self._vehicle.odometer() | self._vehicle.engine() | self._vehicle.today(time.time())
        for key, (value, unit) in totals.items():
            self._put(key, value, unit)

    def _count_multi_pid_refusal(self, conn: _Connection, answer: Answer) -> None:
        if answer.payloads:  # garbled or partial is not a refusal: single PIDs fill the gaps
            conn.multi_refusals = 0
            return
        conn.multi_refusals += 1
        if conn.multi_refusals >= _MULTI_PID_REFUSALS_MAX and conn.multi_ok:
            conn.multi_ok = False
            log.warning("%s: multi-PID requests refused (%s); single PIDs from now on",
                        self.name, " / ".join(answer.lines) or "no answer")

    async def _read_voltage(self, conn: _Connection) -> None:
        answer = await self._request(conn, "ATRV")
        if answer is not None:
            await self._report_voltage(answer)

    async def _report_voltage(self, answer: Answer) -> None:
        try:
            volts = parse_voltage(answer.lines[0] if answer.lines else "")
        except PayloadError as exc:
            self.out.error(f"obd: {exc}")
            self.link.unusable()
            return
        self.link.answered()
        self._put_from(answer, "obd.voltage", volts, "V", {})
        await self._battery_changed(self._battery.voltage(answer.received_ns / 1e9, volts), volts)

    def _engine_sample(self, answer: Answer, running: bool) -> None:
        # The link state says whether the ECU answers, which it does with the ignition on and the
        # engine off too: what the charging trigger needs is whether the engine turns.
        self._put_from(answer, "obd.engine.running", int(running), "", {})
        dip, change = self._battery.engine(answer.received_ns / 1e9, running)
        if dip is not None:
            self._put_from(answer, "obd.battery.crank_voltage", dip, "V", {})
        if change is not None:
            self._report_state()
            log.info("%s: battery guard reset: the engine runs", self.name)

    async def _battery_changed(self, change: Change | None, volts: float) -> None:
        if change is Change.RESET:
            self._report_state()
            log.info("%s: battery guard reset: %.1f V", self.name, volts)
        elif change is Change.TRIPPED:
            guard = self.settings.battery
            # an event of the vehicle, not a fault of the agent: obd.battery.guard carries it
            log.warning("%s: battery guard: %.1f V, below %g V for %g s with the engine off; "
                        "adapter polling stops", self.name, volts, guard.voltage, guard.after)
            if guard.shutdown:
                await self._request_shutdown(guard.shutdown_command)

    async def _request_shutdown(self, command: Sequence[str]) -> None:
        """The optional last step of the battery guard: ask the system to power off."""
        log.warning("%s: battery guard: running %s", self.name, " ".join(command))
        try:
            process = await asyncio.create_subprocess_exec(*command)
            code = await process.wait()
        except OSError as exc:
            self.out.error(f"obd: battery guard: cannot run {command[0]}: {exc}")
            return
        if code:
            self.out.error(f"obd: battery guard: {' '.join(command)} exited with {code}")

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
        services = [service for _, service, _ in _DTC_SERVICES]
        answers = await self._requests(conn, [*services, _MONITOR_STATUS_REQUEST])
        if len(answers) <= len(_DTC_SERVICES):
            return
        present: list[Dtc] = []
        for (state, service, answer_byte), answer in zip(_DTC_SERVICES, answers, strict=False):
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
        self._report_mil(answers[-1])

        rows = [{"{#DTC}": code, "{#DESCRIPTION}": describe_dtc(code), "{#STATE}": state}
                for code, state in present]
        self.out.put(Discovery.now(self.settings.host, DTC_DISCOVERY, rows))
        for code, state in present:
            self._put(f"obd.dtc[{code},{state}]", 1, labels={"code": code, "state": state})
        # cleared since the last poll, or while the agent was stopped (the memory file)
        for code, state in sorted(self._dtcs_reported - set(present)):
            self._put(f"obd.dtc[{code},{state}]", 0, labels={"code": code, "state": state})
        for state, _, _ in _DTC_SERVICES:
            count = sum(1 for _, s in present if s == state)
            self._put(f"obd.dtc.count[{state}]", count, labels={"state": state})
        if set(present) != self._dtcs_reported:
            self._dtcs_reported = set(present)
            await self._remember_dtcs()

    async def _remember_dtcs(self) -> None:
        try:
            # a thread: the fsyncs block, for long on an SD card
            await asyncio.to_thread(self._dtc_memory.save, set(self._dtcs_reported))
        except OSError as exc:
            self.out.error(f"obd: cannot save the reported DTCs to {self._dtc_memory.path}: {exc}")

    def _report_mil(self, answer: Answer) -> None:
        if answer.empty:
            return
        try:
            data = split_pids(answer.payloads[0], {_MONITOR_STATUS_PID: 4})[_MONITOR_STATUS_PID]
            mil, _ = decode_monitor_status(data)
        except (PayloadError, KeyError) as exc:
            self.out.error(f"obd: monitor status: {exc}")
            return
        self._put("obd.mil", int(mil))
