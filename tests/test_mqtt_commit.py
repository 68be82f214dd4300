"""The commit confirmation the MQTT bridge acknowledges on: Pipeline outbox ``committed()``."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tests.test_pipeline import ScriptedDestination, make_pipeline
from trapline.core.model import Reading
from trapline.core.plugin import CommittingOutbox


def test_committed_resolves_only_after_the_items_are_in_the_spool(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    pipeline = make_pipeline(tmp_path, dest)

    async def scenario() -> None:
        out = pipeline.outbox("bridge")
        assert isinstance(out, CommittingOutbox)
        out.put(Reading("h", "a", 1, 1_700_000_000))
        out.put(Reading("bad host/", "a", 1, 1_700_000_000))  # rejected by normalize: still settled
        first = asyncio.ensure_future(out.committed())
        await asyncio.sleep(0)
        assert not first.done()
        assert pipeline.spool.depth() == 0
        pipeline.flush_intake()
        await asyncio.sleep(0)
        assert first.done() and first.exception() is None
        assert pipeline.spool.depth() == 1
        # A later request waits for the next flush, even with nothing new in the intake.
        second = asyncio.ensure_future(out.committed())
        await asyncio.sleep(0)
        assert not second.done()
        pipeline.flush_intake()
        async with asyncio.timeout(1):
            await second

    asyncio.run(scenario())


def test_a_failed_commit_fails_the_waiters(tmp_path: Path) -> None:
    dest = ScriptedDestination()
    pipeline = make_pipeline(tmp_path, dest)

    async def scenario() -> None:
        out = pipeline.outbox("bridge")
        out.put(Reading("h", "a", 1, 1_700_000_000))
        waiter = asyncio.ensure_future(out.committed())
        pipeline.spool.close()  # the next put fails like a broken disk
        with pytest.raises(sqlite3.ProgrammingError):
            pipeline.flush_intake()
        await asyncio.sleep(0)
        assert waiter.done() and waiter.exception() is not None

    asyncio.run(scenario())
