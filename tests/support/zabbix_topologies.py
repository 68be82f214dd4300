"""Zabbix as large users run it: a 6.0 HA cluster and a 7.0 proxy group, with real processes.

Shared by tests/integration/test_zabbix_ha.py and test_proxy_group.py.  Both run
the real agent (``python3 -m trapline run``) with the synthetic collector and a
fixed number of rounds, so exactly what was sent is known: ``synthetic.seq``
counts 1..N per host and every round has one ``synthetic.sine`` value with the
round's clock.  Lost and duplicated readings are counted from API history.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.agent_process import AgentProcess, ZabbixItem, host_items, item_rows, toml_config
from tests.support.zabbix_fixtures import wait_until

SEQ_KEY = "synthetic.seq[s1]"
SINE_KEY = "synthetic.sine[s1]"
# The history syncer writes its cache to the database about once a second: three
# unchanged polls a second apart mean everything Zabbix acknowledged is stored.
STABLE_POLLS = 3


class PausableAgent(AgentProcess):
    """The agent process, which a test can also freeze (SIGSTOP) and thaw (SIGCONT)."""

    def pause(self) -> None:
        self._require().send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._require().send_signal(signal.SIGCONT)


def agent_config(
    path: Path, servers: Sequence[str], hosts: Sequence[str], rounds: int, interval: float
) -> Path:
    """One synthetic collector per host, one series each, ``rounds`` rounds; short retry waits.

    The retry cap bounds how late the agent notices that a cluster answers again.
    """
    sections: dict[str, dict[str, str | int | float | bool | list[str]]] = {
        "agent": {"flush_interval": 0.2, "shutdown_timeout": 20.0},
        "spool": {"path": str(path.with_name("spool.db")), "retry_initial": 0.5, "retry_cap": 2.0},
        "zabbix": {"servers": list(servers)},
    }
    for number, host in enumerate(hosts):
        sections[f"collectors.synth{number}"] = {
            "type": "synthetic",
            "host": host,
            "series": 1,
            "interval": interval,
            "limit": rounds,
        }
    path.write_text(toml_config(sections))
    return path


def discovered(api: Any, hostid: str) -> dict[str, ZabbixItem]:
    found = host_items(api, hostid, discovered_only=True)
    return found if {SEQ_KEY, SINE_KEY} <= found.keys() else {}


def wait_discovered(api: Any, hostid: str, timeout: float = 60.0) -> dict[str, ZabbixItem]:
    return wait_until(lambda: discovered(api, hostid), timeout=timeout, what=f"LLD on host {hostid}")


def stored_rounds(api: Any, items: dict[str, ZabbixItem]) -> int:
    return len(item_rows(api, items[SEQ_KEY]))


def wait_stored(api: Any, items: dict[str, ZabbixItem], count: int, timeout: float, what: str) -> None:
    wait_until(lambda: stored_rounds(api, items) >= count, timeout=timeout, interval=0.5, what=what)


@contextmanager
def quiet_moment(agent: PausableAgent, api: Any, items: Sequence[dict[str, ZabbixItem]]) -> Iterator[None]:
    """Freeze the agent until everything Zabbix acknowledged is in the database; thaw on leaving.

    A SIGKILLed server or proxy loses values it acknowledged but had not yet written
    (its history cache lives in memory): that is Zabbix's own limit, not the
    sender's.  Killing inside this block keeps that loss out of the count.
    """
    agent.pause()
    try:
        last: list[int] = []
        same = 0
        while same < STABLE_POLLS:
            time.sleep(1.0)
            now = [stored_rounds(api, i) for i in items]
            same = same + 1 if now == last else 0
            last = now
        yield
    finally:
        agent.resume()


@dataclass
class Account:
    """What one host's history holds against the ``rounds`` readings sent per item."""

    host: str
    rounds: int
    lost: int
    duplicated: int
    foreign: int  # values no round produced

    def __str__(self) -> str:
        return (
            f"{self.host}: sent {self.rounds} rounds x 2 items; lost {self.lost}, "
            f"duplicated {self.duplicated}, foreign {self.foreign}"
        )


def account(api: Any, host: str, items: dict[str, ZabbixItem], rounds: int) -> Account:
    seq = item_rows(api, items[SEQ_KEY])
    sine = item_rows(api, items[SINE_KEY])
    values = [int(v) for _, _, v in seq]
    distinct = set(values) & set(range(1, rounds + 1))
    # A round's sine value carries the round's clock: one sine row per stored round clock.
    round_clocks = {(c, ns) for c, ns, _ in seq}
    sine_clocks = [(c, ns) for c, ns, _ in sine]
    return Account(
        host,
        rounds,
        lost=(rounds - len(distinct)) + (rounds - len(set(sine_clocks))),
        duplicated=(len(values) - len(set(values))) + (len(sine_clocks) - len(set(sine_clocks))),
        foreign=len(set(values) - distinct) + len(set(sine_clocks) - round_clocks),
    )
