"""The spool's disk fills up and frees again (issue 17, defect 3), on a real 2 MB tmpfs.

While the disk is full: readings already committed keep flowing to a healthy
destination, their deletes are held (never sent twice), new readings wait in
memory up to ``max_memory_bytes`` and the oldest beyond it are dropped and
counted.  Once space returns, delivery resumes within seconds and every reading
is delivered exactly once or counted as dropped exactly once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.support.small_disk import SmallDisk, small_disk
from trapline.core.config import Section
from trapline.core.model import Reading
from trapline.core.plugin import Delivery, Spooled
from trapline.middleware.filters import Filters
from trapline.middleware.pipeline import Pipeline
from trapline.middleware.settings import AgentSettings, SpoolSettings
from trapline.middleware.spool import Spool

CLOCK = 1_700_000_000
MEMORY_BOUND = 64 * 1024  # the smallest allowed: ~200 readings of this test
RESUME_BOUND = 10.0  # seconds after space returns; the issue measured 37-55 s before


class RecordingDestination:
    """Accepts everything while ``open``; records every spool id and seq value it was sent."""

    name = "dest"
    needs_labels = False

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.sent_ids: list[int] = []
        self.values: list[int] = []

    async def deliver(self, batch: Sequence[Spooled]) -> Delivery:
        await self.open.wait()
        self.sent_ids += [s.id for s in batch]
        self.values += [int(s.item.value) for s in batch if isinstance(s.item, Reading)]
        return Delivery(accepted=[s.id for s in batch])

    async def close(self) -> None:
        pass


async def _until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _scenario(disk: SmallDisk) -> tuple[Pipeline, RecordingDestination, int, float]:
    dest = RecordingDestination()
    spool_settings = SpoolSettings(disk.path / "spool.db", 100_000, "normal", 3600, 0.01, 0.02, 200,
                                   max_memory_bytes=MEMORY_BOUND)
    p = Pipeline(
        agent=AgentSettings(host=None, self_interval=3600, flush_interval=0.05, shutdown_timeout=5),
        spool_settings=spool_settings,
        spool=Spool(spool_settings.path, spool_settings.max_readings, spool_settings.sync),
        filters=Filters.from_config(Section(Path("t"), "filters", {})),
        destinations=[dest],
    )
    out = p.outbox("test")
    made = 0

    def feed(count: int) -> None:
        nonlocal made
        for _ in range(count):
            made += 1
            out.put(Reading("h", "seq", made, CLOCK + made, 0, "", {"pad": "x" * 100}))

    task = asyncio.create_task(p.run(install_signal_handlers=False))
    feed(1000)  # committed while the destination is closed
    await _until(lambda: p.spool.depth() == 1000, 10, "1000 readings committed")
    p.spool.checkpoint()  # an empty WAL: the next write needs new space
    disk.fill()
    dest.open.set()
    for _ in range(20):  # readings keep coming while the disk is full
        feed(100)
        await asyncio.sleep(0.05)
    # Committed readings flow to the healthy destination although nothing can be deleted.
    await _until(lambda: len(dest.values) >= 1000, 10, "committed readings delivered while full")
    assert p.stats.dropped > 0  # 2000 readings of ~450 bytes do not fit in 64 KiB
    disk.free()
    freed = time.monotonic()
    feed(100)
    await _until(lambda: len(set(dest.values)) + p.stats.dropped == made, RESUME_BOUND,
                 "delivery after space returned")
    resumed = time.monotonic() - freed
    p.stop()
    await task
    return p, dest, made, resumed


def test_full_spool_disk_loses_nothing_unaccounted_and_sends_nothing_twice() -> None:
    with small_disk("2m") as disk:
        p, dest, made, resumed = asyncio.run(_scenario(disk))
        depth = Spool(disk.path / "spool.db").depth()
    print(f"disk full: made={made} delivered={len(dest.values)} dropped={p.stats.dropped} "
          f"resumed {resumed:.1f}s after space returned")
    assert len(dest.sent_ids) == len(set(dest.sent_ids))  # no spool row sent twice
    assert len(dest.values) == len(set(dest.values))  # no reading delivered twice
    delivered = set(dest.values)
    lost = set(range(1, made + 1)) - delivered
    assert len(lost) == p.stats.dropped  # every loss counted, once
    # What memory could not hold were the oldest of the readings made while full.
    assert lost == set(range(1001, 1001 + len(lost)))
    assert depth == 0


def test_checkpoint_truncates_the_wal(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", sync="normal")
    try:
        spool.put([Reading("h", "k", i, CLOCK + i, 0) for i in range(5000)], ["dest"])
        wal = tmp_path / "spool.db-wal"
        assert wal.stat().st_size > 0
        spool.checkpoint()
        assert wal.stat().st_size == 0
        assert spool.depth() == 5000  # nothing lost by the checkpoint
    finally:
        spool.close()


def test_delivered_rows_whose_delete_failed_are_neither_resent_nor_counted_as_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: readings Zabbix had accepted were later dropped by the bound and counted."""
    from tests.test_pipeline import ScriptedDestination, make_pipeline, put  # noqa: PLC0415

    dest = ScriptedDestination()
    p = make_pipeline(tmp_path, dest)
    p.spool.max_readings = 1000
    put(p, ["a"], 1000)
    p.flush_intake()
    real_ack = p.spool.ack

    def disk_full(ids: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(p.spool, "ack", disk_full)
    async def rounds_until_idle() -> int:
        count = 0
        while await p.deliver_once(dest) is not None:
            count += 1
        return count

    assert asyncio.run(rounds_until_idle()) == 2  # batch = 500
    assert len(dest.delivered) == 1000  # every row once: none claimed again
    monkeypatch.setattr(p.spool, "ack", real_ack)
    put(p, ["b"], 500)
    p.flush_intake()  # the held deletes go first, then the bound has room
    assert p.stats.dropped == 0
    assert p.spool.depth() == 500
