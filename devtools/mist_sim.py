"""``python3 -m devtools.mist_sim``: the demo's Mist organisation, streamed by :mod:`devtools.mist_server`.

Two sites and a handful of APs (``[mist]`` of ``devtools/demo_data/scenario.toml``)
send full stats updates every ``interval`` seconds, figures changing as a live AP's
would.  The demo steers it through stdin, one command a line:

* ``port <AP name> <port> down`` / ``up``: the port loses or regains its link; the AP's
  update goes out at once.

When the server listens, its port is written to the ``--ready`` file (written whole,
then renamed), so the demo never talks to a half-started simulator.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.mist_server import MistServer, ap_full
from devtools.simulation import announce_port, ready_file, scenario_data


@dataclass(frozen=True, slots=True)
class AccessPoint:
    name: str
    mac: str
    site_id: str
    model: str
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MistOrg:
    org_id: str
    org_name: str
    token: str
    interval: float
    sites: dict[str, str]  # site id -> name
    aps: tuple[AccessPoint, ...]


def load_org(raw: Mapping[str, Any]) -> MistOrg:
    """The ``[mist]`` table of the scenario."""
    sites = [(site["id"], site["name"]) for site in raw["sites"]]
    return MistOrg(
        org_id=raw["org_id"],
        org_name=raw["org_name"],
        token=raw["token"],
        interval=float(raw["interval"]),
        sites=dict(sites),
        aps=tuple(AccessPoint(ap["name"], ap["mac"], sites[ap["site"]][0], ap["model"], tuple(ap["ports"]))
                  for ap in raw["aps"]),
    )


def scenario_org() -> MistOrg:
    return load_org(scenario_data()["mist"])


class Fleet:
    """What the APs report: link state per port, and figures that move with time."""

    def __init__(self, org: MistOrg, started: float) -> None:
        self.org = org
        self.started = started
        self.link = {(ap.name, port): True for ap in org.aps for port in ap.ports}

    def update(self, ap: AccessPoint, now: float) -> dict[str, Any]:
        """A full stats update as Mist streams it for a connected AP."""
        index = self.org.aps.index(ap)
        running = now - self.started
        wave = (1 + math.sin(running / 120 + index)) / 2  # a slow daily-like swing, per AP
        rx_bps, tx_bps = int(300_000 * wave), int(700_000 * wave)
        # Byte and packet counters only grow (the template turns them into rates), also across
        # a link loss, as an AP's counters do.
        ports = {
            port: {"up": up, "speed": 1000 if up else 0, "full_duplex": up,
                   "rx_bytes": int(running * rx_bps / 8), "tx_bytes": int(running * tx_bps / 8),
                   "rx_pkts": int(running * rx_bps / 8000), "tx_pkts": int(running * tx_bps / 8000),
                   "rx_errors": 0,
                   "rx_peak_bps": 2 * rx_bps if up else 0, "tx_peak_bps": 2 * tx_bps if up else 0}
            for (name, port), up in self.link.items() if name == ap.name
        }
        return ap_full(
            ap.mac, ap.name, model=ap.model,
            version="0.14.29313",
            serial=f"A0{ap.mac[-6:].upper()}",
            ip=f"10.{index // 3}.{index % 3}.{10 + index}",
            power_src="PoE 802.3at",
            uptime=86_400 * (index + 1) + int(running),
            last_seen=int(now),
            cpu_util=3 + round(12 * wave),
            num_clients=round(25 * wave),
            rx_bps=rx_bps,
            tx_bps=tx_bps,
            env_stat={"cpu_temp": 52 + round(6 * wave), "ambient_temp": 24 + round(3 * wave), "humidity": 41},
            port_stat=ports,
        )

    def command(self, line: str) -> AccessPoint:
        """Apply one stdin command; returns the AP whose state changed."""
        words = line.split()
        if len(words) != 4 or words[0] != "port" or words[3] not in ("up", "down"):
            raise ValueError(f"expected 'port <AP name> <port> up|down', got {line.strip()!r}")
        _, name, port, state = words
        if (name, port) not in self.link:
            raise ValueError(f"no port {port} on an AP named {name}")
        self.link[name, port] = state == "up"
        return next(ap for ap in self.org.aps if ap.name == name)


async def _stream(server: MistServer, fleet: Fleet) -> None:
    while True:
        now = time.time()
        for ap in fleet.org.aps:
            await server.push(ap.site_id, fleet.update(ap, now))
        await asyncio.sleep(fleet.org.interval)


async def _commands(server: MistServer, fleet: Fleet) -> None:
    while line := await asyncio.to_thread(sys.stdin.readline):
        try:
            ap = fleet.command(line)
        except ValueError as exc:
            print(f"mist_sim: {exc}", flush=True)
            continue
        print(f"mist_sim: {line.strip()}", flush=True)
        await server.push(ap.site_id, fleet.update(ap, time.time()))


async def run(org: MistOrg, ready: Path) -> None:
    sites = {site_id: (name, org.org_id) for site_id, name in org.sites.items()}
    async with MistServer(org.token, sites, {org.org_id: org.org_name}) as server:
        announce_port(ready, server.port)
        print(f"mist_sim: {len(org.aps)} APs in {len(org.sites)} sites on {server.stream_url}", flush=True)
        fleet = Fleet(org, time.time())
        streaming = asyncio.create_task(_stream(server, fleet))
        try:
            await _commands(server, fleet)  # the demo closing stdin ends the simulator
        finally:
            streaming.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    ready = ready_file(argv, "devtools.mist_sim", __doc__, "once the server is up")
    asyncio.run(run(scenario_org(), ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
