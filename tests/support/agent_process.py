"""The whole agent as a real subprocess, and the Zabbix side of the synthetic collector.

Used by the end-to-end and fault-tolerance tests: they run ``python3 -m trapline
run -c FILE`` exactly as an operator would, signal it (TERM, KILL), and read
the results back from Zabbix history.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.zabbix_fixtures import (
    FLOAT,
    ITEM_TYPE_TRAPPER,
    TEST_HOST_GROUP,
    UNSIGNED,
    history,
    unique_name,
)
from trapline.core.model import Reading
from trapline.middleware.spool import Spool

TomlValue = str | int | float | bool | list[str]

# What the synthetic collector sends (collectors/synthetic/collector.py), as Zabbix must be set up for it.
SYNTHETIC_RULE = "synthetic.discovery"
SEQ = "synthetic.seq[{#SERIES}]"
SINE = "synthetic.sine[{#SERIES}]"
SYNTHETIC_PROTOTYPES: Mapping[str, int] = {SEQ: UNSIGNED, SINE: FLOAT}
ITEM_FLAG_DISCOVERED = 4
STOP_TIMEOUT = 60.0


def toml_config(sections: Mapping[str, Mapping[str, TomlValue]]) -> str:
    """A TOML document from ``{section: {key: value}}`` (dotted section names allowed)."""
    lines: list[str] = []
    for name, entries in sections.items():
        lines.append(f"[{name}]")
        # JSON scalars and string lists are valid TOML values, booleans included.
        lines += [f"{key} = {json.dumps(value)}" for key, value in entries.items()]
        lines.append("")
    return "\n".join(lines)


class AgentProcess:
    """``python3 -m trapline run -c CONFIG`` with its output in ``log``; restartable."""

    def __init__(self, config: Path, log: Path, python: Sequence[str] = (sys.executable,)) -> None:
        self.config = config
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self.python = list(python)  # the interpreter's argv (another one: a chroot's Python 3.13)

    def start(self) -> None:
        assert self._proc is None or self._proc.poll() is not None, "agent already running"
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [*self.python, "-m", "trapline", "run", "-c", str(self.config), "--log-level", "info"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no drain, no spool close — a crash or power cut of the process."""
        proc = self._require()
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def terminate(self) -> int:
        """SIGTERM, as a service manager stops it; returns the exit status."""
        proc = self._require()
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired as late:
            proc.kill()
            proc.wait()
            message = f"agent ignored SIGTERM for {STOP_TIMEOUT:.0f} s:\n{self.output()}"
            raise AssertionError(message) from late

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _require(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None and self._proc.poll() is None, f"agent not running:\n{self.output()}"
        return self._proc


@contextmanager
def running_agent(
    config: Path, log: Path, python: Sequence[str] = (sys.executable,)
) -> Iterator[AgentProcess]:
    """An agent process that is killed if the test leaves it running."""
    agent = AgentProcess(config, log, python)
    agent.start()
    try:
        yield agent
    finally:
        if agent.running:
            agent.kill()


def spooled_readings(path: Path, destination: str) -> list[Reading]:
    """Every reading waiting in a spool file for one destination, due or not.

    Call it only while no agent has the file open.
    """
    spool = Spool(path)
    try:
        rows = spool.claim(destination, sys.maxsize, now=math.inf)
    finally:
        spool.close()
    return [row.item for row in rows if isinstance(row.item, Reading)]


# -- Zabbix side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZabbixHost:
    name: str
    hostid: str


def _test_group(api: Any) -> str:
    found = api.hostgroup.get(filter={"name": [TEST_HOST_GROUP]}, output=["groupid"])
    groupid: str = found[0]["groupid"] if found else api.hostgroup.create(name=TEST_HOST_GROUP)["groupids"][0]
    return groupid


def create_synthetic_host(api: Any, prefix: str = "trapline-synthetic") -> ZabbixHost:
    """A host with the trapper LLD rule and item prototypes the synthetic collector feeds."""
    name = unique_name(prefix)
    hostid: str = api.host.create(host=name, groups=[{"groupid": _test_group(api)}])["hostids"][0]
    ruleid = api.discoveryrule.create(
        hostid=hostid, name="Synthetic series", key_=SYNTHETIC_RULE, type=ITEM_TYPE_TRAPPER
    )["itemids"][0]
    for key, value_type in SYNTHETIC_PROTOTYPES.items():
        api.itemprototype.create(
            hostid=hostid, ruleid=ruleid, name=key, key_=key, type=ITEM_TYPE_TRAPPER, value_type=value_type
        )
    return ZabbixHost(name, hostid)


def create_agent_host(api: Any, template: str, prefix: str = "trapline-agent") -> ZabbixHost:
    """A host for the agent's own readings, linked to the shipped agent template."""
    (found,) = api.template.get(filter={"host": [template]}, output=["templateid"])
    name = unique_name(prefix)
    hostid: str = api.host.create(
        host=name, groups=[{"groupid": _test_group(api)}], templates=[{"templateid": found["templateid"]}]
    )["hostids"][0]
    return ZabbixHost(name, hostid)


@dataclass(frozen=True)
class ZabbixItem:
    itemid: str
    value_type: int


def host_items(api: Any, hostid: str, *, discovered_only: bool = False) -> dict[str, ZabbixItem]:
    """Items of a host (template and discovered ones, or only those LLD created): key -> item."""
    where = {"filter": {"flags": ITEM_FLAG_DISCOVERED}} if discovered_only else {}
    rows = api.item.get(hostids=[hostid], output=["itemid", "key_", "value_type"], **where)
    return {row["key_"]: ZabbixItem(row["itemid"], int(row["value_type"])) for row in rows}


def item_rows(api: Any, item: ZabbixItem) -> list[tuple[int, int, str]]:
    """(clock, ns, value) of every history row of an item, oldest first."""
    return [(int(r["clock"]), int(r["ns"]), r["value"]) for r in history(api, item.itemid, item.value_type)]


def series_keys(series: int) -> list[str]:
    """The series names the synthetic collector uses for ``series = N``."""
    return [f"s{i}" for i in range(1, series + 1)]
