"""The blocking-call worker the OBD and GPS collectors share: a deadline per call, rounds as one job."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from trapline.middleware.blocking import BlockingWorker, DeadlineMissed, WorkerGone


def returning(value: int, ran: list[int], pause: float = 0.0) -> Callable[[], int]:
    def call() -> int:
        time.sleep(pause)
        ran.append(value)
        return value

    return call


def test_call_returns_the_result_from_the_worker_thread() -> None:
    async def main() -> str:
        return await BlockingWorker("w").call(lambda: threading.current_thread().name, 5.0, "name")

    assert asyncio.run(main()) == "w"


def test_a_round_runs_back_to_back_and_returns_every_result() -> None:
    ran: list[int] = []

    async def main() -> list[int]:
        return await BlockingWorker("w").call_each([returning(i, ran) for i in range(5)], 5.0, "round")

    assert asyncio.run(main()) == [0, 1, 2, 3, 4] == ran


def test_each_call_of_a_round_gets_its_own_deadline() -> None:
    # Four calls of 0.25 s under a 0.6 s deadline: the round takes longer than one deadline
    # but no call does, as if they had been submitted one by one.
    ran: list[int] = []

    async def main() -> list[int]:
        worker = BlockingWorker("w")
        results = await worker.call_each([returning(i, ran, pause=0.25) for i in range(4)], 0.6, "round")
        assert worker.usable
        return results

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_a_hung_call_in_a_round_misses_its_deadline_and_abandons_the_worker() -> None:
    release = threading.Event()
    ran: list[int] = []

    def hang() -> int:
        release.wait(30)
        return -1

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        with pytest.raises(DeadlineMissed, match=r"round \(call 2 of 3\) missed its 0.3 s deadline"):
            await worker.call_each([returning(1, ran), hang, returning(3, ran)], 0.3, "round")
        return worker

    worker = asyncio.run(main())
    release.set()
    assert not worker.usable and ran == [1]

    async def again() -> None:
        await worker.call(lambda: 1, 1.0, "after")

    with pytest.raises(WorkerGone):
        asyncio.run(again())


def test_keep_going_ends_a_round_early() -> None:
    ran: list[int] = []

    async def main() -> list[int]:
        calls = [returning(i, ran) for i in (1, 2, 3)]
        return await BlockingWorker("w").call_each(calls, 5.0, "round", keep_going=lambda r: r < 2)

    assert asyncio.run(main()) == [1, 2] == ran


def test_an_exception_ends_the_round_and_is_raised() -> None:
    ran: list[int] = []

    def fail() -> int:
        raise OSError("port gone")

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        with pytest.raises(OSError, match="port gone"):
            await worker.call_each([returning(1, ran), fail, returning(3, ran)], 5.0, "round")
        assert await worker.call(lambda: 7, 5.0, "next") == 7  # an error is not a hang: still usable
        return worker

    asyncio.run(main())
    assert ran == [1]


def test_cancelling_the_caller_abandons_the_worker() -> None:
    release = threading.Event()

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        task = asyncio.create_task(worker.call(lambda: release.wait(30), 30.0, "hang"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return worker

    worker = asyncio.run(main())
    release.set()
    assert not worker.usable
