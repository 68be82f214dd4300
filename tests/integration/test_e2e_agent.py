"""The whole agent, as a real process, against real Zabbix 6.0 and 7.0.

The path the issue asks for: the synthetic collector sends its LLD, Zabbix
creates the discovered items, and the values the agent sent before those items
reached the server's configuration cache (the default 60 s sync, no forced
reload after discovery) still all land in history, with their own clocks,
each exactly once.  The agent's self-monitoring lands on its own host through
the shipped template.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localzabbix import DEFAULT_CACHE_UPDATE_FREQUENCY, LocalZabbix
from tests.support.agent_process import (
    ZabbixItem,
    create_agent_host,
    create_synthetic_host,
    host_items,
    item_rows,
    running_agent,
    series_keys,
    toml_config,
)
from tests.support.zabbix_fixtures import wait_until
from trapline.templates import import_templates, shipped_templates

AGENT_TEMPLATE = "trapline agent by Zabbix trapper"
SERIES = 3
ROUNDS = 30
INTERVAL = 0.25
COLLECTOR = "synth"
# The discovered items wait for the next periodic sync (up to 60 s), then for a retry.
ACCEPT_TIMEOUT = DEFAULT_CACHE_UPDATE_FREQUENCY * 2 + 30
SELF_MONITORING = ("trapline.uptime", "trapline.version", "trapline.spool.depth", "trapline.rejected")
DESTINATION_ITEMS = ("trapline.sent[", "trapline.failed[", "trapline.send.latency[", "trapline.backlog[")


def _complete(api: Any, items: dict[str, ZabbixItem]) -> bool:
    return all(len(item_rows(api, item)) >= ROUNDS for item in items.values())


def _all_discovered(api: Any, hostid: str) -> dict[str, ZabbixItem]:
    found = host_items(api, hostid, discovered_only=True)
    return found if len(found) == 2 * SERIES else {}


def _destination_items(api: Any, hostid: str) -> dict[str, ZabbixItem]:
    """The four items the template's destination LLD makes for the one destination."""
    found = {
        key: item
        for key, item in host_items(api, hostid, discovered_only=True).items()
        if key.startswith(DESTINATION_ITEMS)
    }
    return found if len(found) == len(DESTINATION_ITEMS) else {}


def _last_value(api: Any, item: ZabbixItem) -> float | None:
    rows = item_rows(api, item)
    return float(rows[-1][2]) if rows else None


@pytest.mark.integration
def test_discovered_series_arrive_complete_after_the_default_cache_sync(
    zabbix: LocalZabbix, tmp_path: Path
) -> None:
    assert zabbix.cache_update_frequency == DEFAULT_CACHE_UPDATE_FREQUENCY
    api = zabbix.api()
    import_templates(api, [p for p in shipped_templates() if p.name == "template_trapline_agent.yaml"])
    data_host = create_synthetic_host(api)
    agent_host = create_agent_host(api, AGENT_TEMPLATE)
    # Setup only: the hosts and the LLD rule made through the API become known now.  What
    # the test is about — the items LLD creates — waits for the server's own periodic sync.
    zabbix.config_cache_reload()

    config = tmp_path / "trapline.toml"
    config.write_text(
        toml_config(
            {
                "agent": {"host": agent_host.name, "self_interval": 2.0, "flush_interval": 0.2},
                "spool": {"path": str(tmp_path / "spool.db"), "retry_initial": 1.0, "retry_cap": 4.0},
                "zabbix": {"servers": [zabbix.trapper_address]},
                f"collectors.{COLLECTOR}": {
                    "type": "synthetic",
                    "host": data_host.name,
                    "series": SERIES,
                    "interval": INTERVAL,
                    "limit": ROUNDS,
                },
            }
        )
    )
    started = time.time()
    with running_agent(config, tmp_path / "agent.log") as agent:
        items = wait_until(
            lambda: _all_discovered(api, data_host.hostid),
            timeout=30,
            what="LLD to create the synthetic items",
        )
        wait_until(
            lambda: _complete(api, items),
            timeout=ACCEPT_TIMEOUT,
            interval=1.0,
            what=f"{ROUNDS} values of every series in history",
        )
        _check_series(api, items, zabbix.version, started)
        # The scenario really happened: the first values were refused (items not yet in
        # the configuration cache) and kept for retry, not dropped.
        log = agent.output()
        assert "not accepted (kept for retry)" in log and "synthetic.seq[" in log, log

        # Self-monitoring: plain template items, and the per-destination items its LLD made.
        agent_items = host_items(api, agent_host.hostid)
        for key in SELF_MONITORING:
            assert item_rows(api, agent_items[key]), f"no value for {key}"
        destination_items = wait_until(
            lambda: _destination_items(api, agent_host.hostid), timeout=30, what="destination LLD"
        )
        wait_until(
            lambda: all(item_rows(api, item) for item in destination_items.values()),
            timeout=60,
            interval=1.0,
            what=f"values for every discovered destination item {sorted(destination_items)}",
        )
        wait_until(
            lambda: _last_value(api, agent_items["trapline.spool.depth"]) == 0,
            timeout=30,
            interval=1.0,
            what="the agent to report an empty spool",
        )
        assert agent.terminate() == 0, agent.output()
    # Nothing arrived late as a second copy.
    assert all(len(item_rows(api, item)) == ROUNDS for item in items.values())


def _check_series(api: Any, items: dict[str, ZabbixItem], version: str, started: float) -> None:
    first_series_clocks: list[tuple[int, int]] = []
    for index, series in enumerate(series_keys(SERIES)):
        seq = item_rows(api, items[f"synthetic.seq[{series}]"])
        sine = item_rows(api, items[f"synthetic.sine[{series}]"])
        # Exactly 1..ROUNDS in clock order: none lost, none stored twice, none reordered.
        assert [int(v) for _, _, v in seq] == list(range(1, ROUNDS + 1)), f"{series} on {version}"
        clocks = [(c, ns) for c, ns, _ in seq]
        # Each sine value carries the clock of its round's seq value, and its own value.
        assert [(c, ns) for c, ns, _ in sine] == clocks
        for k, (_, _, value) in enumerate(sine, start=1):
            assert math.isclose(float(value), round(math.sin(k / 10 + index), 6), abs_tol=1e-9)
        # One clock per round for all series: the collector's clock, not the time Zabbix got it.
        first_series_clocks = first_series_clocks or clocks
        assert clocks == first_series_clocks
    stamps = [c + ns / 1e9 for c, ns in first_series_clocks]
    assert stamps[0] >= started - 1
    # The collector sleeps INTERVAL between rounds.  Had the server stamped the values on
    # receipt, the rounds refused until the sync would share (nearly) one time.
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    assert min(gaps) >= INTERVAL / 2, gaps
