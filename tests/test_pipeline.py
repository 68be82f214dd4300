"""Pipeline logic with a scripted destination: every reading is delivered, spooled or rejected."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from trapline.core.config import Section
from trapline.core.model import Item, Reading
from trapline.core.plugin import Delivery, Spooled
from trapline.middleware import pipeline as pipeline_module
from trapline.middleware.filters import Filters
from trapline.middleware.pipeline import Pipeline
from trapline.middleware.settings import AgentSettings, SpoolSettings
from trapline.middleware.spool import Spool


class ScriptedDestination:
    """Accepts keys in ``accept``; refuses others; or is unreachable."""

    needs_labels = False

    def __init__(self, name: str = "dest") -> None:
        self.name = name
        self.accept: set[str] | None = None  # None = accept everything
        self.unreachable = False
        self.delivered: list[Reading] = []
        self.rounds = 0

    async def deliver(self, batch: Sequence[Spooled]) -> Delivery:
        self.rounds += 1
        if self.unreachable:
            return Delivery(unreachable="connection refused")
        out = Delivery()
        for s in batch:
            assert isinstance(s.item, Reading)
            if self.accept is None or s.item.key in self.accept:
                out.accepted.append(s.id)
                self.delivered.append(s.item)
            else:
                out.retry[s.id] = "item missing"
        return out

    async def close(self) -> None:
        pass


def make_pipeline(tmp_path: Path, dest: ScriptedDestination, max_retry_age: float = 3600) -> Pipeline:
    agent = AgentSettings(host=None, self_interval=3600, flush_interval=0.01, shutdown_timeout=1)
    spool_settings = SpoolSettings(tmp_path / "s.db", 100_000, "normal", max_retry_age, 0.01, 0.02, 500)
    filters = Filters.from_config(Section(Path("t"), "filters", {}))
    return Pipeline(agent=agent, spool_settings=spool_settings, spool=Spool(spool_settings.path),
                    filters=filters, destinations=[dest])


def put(p: Pipeline, keys: Sequence[str], n: int) -> None:
    out = p.outbox("test")
    for i in range(n):
        for k in keys:
            out.put(Reading("h", k, i, 1_700_000_000 + i, 0))


async def rounds(p: Pipeline, dest: ScriptedDestination, count: int) -> None:
    for _ in range(count):
        await p.deliver_once(dest)
        await asyncio.sleep(0.03)


def test_everything_accepted_is_removed(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    p = make_pipeline(tmp_path, dest)
    put(p, ["a", "b"], 600)
    p.flush_intake()
    asyncio.run(rounds(p, dest, 4))
    assert len(dest.delivered) == 1200
    assert p.spool.depth() == 0
    assert p.stats.destination("dest").sent == 1200


def test_refused_values_retry_until_accepted(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    dest.accept = {"a"}
    p = make_pipeline(tmp_path, dest)
    put(p, ["a", "new"], 10)
    p.flush_intake()
    asyncio.run(rounds(p, dest, 2))
    assert p.spool.depth() == 10  # the "new" ones wait
    dest.accept = None  # e.g. Zabbix synced its configuration cache
    asyncio.run(rounds(p, dest, 5))
    assert sorted((r.key, r.value) for r in dest.delivered) == sorted(
        [("a", i) for i in range(10)] + [("new", i) for i in range(10)]
    )
    assert p.spool.depth() == 0
    assert sum(p.stats.rejected.values()) == 0


def test_refused_past_max_age_are_rejected_and_counted(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    dest.accept = set()
    p = make_pipeline(tmp_path, dest, max_retry_age=0.05)
    put(p, ["ghost"], 5)
    p.flush_intake()
    asyncio.run(rounds(p, dest, 6))
    assert p.spool.depth() == 0
    assert sum(p.stats.rejected.values()) == 5
    assert any("item missing" in reason for reason in p.stats.rejected)


def test_unreachable_destination_never_ages_data(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    dest.unreachable = True
    p = make_pipeline(tmp_path, dest, max_retry_age=0.01)
    put(p, ["a"], 20)
    p.flush_intake()
    asyncio.run(rounds(p, dest, 5))
    assert p.spool.depth() == 20
    assert sum(p.stats.rejected.values()) == 0
    dest.unreachable = False
    asyncio.run(rounds(p, dest, 1))
    assert len(dest.delivered) == 20


def test_invalid_readings_counted_with_reason(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    p = make_pipeline(tmp_path, dest)
    out = p.outbox("test")
    out.put(Reading("h", "ok", 1, 1, 0))
    out.put(Reading("h", "ok", float("inf"), 1, 0))
    out.put(Reading("bad/host", "ok", 1, 1, 0))
    p.flush_intake()
    assert p.spool.depth() == 1
    assert p.stats.rejected["value is not a finite number"] == 1
    assert sum(p.stats.rejected.values()) == 2


def test_destination_exception_keeps_the_batch(tmp_path: Path) -> None:
    dest = ScriptedDestination()

    async def broken(batch: Sequence[Spooled]) -> Delivery:
        raise RuntimeError("bug")

    dest.deliver = broken  # type: ignore[method-assign]
    p = make_pipeline(tmp_path, dest)
    put(p, ["a"], 3)
    p.flush_intake()
    asyncio.run(rounds(p, dest, 2))
    assert p.spool.depth() == 3


@pytest.mark.parametrize("with_collector_crash", [False, True])
def test_run_stops_cleanly_and_keeps_unsent(tmp_path: Path, with_collector_crash: bool) -> None:
    dest = ScriptedDestination()
    dest.unreachable = True

    class Source:
        name = "src"
        crashed = False

        async def run(self, out: object) -> None:
            put_fn = out.put  # type: ignore[attr-defined]
            for i in range(50):
                put_fn(Reading("h", "seq", i, 1_700_000_000 + i, 0))
            if with_collector_crash and not Source.crashed:
                Source.crashed = True
                raise ValueError("garbage from the source")
            await asyncio.sleep(3600)

    p = make_pipeline(tmp_path, dest)
    p.collectors = [Source()]
    p.stats.collector("src")

    async def main() -> None:
        task = asyncio.create_task(p.run(install_signal_handlers=False))
        await asyncio.sleep(0.3 if not with_collector_crash else 1.6)
        p.stop()
        await task

    asyncio.run(main())
    assert p.spool.depth() >= 50
    assert p.stats.collector("src").errors == (1 if with_collector_crash else 0)


def test_a_failing_spool_write_keeps_the_readings_for_the_next_flush(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    p = make_pipeline(tmp_path, dest)
    real_put = p.spool.put
    calls = {"n": 0}

    def flaky_put(items: Sequence[Reading], destinations: Sequence[str]) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real_put(items, destinations)

    p.spool.put = flaky_put  # type: ignore[method-assign, assignment]
    put(p, ["a"], 5)
    with pytest.raises(sqlite3.OperationalError):
        p.flush_intake()
    assert p.spool.depth() == 0
    put(p, ["b"], 2)
    p.flush_intake()
    rows = [s.item for s in p.spool.claim("dest", 100)]
    assert [(r.key, r.value) for r in rows if isinstance(r, Reading)] == (
        [("a", i) for i in range(5)] + [("b", i) for i in range(2)]
    )


class BrokenObserver:
    def observe(self, item: object) -> None:
        raise RuntimeError("observer bug")


def test_a_bug_for_one_reading_rejects_that_reading_and_the_intake_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs that normalize should have caught, in normalize, an observer or the spool's put."""
    dest = ScriptedDestination()
    p = make_pipeline(tmp_path, dest)
    p.observers = [BrokenObserver()]  # type: ignore[list-item]
    real_normalize = pipeline_module.normalize
    real_put = p.spool.put

    def buggy_normalize(item: Item) -> Item:
        if isinstance(item, Reading) and item.key == "normalize-bug":
            raise KeyError("a gap in normalize")
        return real_normalize(item)

    def picky_put(items: Sequence[Item], destinations: Sequence[str]) -> int:
        if any(isinstance(i, Reading) and i.key == "spool-bug" for i in items):
            raise TypeError("cannot encode")
        return real_put(items, destinations)

    monkeypatch.setattr(pipeline_module, "normalize", buggy_normalize)
    p.spool.put = picky_put  # type: ignore[method-assign, assignment]
    put(p, ["a", "normalize-bug", "spool-bug", "b"], 2)
    assert p.flush_intake() == 8 - 4
    rows = [s.item for s in p.spool.claim("dest", 100)]
    spooled = [(r.key, r.value) for r in rows if isinstance(r, Reading)]
    assert spooled == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert p.stats.rejected == {"normalize or filter failed: KeyError": 2, "spool failed: TypeError": 2}
    put(p, ["c"], 1)  # and the next flush works as before
    p.flush_intake()
    assert p.spool.depth() == 5


def test_a_failing_claim_does_not_end_delivery(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    p = make_pipeline(tmp_path, dest)
    real_claim = p.spool.claim
    failures = {"left": 1}

    def flaky_claim(name: str, limit: int, now: float | None = None) -> list[Spooled]:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real_claim(name, limit, now)

    p.spool.claim = flaky_claim  # type: ignore[method-assign]
    put(p, ["a"], 4)

    async def main() -> None:
        task = asyncio.create_task(p.run(install_signal_handlers=False))
        async with asyncio.timeout(20):
            while len(dest.delivered) < 4:  # noqa: ASYNC110 (polls what the delivery loop does)
                await asyncio.sleep(0.05)
        p.stop()
        await task

    asyncio.run(main())
    assert failures["left"] == 0 and [r.value for r in dest.delivered] == [0, 1, 2, 3]


def test_a_damaged_spool_batch_is_rejected_with_a_reason_and_the_rest_flows(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    p = make_pipeline(tmp_path, dest)
    put(p, ["a"], 3)
    p.flush_intake()
    p.spool._db.execute("UPDATE batch SET payload = ?", (b"\x94\xc1",))
    put(p, ["b"], 2)
    p.flush_intake()
    asyncio.run(rounds(p, dest, 1))
    assert p.stats.rejected == {"spool data unreadable": 3}
    assert [(r.key, r.value) for r in dest.delivered] == [("b", 0), ("b", 1)]
    assert p.spool.depth() == 0


def test_values_without_verdict_beside_accepted_ones_do_not_age(tmp_path: Path) -> None:
    """A round where some requests were answered and one failed in transit: the answered
    values leave the spool, the others wait without ageing (issue 17, defect 1)."""
    dest = ScriptedDestination()

    async def half_lost(batch: Sequence[Spooled]) -> Delivery:
        dest.rounds += 1
        half = [s.id for s in batch[: len(batch) // 2]]
        return Delivery(accepted=half, unreachable="connection closed without a reply")

    dest.deliver = half_lost  # type: ignore[method-assign]
    p = make_pipeline(tmp_path, dest, max_retry_age=0.01)
    put(p, ["a"], 32)
    p.flush_intake()
    asyncio.run(rounds(p, dest, 4))
    assert p.spool.depth() == 2  # each round takes half of what is left: 32, 16, 8, 4, 2
    assert sum(p.stats.rejected.values()) == 0
    assert p.stats.destination("dest").failed == 0
    assert p.spool.first_refused(range(100)) == {}


class SlowDestination(ScriptedDestination):
    """Accepts everything, after ``delay`` seconds per round; records every id it was sent."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.sent_ids: list[int] = []
        self.started = asyncio.Event()

    async def deliver(self, batch: Sequence[Spooled]) -> Delivery:
        self.sent_ids += [s.id for s in batch]
        self.started.set()
        await asyncio.sleep(self.delay)
        return await super().deliver(batch)


def _stop_during_a_round(
    tmp_path: Path, delay: float, shutdown_timeout: float
) -> tuple[Pipeline, SlowDestination]:
    dest = SlowDestination(delay)
    p = make_pipeline(tmp_path, dest)
    p.agent = AgentSettings(
        host=None, self_interval=3600, flush_interval=0.01, shutdown_timeout=shutdown_timeout
    )
    put(p, ["a"], 30)

    async def main() -> None:
        task = asyncio.create_task(p.run(install_signal_handlers=False))
        await dest.started.wait()  # a round is in flight
        p.stop()
        await task

    asyncio.run(main())
    return p, dest


def test_stop_lets_the_round_in_flight_finish_and_sends_nothing_twice(tmp_path: Path) -> None:
    p, dest = _stop_during_a_round(tmp_path, delay=0.3, shutdown_timeout=5)
    assert p.spool.depth() == 0
    assert len(dest.delivered) == 30
    assert len(dest.sent_ids) == len(set(dest.sent_ids)) == 30


def test_a_round_past_shutdown_timeout_is_cancelled_and_its_rows_stay(tmp_path: Path) -> None:
    _, dest = _stop_during_a_round(tmp_path, delay=3600, shutdown_timeout=0.3)
    assert dest.delivered == []
    reopened = Spool(tmp_path / "s.db")
    try:
        assert reopened.depth() == 30
    finally:
        reopened.close()


def test_an_unreachable_destination_logs_once_and_says_when_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dest = ScriptedDestination()
    dest.unreachable = True
    p = make_pipeline(tmp_path, dest)
    put(p, ["a"], 5)
    p.flush_intake()

    async def until(done: Callable[[], bool]) -> None:
        while not done():  # noqa: ASYNC110 - the scripted destination has no event to wait on
            await asyncio.sleep(0.05)

    async def main() -> None:
        loop_task = asyncio.create_task(p._delivery_loop(dest))
        await until(lambda: dest.rounds >= 2)  # the first retry comes after the first backoff step
        dest.unreachable = False
        await until(lambda: len(dest.delivered) == 5)
        p.stop()
        await loop_task

    with caplog.at_level("INFO", logger="trapline"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dest ")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("dest unreachable (connection refused)")
    assert lines[1].startswith("dest reachable again (after 2 occurrences over ")
