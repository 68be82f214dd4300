"""The issue's fault test: a Zabbix server outage plus an agent crash lose and double nothing.

Readings flow from the synthetic collector through the real agent process into
real Zabbix.  Then the Zabbix server is stopped for a minute; halfway through,
the agent is SIGKILLed and started again on the same config and spool; then the
server comes back.  Afterwards every reading the agent had taken responsibility
for is in history exactly once, with its own clock.

What counts as *sent*: every reading committed to the spool.  A SIGKILL also
takes the readings still in the intake (at most ``flush_interval``, by design);
they never existed for Zabbix and no at-least-once promise covers them.  The
committed set of the killed run is known exactly: the readings already in
history, plus the spool file's content right after the kill (the server was
down, so nothing of it was delivered).  ``synthetic.seq`` counts 1, 2, 3... per
run, so any hole in a run's sequence is a lost reading.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import LocalZabbix
from tests.support.agent_process import (
    AgentProcess,
    ZabbixItem,
    create_synthetic_host,
    host_items,
    item_rows,
    series_keys,
    spooled_readings,
    toml_config,
)
from tests.support.zabbix_fixtures import wait_until
from trapline.core.model import Reading

SERIES = 3
INTERVAL = 0.2
OUTAGE = 60.0  # seconds the Zabbix server is down
KILL_AFTER = 30.0  # seconds into the outage the agent is SIGKILLed
WARM_UP_VALUES = 10  # per series in history before the outage starts
# The restarted agent backs off while the server is down (capped, jittered): allow for
# its longest wait, then the backlog of a minute of readings.
RECOVERY_TIMEOUT = 150.0
SETTLE_TIMEOUT = 60.0

Row = tuple[int, int, str]  # clock, ns, value


@dataclass
class Account:
    """Readings the agent took responsibility for, against what history holds."""

    sent: int = 0
    stored: int = 0
    lost: int = 0
    duplicated: int = 0
    misplaced: int = 0  # rows with a clock no run produced, or committed readings stored differently

    def add(self, expected: int, rows: list[Row], distinct: int) -> None:
        self.sent += expected
        self.stored += distinct
        self.lost += expected - distinct
        self.duplicated += len(rows) - distinct

    @property
    def clean(self) -> bool:
        return self.sent > 0 and self.lost == self.duplicated == self.misplaced == 0


def _account(
    api: Any,
    items: dict[str, ZabbixItem],
    committed: list[Reading],
    killed_at: float,
    restarted_at: float,
) -> tuple[Account, list[int], list[int]]:
    """Compare history with what each run committed; returns the account and rounds per run."""
    account = Account()
    rounds_run1: list[int] = []
    rounds_run2: list[int] = []
    for series in series_keys(SERIES):
        seq_key, sine_key = f"synthetic.seq[{series}]", f"synthetic.sine[{series}]"
        seq_rows = item_rows(api, items[seq_key])
        sine_rows = item_rows(api, items[sine_key])
        runs = _split(seq_rows, killed_at, restarted_at)
        sine_runs = _split(sine_rows, killed_at, restarted_at)
        account.misplaced += len(runs.between) + len(sine_runs.between)

        spooled = [r for r in committed if r.key == seq_key]
        # Run 1 committed 1..K1: what reached history before the outage, and the spool's rest.
        k1 = max([int(v) for _, _, v in runs.first] + [int(r.value) for r in spooled], default=0)
        # Run 2 ended with SIGTERM and an empty spool: all it made, 1..K2, was delivered.
        k2 = max((int(v) for _, _, v in runs.second), default=0)
        rounds_run1.append(k1)
        rounds_run2.append(k2)
        for expected, rows in ((k1, runs.first), (k2, runs.second)):
            account.add(expected, rows, len({int(v) for _, _, v in rows} & set(range(1, expected + 1))))
            account.misplaced += sum(1 for _, _, v in rows if not 1 <= int(v) <= expected)

        # The sine reading of a round carries that round's clock: one per seq round.
        round_clocks = {(c, ns) for c, ns, _ in seq_rows} | {(r.clock, r.ns) for r in spooled}
        for expected, rows in ((k1, sine_runs.first), (k2, sine_runs.second)):
            clocks = {(c, ns) for c, ns, _ in rows}
            account.add(expected, rows, len(clocks & round_clocks))
            account.misplaced += len(clocks - round_clocks)

        # Each reading waiting in the spool at the kill is in history exactly as it was made.
        stored = {
            seq_key: {(c, ns): float(v) for c, ns, v in seq_rows},
            sine_key: {(c, ns): float(v) for c, ns, v in sine_rows},
        }
        for reading in (r for r in committed if r.key in stored):
            value = stored[reading.key].get((reading.clock, reading.ns))
            if value is None or not math.isclose(value, float(reading.value), abs_tol=1e-9):
                account.misplaced += 1
    return account, rounds_run1, rounds_run2


@dataclass
class _Runs:
    first: list[Row]
    second: list[Row]
    between: list[Row]


def _split(rows: Iterable[Row], killed_at: float, restarted_at: float) -> _Runs:
    runs = _Runs([], [], [])
    for row in rows:
        stamp = row[0] + row[1] / 1e9
        if stamp < killed_at:
            runs.first.append(row)
        elif stamp >= restarted_at:
            runs.second.append(row)
        else:
            runs.between.append(row)
    return runs


def _all_discovered(api: Any, hostid: str) -> dict[str, ZabbixItem]:
    found = host_items(api, hostid, discovered_only=True)
    return found if len(found) == 2 * SERIES else {}


def _flowing(api: Any, items: dict[str, ZabbixItem], since: float, count: int) -> bool:
    """Every item has ``count`` values made at or after ``since``."""
    return all(
        sum(1 for c, ns, _ in item_rows(api, item) if c + ns / 1e9 >= since) >= count
        for item in items.values()
    )


@pytest.mark.integration
def test_server_outage_and_agent_crash_lose_and_double_nothing(zabbix: LocalZabbix, tmp_path: Path) -> None:
    api = zabbix.api()
    host = create_synthetic_host(api, prefix="trapline-fault")
    zabbix.config_cache_reload()
    spool = tmp_path / "spool.db"
    destination = f"zabbix[{zabbix.trapper_address}]"
    config = tmp_path / "trapline.toml"
    config.write_text(
        toml_config(
            {
                "agent": {"flush_interval": 0.2, "shutdown_timeout": 20.0},
                "spool": {"path": str(spool), "retry_initial": 1.0, "retry_cap": 4.0},
                "zabbix": {"servers": [zabbix.trapper_address]},
                "collectors.synth": {
                    "type": "synthetic",
                    "host": host.name,
                    "series": SERIES,
                    "interval": INTERVAL,
                },
            }
        )
    )
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        agent.start()
        items = wait_until(lambda: _all_discovered(api, host.hostid), timeout=30, what="LLD of the series")
        zabbix.config_cache_reload()  # this test is about faults, not about the 60 s sync
        wait_until(lambda: _flowing(api, items, 0, WARM_UP_VALUES), timeout=60, what="readings flowing")

        zabbix.stop_server()
        down_since = time.monotonic()
        time.sleep(KILL_AFTER)
        agent.kill()
        killed_at = time.time()
        committed = spooled_readings(spool, destination)
        assert committed, "the spool held nothing while the server was down"
        restarted_at = time.time()
        agent.start()
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_since)))
        zabbix.start_server()
        back_at = time.time()

        # The restarted run's own readings made after the server returned are flowing again.
        wait_until(
            lambda: _flowing(api, items, back_at + 1, WARM_UP_VALUES),
            timeout=RECOVERY_TIMEOUT,
            interval=1.0,
            what="readings flowing after the outage",
        )
        assert agent.terminate() == 0, agent.output()
        left = spooled_readings(spool, destination)
        assert left == [], f"{len(left)} readings still spooled after a clean stop"
    finally:
        if agent.running:
            agent.kill()
        if not zabbix.server_running():
            zabbix.start_server()

    # History is written by the server's syncer a moment after it accepted the values.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        account, run1, run2 = _account(api, items, committed, killed_at, restarted_at)
        if account.clean or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    summary = (
        f"fault test: sent={account.sent} stored={account.stored} lost={account.lost} "
        f"duplicated={account.duplicated} misplaced={account.misplaced} "
        f"(Zabbix {zabbix.version}; rounds before SIGKILL {run1}, {len(committed)} readings in the spool "
        f"at the kill; rounds after restart {run2}; server down {OUTAGE:.0f} s)"
    )
    print(summary)
    assert min(run1) > WARM_UP_VALUES and min(run2) > WARM_UP_VALUES, summary
    assert (account.lost, account.duplicated, account.misplaced) == (0, 0, 0), summary
