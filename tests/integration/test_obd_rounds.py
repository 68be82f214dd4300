"""Polling rounds queued back to back against ELM327-emulator: the next round goes to the
worker before the current one's values are handed on, tiers not yet due stay out of it, and
a stop leaves nothing running.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.elm_fixtures import obd_section
from tests.support.outbox import ListOutbox
from trapline.collectors.obd import build
from trapline.core.blocking import BlockingWorker, Job
from trapline.core.model import Item, Reading

pytestmark = pytest.mark.integration

FAST = ["SPEED", "RPM", "THROTTLE_POS"]  # each answered by the engine ECU alone
# a round may end in AT RV: the emulator's RPM answers include 0 (engine off), after which the
# collector reads the voltage with every round to catch the starter's dip
FAST_REQUESTS = {"010D", "010C", "0111", "010D0C11", "ATRV"}
LIMIT = 40.0
ECU_DELAY = 0.03  # s per PID asked: a round of FAST takes longer than the tier's 0.05 s interval


@pytest.fixture
def slow_ecu(emulator: tuple[Any, int]) -> int:
    """The emulator answering after ECU_DELAY, so the fast tier is polled back to back."""
    emu, port = emulator
    emu.delay = ECU_DELAY
    return port


class RoundsAtEachValue(ListOutbox):
    """Beside each PID value put, the polling rounds submitted to the worker by then."""

    def __init__(self, submissions: list[list[str]]) -> None:
        super().__init__()
        self.submissions = submissions
        self.rounds_at_value: list[int] = []

    def put(self, item: Item) -> None:
        if isinstance(item, Reading) and item.key.startswith("obd.pid["):
            self.rounds_at_value.append(rounds(self.submissions))
        super().put(item)


@pytest.fixture
def submissions(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The request lines of every job the collector submits (loop thread, in order)."""
    seen: list[list[str]] = []
    submit_each = BlockingWorker.submit_each

    def spy(self: BlockingWorker, calls: Sequence[Any], keep_going: Any = None) -> Job[Any]:
        seen.append([c.args[0] for c in calls if isinstance(c, functools.partial)])
        return submit_each(self, calls, keep_going)

    monkeypatch.setattr(BlockingWorker, "submit_each", spy)
    return seen


def rounds(submissions: list[list[str]]) -> int:
    """Polling rounds of the fast tier submitted so far."""
    return sum(1 for job in submissions if set(job) <= FAST_REQUESTS and any(r.startswith("01") for r in job))


def pid_values(out: ListOutbox) -> int:
    return sum(1 for item in out.items if isinstance(item, Reading) and item.key.startswith("obd.pid["))


def run_until(out: ListOutbox, sec: Any, values: int) -> None:
    async def main() -> None:
        task = asyncio.create_task(build("car", sec).run(out))
        try:
            async with asyncio.timeout(LIMIT):
                while pid_values(out) < values:  # noqa: ASYNC110 - the collector only appends
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


@pytest.mark.parametrize("multi_pid", [False, True], ids=["single-pid", "multi-pid"])
def test_the_next_round_is_queued_before_the_current_ones_values_are_handed_on(
    slow_ecu: int, submissions: list[list[str]], tmp_path: Path, multi_pid: bool
) -> None:
    port = slow_ecu
    out = RoundsAtEachValue(submissions)
    sec = obd_section(port, tmp_path, multi_pid=multi_pid, dtc_interval=3600.0, idle_interval=3600.0,
                      tiers={"fast": {"interval": 0.05, "pids": FAST}})
    run_until(out, sec, values=len(FAST) * 8)

    assert out.errors == []
    first_of_round = out.rounds_at_value[:: len(FAST)][:8]
    # Nothing is queued behind round 1 (it times the adapter); from round 2 on, round n+1 is
    # in the worker's queue when round n's first value is handed on.
    assert first_of_round == [1, *[n + 1 for n in range(2, 9)]]


def test_a_tier_not_due_is_not_queued_ahead(
    slow_ecu: int, submissions: list[list[str]], tmp_path: Path
) -> None:
    port = slow_ecu
    out = ListOutbox()
    sec = obd_section(port, tmp_path, multi_pid=False, dtc_interval=3600.0, idle_interval=3600.0,
                      tiers={"fast": {"interval": 0.05, "pids": FAST},
                             "slow": {"interval": 3600.0, "pids": ["COOLANT_TEMP"]}})
    run_until(out, sec, values=len(FAST) * 10)

    assert out.errors == []
    requests = [line for job in submissions for line in job]
    assert requests.count("0105") == 1, "the slow tier only at the start"
    assert requests.count("010D") >= 10


def test_a_stop_leaves_no_round_running_and_no_late_value(
    slow_ecu: int, submissions: list[list[str]], tmp_path: Path
) -> None:
    port = slow_ecu
    out = ListOutbox()
    sec = obd_section(port, tmp_path, multi_pid=False, dtc_interval=3600.0, idle_interval=3600.0,
                      tiers={"fast": {"interval": 0.05, "pids": FAST}})
    put_after_stop: list[Item] = []
    at_stop: list[int] = []  # rounds submitted, rounds reported
    stopped = threading.Event()
    original_put = out.put

    def put(item: Item) -> None:
        if stopped.is_set():
            put_after_stop.append(item)
        original_put(item)

    out.put = put  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.create_task(build("car", sec).run(out))
        async with asyncio.timeout(LIMIT):
            while len(out.readings("obd.pid[SPEED]")) < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        at_stop.extend([rounds(submissions), len(out.readings("obd.pid[SPEED]"))])
        task.cancel()
        stopped.set()
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(100):  # the worker ends after its current call; the queued round is dropped
            if not any(t.name == "obd-car" for t in threading.enumerate()):
                break
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert not any(t.name == "obd-car" for t in threading.enumerate()), "the worker thread is still running"
    assert put_after_stop == []
    submitted, reported = at_stop
    assert submitted == reported + 2, "stopped while one round was read and the next one queued"
