"""The GPS collector against a real gpsd fed by gpsfake."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.outbox import ListOutbox
from tests.support.peers import free_port, missing_peer, need_binary, wait_port
from trapline.collectors.gps.collector import build
from trapline.core.config import Section

pytestmark = pytest.mark.integration

LIMIT = 40.0
ROUTE = Path(__file__).parent.parent / "data" / "route.nmea"


class Gpsfake:
    def __init__(self, nmea: Path, tmp: Path) -> None:
        self.binary = need_binary("gpsfake")
        self.nmea = nmea
        self.tmp = tmp
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-P", str(self.port), "-c", "0.2", "-n", str(self.nmea)],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not wait_port(self.port):
            self.stop()
            missing_peer("gpsfake/gpsd did not open its port")

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # gpsfake and the gpsd it started
            self.proc.wait()
            self.proc = None


def checksummed(body: str) -> str:
    return f"${body}*{functools.reduce(lambda a, c: a ^ ord(c), body, 0):02X}\r\n"


def run_collector(
    port: int, scenario: Callable[[ListOutbox], Awaitable[None]], state_dir: Path, **extra: Any
) -> ListOutbox:
    out = ListOutbox()
    data = {
        "type": "gps",
        "host": "van-17",
        "port": port,
        "interval": 0.2,
        "call_timeout": 2.0,
        "retry_initial": 0.1,
        "retry_max": 0.5,
        "state_dir": str(state_dir),
        **extra,
    }
    collector = build("gps", Section(Path("test.toml"), "collectors.gps", data))

    async def main() -> None:
        task = asyncio.create_task(collector.run(out))
        try:
            async with asyncio.timeout(LIMIT):
                await scenario(out)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    return out


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - watches a list the collector appends to
        await asyncio.sleep(0.05)


def test_route_gives_a_3d_fix_with_position_speed_and_altitude(tmp_path: Path) -> None:
    fake = Gpsfake(ROUTE, tmp_path)
    fake.start()
    try:
        # 12 m/s = 43.2 km/h is reached about 8 s into the drive
        out = run_collector(
            fake.port, lambda out: until(lambda: max(out.values("gps.speed"), default=0) > 40), tmp_path
        )
    finally:
        fake.stop()
    assert 3 in out.values("gps.fix.mode")
    lats, lons = out.values("gps.latitude"), out.values("gps.longitude")
    assert all(56.94 < v < 56.96 for v in lats) and all(24.10 < v < 24.12 for v in lons)
    assert all(len(str(v)) <= 16 and round(v, 6) == v for v in lats + lons)
    assert 12.0 <= out.values("gps.altitude")[0] < 13.0
    assert 8 in out.values("gps.satellites.used")
    assert out.values("gps.fix.age")  # an old recording: large, but present


def test_no_fix_is_a_fix_mode_not_a_crash(tmp_path: Path) -> None:
    nmea = tmp_path / "nofix.nmea"
    nmea.write_text(
        "".join(
            checksummed(f"GPRMC,1200{i:02d}.00,V,,,,,,,150624,,,N")
            + checksummed(f"GPGGA,1200{i:02d}.00,,,,,0,00,,,M,,M,,")
            + checksummed("GPGSA,A,1,,,,,,,,,,,,,,,")
            for i in range(10)
        ),
        newline="",
    )
    fake = Gpsfake(nmea, tmp_path)
    fake.start()
    try:
        out = run_collector(fake.port, lambda out: until(lambda: 1 in out.values("gps.fix.mode")), tmp_path)
    finally:
        fake.stop()
    assert not out.values("gps.latitude")


def test_gpsd_stopped_and_restarted_is_survived(tmp_path: Path) -> None:
    fake = Gpsfake(ROUTE, tmp_path)
    fake.start()

    async def scenario(out: ListOutbox) -> None:
        await until(lambda: len(out.values("gps.latitude")) >= 2)
        await asyncio.to_thread(fake.stop)
        await until(lambda: len(out.errors) >= 2)  # lost, then at least one failed reconnect
        before = len(out.values("gps.latitude"))
        await asyncio.to_thread(fake.start)
        await until(lambda: len(out.values("gps.latitude")) > before + 2)

    try:
        out = run_collector(fake.port, scenario, tmp_path)
    finally:
        fake.stop()
    assert any("reconnecting" in e for e in out.errors)


def test_named_geofences_see_the_route_leave_one_and_stay_in_the_other(tmp_path: Path) -> None:
    # route.nmea starts at 56.94965 N 24.10519 E and drives about 120 m east-north-east.
    fences = {
        "start": {"latitude": 56.94965, "longitude": 24.10519, "radius": 40},
        "town": {"polygon": ["56.94 24.09", "56.96 24.09", "56.96 24.12", "56.94 24.12"]},
    }
    fake = Gpsfake(ROUTE, tmp_path)
    fake.start()
    try:
        out = run_collector(
            fake.port, lambda out: until(lambda: "exit" in out.values("vehicle.geofence.event[start]")),
            tmp_path, geofences=fences,
        )
    finally:
        fake.stop()
    assert list(out.discoveries("vehicle.geofence.discovery")[0].rows) == [
        {"{#GEOFENCE}": "start"}, {"{#GEOFENCE}": "town"}]
    inside = [int(v) for v in out.values("vehicle.geofence.inside[start]")]
    assert inside[0] == 1 and inside[-1] == 0  # the route starts inside the circle, the exit left it
    assert set(out.values("vehicle.geofence.inside[town]")) == {1}
    assert not out.values("vehicle.geofence.event[town]")
