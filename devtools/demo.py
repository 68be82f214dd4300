"""``python3 -m devtools.demo``, what ``make demo`` runs: the whole suite here, no car and no cloud.

It starts a throwaway Zabbix 6.0 (:mod:`devtools.localzabbix`), imports the shipped
templates, creates the agent's own host, a vehicle host, a Mist discovery host and an
AWS poller host, and an overview dashboard that links the three.  Then it plays the
world: ELM327-emulator answers OBD-II on a loopback port and gpsfake replays a drive
through a real gpsd (the van); :mod:`devtools.mist_sim` streams a Mist organisation of
two sites and five APs; :mod:`devtools.aws_sim` runs an AWS account on moto with Glue
jobs and an EMR cluster.  One agent runs as ``trapline run`` in a child process with a
generated configuration.  Later, faults: two DTCs in the car, an AP port losing its link
(and getting it back), a failing Glue run (and a later one that succeeds).
"""

# The demo itself is plain blocking code: it starts and watches processes and polls
# two HTTP endpoints every few seconds, and what it drives (LocalZabbix, pyzabbix)
# blocks anyway.  The asyncio agent is a process of its own.

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
import math
import operator
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families
from pyzabbix.api import ZabbixAPIException
from requests import RequestException

from devtools.aws_sim import FAKE_CREDENTIALS, Account, load_account
from devtools.demo_dashboard import Tile, ensure_overview, group_id, page_url
from devtools.localzabbix import ADMIN_PASSWORD, ADMIN_USER, LocalZabbix, LocalZabbixError, log_tail
from devtools.mist_sim import MistOrg, load_org
from devtools.simulation import scenario_data
from trapline.provision import ProvisionError, ensure_fleet_dashboard, ensure_host_group, provision_vehicle
from trapline.templates import TemplateError, import_templates, shipped_templates

log = logging.getLogger(__name__)

ZABBIX_VERSION: Final = "6.0"
# Items the server creates from the agent's discovery data (a PID, a DTC that just
# appeared) accept values only after the server's next configuration sync.  The
# default 60 s would keep a fresh DTC out of Zabbix for up to a minute.
CACHE_UPDATE_FREQUENCY: Final = 5
AGENT_TEMPLATE: Final = "trapline agent by Zabbix trapper"
MIST_TEMPLATE: Final = "Juniper Mist discovery by Zabbix trapper"
AWS_TEMPLATE: Final = "AWS EMR and Glue by Zabbix trapper"
# Host groups the shipped templates' host prototypes put discovered hosts in.
MIST_AP_GROUP: Final = "Mist"
EMR_GROUP: Final = "AWS/EMR"
ZABBIX_SERVERS_GROUP: Final = "Zabbix servers"  # the stock server host: not part of the demo
SIM_START_TIMEOUT: Final = 120.0  # moto's import alone takes many seconds on a busy machine
ROOT: Final = Path(__file__).resolve().parent.parent  # the checkout the simulators run from
PROMETHEUS_PORT: Final = 9708  # the agent's documented default, when it is free
SUMMARY_INTERVAL: Final = 5.0
START_TIMEOUT: Final = 15.0  # seconds for the emulator or gpsd to open its port
STOP_TIMEOUT: Final = 10.0  # seconds a child gets after SIGTERM (the agent drains its spool)
ROUTE_SECONDS: Final = 3600  # the drive written for gpsfake: laps for an hour of steady clock
HTTP_TIMEOUT: Final = 3.0
_KNOTS_PER_MPS: Final = 3600 / 1852
_EARTH_RADIUS_M: Final = 6_371_000.0


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


def say(text: str = "") -> None:
    print(text, flush=True)  # a pipe (tests, `| tee`) sees every line at once


# --------------------------------------------------------------------------
# The scenario: hosts, the drive, the fault
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Waypoint:
    lat: float
    lon: float
    speed: float  # km/h on the leg that starts here
    stop: int  # seconds standing still on arrival


@dataclass(frozen=True, slots=True)
class Route:
    waypoints: tuple[Waypoint, ...]
    altitude: float
    geoid: float
    pdop: float
    hdop: float
    vdop: float
    satellites: tuple[tuple[int, int, int, int], ...]  # PRN, elevation, azimuth, SNR


@dataclass(frozen=True, slots=True)
class Scenario:
    agent_host: str
    agent_group: str
    vehicle_host: str
    vehicle_group: str
    dtc_list: tuple[str, ...]  # what goes into the emulator's stored-DTC list
    dtcs: tuple[str, ...]  # the codes the agent decodes from it
    route: Route
    mist: MistOrg
    mist_host: str  # the Mist collector's discovery host
    mist_group: str
    port_down: tuple[str, str]  # AP name, port
    aws: Account
    aws_host: str  # the AWS poller's host
    aws_group: str
    failing_job: str

    def demo_hosts(self) -> list[str]:
        """The hosts the demo creates; the APs and the EMR cluster are discovered from them."""
        return [self.agent_host, self.vehicle_host, self.mist_host, self.aws_host]


def load_scenario() -> Scenario:
    raw = scenario_data()
    route, mist, aws = raw["route"], raw["mist"], raw["aws"]
    return Scenario(
        agent_host=raw["agent_host"],
        agent_group=raw["agent_group"],
        vehicle_host=raw["vehicle_host"],
        vehicle_group=raw["vehicle_group"],
        dtc_list=tuple(raw["dtc_list"]),
        dtcs=tuple(raw["dtcs"]),
        route=Route(
            waypoints=tuple(Waypoint(**w) for w in route["waypoints"]),
            altitude=route["altitude"],
            geoid=route["geoid"],
            pdop=route["pdop"],
            hdop=route["hdop"],
            vdop=route["vdop"],
            satellites=tuple((s[0], s[1], s[2], s[3]) for s in route["satellites"]),
        ),
        mist=load_org(mist),
        mist_host=mist["discovery_host"],
        mist_group=mist["discovery_group"],
        port_down=(mist["port_down"]["ap"], mist["port_down"]["port"]),
        aws=load_account(aws),
        aws_host=aws["poller_host"],
        aws_group=aws["poller_group"],
        failing_job=aws["failing_job"],
    )


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    speed: float  # m/s
    track: float  # degrees from north


def _leg(start: Waypoint, end: Waypoint) -> Iterator[Fix]:
    """One fix per second from ``start`` towards ``end``, then the stop at ``end``."""
    metres_per_degree = math.radians(1) * _EARTH_RADIUS_M
    north = (end.lat - start.lat) * metres_per_degree
    east = (end.lon - start.lon) * metres_per_degree * math.cos(math.radians(start.lat))
    track = math.degrees(math.atan2(east, north)) % 360
    speed = start.speed / 3.6
    seconds = max(1, round(math.hypot(north, east) / speed))
    for second in range(seconds):
        share = second / seconds
        yield Fix(start.lat + share * (end.lat - start.lat), start.lon + share * (end.lon - start.lon),
                  speed, track)
    for _ in range(end.stop):
        yield Fix(end.lat, end.lon, 0.0, track)


def lap(route: Route) -> list[Fix]:
    """The closed loop through every waypoint, one fix per second."""
    points = route.waypoints
    return [fix for i, start in enumerate(points) for fix in _leg(start, points[(i + 1) % len(points)])]


def _checksummed(body: str) -> str:
    return f"${body}*{functools.reduce(operator.xor, body.encode('ascii'), 0):02X}\r\n"


def _angle(value: float, degree_digits: int, positive: str, negative: str) -> str:
    degrees, minutes = divmod(abs(value) * 60, 60)
    return f"{int(degrees):0{degree_digits}d}{minutes:07.4f},{positive if value >= 0 else negative}"


def epoch_sentences(route: Route, fix: Fix, when: datetime) -> list[str]:
    """RMC first (gpsd then reports one fix per epoch), GGA, GSA and the GSV pages."""
    clock, date = when.strftime("%H%M%S.00"), when.strftime("%d%m%y")
    position = f"{_angle(fix.lat, 2, 'N', 'S')},{_angle(fix.lon, 3, 'E', 'W')}"
    used = [f"{s[0]:02d}" for s in route.satellites[:12]]
    sentences = [
        f"GPRMC,{clock},A,{position},{fix.speed * _KNOTS_PER_MPS:.1f},{fix.track:.1f},{date},,,A",
        f"GPGGA,{clock},{position},1,{len(used):02d},{route.hdop},{route.altitude:.1f},M,"
        f"{route.geoid},M,,",
        f"GPGSA,A,3,{','.join(used + [''] * (12 - len(used)))},{route.pdop},{route.hdop},{route.vdop}",
    ]
    pages = [route.satellites[i:i + 4] for i in range(0, len(route.satellites), 4)]
    for number, page in enumerate(pages, 1):
        views = ",".join(f"{prn:02d},{elevation:02d},{azimuth:03d},{snr:02d}"
                         for prn, elevation, azimuth, snr in page)
        sentences.append(f"GPGSV,{len(pages)},{number},{len(route.satellites):02d},{views}")
    return [_checksummed(s) for s in sentences]


def write_nmea(route: Route, path: Path, start: datetime, seconds: int = ROUTE_SECONDS) -> int:
    """Write laps of the route to ``path`` from ``start``, one epoch a second; return sentences per epoch."""
    one_lap = lap(route)
    per_epoch = len(epoch_sentences(route, one_lap[0], start))
    with path.open("w", encoding="ascii", newline="") as out:
        for second in range(max(seconds, len(one_lap))):
            out.writelines(epoch_sentences(route, one_lap[second % len(one_lap)],
                                           start + timedelta(seconds=second)))
    return per_epoch


# --------------------------------------------------------------------------
# Signals and child processes
# --------------------------------------------------------------------------
class Signals:
    """Ctrl-C and SIGTERM both become KeyboardInterrupt, once; while a child process
    is being started and recorded they wait, so that nothing started goes unrecorded."""

    def __init__(self) -> None:
        self._holding = False
        self._pending = False
        self._raised = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._raised:
            return  # already stopping: the cleanup must run to its end
        if self._holding:
            self._pending = True
            return
        self._raised = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._pending and not self._raised:
            self._raised = True
            raise KeyboardInterrupt

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Children:
    """Processes the demo started, each leading its own session (a terminal's Ctrl-C
    reaches only the demo, which stops them in order); stopped newest first."""

    def __init__(self, workdir: Path, signals: Signals) -> None:
        self.workdir = workdir
        self._signals = signals
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._leftovers: dict[int, list[Path]] = {}  # pid -> files the process leaves behind

    def logfile(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
        stdin: int | None = None,
    ) -> subprocess.Popen[bytes]:
        with self.logfile(name).open("wb") as output, self._signals.held():
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=dict(env if env is not None else os.environ),
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._started.append((name, proc))
        return proc

    def failure(self, name: str, reason: str) -> DemoError:
        return DemoError(f"{name}: {reason}\n--- last lines of {self.logfile(name)} ---\n"
                         f"{log_tail(self.logfile(name))}")

    def check(self) -> None:
        """Raise if a child ended by itself: the demo would go on showing nothing."""
        for name, proc in self._started:
            if proc.poll() is not None:
                raise self.failure(name, f"exited unexpectedly with status {proc.returncode}")

    def stop_all(self) -> None:
        while self._started:
            name, proc = self._started.pop()
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it",
                                name, proc.pid, STOP_TIMEOUT)
            # Whatever the child left in its session (gpsfake's gpsd, for one) goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for path in self._leftovers.pop(proc.pid, []):
                path.unlink(missing_ok=True)

    def leaves_behind(self, proc: subprocess.Popen[bytes], path: Path) -> None:
        self._leftovers.setdefault(proc.pid, []).append(path)


def _free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = probe.getsockname()[1]
            return found
    raise DemoError("no free loopback port")


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def missing_tools() -> list[str]:
    """One line per tool the demo needs and cannot find."""
    problems = []
    if importlib.util.find_spec("elm") is None:
        problems.append("ELM327-emulator (the stand-in car) is not installed: run `make demo`, "
                        "which installs it, or `pip install ELM327-emulator`")
    for binary, package in (("gpsfake", "gpsd-clients"), ("gpsd", "gpsd")):
        if shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            problems.append(f"{binary} is not installed: run `make demo`, which installs it, "
                            f"or `apt-get install {package}`")
    if importlib.util.find_spec("moto") is None:
        problems.append("moto (the stand-in AWS account) is not installed: run `make demo`, "
                        "which installs it, or `pip install 'moto[server]'`")
    return problems


# --------------------------------------------------------------------------
# The demo's pieces
# --------------------------------------------------------------------------
def _call(api: Any, method: str, params: Mapping[str, Any]) -> Any:
    return api.do_request(method, params)["result"]


def ensure_templated_host(api: Any, host: str, group: str, template: str) -> str:
    """A trapper-fed host linked to one shipped template (the agent's own, Mist discovery, AWS
    poller); returns its id."""
    templates = _call(api, "template.get", {"output": ["templateid"], "filter": {"host": [template]}})
    if not templates:
        raise DemoError(f"template {template!r} is not on the server after the import")
    groupid = ensure_host_group(api, group).objectid
    settings = {"groups": [{"groupid": groupid}], "templates": [{"templateid": templates[0]["templateid"]}]}
    found = _call(api, "host.get", {"output": ["hostid"], "filter": {"host": [host]}})
    if found:
        _call(api, "host.update", {"hostid": found[0]["hostid"], **settings})
        return str(found[0]["hostid"])
    return str(_call(api, "host.create", {"host": host, **settings})["hostids"][0])


@dataclass(frozen=True, slots=True)
class Dashboards:
    overview: str
    fleet: str


def overview_tiles(api: Any, scenario: Scenario, fleet: str, mist_hostid: str, aws_hostid: str) -> list[Tile]:
    """The overview's tiles and their links (6.0 pages filter on groupids[] and hostids[])."""
    mist_groupid = group_id(api, MIST_AP_GROUP)
    pipeline_groups = [group_id(api, scenario.aws_group), group_id(api, EMR_GROUP)]
    return [
        Tile("Vans", scenario.vehicle_group, "Satellite_antenna_(96)", (
            ("Fleet map", page_url("dashboard.view", dashboardid=fleet)),
            (f"{scenario.vehicle_host}: latest data",
             page_url("latest.view", hostids=[_hostid(api, scenario.vehicle_host)])),
        )),
        Tile("Mist sites", MIST_AP_GROUP, "Network_(96)", (
            ("APs by site", page_url("host.view", groupids=[mist_groupid])),
            ("AP latest data", page_url("latest.view", groupids=[mist_groupid])),
            ("Mist collector", page_url("host.dashboard.view", hostid=mist_hostid)),
        )),
        Tile("Data pipelines", scenario.aws_group, "Cloud_(96)", (
            ("Glue jobs: latest data", page_url("latest.view", hostids=[aws_hostid])),
            ("EMR clusters", page_url("host.view", groupids=[group_id(api, EMR_GROUP)])),
            ("Pipeline problems", page_url("problem.view", groupids=pipeline_groups)),
        )),
    ]


def _hostid(api: Any, host: str) -> str:
    found = _call(api, "host.get", {"output": ["hostid"], "filter": {"host": [host]}})
    if not found:
        raise DemoError(f"no host {host!r} in Zabbix")
    return str(found[0]["hostid"])


def prepare_zabbix(stack: LocalZabbix, scenario: Scenario) -> Dashboards:
    """Templates, hosts and the dashboards."""
    api = stack.api()
    say(f"importing templates: {', '.join(import_templates(api, shipped_templates()))}")
    ensure_templated_host(api, scenario.agent_host, scenario.agent_group, AGENT_TEMPLATE)
    provision_vehicle(api, scenario.vehicle_host, group=scenario.vehicle_group)
    mist_hostid = ensure_templated_host(api, scenario.mist_host, scenario.mist_group, MIST_TEMPLATE)
    aws_hostid = ensure_templated_host(api, scenario.aws_host, scenario.aws_group, AWS_TEMPLATE)
    fleet = ensure_fleet_dashboard(api, scenario.vehicle_group).objectid
    tiles = overview_tiles(api, scenario, fleet, mist_hostid, aws_hostid)
    overview = ensure_overview(api, tiles, hidden_groups=[ZABBIX_SERVERS_GROUP])
    say(f"hosts: {scenario.agent_host} (the agent itself), {scenario.vehicle_host} (the vehicle), "
        f"{scenario.mist_host} (Mist discovery: its APs become hosts), "
        f"{scenario.aws_host} (AWS poller: Glue jobs, EMR clusters become hosts)")
    # The server learns of new hosts at its next configuration sync; values sent
    # before it would be refused.  Ask for the sync now instead of waiting.
    stack.config_cache_reload()
    return Dashboards(overview, fleet)


def start_emulator(children: Children) -> tuple[subprocess.Popen[bytes], int]:
    """ELM327-emulator with the "car" scenario on a loopback port; it reads commands
    (Python statements, how DTCs are injected) from its stdin."""
    port = _free_port()
    env = {**os.environ, "ELM_LOG_CFG": "/nonexistent"}  # else it writes a large elm.log
    argv = [sys.executable, "-m", "elm", "-s", "car", "-n", str(port), "-b", "elm-commands.log"]
    proc = children.start("emulator", argv, env=env, stdin=subprocess.PIPE)
    if not _wait_port(port, proc):
        raise children.failure("emulator", f"ELM327-emulator did not open port {port}")
    return proc, port


def tell(proc: subprocess.Popen[bytes], line: str) -> None:
    """One command line to a child that reads its stdin (the emulator, the simulators)."""
    assert proc.stdin is not None
    proc.stdin.write(f"{line}\n".encode())
    proc.stdin.flush()


def inject_dtcs(emulator: subprocess.Popen[bytes], scenario: Scenario) -> None:
    tell(emulator, f"elm.obd_message.DTC_STORED.extend({list(scenario.dtc_list)!r})")


def start_simulator(children: Children, name: str) -> tuple[subprocess.Popen[bytes], int]:
    """``python3 -m devtools.<name>``; returns it and the port it announced in its ready file."""
    ready = children.workdir / f"{name}.port"
    ready.unlink(missing_ok=True)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = children.start(name, [sys.executable, "-m", f"devtools.{name}", "--ready", str(ready)],
                          env=env, stdin=subprocess.PIPE)
    children.leaves_behind(proc, ready)
    deadline = time.monotonic() + SIM_START_TIMEOUT
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise children.failure(name, f"did not announce its port in {ready}")
        time.sleep(0.2)
    return proc, int(ready.read_text(encoding="ascii"))


def start_gpsfake(children: Children, route: Route) -> int:
    """gpsfake with its own gpsd replaying the drive in real time; returns gpsd's port."""
    nmea = children.workdir / "route.nmea"
    per_epoch = write_nmea(route, nmea, datetime.now(UTC).replace(microsecond=0))
    port = _free_port()
    gpsfake = shutil.which("gpsfake") or "gpsfake"
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}  # gpsfake runs gpsd
    # -c: seconds between sentences, so that one epoch takes one second.
    argv = [gpsfake, "-q", "-n", "-P", str(port), "-c", f"{1 / per_epoch:.4f}", str(nmea)]
    proc = children.start("gpsfake", argv, env=env)
    # Its control socket stays when it is stopped by a signal.
    children.leaves_behind(proc, Path(env.get("TMPDIR", "/tmp")) / f"gpsfake-{proc.pid}.sock")
    if not _wait_port(port, proc):
        raise children.failure("gpsfake", f"gpsfake's gpsd did not open port {port}")
    return port


def _write_secret(path: Path, secret: str) -> None:
    path.touch(0o600)
    path.chmod(0o600)  # the agent refuses a secret others can read
    path.write_text(secret)


def write_agent_config(workdir: Path, values: Mapping[str, str], mist_token: str) -> Path:
    template = resources.files("devtools.demo_data").joinpath("agent.toml").read_text("utf-8")
    _write_secret(workdir / "zabbix-api-password", ADMIN_PASSWORD)
    _write_secret(workdir / "mist-token", mist_token)
    for stale in workdir.glob("spool.db*"):
        stale.unlink()  # readings of an earlier run belong to a Zabbix that is gone
    config = workdir / "agent.toml"
    config.write_text(string.Template(template).substitute(values), encoding="utf-8")
    return config


# --------------------------------------------------------------------------
# The live summary
# --------------------------------------------------------------------------
Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        text = response.read().decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def _total(samples: Samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def _value(samples: Samples, name: str, **wanted: str) -> float | None:
    return next((value for labels, value in samples.get(name, [])
                 if all(labels.get(k) == v for k, v in wanted.items())), None)


VEHICLE_STATES: Final = {0: "no adapter", 1: "ignition off", 2: "running"}


def describe_agent(samples: Samples, vehicle: str) -> str:
    state = _value(samples, "trapline_obd_state", host=vehicle)
    # Prometheus has base units: m/s.  The emulated car's speedometer and the replayed drive disagree.
    obd_speed = _value(samples, "trapline_obd_pid_meters_per_second", host=vehicle, pid="SPEED")
    gps_speed = _value(samples, "trapline_gps_speed_meters_per_second", host=vehicle)
    lat = _value(samples, "trapline_gps_latitude_degrees", host=vehicle)
    lon = _value(samples, "trapline_gps_longitude_degrees", host=vehicle)
    dtcs = sorted(labels.get("code", "?") for labels, value in samples.get("trapline_obd_dtc", [])
                  if value and labels.get("host") == vehicle)
    parts = [
        f"agent: {_total(samples, 'trapline_collector_readings_total'):,.0f} readings, "
        f"{_total(samples, 'trapline_sent_total'):,.0f} sent, "
        f"spool {_total(samples, 'trapline_spool_depth'):,.0f}",
        f"{vehicle}: {VEHICLE_STATES.get(int(state), '?') if state is not None else 'no data yet'}",
    ]
    for source, speed in (("OBD", obd_speed), ("GPS", gps_speed)):
        if speed is not None:
            parts[-1] += f", {source} {speed * 3.6:.0f} km/h"
    if lat is not None and lon is not None:
        parts[-1] += f", {lat:.5f},{lon:.5f}"
    parts.append(f"DTCs: {' '.join(dtcs) or 'none'}")
    return " | ".join(parts)


class ProblemWatch:
    """Problems on the demo's hosts and the hosts discovered from them; says when one starts or ends."""

    def __init__(self, api: Any, groups: Sequence[str]) -> None:
        self.api = api
        self.groups = list(groups)
        self.seen: dict[str, str] = {}  # eventid -> name

    def poll(self) -> int:
        groupids = [g["groupid"] for g in _call(self.api, "hostgroup.get", {"output": ["groupid"],
                                                                            "filter": {"name": self.groups}})]
        problems = _call(self.api, "problem.get", {"output": ["eventid", "name"], "groupids": groupids})
        current = {str(p["eventid"]): str(p["name"]) for p in problems}
        for eventid, name in current.items():
            if eventid not in self.seen:
                say(f"  Zabbix problem: {name}")
        for eventid, name in self.seen.items():
            if eventid not in current:
                say(f"  Zabbix problem resolved: {name}")
        self.seen = current
        return len(current)


def summary_line(started: float, metrics_url: str, vehicle: str, problems: ProblemWatch) -> str:
    elapsed = int(time.monotonic() - started)
    try:
        agent = describe_agent(scrape(metrics_url), vehicle)
    except (OSError, ValueError) as exc:
        agent = f"agent metrics not available ({exc})"
    try:
        zabbix = f"Zabbix problems: {problems.poll()}"
    except (ZabbixAPIException, RequestException, OSError) as exc:
        zabbix = f"Zabbix API not answering ({exc})"
    return f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {agent} | {zabbix}"


def _last_values(api: Any, key: str, **where: Any) -> dict[str, str]:
    """hostid -> last value of the items with ``key`` that have one."""
    items = _call(api, "item.get", {"output": ["hostid", "lastclock", "lastvalue"], "filter": {"key_": [key]},
                                    **where})
    return {str(i["hostid"]): str(i["lastvalue"]) for i in items if int(i["lastclock"])}


def describe_mist(api: Any, scenario: Scenario, links: Mapping[tuple[str, str], bool]) -> str:
    """How far the simulated APs got in Zabbix, read from the Zabbix API."""
    org = scenario.mist
    hosts = _call(api, "host.get", {"output": ["hostid"], "groupids": [group_id(api, MIST_AP_GROUP)]})
    live = _last_values(api, "mist.ap.status", hostids=[h["hostid"] for h in hosts]) if hosts else {}
    ports = ", ".join(f"{ap} {port} {'up' if up else 'DOWN'}" for (ap, port), up in links.items())
    return (f"Mist {org.org_name}: {len(org.aps)} APs in {len(org.sites)} sites streamed, "
            f"{len(hosts)} are Zabbix hosts, {len(live)} with live values | port {ports}")


def _run_state(run: str) -> str:
    try:
        return str(json.loads(run)["state"])
    except (ValueError, TypeError, KeyError):
        return "unreadable run value"


def describe_aws(api: Any, scenario: Scenario) -> str:
    """The Glue jobs' last run states and the EMR cluster hosts, read from the Zabbix API."""
    hostid = _hostid(api, scenario.aws_host)
    runs = []
    for job in scenario.aws.glue_jobs:
        # The run's JSON value names its state; the state item keeps only its value-map number.
        run = _last_values(api, f"glue.job.run[{job}]", hostids=[hostid]).get(hostid)
        runs.append(f"{job} {_run_state(run) if run else 'not seen yet'}")
    clusters = _call(api, "host.get", {"output": ["hostid"], "groupids": [group_id(api, EMR_GROUP)]})
    return (f"AWS {scenario.aws.region} (moto): Glue last runs: {', '.join(runs)} | "
            f"EMR clusters as Zabbix hosts: {len(clusters)}")


def suite_lines(api: Any, scenario: Scenario, links: Mapping[tuple[str, str], bool]) -> list[str]:
    try:
        return [f"        {describe_mist(api, scenario, links)}", f"        {describe_aws(api, scenario)}"]
    except (ZabbixAPIException, RequestException, OSError, LookupError, DemoError) as exc:
        return [f"        Mist and AWS: Zabbix API not answering ({exc})"]


# --------------------------------------------------------------------------
# The faults: each starts once Zabbix shows what it needs, and ends later
# --------------------------------------------------------------------------
@dataclass
class Fault:
    what: str  # for the demo's output
    after: float  # earliest start, seconds after everything is up
    ready: Callable[[], bool]  # what Zabbix must show first (the item the fault changes has a value)
    begin: Callable[[], None]
    end: Callable[[], None] | None  # None: it stays
    began: float | None = None
    over: bool = False

    def step(self, elapsed: float, recover_after: float) -> None:
        if self.began is None:
            if elapsed >= self.after and self.ready():
                self.begin()
                self.began = elapsed
                say(f"  fault: {self.what}")
        elif self.end is not None and not self.over and elapsed >= self.began + recover_after:
            self.end()
            self.over = True
            say(f"  recovered: {self.what}")


def _has_value(api: Any, host: str, key: str, value: str | None = None) -> bool:
    found = _call(api, "item.get", {"output": ["lastclock", "lastvalue"], "host": host,
                                    "filter": {"key_": [key]}})
    return any(int(i["lastclock"]) and value in (None, i["lastvalue"]) for i in found)


@dataclass
class Simulators:
    emulator: subprocess.Popen[bytes]
    mist: subprocess.Popen[bytes]
    aws: subprocess.Popen[bytes]


def demo_faults(options: DemoOptions, scenario: Scenario, api: Any, sims: Simulators,
                links: dict[tuple[str, str], bool]) -> list[Fault]:
    ap_name, port = scenario.port_down
    ap_host = f"mist-ap-{next(ap.mac for ap in scenario.mist.aps if ap.name == ap_name)}"
    job = scenario.failing_job

    def set_link(up: bool) -> None:
        tell(sims.mist, f"port {ap_name} {port} {'up' if up else 'down'}")
        links[ap_name, port] = up

    return [
        Fault(f"the car reports DTCs {', '.join(scenario.dtcs)}", options.dtc_after, lambda: True,
              lambda: inject_dtcs(sims.emulator, scenario), None),
        Fault(f"Mist AP {ap_name} loses the link on {port}", options.port_down_after,
              lambda: _has_value(api, ap_host, f"mist.ap.port.up[{port}]", "1"),
              lambda: set_link(False), lambda: set_link(True)),
        Fault(f"a run of Glue job {job} fails: {scenario.aws.failure}", options.glue_fail_after,
              lambda: _has_value(api, scenario.aws_host, f"glue.job.run[{job}]"),
              lambda: tell(sims.aws, f"glue-fail {job}"), lambda: tell(sims.aws, f"glue-run {job}")),
    ]


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DemoOptions:
    workdir: Path | None
    duration: float | None
    dtc_after: float
    port_down_after: float
    glue_fail_after: float
    recover_after: float


def _where_to_look(stack: LocalZabbix, scenario: Scenario, dashboards: Dashboards, metrics_url: str,
                   workdir: Path) -> None:
    base = stack.frontend_url
    say()
    say(f"Zabbix frontend:  {base}  (login {ADMIN_USER} / {ADMIN_PASSWORD})")
    say(f"  Overview:       {base}zabbix.php?action=dashboard.view&dashboardid={dashboards.overview}"
        "  (the first page after login)")
    say(f"  Fleet map:      {base}zabbix.php?action=dashboard.view&dashboardid={dashboards.fleet}")
    say(f"  Vehicle:        Monitoring > Hosts > {scenario.vehicle_host} (Latest data, Problems, Inventory)")
    say(f"  Mist sites:     Monitoring > Hosts, host groups Mist/{scenario.mist.org_name}/<site>")
    say(f"  Pipelines:      Monitoring > Hosts > {scenario.aws_host} (Glue jobs), host group {EMR_GROUP}")
    say(f"  Agent:          Monitoring > Hosts > {scenario.agent_host}")
    say(f"Prometheus:       {metrics_url}")
    say(f"Agent:            config {workdir / 'agent.toml'}, log {workdir / 'agent.log'}")
    say("Stop:             Ctrl-C")
    say()


def _watch(options: DemoOptions, scenario: Scenario, *, children: Children, faults: Sequence[Fault],
           metrics_url: str, problems: ProblemWatch, links: Mapping[tuple[str, str], bool]) -> None:
    started = time.monotonic()
    end = started + options.duration if options.duration is not None else math.inf
    while True:
        children.check()
        for fault in faults:
            try:
                fault.step(time.monotonic() - started, options.recover_after)
            except (ZabbixAPIException, RequestException) as exc:
                say(f"  Zabbix API not answering ({exc}); {fault.what} waits")
        say(summary_line(started, metrics_url, scenario.vehicle_host, problems))
        for line in suite_lines(problems.api, scenario, links):
            say(line)
        if time.monotonic() >= end:
            say(f"--duration {options.duration:g} s reached")
            return
        time.sleep(max(0.0, min(SUMMARY_INTERVAL, end - time.monotonic())))


def run_demo(options: DemoOptions) -> int:
    problems = missing_tools()
    if problems:
        for problem in problems:
            print(f"trapline demo: {problem}", file=sys.stderr)
        return 1
    scenario = load_scenario()
    if options.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="trapline-demo-"))
    else:
        workdir = options.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    signals = Signals()
    signals.install()
    children = Children(workdir, signals)
    stack = LocalZabbix(ZABBIX_VERSION, workdir / "zabbix", cache_update_frequency=CACHE_UPDATE_FREQUENCY)
    say(f"trapline demo: work directory {workdir}")
    try:
        say(f"starting Zabbix {ZABBIX_VERSION} (PostgreSQL, server, frontend API) ...")
        stack.start()
        say(f"Zabbix is up: {stack.frontend_url} (login {ADMIN_USER} / {ADMIN_PASSWORD}), "
            f"trapper {stack.trapper_address}")
        dashboards = prepare_zabbix(stack, scenario)

        emulator, elm_port = start_emulator(children)
        say(f"ELM327-emulator (scenario car) on 127.0.0.1:{elm_port}")
        gpsd_port = start_gpsfake(children, scenario.route)
        say(f"gpsfake replaying a drive through Riga, gpsd on 127.0.0.1:{gpsd_port}")
        mist, mist_port = start_simulator(children, "mist_sim")
        say(f"Mist simulator: org {scenario.mist.org_name}, {len(scenario.mist.sites)} sites, "
            f"{len(scenario.mist.aps)} APs, stream on ws://127.0.0.1:{mist_port}")
        say("starting moto (the AWS account) ...")
        aws, aws_port = start_simulator(children, "aws_sim")
        say(f"AWS simulator (moto) on http://127.0.0.1:{aws_port}: Glue jobs "
            f"{', '.join(scenario.aws.glue_jobs)}, EMR cluster {scenario.aws.emr_cluster}")

        prometheus = f"127.0.0.1:{_free_port(PROMETHEUS_PORT)}"
        config = write_agent_config(workdir, {
            "agent_host": scenario.agent_host,
            "vehicle_host": scenario.vehicle_host,
            "trapper": stack.trapper_address,
            "api_url": stack.api_url,
            "prometheus": prometheus,
            "elm": f"127.0.0.1:{elm_port}",
            "gpsd_port": str(gpsd_port),
            "mist_host": scenario.mist_host,
            "mist_port": str(mist_port),
            "mist_org": scenario.mist.org_id,
            "aws_host": scenario.aws_host,
            "aws_region": scenario.aws.region,
            "aws_port": str(aws_port),
        }, scenario.mist.token)
        children.start("agent", [sys.executable, "-m", "trapline", "run", "-c", str(config)],
                       env={**os.environ, **FAKE_CREDENTIALS})
        metrics_url = f"http://{prometheus}/metrics"
        say(f"agent started: trapline run -c {config}")
        _where_to_look(stack, scenario, dashboards, metrics_url, workdir)
        api = stack.api()
        links = {scenario.port_down: True}
        watch = ProblemWatch(api, [scenario.agent_group, scenario.vehicle_group, scenario.mist_group,
                                   MIST_AP_GROUP, scenario.aws_group, EMR_GROUP])
        faults = demo_faults(options, scenario, api, Simulators(emulator, mist, aws), links)
        _watch(options, scenario, children=children, faults=faults, metrics_url=metrics_url,
               problems=watch, links=links)
        return 0
    except KeyboardInterrupt:
        say("interrupted")
        return 0
    except (DemoError, LocalZabbixError, TemplateError, ProvisionError, ZabbixAPIException, RequestException,
            LookupError, OSError) as exc:
        print(f"trapline demo: {exc}", file=sys.stderr)
        return 1
    finally:
        say("stopping the agent, the simulators, the emulator, gpsfake and Zabbix ...")
        children.stop_all()
        stack.stop()
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        signals.restore()
        say("stopped; nothing left running")


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m devtools.demo``, what ``make demo`` runs."""
    parser = argparse.ArgumentParser(
        prog="python3 -m devtools.demo",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=_non_negative, metavar="SECONDS",
                        help="stop by itself this long after everything is up (default: until Ctrl-C)")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep config, spool, logs and the Zabbix database here "
                             "(default: a temporary directory, removed at the end)")
    parser.add_argument("--dtc-after", type=_non_negative, default=60.0, metavar="SECONDS",
                        help="when the emulated car gets its fault, after everything is up (default 60)")
    parser.add_argument("--port-down-after", type=_non_negative, default=90.0, metavar="SECONDS",
                        help="when a Mist AP's port loses its link, at the earliest (default 90; "
                             "it waits until Zabbix has the port's value)")
    parser.add_argument("--glue-fail-after", type=_non_negative, default=120.0, metavar="SECONDS",
                        help="when a Glue run fails, at the earliest (default 120; it waits until "
                             "Zabbix has the job's runs)")
    parser.add_argument("--recover-after", type=_non_negative, default=60.0, metavar="SECONDS",
                        help="how long the port stays down and until a Glue run succeeds (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_demo(DemoOptions(args.workdir, args.duration, args.dtc_after, args.port_down_after,
                                    args.glue_fail_after, args.recover_after))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
