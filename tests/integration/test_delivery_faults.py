"""Issue 17's fault tests: a flaky link, replies cut mid-frame and SIGTERM during a round.

The real agent process sends the synthetic collector's readings to real Zabbix
6.0 and 7.0 through tests/support/fault_proxy.py.  Once the readings flow, the proxy
starts failing connections; at the end the agent gets SIGTERM (with a sane
link, or with a round held in flight).  Then Zabbix history is read back by
sequence number: every ``synthetic.seq`` value 1..K the run produced must be
stored exactly once (or, for the few the drain could not send, still be in the
spool), and the server log must hold no "[Z3008]" duplicate-key line where no
stored value was sent again.

``max_retry_age`` is short on purpose: a value whose request failed in transit
that were counted as refused (the defect of issue 17) would be rejected and
show as lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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
from tests.support.fault_proxy import FaultProxy
from tests.support.small_disk import SmallDisk, small_disk
from tests.support.zabbix_fixtures import wait_until

pytest_plugins = ["tests.support.zabbix_fixtures"]

SERIES = 10
INTERVAL = 0.05  # 20 rounds a second, 20 values each
# Small requests, so that a delivery round is several requests in several lanes: the
# case where some are answered and one fails in transit.
BATCH_SIZE = 10
MAX_RETRY_AGE = 8.0
FAULT_SECONDS = 25.0  # longer than MAX_RETRY_AGE: aged values would have been rejected
WARM_UP_VALUES = 10
SETTLE_TIMEOUT = 60.0
RECOVERY_SECONDS = 10.0  # after the spool's disk has space again, before SIGTERM


@dataclass
class Account:
    expected: int = 0  # seq values the run produced (1..K per series)
    stored: int = 0
    spooled: int = 0  # not stored, still in the spool after the stop
    lost: int = 0
    duplicated: int = 0  # history rows beyond one per value (seq and sine)

    def __str__(self) -> str:
        return (
            f"expected={self.expected} stored={self.stored} spooled={self.spooled} "
            f"lost={self.lost} duplicated={self.duplicated}"
        )


def _account(
    api: Any, items: dict[str, ZabbixItem], left: dict[str, set[int]], given: dict[str, set[int]]
) -> Account:
    """``given``: seq values the proxy passed to the server; ``left``: those still spooled."""
    account = Account()
    for series in series_keys(SERIES):
        seq_key = f"synthetic.seq[{series}]"
        rows = item_rows(api, items[seq_key])
        values = [int(v) for _, _, v in rows]
        distinct = set(values)
        waiting = left.get(seq_key, set()) - distinct
        # The run made 1..top: the highest value any side saw (a hole below it is a loss).
        top = max(distinct | waiting | given.get(seq_key, set()), default=0)
        account.expected += top
        account.stored += len(distinct)
        account.spooled += len(waiting)
        account.lost += top - len(distinct | waiting)
        account.duplicated += len(values) - len(distinct)
        sine = item_rows(api, items[f"synthetic.sine[{series}]"])
        account.duplicated += len(sine) - len({(c, ns) for c, ns, _ in sine})
    return account


def _z3008_lines(log: Path, offset: int) -> list[str]:
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line for line in text.splitlines() if "[Z3008]" in line]


@dataclass
class Run:
    account: Account
    z3008: list[str]
    proxy: FaultProxy
    agent_log: str


@pytest.fixture
def proxy(zabbix: LocalZabbix) -> Iterator[FaultProxy]:
    with FaultProxy(zabbix.trapper_host, zabbix.trapper_port) as running:
        yield running


def _run(
    zabbix: LocalZabbix, proxy: FaultProxy, tmp_path: Path, mode: str, disk: SmallDisk | None = None
) -> Run:
    api = zabbix.api()
    host = create_synthetic_host(api, prefix="trapline-faults")
    zabbix.config_cache_reload()
    spool = (disk.path if disk is not None else tmp_path) / "spool.db"
    config = tmp_path / "trapline.toml"
    config.write_text(
        toml_config(
            {
                "agent": {"flush_interval": 0.2, "shutdown_timeout": 20.0},
                "spool": {
                    "path": str(spool),
                    "retry_initial": 0.5,
                    "retry_cap": 2.0,
                    "max_retry_age": MAX_RETRY_AGE,
                },
                "zabbix": {"servers": [proxy.address], "batch_size": BATCH_SIZE},
                "collectors.synth": {"type": "synthetic", "host": host.name, "series": SERIES,
                                     "interval": INTERVAL},
            }
        )
    )
    log_offset = zabbix.server_log.stat().st_size
    agent = AgentProcess(config, tmp_path / "agent.log")
    agent.start()
    try:
        items = wait_until(
            lambda: (found := host_items(api, host.hostid, discovered_only=True)) and len(found) == 2 * SERIES
            and found,
            timeout=30,
            what="LLD of the series",
        )
        zabbix.config_cache_reload()  # not the 60 s sync: this test is about the link
        wait_until(
            lambda: all(len(item_rows(api, item)) >= WARM_UP_VALUES for item in items.values()),
            timeout=60,
            what="readings flowing",
        )
        if mode == "hold":
            _sigterm_during_a_round(agent, proxy)
        elif disk is not None:
            disk.fill()
            time.sleep(FAULT_SECONDS)
            disk.free()
            time.sleep(RECOVERY_SECONDS)
            assert agent.terminate() == 0, agent.output()
        else:
            proxy.set_mode(mode)
            time.sleep(FAULT_SECONDS)
            proxy.set_mode("pass")
            assert agent.terminate() == 0, agent.output()
    finally:
        if agent.running:
            agent.kill()
    left: dict[str, set[int]] = {}
    for reading in spooled_readings(spool, f"zabbix[{proxy.address}]"):
        left.setdefault(reading.key, set()).add(int(reading.value))
    given = {key: {int(v) for v in texts} for (_, key), texts in proxy.counts.given.items()
             if key.startswith("synthetic.seq[")}
    # The history syncer writes what the trapper accepted a moment later.
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (account := _account(api, items, left, given)).lost and time.monotonic() < deadline:
        time.sleep(1.0)
    return Run(account, _z3008_lines(zabbix.server_log, log_offset), proxy, agent.output())


def _sigterm_during_a_round(agent: AgentProcess, proxy: FaultProxy) -> None:
    proxy.hold_seconds = 3.0
    held = proxy.counts.held
    proxy.set_mode("hold")
    wait_until(lambda: proxy.counts.held > held, timeout=10, what="a request held in flight")
    proxy.set_mode("pass")  # the held request stays held; what follows passes
    assert agent.terminate() == 0, agent.output()


def _summary(run: Run, zabbix: LocalZabbix) -> str:
    return (
        f"Zabbix {zabbix.version}: {run.account}; proxy: {run.proxy.counts}; "
        f"[Z3008] lines {len(run.z3008)}: {run.z3008[:3]}"
    )


@pytest.mark.integration
def test_every_other_connection_dropped(zabbix: LocalZabbix, proxy: FaultProxy, tmp_path: Path) -> None:
    run = _run(zabbix, proxy, tmp_path, "drop-every-other")
    summary = _summary(run, zabbix)
    print(summary)
    assert run.proxy.counts.dropped > 10, summary
    assert run.account.expected > 0 and run.account.spooled == 0, summary
    assert (run.account.lost, run.account.duplicated, len(run.z3008)) == (0, 0, 0), summary
    assert run.proxy.counts.resent == 0, summary  # dropped requests never reached the server
    assert "max_retry_age" not in run.agent_log, run.agent_log[-3000:]


@pytest.mark.integration
def test_replies_cut_mid_frame(zabbix: LocalZabbix, proxy: FaultProxy, tmp_path: Path) -> None:
    """A cut reply hides a verdict the server gave: the values are sent again, the server's
    primary key drops the copy and logs it.  Zero [Z3008] lines cannot be had here: the
    sender cannot tell a cut reply from a request that never arrived, and not sending
    again would lose the values whenever it did not arrive.  Bounded instead."""
    run = _run(zabbix, proxy, tmp_path, "cut-every-other")
    summary = _summary(run, zabbix)
    print(summary)
    assert run.proxy.counts.cut > 10, summary
    assert run.account.expected > 0 and run.account.spooled == 0, summary
    assert (run.account.lost, run.account.duplicated) == (0, 0), summary
    # Only values whose reply was cut go again, each once per cut; the server logs at most
    # one [Z3008] line per copy (measured: about 0.4 per copy on 6.0 and 7.0).
    assert run.proxy.counts.resent <= run.proxy.counts.cut * BATCH_SIZE, summary
    assert len(run.z3008) <= run.proxy.counts.resent, summary
    assert "max_retry_age" not in run.agent_log, run.agent_log[-3000:]


@pytest.mark.integration
def test_sigterm_during_a_round(zabbix: LocalZabbix, proxy: FaultProxy, tmp_path: Path) -> None:
    run = _run(zabbix, proxy, tmp_path, "hold")
    summary = _summary(run, zabbix)
    print(summary)
    assert run.proxy.counts.held >= 1, summary
    assert run.account.expected > 0 and run.account.spooled == 0, summary
    assert (run.account.lost, run.account.duplicated, len(run.z3008)) == (0, 0, 0), summary
    assert run.proxy.counts.resent == 0, summary  # the held round's verdict was kept


@pytest.mark.integration
def test_spool_disk_filled_then_freed(zabbix: LocalZabbix, proxy: FaultProxy, tmp_path: Path) -> None:
    """The spool on an 8 MB tmpfs that fills up for a while: readings wait in memory (the
    default 16 MiB holds this test's ~10,000), deliveries go on, nothing is sent twice."""
    with small_disk("8m") as disk:
        run = _run(zabbix, proxy, tmp_path, "pass", disk)
    summary = _summary(run, zabbix)
    print(summary)
    full = "cannot write the spool" in run.agent_log or "cannot delete" in run.agent_log
    assert full, run.agent_log[-3000:]  # the disk was full for the agent, not only for the test
    assert run.account.expected > 0 and run.account.spooled == 0, summary
    assert (run.account.lost, run.account.duplicated, len(run.z3008)) == (0, 0, 0), summary
    assert run.proxy.counts.resent == 0, summary
    assert "dropped" not in run.agent_log, run.agent_log[-3000:]
