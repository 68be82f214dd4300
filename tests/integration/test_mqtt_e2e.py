"""Three edge agents -> mosquitto -> two bridges -> Zabbix, all real processes, and the bad days.

Every edge is ``trapline run`` with the synthetic collector (``synthetic.seq[s1]``
counts 1, 2, 3... so a gap is plain to see) and an ``[mqtt]`` destination; every
bridge is ``trapline run`` with an ``mqtt_bridge`` collector in one shared
group and a ``[zabbix]`` destination.  Each scenario counts, per item, what was
sent, what Zabbix history holds, what is missing and what is doubled (allowed
under at-least-once, reported), and asserts that nothing is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.integration.test_mqtt_broker import Watcher
from tests.support.agent_process import AgentProcess, running_agent, spooled_readings, toml_config
from tests.support.mosquitto import Mosquitto, running_mosquitto
from tests.support.zabbix_fixtures import (
    FLOAT,
    ITEM_TYPE_TRAPPER,
    UNSIGNED,
    create_trapper_host,
    history,
    wait_until,
)
from trapline.core.model import Reading

pytestmark = pytest.mark.integration

EDGES = ("van-1", "van-2", "van-3")
BRIDGES = ("fleet-a", "fleet-b")
ROUNDS = 300  # values per series and edge
INTERVAL = 0.04  # seconds between rounds: about 12 s of streaming
SEQ, SINE = "synthetic.seq[s1]", "synthetic.sine[s1]"
COUNTERS = ("received", "forwarded", "deadletters", "duplicates")
SETTLE_TIMEOUT = 60.0
ADOPT_AFTER = 3.0  # seconds a bridge waits before serving the session of a peer that went offline
NO_BRIDGE_FOR = 4.0  # seconds the edges run against a restarted broker before any bridge is back


@dataclass
class Tally:
    """One scenario's books: per item what went in, what Zabbix holds, what is missing or doubled."""

    sent: int = 0
    stored: int = 0  # distinct values in history
    spooled: int = 0  # not stored, but waiting in the spool of a killed bridge
    lost: int = 0
    duplicated: int = 0  # extra history rows of a value already stored
    notes: list[str] = field(default_factory=list)

    def line(self, scenario: str) -> str:
        return (f"[mqtt e2e] {scenario}: sent={self.sent} stored={self.stored} spooled={self.spooled} "
                f"lost={self.lost} "
                f"duplicated={self.duplicated} {' '.join(self.notes)}")


@dataclass
class Fleet:
    zabbix: LocalZabbix
    api: Any
    broker: Mosquitto
    workdir: Path
    items: dict[str, dict[str, str]]  # edge host -> item key -> itemid
    centre_host: str
    centre_items: dict[str, str]
    edges: dict[str, AgentProcess] = field(default_factory=dict)
    bridges: dict[str, AgentProcess] = field(default_factory=dict)

    def bridge_config(self, name: str) -> Path:
        path = self.workdir / f"{name}.toml"
        path.write_text(toml_config({
            "agent": {"flush_interval": 0.1, "shutdown_timeout": 5.0},
            "spool": {"path": str(self.workdir / f"{name}.db"), "retry_initial": 0.5, "retry_cap": 2.0},
            "zabbix": {"servers": [self.zabbix.trapper_address]},
            f"collectors.{name}": {"type": "mqtt_bridge", "host": "127.0.0.1", "port": self.broker.port,
                                   "client_id": name, "group": "centre", "self_host": self.centre_host,
                                   "self_interval": 1.0, "adopt_after": ADOPT_AFTER,
                                   "peers": [peer for peer in BRIDGES if peer != name]},
        }))
        return path

    def edge_config(self, name: str, host: str) -> Path:
        path = self.workdir / f"{name}.toml"
        path.write_text(toml_config({
            "agent": {"flush_interval": 0.1, "shutdown_timeout": 5.0},
            "spool": {"path": str(self.workdir / f"{name}.db"), "retry_initial": 0.5, "retry_cap": 2.0},
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "client_id": name, "timeout": 3,
                     "max_payload": 8192},
            "collectors.synth": {"type": "synthetic", "host": host, "series": 1, "interval": INTERVAL,
                                 "limit": ROUNDS},
        }))
        return path

    def rows(self, host: str, key: str) -> list[tuple[int, int, str]]:
        value_type = UNSIGNED if key == SEQ else FLOAT
        return [(int(r["clock"]), int(r["ns"]), r["value"])
                for r in history(self.api, self.items[host][key], value_type)]

    def stored_seq(self) -> int:
        return sum(len({v for _, _, v in self.rows(host, SEQ)}) for host in self.items)

    def tally(self, dead: str | None = None) -> Tally:
        """The books now.  ``dead``: a killed bridge.  What it had committed to its spool it
        acknowledged to the broker, which then forgot it: until the bridge is back, such a
        reading is neither stored nor lost, but spooled (read from the spool file)."""
        waiting = self.spooled_by(dead) if dead else []
        for_sure = set(range(1, ROUNDS + 1))
        tally = Tally()
        for host in self.items:
            seq = self.rows(host, SEQ)
            values = {int(v) for _, _, v in seq}
            missing = for_sure - values
            spooled = {int(r.value) for r in waiting if (r.host, r.key) == (host, SEQ)} & missing
            tally.sent += ROUNDS
            tally.stored += len(values & for_sure)
            tally.spooled += len(spooled)
            tally.lost += len(missing - spooled)
            tally.duplicated += len(seq) - len(values)
            sine = self.rows(host, SINE)
            stamps = {(c, n) for c, n, _ in sine}
            spooled_stamps = {(r.clock, r.ns) for r in waiting if (r.host, r.key) == (host, SINE)} - stamps
            tally.sent += ROUNDS
            tally.stored += len(stamps)
            tally.spooled += len(spooled_stamps)
            tally.lost += ROUNDS - len(stamps) - len(spooled_stamps)
            tally.duplicated += len(sine) - len(stamps)
        return tally

    def spooled_by(self, bridge: str) -> list[Reading]:
        """What a bridge that is not running holds in its spool for Zabbix."""
        assert not self.bridges[bridge].running
        return spooled_readings(self.workdir / f"{bridge}.db", f"zabbix[{self.zabbix.trapper_address}]")

    def complete(self, dead: str | None = None) -> bool:
        return self.tally(dead).lost == 0

    def counter(self, bridge: str, name: str) -> int:
        rows = history(self.api, self.centre_items[f'trapline.bridge.{name}["{bridge}"]'], UNSIGNED)
        return int(rows[-1]["value"]) if rows else 0

    def start_bridge(self, name: str, stack: ExitStack) -> None:
        if name in self.bridges:
            self.bridges[name].start()
        else:
            self.bridges[name] = stack.enter_context(
                running_agent(self.bridge_config(name), self.workdir / f"{name}.log"))

    def output(self) -> str:
        return "\n".join(f"--- {name}\n{proc.output()[-3000:]}"
                         for name, proc in {**self.bridges, **self.edges}.items())


def _centre_items() -> dict[str, int]:
    keys = [f'trapline.bridge.{c}["{b}"]' for b in BRIDGES for c in COUNTERS]
    keys += [f'trapline.bridge.agent.{m}["{b}","{a}"]' for b in BRIDGES for a in EDGES + BRIDGES
             for m in ("online", "lastseen")]
    return dict.fromkeys(keys, UNSIGNED)


@contextmanager
def fleet(stack: LocalZabbix, tmp_path: Path) -> Iterator[tuple[Fleet, ExitStack]]:
    """Zabbix hosts for three vans and the centre, a broker, two bridges; edges started by the test."""
    api = stack.api()
    items: dict[str, dict[str, str]] = {}
    for _ in EDGES:
        host = create_trapper_host(stack, {SEQ: UNSIGNED, SINE: FLOAT}, api=api, prefix="trapline-van",
                                   reload=False)
        # The synthetic collector sends its LLD too: a rule without prototypes takes it.
        api.discoveryrule.create(hostid=host.hostid, name="series", key_="synthetic.discovery",
                                 type=ITEM_TYPE_TRAPPER)
        items[host.name] = dict(host.itemids)
    centre = create_trapper_host(stack, _centre_items(), api=api, prefix="trapline-centre", reload=False)
    for rule in ("trapline.bridge.discovery", "trapline.bridge.agent.discovery"):
        api.discoveryrule.create(hostid=centre.hostid, name=rule, key_=rule, type=ITEM_TYPE_TRAPPER)
    stack.config_cache_reload()
    with ExitStack() as processes, running_mosquitto(tmp_path) as broker:
        the_fleet = Fleet(stack, api, broker, tmp_path, items, centre.name, dict(centre.itemids))
        for name in BRIDGES:
            the_fleet.start_bridge(name, processes)
        yield the_fleet, processes


def start_edges(the_fleet: Fleet, stack: ExitStack) -> None:
    for name, host in zip(EDGES, the_fleet.items, strict=True):
        the_fleet.edges[name] = stack.enter_context(
            running_agent(the_fleet.edge_config(name, host), the_fleet.workdir / f"{name}.log"))


def settle(the_fleet: Fleet, scenario: str, expect_down: frozenset[str] | set[str] = frozenset()) -> Tally:
    """Wait until every reading is stored, or (a bridge in ``expect_down``) in that bridge's spool."""
    dead = next(iter(expect_down), None)
    try:
        wait_until(lambda: the_fleet.complete(dead), timeout=SETTLE_TIMEOUT, interval=0.5,
                   what=f"{scenario}: every reading")
    finally:
        tally = the_fleet.tally(dead)
        tally.notes.append("bridge duplicates dropped=" + "+".join(
            str(the_fleet.counter(b, "duplicates")) for b in BRIDGES))
        print(tally.line(scenario))
    for name, proc in {**the_fleet.bridges, **the_fleet.edges}.items():
        assert proc.running or name in expect_down, f"{name} died:\n{the_fleet.output()}"
    assert tally.lost == 0, the_fleet.output()
    return tally


def test_every_reading_of_three_edges_reaches_zabbix_through_two_bridges(zabbix: LocalZabbix,
                                                                        tmp_path: Path) -> None:
    """On both Zabbix versions; the fault scenarios below on 6.0 only (the broker side is the same)."""
    with fleet(zabbix, tmp_path) as (the_fleet, stack):
        start_edges(the_fleet, stack)
        settle(the_fleet, "steady")
        # Both bridges took a share, and they say so through their own counters.
        shares = [wait_until(lambda b=b: the_fleet.counter(b, "forwarded"), timeout=10, what=f"{b} counters")
                  for b in BRIDGES]
        assert all(share > 0 for share in shares)
        online = the_fleet.centre_items['trapline.bridge.agent.online["fleet-a","van-1"]']
        wait_until(lambda: [r["value"] for r in history(the_fleet.api, online, UNSIGNED)][-1:] == ["1"],
                   timeout=10, what="van-1 online")


def test_a_killed_bridge_loses_nothing(zabbix60: LocalZabbix, tmp_path: Path) -> None:
    with fleet(zabbix60, tmp_path) as (the_fleet, stack):
        start_edges(the_fleet, stack)
        wait_until(lambda: the_fleet.stored_seq() >= len(EDGES) * ROUNDS // 4, timeout=SETTLE_TIMEOUT,
                   interval=0.2, what="a quarter of the readings")
        dead, survivor = the_fleet.bridges["fleet-a"], the_fleet.bridges["fleet-b"]
        dead.kill()
        # mosquitto keeps the dead bridge's unacknowledged messages and its share of new ones in
        # its session; the survivor serves that session once fleet-a has been offline ADOPT_AFTER.
        tally = settle(the_fleet, "bridge SIGKILL", expect_down={"fleet-a"})
        assert tally.sent == tally.stored + tally.spooled
        assert "fleet-a has been offline" in survivor.output()
        # fleet-a comes back: the broker hands its session back, and the two do not fight over it.
        logged = len(survivor.output())
        dead.start()
        wait_until(lambda: "stopped serving the session of bridge fleet-a" in survivor.output()[logged:],
                   timeout=30, interval=0.2, what="the survivor to hand fleet-a's session back")
        time.sleep(ADOPT_AFTER + 2)
        assert "serving its session" not in survivor.output()[logged:]
        assert dead.running and survivor.running, the_fleet.output()
        # Back, it sends what it had spooled: now everything is stored.
        tally = settle(the_fleet, "fleet-a back")
        assert tally.sent == tally.stored


def test_a_broker_restart_loses_nothing(zabbix60: LocalZabbix, tmp_path: Path) -> None:
    with fleet(zabbix60, tmp_path) as (the_fleet, stack):
        start_edges(the_fleet, stack)
        wait_until(lambda: the_fleet.stored_seq() >= len(EDGES) * ROUNDS // 4, timeout=SETTLE_TIMEOUT,
                   interval=0.2, what="a quarter of the readings")
        the_fleet.broker.stop()  # SIGTERM: mosquitto saves sessions and queued messages
        time.sleep(2)
        the_fleet.broker.start()  # same port, same persistence directory
        wait_until(lambda: the_fleet.stored_seq() >= len(EDGES) * ROUNDS // 2, timeout=SETTLE_TIMEOUT,
                   interval=0.2, what="half of the readings")
        # Again, with the bridges back only after the edges: mosquitto 2.0.11 does not restore
        # shared subscriptions, so until a bridge subscribes the edges' messages match no one.
        logged = {name: len(the_fleet.edges[name].output()) for name in EDGES}

        def edges_back() -> bool:
            return all("(session resumed)" in the_fleet.edges[name].output()[logged[name]:] for name in EDGES)

        for name in BRIDGES:
            the_fleet.bridges[name].kill()
        the_fleet.broker.stop()
        the_fleet.broker.start()
        wait_until(edges_back, timeout=30, interval=0.2, what="the edges to reconnect")
        # Long enough for every edge to publish into the empty group (its retry backoff is
        # still short here); without the "no matching subscribers" check 640-796 of 1800 were lost.
        time.sleep(NO_BRIDGE_FOR)
        for name in BRIDGES:
            the_fleet.start_bridge(name, stack)
        settle(the_fleet, "broker restart")


def test_malformed_payloads_go_to_the_dead_letter_topic(zabbix60: LocalZabbix, tmp_path: Path) -> None:
    bad = [b"\x00 not json", b"{}", json.dumps({"version": 7}).encode(), b"[" * 10_000] * 3
    with fleet(zabbix60, tmp_path) as (the_fleet, stack):
        watcher = Watcher(the_fleet.broker, "trapline/v1/deadletter")
        try:
            start_edges(the_fleet, stack)
            # Published once the bridges take messages: with no subscriber mosquitto drops them.
            wait_until(lambda: the_fleet.stored_seq() > 0, timeout=SETTLE_TIMEOUT, what="readings flowing")
            for i, payload in enumerate(bad):
                watcher.publish(f"trapline/v1/{list(the_fleet.items)[i % len(EDGES)]}/data", payload)
            wait_until(lambda: len(watcher.on("trapline/v1/deadletter")) >= len(bad), timeout=30,
                       what="every dead letter")
            settle(the_fleet, "malformed payloads")
            letters = watcher.on("trapline/v1/deadletter")
            assert sorted(m.payload for m in letters) == sorted(bad)
            wait_until(lambda: sum(the_fleet.counter(b, "deadletters") for b in BRIDGES) == len(bad),
                       timeout=10, what="the dead letters counted")
            print(f"[mqtt e2e] malformed payloads: published={len(bad)} dead-lettered={len(letters)}")
        finally:
            watcher.close()
