"""``make demo`` (``python3 -m devtools.demo``) as a user runs it: a child process, watched through
the Zabbix API and its Prometheus endpoint, then stopped by a signal.  The whole suite: the van
(ELM327-emulator, gpsfake), the Mist org (devtools.mist_sim) and the AWS account
(devtools.aws_sim on moto) reach the demo's Zabbix 6.0 through one agent.  Also the drive it
writes for gpsfake (no peer needed).

The test process makes itself a child subreaper, so that any process the demo
leaves behind becomes the test's child when the demo exits, where it is found."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import itertools
import math
import operator
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from pyzabbix.api import ZabbixAPI

from devtools.aws_sim import command as aws_command
from devtools.demo import load_scenario, write_nmea
from devtools.mist_sim import Fleet
from tests.support.peers import missing_peer, need_binary
from tests.support.zabbix_fixtures import wait_until

PR_SET_CHILD_SUBREAPER = 36
# Limits that turn a hang into a failure; none of them is a speed expectation.
START_LIMIT = 240.0  # the first Zabbix start on a machine loads the schema
DATA_LIMIT = 120.0
SUITE_LIMIT = 300.0  # LLD of APs, their ports and the Glue jobs, then a fault and its recovery
# Seconds the port stays down and until the Glue job's next run succeeds: long enough for both
# faults to be open at once (each starts when Zabbix has its item's value) for the screenshots.
RECOVER_AFTER = 120
STOP_LIMIT = 90.0
SCENARIO = load_scenario()


class Demo:
    """``python3 -m devtools.demo`` in a child process, its output collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.demo", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, limit: float = START_LIMIT) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            match = next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)
            if match is None and self.proc.poll() is not None:
                pytest.fail(f"demo exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                            f"{self.output}")
            return match

        match: re.Match[str] = wait_until(found, limit, 0.2, f"{pattern!r} in the demo's output")
        return match

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(STOP_LIMIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"demo did not stop within {STOP_LIMIT:g} s of {sig.name}:\n{self.output}")
        self._reader.join(10)
        return code


def _children(pid: int) -> dict[int, tuple[str, str]]:
    """{pid: (state, command line)} of the processes whose parent is ``pid``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found[int(proc.name)] = (fields[0], cmdline.strip())
    return found


@pytest.fixture
def subreaper() -> Iterator[dict[int, tuple[str, str]]]:
    """Adopt the demo's orphans; yield the children this process had before."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        missing_peer(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    before = _children(os.getpid())
    try:
        yield before
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def assert_nothing_left(before: dict[int, tuple[str, str]]) -> None:
    def left() -> dict[int, tuple[str, str]]:
        return {pid: c for pid, c in _children(os.getpid()).items() if pid not in before}

    def all_ended() -> bool:
        return all(state == "Z" for state, _ in left().values())

    try:
        wait_until(all_ended, 10, 0.2, "the demo's processes to end")  # a SIGKILLed group may lag a moment
    except pytest.fail.Exception:
        running = left()
        for pid in running:  # ours now: end them so that a failed test leaves nothing either
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # and its group, when it leads one
            os.waitpid(pid, 0)
        pytest.fail(f"the demo left processes running: {running}")
    for pid in left():
        os.waitpid(pid, os.WNOHANG)  # adopted zombies: reap them


@pytest.fixture
def tools() -> None:
    need_binary("gpsfake")
    if importlib.util.find_spec("elm") is None:
        missing_peer("ELM327-emulator is not installed (pip install ELM327-emulator)")
    if importlib.util.find_spec("moto") is None:
        missing_peer("moto is not installed (pip install 'moto[server]')")


def _vehicle(api: Any) -> dict[str, Any]:
    hosts = api.host.get(filter={"host": [SCENARIO.vehicle_host]}, output=["hostid"],
                         selectInventory=["location_lat", "location_lon"])
    assert hosts, f"no host {SCENARIO.vehicle_host} in Zabbix"
    host: dict[str, Any] = hosts[0]
    return host


def _hostids(api: Any, **where: Any) -> dict[str, str]:
    """host -> hostid."""
    return {h["host"]: h["hostid"] for h in api.host.get(output=["host"], **where)}


def _problem_events(api: Any, hostid: str, prefix: str) -> list[dict[str, str]]:
    """Problem events of the host whose name starts with ``prefix``, open or resolved (r_eventid != 0)."""
    events: list[dict[str, str]] = api.event.get(hostids=[hostid], source=0, object=0, value=1,
                                                 output=["name", "r_eventid"])
    return [e for e in events if e["name"].startswith(prefix)]


def _resolved(api: Any, hostid: str, prefix: str) -> list[dict[str, str]]:
    events = _problem_events(api, hostid, prefix)
    return events if events and all(e["r_eventid"] != "0" for e in events) else []


def mist_hosts(api: Any) -> dict[str, str]:
    """Every AP of the scenario a host in its site's group with live values; AP name -> hostid."""
    mist = SCENARIO.mist
    host_of = {ap.name: f"mist-ap-{ap.mac}" for ap in mist.aps}
    found = wait_until(lambda: (h := _hostids(api, filter={"host": list(host_of.values())}))
                       and len(h) == len(mist.aps) and h, SUITE_LIMIT, 2.0, "a host per AP")
    hosts = {name: found[host] for name, host in host_of.items()}
    for ap in mist.aps:
        (host,) = api.host.get(hostids=[hosts[ap.name]], output=["name"], selectGroups=["name"])
        assert host["name"] == f"{ap.name} ({ap.mac})"
        assert f"Mist/{mist.org_name}/{mist.sites[ap.site_id]}" in {g["name"] for g in host["groups"]}

    def live() -> set[str]:
        items = api.item.get(hostids=list(hosts.values()), filter={"key_": ["mist.ap.status"]},
                             output=["hostid", "lastclock", "lastvalue"])
        return {i["hostid"] for i in items if int(i["lastclock"]) and i["lastvalue"] == "1"}

    wait_until(lambda: live() == set(hosts.values()), SUITE_LIMIT, 2.0, "every AP connected in Zabbix")
    return hosts


def aws_host(api: Any) -> str:
    """The EMR cluster a host of its own; returns the poller host's id."""
    clusters = wait_until(lambda: api.host.get(output=["name"], groupids=[
        g["groupid"] for g in api.hostgroup.get(filter={"name": ["AWS/EMR"]}, output=["groupid"])]),
        SUITE_LIMIT, 2.0, "the EMR cluster's host")
    assert [c["name"].split(" (")[0] for c in clusters] == [f"EMR {SCENARIO.aws.emr_cluster}"]
    return _hostids(api, filter={"host": [SCENARIO.aws_host]})[SCENARIO.aws_host]


PORT_DOWN = f"Mist: Port {SCENARIO.port_down[1]}: Link down"
GLUE_FAILED = f"AWS Glue: Job {SCENARIO.failing_job}: Run "


def _open(api: Any, hostid: str, prefix: str) -> list[str]:
    names = [p["name"] for p in api.problem.get(hostids=[hostid], output=["name"])]
    return [name for name in names if name.startswith(prefix)]


def faults_end(api: Any, ap_hostid: str, aws_hostid: str, quiet: list[str]) -> None:
    """The port-down and the Glue failure resolve; the other APs raised nothing all along."""
    wait_until(lambda: _resolved(api, ap_hostid, PORT_DOWN), SUITE_LIMIT, 1.0, f"{PORT_DOWN} to resolve")
    (failed,) = _problem_events(api, aws_hostid, GLUE_FAILED)
    assert failed["name"].endswith(f" FAILED: {SCENARIO.aws.failure}"), failed["name"]
    wait_until(lambda: _resolved(api, aws_hostid, GLUE_FAILED), SUITE_LIMIT, 1.0, "a later good Glue run")
    assert not api.event.get(hostids=quiet, source=0, object=0, value=1, output=["name"])


def check_overview(api: Any, dashboardid: str, fleet: str) -> dict[str, list[str]]:
    """A fresh session opens the first dashboard by name: the overview, whose map links the three parts."""
    (first,) = api.dashboard.get(output=["dashboardid"], sortfield="name", limit=1)
    assert first["dashboardid"] == dashboardid
    (dashboard,) = api.dashboard.get(dashboardids=[dashboardid], selectPages="extend")
    widgets = dashboard["pages"][0]["widgets"]
    (sysmapid,) = [field["value"] for widget in widgets if widget["type"] == "map"
                   for field in widget["fields"] if field["name"] == "sysmapid"]
    (sysmap,) = api.map.get(sysmapids=[sysmapid], selectSelements="extend")
    links = {e["label"].split("\n")[0]: [u["url"] for u in e["urls"]] for e in sysmap["selements"]}
    assert set(links) == {"Vans", "Mist sites", "Data pipelines"}
    assert f"dashboardid={fleet}" in links["Vans"][0]
    return links


# --------------------------------------------------------------------------
# The README's screenshots (issue 21 item 6): headless chromium on the demo's frontend
# --------------------------------------------------------------------------
README_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "img"
UPDATE_IMAGES = "TRAPLINE_UPDATE_SCREENSHOTS"  # set to 1: the screenshots also replace docs/img/*.png
MAX_PNG_BYTES = 200_000
SCREENSHOT_TRIES = 3
# The virtual time budget lets the widgets, which load after the page, fill before the capture.
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,800",
            "--virtual-time-budget=20000"]
# What Zabbix 6.0 shows for an error (its message box, PHP's own HTML error) and for a widget or
# table with nothing to show.
PAGE_ERROR = re.compile(r'class="[^"]*\bmsg-bad\b|<b>(Fatal error|Warning|Notice|Deprecated|Parse error)</b>')
EMPTY = re.compile(r'\bnothing-to-show\b|No data found|class="dashboard-grid-widget-content[^"]*">\s*</div>')


def _chromium(*args: str) -> str:
    binary = need_binary("chromium")
    done = subprocess.run([binary, *CHROMIUM, *args], capture_output=True, text=True, timeout=180,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _as_admin(frontend: str, page: str) -> str:
    """A URL that logs in and opens ``page``: Zabbix's login form takes its fields from the URL too
    and then redirects to ``request`` (the demo's Zabbix has the stock password)."""
    return f"{frontend}index.php?" + urlencode({"name": "Admin", "password": "zabbix", "enter": "Sign in",
                                                "request": page})


def page_dom(frontend: str, page: str) -> str:
    """``page`` as Admin sees it, once its scripts ran; it must show no error."""
    dom = _chromium("--dump-dom", _as_admin(frontend, page))
    assert 'id="login' not in dom, f"{page}: still on the login page"
    assert not (error := PAGE_ERROR.search(dom)), f"{page} shows an error: {dom[error.start():][:300]}"
    return dom


def screenshot(frontend: str, page: str, png: Path) -> str:
    """``page`` saved to ``png``; returns its DOM, which must have no error and no empty widget.

    A widget's content is fetched after the page; on a loaded machine a fetch can miss the
    capture, so a page with an empty widget is taken again, up to SCREENSHOT_TRIES times.
    """
    empties: list[str] = []
    for _ in range(SCREENSHOT_TRIES):
        _chromium(f"--screenshot={png}", _as_admin(frontend, page))
        dom = page_dom(frontend, page)
        if not (empty := EMPTY.search(dom)):
            break
        empties.append(dom[empty.start():][:300])
    assert len(empties) < SCREENSHOT_TRIES, f"{page} has an empty widget: {empties}"
    assert png.stat().st_size <= MAX_PNG_BYTES, f"{png.name}: {png.stat().st_size} bytes"
    return dom


def check_links(frontend: str, links: dict[str, list[str]]) -> None:
    """Every link of the overview's map opens without an error, on its own part of the suite:
    a host of that part is on the page and the van or an AP of another part is not (the filter in
    the link took)."""
    van, ap = SCENARIO.vehicle_host, SCENARIO.port_down[0]
    own = {"Vans": [van], "Mist sites": [ap, SCENARIO.mist_host],
           "Data pipelines": [SCENARIO.aws_host, SCENARIO.aws.emr_cluster]}
    foreign = {"Vans": ap, "Mist sites": van, "Data pipelines": van}
    for tile, pages in links.items():
        for page in pages:
            dom = page_dom(frontend, page)
            assert any(host in dom for host in own[tile]), f"{tile}: {page} shows none of {own[tile]}"
            assert foreign[tile] not in dom, f"{tile}: {page} shows {foreign[tile]}"


def take_screenshots(frontend: str, ids: dict[str, str], folder: Path) -> None:
    """The overview, the Fleet map, a Mist AP's latest data and the Problems page, checked; copied to
    docs/img when UPDATE_IMAGES is set.  In kiosk mode (no menu, no filter form) the data fills
    the picture and the page fits its width."""
    folder.mkdir()
    pages = {
        "demo-overview": f"zabbix.php?action=dashboard.view&kiosk=1&dashboardid={ids['overview']}",
        "demo-fleet-map": f"zabbix.php?action=dashboard.view&kiosk=1&dashboardid={ids['fleet']}",
        "demo-mist-ap-latest": f"zabbix.php?action=latest.view&kiosk=1&hostids[]={ids['ap']}",
        "demo-problems": "zabbix.php?action=problem.view&kiosk=1",
    }
    doms = {name: screenshot(frontend, page, folder / f"{name}.png") for name, page in pages.items()}
    assert "Mist: Port eth0: Link status" in doms["demo-mist-ap-latest"]
    for shown in (*SCENARIO.dtcs, PORT_DOWN, f" FAILED: {SCENARIO.aws.failure}"):
        assert shown in doms["demo-problems"], f"{shown!r} is not on the Problems page"
    if os.environ.get(UPDATE_IMAGES) == "1":
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        for name in pages:
            shutil.copyfile(folder / f"{name}.png", README_IMAGES / f"{name}.png")


@pytest.mark.integration
def test_demo_brings_the_whole_suite_into_zabbix_and_stops_cleanly(
    tools: None, subreaper: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    demo = Demo("--workdir", str(tmp_path / "demo"), "--duration", "900", "--dtc-after", "5",
                "--port-down-after", "5", "--glue-fail-after", "5", "--recover-after", str(RECOVER_AFTER))
    try:
        url = demo.wait_for(r"^Zabbix frontend:\s+(http://\S+)").group(1)
        metrics_url = demo.wait_for(r"^Prometheus:\s+(http://\S+)").group(1)
        api = ZabbixAPI(url, timeout=30)
        api.login("Admin", "zabbix")
        hostid = _vehicle(api)["hostid"]

        def live_items() -> set[str]:
            items = api.item.get(hostids=[hostid], output=["key_", "lastclock"])
            return {i["key_"] for i in items if int(i["lastclock"])}

        wanted = {"obd.state", "obd.voltage", "obd.pid[SPEED]", "obd.pid[RPM]",
                  "gps.fix.mode", "gps.latitude", "gps.longitude", "gps.speed"}
        wait_until(lambda: wanted <= live_items(), DATA_LIMIT, 1.0, f"values of {sorted(wanted)}")

        inventory = wait_until(lambda: (i := _vehicle(api)["inventory"]) and i["location_lat"] and i,
                               DATA_LIMIT, 1.0, "the inventory location")
        assert 56.9 < float(inventory["location_lat"]) < 57.0  # the drive through Riga
        assert 24.0 < float(inventory["location_lon"]) < 24.2

        def dtc_problems() -> list[str]:
            names = [p["name"] for p in api.problem.get(hostids=[hostid], output=["name"])]
            return [n for n in names if any(code in n for code in SCENARIO.dtcs)]

        problems = wait_until(lambda: len(dtc_problems()) == len(SCENARIO.dtcs) and dtc_problems(),
                              DATA_LIMIT, 1.0, f"problems for {SCENARIO.dtcs}")
        assert any("P0143" in name and "O2 Sensor" in name for name in problems)

        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        assert f'trapline_obd_state{{host="{SCENARIO.vehicle_host}"' in metrics
        demo.wait_for(r"DTCs: P0143 P0300 \| Zabbix problems: [1-9]", DATA_LIMIT)  # the live summary

        overview = demo.wait_for(r"^  Overview:\s+\S+dashboardid=(\d+)").group(1)
        fleet = demo.wait_for(r"^  Fleet map:\s+\S+dashboardid=(\d+)").group(1)
        links = check_overview(api, overview, fleet)
        aps = mist_hosts(api)
        aws_hostid = aws_host(api)
        ap_hostid = aps[SCENARIO.port_down[0]]
        # Both faults last RECOVER_AFTER seconds from when Zabbix had their items' values.
        wait_until(lambda: _open(api, ap_hostid, PORT_DOWN) and _open(api, aws_hostid, GLUE_FAILED),
                   SUITE_LIMIT, 1.0, "the port-down and the Glue failure open at once")
        # The Fleet map's table lists the vans by their recent-fix count, a calculated item
        # the server first computes up to its 1m delay after the van's first fix.
        wait_until(lambda: "vehicle.position.recent" in live_items(), DATA_LIMIT, 1.0,
                   "the van's recent position fixes")
        take_screenshots(url, {"overview": overview, "fleet": fleet, "ap": ap_hostid}, tmp_path / "img")
        check_links(url, links)
        faults_end(api, ap_hostid, aws_hostid, [h for ap, h in aps.items() if ap != SCENARIO.port_down[0]])
        mist = SCENARIO.mist
        count = len(mist.aps)
        demo.wait_for(rf"Mist {re.escape(mist.org_name)}: {count} APs in {len(mist.sites)} sites streamed, "
                      rf"{count} are Zabbix hosts, {count} with live values", DATA_LIMIT)
        job = re.escape(SCENARIO.failing_job)
        demo.wait_for(rf"AWS {SCENARIO.aws.region} \(moto\): Glue last runs: {job} SUCCEEDED.*"
                      r"EMR clusters as Zabbix hosts: 1", DATA_LIMIT)
    finally:
        code = demo.stop(signal.SIGINT)
    assert code == 0, demo.output
    assert "stopped; nothing left running" in demo.lines[-1]
    assert_nothing_left(subreaper)


@pytest.mark.integration
def test_sigterm_while_zabbix_starts_leaves_nothing(
    tools: None, subreaper: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    demo = Demo("--workdir", str(tmp_path / "demo"))
    demo.wait_for(r"^starting Zabbix")
    code = demo.stop(signal.SIGTERM)
    assert code == 0, demo.output
    assert "interrupted" in demo.lines and "Zabbix is up" not in demo.output, demo.output
    assert_nothing_left(subreaper)


def _degrees(field: str, hemisphere: str) -> float:
    whole, minutes = divmod(float(field), 100)
    return (whole + minutes / 60) * (-1 if hemisphere in "SW" else 1)


def test_the_drive_is_valid_nmea_in_one_second_epochs_without_a_jump(tmp_path: Path) -> None:
    route = SCENARIO.route
    nmea = tmp_path / "route.nmea"
    start = datetime(2026, 12, 31, 23, 59, 0, tzinfo=UTC)
    seconds = 900  # more than two laps, across midnight
    per_epoch = write_nmea(route, nmea, start, seconds)
    lines = nmea.read_bytes().split(b"\r\n")
    assert lines.pop() == b""
    assert len(lines) == seconds * per_epoch

    fixes = []
    for raw in lines:
        body, _, checksum = raw.decode("ascii").removeprefix("$").partition("*")
        assert int(checksum, 16) == functools.reduce(operator.xor, body.encode(), 0), raw
        fields = body.split(",")
        if fields[0] == "GPRMC":
            lat, lon = _degrees(fields[3], fields[4]), _degrees(fields[5], fields[6])
            fixes.append((fields[1], fields[9], lat, lon, float(fields[7]) / 3600 * 1852))
    assert [line[:6] for line in lines[::per_epoch]] == [b"$GPRMC"] * seconds  # RMC opens every epoch
    assert fixes[0][:2] == ("235900.00", "311226") and fixes[61][:2] == ("000001.00", "010127")

    fastest = max(w.speed for w in route.waypoints) / 3.6
    for (_, _, lat1, lon1, _), (_, _, lat2, lon2, speed) in itertools.pairwise(fixes):
        north = (lat2 - lat1) * 111_195
        east = (lon2 - lon1) * 111_195 * math.cos(math.radians(lat1))
        assert math.hypot(north, east) <= fastest * 1.01 + 0.5  # lap after lap, no teleport
        assert speed <= fastest * 1.01
    assert any(speed == 0 for *_, speed in fixes)  # it stops at traffic lights
    assert all(56.9 < lat < 57.0 and 24.0 < lon < 24.2 for _, _, lat, lon, _ in fixes)


def test_the_mist_simulator_reports_what_it_was_told_and_refuses_the_rest() -> None:
    org = SCENARIO.mist
    fleet = Fleet(org, started=1_800_000_000.0)
    ap_name, port = SCENARIO.port_down
    ap = next(a for a in org.aps if a.name == ap_name)
    before = fleet.update(ap, 1_800_000_060.0)
    assert before["port_stat"][port]["up"] is True and before["status"] == "connected"
    assert set(before["port_stat"]) == set(ap.ports)
    assert fleet.command(f"port {ap_name} {port} down\n") == ap
    down = fleet.update(ap, 1_800_000_065.0)
    assert down["port_stat"][port]["up"] is False and down["port_stat"][port]["speed"] == 0
    assert down["uptime"] > before["uptime"]  # no restart on the way
    others = [fleet.update(a, 1_800_000_065.0) for a in org.aps if a != ap]
    assert all(p["up"] for update in others for p in update["port_stat"].values())
    fleet.command(f"port {ap_name} {port} up")
    assert fleet.update(ap, 1_800_000_070.0)["port_stat"][port]["up"] is True
    for bad in ("", "port", f"port {ap_name} {port} sideways", f"port {ap_name} eth9 down",
                f"port nobody {port} down", f"link {ap_name} {port} down"):
        with pytest.raises(ValueError, match="port"):
            fleet.command(bad)


def test_the_aws_simulator_refuses_commands_it_does_not_know() -> None:
    for bad in ("", "glue-fail", "glue-fail no-such-job", f"glue-stop {SCENARIO.failing_job}",
                f"glue-run {SCENARIO.failing_job} extra"):
        with pytest.raises(ValueError, match="glue-fail"):
            aws_command("http://127.0.0.1:9", SCENARIO.aws, bad)  # refused before any call
