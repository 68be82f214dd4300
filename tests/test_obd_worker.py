"""The blocking-call worker the OBD and GPS collectors share: a deadline per call, rounds as one
job, jobs queued behind one another."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from trapline.core.blocking import BlockingWorker, DeadlineMissed, WorkerGone


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


async def cancel_once_running(waiting: Coroutine[Any, Any, object]) -> None:
    """Start awaiting a blocked job, cancel the awaiting task, and see the cancellation arrive."""
    task = asyncio.create_task(waiting)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cancelling_the_caller_abandons_the_worker() -> None:
    release = threading.Event()

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        await cancel_once_running(worker.call(lambda: release.wait(30), 30.0, "hang"))
        return worker

    worker = asyncio.run(main())
    release.set()
    assert not worker.usable



# -- jobs queued behind one another (the OBD collector's next polling round) -----------------------
def waiting(release: threading.Event, value: int,
            started: threading.Event | None = None) -> Callable[[], int]:
    """A call that blocks until ``release`` is set (a busy or hung adapter), then returns ``value``."""

    def call() -> int:
        if started is not None:
            started.set()
        release.wait(30)
        return value

    return call


def test_a_queued_job_starts_without_the_event_loop() -> None:
    # The loop is kept busy (blocked) while the first job ends: the second must start anyway,
    # which is what keeps an adapter busy between polling rounds.
    first_may_end = threading.Event()
    second_started = threading.Event()
    never = threading.Event()

    async def main() -> bool:
        worker = BlockingWorker("w")
        worker.submit_each([waiting(first_may_end, 1)])
        second = worker.submit_each([waiting(never, 2, started=second_started)])
        first_may_end.set()
        started_unaided = second_started.wait(5)  # blocks the loop on purpose
        never.set()
        assert await second.result(5.0, "second") == [2]
        return started_unaided

    assert asyncio.run(main())


def test_time_spent_queued_behind_a_job_that_progresses_is_not_a_deadline() -> None:
    # The first job takes 1 s in calls of 0.25 s; the second waits for it longer than its
    # 0.6 s deadline, but no call hangs.
    ran: list[int] = []

    async def main() -> list[int]:
        worker = BlockingWorker("w")
        first = worker.submit_each([returning(i, ran, pause=0.25) for i in range(4)])
        second = worker.submit_each([returning(9, ran)])
        results = [*await first.result(0.6, "first"), *await second.result(0.6, "second")]
        assert worker.usable
        return results

    assert asyncio.run(main()) == [0, 1, 2, 3, 9] == ran


def test_a_discarded_queued_job_never_runs() -> None:
    release = threading.Event()
    ran: list[int] = []

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        first = worker.submit_each([waiting(release, 1)])
        dropped = worker.submit_each([returning(2, ran)])
        dropped.discard()
        release.set()
        assert await first.result(5.0, "first") == [1]
        assert await worker.call(returning(3, ran), 5.0, "after") == 3
        with pytest.raises(WorkerGone):
            await dropped.result(5.0, "dropped")
        return worker

    assert asyncio.run(main()).usable
    assert ran == [3]


def test_discarding_a_running_job_abandons_the_worker() -> None:
    running = threading.Event()
    release = threading.Event()
    ran: list[int] = []

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        job = worker.submit_each([waiting(release, 1, started=running), returning(2, ran)])
        worker.submit_each([returning(3, ran)])
        await asyncio.to_thread(running.wait, 5)
        job.discard()  # it cannot be taken back: nothing more may run on this worker
        return worker

    worker = asyncio.run(main())
    release.set()
    worker._thread.join(5)
    assert not worker.usable and not worker._thread.is_alive()
    assert ran == [], "neither the rest of the discarded job nor the job behind it ran"


def test_a_job_queued_behind_a_hung_call_misses_its_deadline_and_never_runs() -> None:
    release = threading.Event()
    ran: list[int] = []

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        hung = worker.submit_each([waiting(release, 1)])
        behind = worker.submit_each([returning(2, ran)])
        with pytest.raises(DeadlineMissed, match=r"^hung missed"):
            await hung.result(0.3, "hung")
        with pytest.raises(DeadlineMissed, match=r"^behind \(queued behind a hung call\) missed"):
            await behind.result(0.3, "behind")
        return worker

    worker = asyncio.run(main())
    release.set()
    worker._thread.join(5)
    assert not worker._thread.is_alive() and ran == []


def test_cancelling_the_caller_drops_the_job_queued_behind() -> None:
    release = threading.Event()
    ran: list[int] = []

    async def main() -> BlockingWorker:
        worker = BlockingWorker("w")
        first = worker.submit_each([waiting(release, 1)])
        worker.submit_each([returning(2, ran)])
        await cancel_once_running(first.result(30.0, "first"))
        return worker

    worker = asyncio.run(main())
    release.set()
    worker._thread.join(5)
    assert not worker.usable and not worker._thread.is_alive() and ran == []
