"""pytest plugin: real local Zabbix stacks (6.0 and 7.0) for integration tests.

Load it with ``pytest_plugins = ["tests.support.zabbix_fixtures"]``.  Each stack starts once
per session, on first use, and stops at the end of the session.  The stacks keep the
server's default ``CacheUpdateFrequency`` (60 s), so a test that needs new objects in
the trapper calls ``config_cache_reload()`` (``create_trapper_host`` does it).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from devtools.localzabbix import LocalZabbix, LocalZabbixError
from tests.support.peers import missing_peer

T = TypeVar("T")

# Zabbix item value types (the API's numeric codes).
FLOAT = 0
CHARACTER = 1
LOG = 2
UNSIGNED = 3
TEXT = 4

ITEM_TYPE_TRAPPER = 2
TEST_HOST_GROUP = "trapline tests"


@contextmanager
def started(stack: LocalZabbix) -> Iterator[LocalZabbix]:
    """Start ``stack`` (a missing peer if it cannot start); stop it on leaving."""
    try:
        stack.start()
    except (LocalZabbixError, OSError) as exc:
        missing_peer(f"local Zabbix {stack.version} did not start: {exc}")
    try:
        yield stack
    finally:
        stack.stop()


def _session_stack(version: str, factory: pytest.TempPathFactory) -> Iterator[LocalZabbix]:
    with started(LocalZabbix(version, factory.mktemp(f"zabbix{version}"))) as stack:
        yield stack


@pytest.fixture(scope="session")
def zabbix60(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZabbix]:
    yield from _session_stack("6.0", tmp_path_factory)


@pytest.fixture(scope="session")
def zabbix70(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZabbix]:
    yield from _session_stack("7.0", tmp_path_factory)


@pytest.fixture(scope="session", params=["6.0", "7.0"], ids=["zbx6.0", "zbx7.0"])
def zabbix(request: pytest.FixtureRequest) -> LocalZabbix:
    """Each supported Zabbix version in turn (tests run once per version)."""
    stack: LocalZabbix = request.getfixturevalue("zabbix" + request.param.replace(".", ""))
    return stack


@dataclass(frozen=True)
class TrapperHost:
    name: str
    hostid: str
    itemids: Mapping[str, str]  # item key -> itemid


def unique_name(prefix: str = "trapline-test") -> str:
    """A host name no other test (or earlier run against the same stack) uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def create_trapper_host(
    stack: LocalZabbix,
    items: Mapping[str, int],
    *,
    api: Any = None,
    prefix: str = "trapline-test",
    reload: bool = True,
) -> TrapperHost:
    """Create a fresh host with trapper items (key -> value type, e.g. ``{"t.temp": FLOAT}``).

    With ``reload`` the server's configuration cache is reloaded afterwards, so the
    trapper accepts values for the new items at once.
    """
    api = api if api is not None else stack.api()
    groups = api.hostgroup.get(filter={"name": [TEST_HOST_GROUP]}, output=["groupid"])
    groupid = groups[0]["groupid"] if groups else api.hostgroup.create(name=TEST_HOST_GROUP)["groupids"][0]
    name = unique_name(prefix)
    hostid = api.host.create(host=name, groups=[{"groupid": groupid}])["hostids"][0]
    itemids: dict[str, str] = {}
    for key, value_type in items.items():
        created = api.item.create(
            hostid=hostid, name=key, key_=key, type=ITEM_TYPE_TRAPPER, value_type=value_type
        )
        itemids[key] = created["itemids"][0]
    if reload:
        stack.config_cache_reload()
    return TrapperHost(name, hostid, itemids)


def history(api: Any, itemid: str, value_type: int) -> list[dict[str, str]]:
    """All history rows of one item, oldest first."""
    rows: list[dict[str, str]] = api.history.get(itemids=[itemid], history=value_type, output="extend")
    # history.get sorts by clock only; ns orders values within one second.
    return sorted(rows, key=lambda row: (int(row["clock"]), int(row["ns"])))


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}", pytrace=False)
        time.sleep(interval)


# --- NOC scenarios: what a trigger raised, read back through the API -------------------------

SEVERITY_NAMES = ("not classified", "information", "warning", "average", "high", "disaster")


def open_problems(api: Any, hostids: Sequence[str]) -> set[tuple[str, str]]:
    """The open problems of these hosts as ``(event name, severity name)``, suppressed ones included.

    Problems of triggers that a dependency holds back never open, so they are absent here
    too, which is what a NOC would see.
    """
    rows = api.problem.get(hostids=list(hostids), output=["name", "severity"], suppressed=None)
    return {(row["name"], SEVERITY_NAMES[int(row["severity"])]) for row in rows}


def wait_for_problems(
    api: Any, hostids: Sequence[str], expected: set[tuple[str, str]], timeout: float = 90.0
) -> set[tuple[str, str]]:
    """Wait until exactly ``expected`` is open on these hosts; fail with what is open otherwise.

    Time-based trigger functions (``nodata``, ``count`` over a time window) are evaluated by
    the server's timer about every 30 s, hence the long default.
    """
    seen: set[tuple[str, str]] = set()

    def exactly_expected() -> bool:
        nonlocal seen
        seen = open_problems(api, hostids)
        return seen == expected

    deadline = time.monotonic() + timeout
    while not exactly_expected():
        if time.monotonic() >= deadline:
            pytest.fail(f"open problems after {timeout} s: {sorted(seen)}; expected {sorted(expected)}")
        time.sleep(0.5)
    return seen


def assert_quiet_for(api: Any, hostids: Sequence[str], seconds: float, min_severity: int = 2) -> None:
    """Fail as soon as a problem of ``min_severity`` (default Warning) or above opens within ``seconds``.

    ``seconds`` must cover at least one timer pass (30 s) for time-based triggers to have had
    their chance to fire.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        loud = {p for p in open_problems(api, hostids) if SEVERITY_NAMES.index(p[1]) >= min_severity}
        if loud:
            pytest.fail(f"problems on a normal day: {sorted(loud)}")
        time.sleep(1.0)
