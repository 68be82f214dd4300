"""A vehicle's running totals kept at the edge: odometer, engine time, today's distance, trips.

Both vehicle collectors feed the same totals, so this file sits below them:
the OBD collector brings the ECU's odometer (PID 0xA6) and engine speed, the
GPS collector brings the distance it counted while a trip was under way (trip
hysteresis, so jitter on a parked vehicle adds nothing) and its trip state.
Collectors of one agent that name the same host and ``state_dir`` share one
:class:`VehicleState` (see :func:`open_state`) and one file,
``<state_dir>/vehicle-<host>.json``.

Odometer: the ECU's reading wins while it is fresh; GPS distance counts only
while the ECU is silent (no PID 0xA6, adapter unplugged). The reported value
never goes down: when the ECU comes back it corrects the GPS estimate forward
(catching up what GPS missed) or, when GPS counted more, the value holds until
the ECU passes it.  An ECU reading far below its previous one (another ECU,
a cluster swap) starts a new baseline from the current value.  The very first
ECU reading sets the odometer outright: it is the car's total, not distance
driven today.

Engine time grows between two consecutive samples with the engine running
(RPM above zero) that are at most ``max_gap`` apart; a longer gap (link lost,
agent stopped) is not counted, since nobody knows what the engine did.

Every file write replaces the file atomically (sibling, fsync, rename, fsync
of the directory), so a power cut or SIGKILL leaves the old or the new state.
Collectors send a total only after it was written: after a restart a total
never shows a value below one Zabbix already has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import msgspec

from trapline.core.plugin import Outbox

log = logging.getLogger(__name__)

Totals = dict[str, tuple[float, str]]  # {key: (value, unit)}, the items of the totals

DEFAULT_STATE_DIR = Path("/var/lib/trapline")  # beside the spool
ECU_RESET_M = 1_000.0  # an ECU reading this far below the last one is a new baseline, not noise
_SAVE_CONDITION = "vehicle-state"
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")


class UnreadableState(ValueError):
    """The state file cannot be read or is not what this module writes; ``str()`` says why."""


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (write a sibling, fsync, rename, fsync the directory).

    Blocks on the disk: call it off the event loop.  Raises ``OSError``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself survive a power cut
    finally:
        os.close(directory)


def state_path(state_dir: Path, host: str) -> Path:
    return state_dir / f"vehicle-{_UNSAFE_IN_NAME.sub('_', host)}.json"


def local_day(clock: float) -> str:
    """The agent's local calendar day of a Unix time: "today" is the driver's day, not UTC's."""
    return datetime.fromtimestamp(clock).date().isoformat()  # local time on purpose


NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class _Persisted(msgspec.Struct, kw_only=True):
    """The file's content; decoding checks every field's type and range."""

    format: Literal[1] = 1
    host: str
    odometer_m: NonNegative = 0.0
    ecu_m: NonNegative | None = None  # the ECU's last odometer reading
    ecu_offset_m: float = 0.0  # odometer = ECU reading + offset, once the ECU went backwards
    engine_s: NonNegative = 0.0
    day: str = ""  # the local day today_m belongs to
    today_m: NonNegative = 0.0
    trips: dict[str, Any] = {}  # the GPS collector's own trip state


class VehicleState:
    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host
        self._data = _Persisted(host=host)
        self._ecu_fresh_until = float("-inf")
        self._engine_mark: float | None = None  # time of the last sample with the engine running
        self._loaded = False
        self._dirty = False
        self._version = 0  # bumped per snapshot; the writer never replaces a newer one
        self._written = 0
        self._write_lock = threading.Lock()

    # -- file --------------------------------------------------------------------
    def load(self) -> None:
        """Read the file once (later calls do nothing); a missing file is a new vehicle.

        A file that cannot be understood is moved aside to ``<name>.unreadable``
        (kept for a human) and :class:`UnreadableState` is raised; the totals
        then start from zero.
        """
        if self._loaded:
            return
        self._loaded = True
        try:
            data = msgspec.json.decode(self.path.read_bytes(), type=_Persisted)
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError) as exc:
            self._set_aside(str(exc))
        if data.host != self.host:
            self._set_aside(f"written for host {data.host!r}, not {self.host!r}")
        self._data = data

    def _set_aside(self, why: str) -> NoReturn:
        aside = self.path.with_name(self.path.name + ".unreadable")
        try:
            os.replace(self.path, aside)
        except OSError:
            aside = self.path
        raise UnreadableState(f"{self.path}: {why}; kept as {aside}, totals start from zero")

    async def save(self) -> None:
        """Write the totals if they changed since the last write (in a thread: fsync blocks).

        Raises ``OSError``; the totals then stay due for the next call.
        """
        if not self._dirty:
            return
        self._dirty = False
        self._version += 1
        version = self._version
        body = msgspec.json.encode(self._data).decode()
        try:
            await asyncio.to_thread(self._write, version, body)
        except OSError:
            self._dirty = True
            raise

    async def save_or_report(self, out: Outbox, who: str) -> None:
        """:meth:`save`, with a failure reported to ``out`` as a condition until a save succeeds."""
        try:
            await self.save()
        except OSError as exc:
            out.error(f"{who}: cannot save the vehicle totals to {self.path}: {exc}", _SAVE_CONDITION)
        else:
            out.resolved(_SAVE_CONDITION, f"{who}: vehicle totals saved again to {self.path}")

    def _write(self, version: int, body: str) -> None:
        # Two collectors may save at once: the later snapshot must be the one left on disk.
        with self._write_lock:
            if version < self._written:
                return
            replace_file(self.path, body)
            self._written = version

    # -- feeding -----------------------------------------------------------------
    def _advance(self, clock: float, metres: float) -> None:
        if metres <= 0:
            return
        self._data.odometer_m += metres
        day = local_day(clock)
        if day != self._data.day:
            self._data.day, self._data.today_m = day, 0.0
        self._data.today_m += metres
        self._dirty = True

    def ecu_odometer(self, clock: float, metres: float, valid_for: float) -> None:
        """The ECU's odometer read at ``clock``; GPS distance is ignored for ``valid_for`` s."""
        d = self._data
        if d.ecu_m is None and metres > d.odometer_m:
            # The first reading ever: the car's real odometer, not distance driven today.
            d.odometer_m = metres
        elif d.ecu_m is not None and metres < d.ecu_m - ECU_RESET_M:
            log.warning("%s: the ECU odometer went back from %.0f m to %.0f m; counting on from %.0f m",
                        self.host, d.ecu_m, metres, d.odometer_m)
            d.ecu_offset_m = d.odometer_m - metres
        if d.ecu_m != metres:
            d.ecu_m = metres
            self._dirty = True
        self._advance(clock, metres + d.ecu_offset_m - d.odometer_m)
        self._ecu_fresh_until = clock + valid_for

    def gps_distance(self, clock: float, metres: float) -> None:
        """Distance GPS counted during a trip; it only counts while the ECU's odometer is silent."""
        if clock > self._ecu_fresh_until:
            self._advance(clock, metres)

    def engine_sample(self, clock: float, running: bool, max_gap: float) -> None:
        """One engine speed sample: running (RPM > 0) or not."""
        mark, self._engine_mark = self._engine_mark, (clock if running else None)
        if running and mark is not None and 0 < clock - mark <= max_gap:
            self._data.engine_s += clock - mark
            self._dirty = True

    @property
    def trips(self) -> dict[str, Any]:
        return self._data.trips

    @trips.setter
    def trips(self, value: dict[str, Any]) -> None:
        if value != self._data.trips:
            self._data.trips = value
            self._dirty = True

    # -- reporting ---------------------------------------------------------------
    def odometer(self) -> Totals:
        d = self._data
        return {"vehicle.odometer": (round(d.odometer_m, 1), "m")}

    def engine(self) -> Totals:
        return {"vehicle.engine.time": (round(self._data.engine_s, 1), "s")}

    def today(self, clock: float) -> Totals:
        d = self._data
        today = d.today_m if d.day == local_day(clock) else 0.0
        return {"vehicle.distance.today": (round(today, 1), "m")}


_OPEN: dict[Path, VehicleState] = {}
_OPEN_LOCK = threading.Lock()


def open_state(state_dir: Path, host: str) -> VehicleState:
    """The one :class:`VehicleState` of this host and directory in this process (not yet loaded)."""
    path = state_path(state_dir, host).absolute()
    with _OPEN_LOCK:
        state = _OPEN.get(path)
        if state is None:
            state = _OPEN[path] = VehicleState(path, host)
        return state
