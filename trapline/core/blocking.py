"""Run a blocking library's calls off the event loop, each with a deadline.

python-OBD and gpsd-py3 block (python-OBD hard-codes a 10 s serial timeout and
retries, so one query against a hung adapter blocked 121 s; gpsd-py3 sets no
socket timeout at all).  Each connection gets one daemon thread of its own:
the calls of one device are serial anyway, and a thread stuck in a hung call
is simply abandoned (it cannot be killed).  It is a daemon so it never delays
process exit, and it is not the loop's default executor, whose few shared
threads a handful of hung calls would use up.

A hop to the thread and back costs the event loop a wake-up each way; a device
answering several requests in a row gets them as one job (:meth:`call_each`),
where each call still has its own deadline.  A job can also be queued before
the previous one is done (:meth:`submit_each`, then :meth:`Job.result`): the
thread goes on to it at once, without waiting for the event loop to take the
previous results and hand it more work.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class DeadlineMissed(Exception):
    """A blocking call did not return in time; its worker is abandoned."""


class WorkerGone(Exception):
    """The worker was closed or abandoned; open a new one."""


class _State(enum.Enum):
    QUEUED = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()
    DROPPED = enum.auto()  # discarded, or its worker abandoned, before it ran


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (deadline, cancellation, discard)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _drop(future: asyncio.Future[Any]) -> None:
    future.cancel()


class Job(Generic[T]):
    """Calls queued in a worker to run back to back; await :meth:`result` or :meth:`discard` it."""

    def __init__(self, worker: BlockingWorker, calls: Sequence[Callable[[], T]],
                 keep_going: Callable[[T], bool] | None) -> None:
        self._worker = worker
        self._calls = calls
        self._keep_going = keep_going
        self._loop = asyncio.get_running_loop()
        self._future: asyncio.Future[list[T]] = self._loop.create_future()
        self._submitted = time.monotonic()  # the first call's deadline counts from here at the earliest
        self._lock = threading.Lock()  # the worker starting the job vs the loop discarding it
        self._state = _State.QUEUED
        self._done = 0
        self.started: float | None = None  # monotonic, set by the worker
        self.finished: float | None = None

    @property
    def ran_for(self) -> float | None:
        """Seconds the worker spent on the job's calls, once it has finished them."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    # -- worker thread --------------------------------------------------------
    def _run(self) -> None:
        with self._lock:
            if self._state is not _State.QUEUED:
                return
            self._state = _State.RUNNING
        worker = self._worker
        self.started = worker.progress = time.monotonic()
        results: list[T] = []
        error: Exception | None = None
        try:
            for call in self._calls:
                result = call()
                results.append(result)
                self._done += 1
                worker.progress = time.monotonic()
                if not worker.usable or (self._keep_going is not None and not self._keep_going(result)):
                    break
        except Exception as exc:  # handed to the awaiting coroutine
            error = exc
        self.finished = time.monotonic()
        with self._lock:
            self._state = _State.FINISHED
        self._loop.call_soon_threadsafe(_settle, self._future, results, error)  # RuntimeError: loop closed

    def _skip(self) -> None:
        """The worker was abandoned before the job ran: drop it."""
        with self._lock:
            if self._state is not _State.QUEUED:
                return
            self._state = _State.DROPPED
        self._loop.call_soon_threadsafe(_drop, self._future)

    # -- event loop -----------------------------------------------------------
    async def result(self, deadline: float, what: str) -> list[T]:
        """The results, in order; each call gets ``deadline`` seconds.

        A call's deadline counts from the end of the worker's previous call, or
        from the job's submission if the worker was idle then: the time a queued
        job waits behind another that keeps making progress does not count.  A
        missed deadline or cancellation abandons the worker
        (:class:`DeadlineMissed`, :class:`asyncio.CancelledError`); a job dropped
        unrun raises :class:`WorkerGone`.
        """
        future = self._future
        worker = self._worker
        try:
            while not future.done():
                remaining = max(self._submitted, worker.progress) + deadline - time.monotonic()
                if remaining <= 0:
                    future.cancel()  # a late result is dropped, not logged as never retrieved
                    worker.abandon()
                    raise DeadlineMissed(f"{what}{self._where()} missed its {deadline:g} s deadline")
                await asyncio.wait((future,), timeout=remaining)
        except asyncio.CancelledError:
            future.cancel()
            worker.abandon()
            raise
        if future.cancelled():
            raise WorkerGone(f"{worker.name}: worker abandoned before {what} ran")
        return future.result()

    def _where(self) -> str:
        if self._state is _State.QUEUED:
            return " (queued behind a hung call)"
        return f" (call {self._done + 1} of {len(self._calls)})" if len(self._calls) > 1 else ""

    def discard(self) -> None:
        """Nobody wants the results: a queued job never runs; a running one cannot
        be taken back, so its worker is abandoned (as on cancellation)."""
        with self._lock:
            running = self._state is _State.RUNNING
            if self._state is _State.QUEUED:
                self._state = _State.DROPPED
        if running:
            self._worker.abandon()
        if not self._future.done():
            self._future.cancel()
        elif not self._future.cancelled():
            self._future.exception()  # retrieved: a discarded job's error is not logged


# a job, a final fire-and-forget call, or None: the end
_Item = Job[Any] | Callable[[], object] | None


class BlockingWorker:
    """One daemon thread that runs submitted blocking calls one after another."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._usable = True
        # when the thread last started a job or ended a call (a float: written by the
        # thread, read by awaiting coroutines, atomic under the GIL)
        self.progress = time.monotonic()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def usable(self) -> bool:
        return self._usable

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            if isinstance(item, Job):
                try:
                    if self._usable:
                        item._run()
                    else:
                        item._skip()
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return
                continue
            try:
                item()
            except Exception as exc:
                log.debug("%s: final call failed: %r", self.name, exc)

    async def call(self, fn: Callable[[], T], deadline: float, what: str) -> T:
        """Run ``fn()`` in the worker thread; give up after ``deadline`` seconds.

        On a missed deadline the worker is marked unusable (its thread may stay
        stuck in ``fn``) and :class:`DeadlineMissed` is raised.
        """
        results: list[T] = await self.call_each((fn,), deadline, what)
        return results[0]

    async def call_each(
        self,
        calls: Sequence[Callable[[], T]],
        deadline: float,
        what: str,
        keep_going: Callable[[T], bool] | None = None,
    ) -> list[T]:
        """Run ``calls`` one after another as one job in the worker thread.

        Each call gets ``deadline`` seconds from the end of the previous one (the
        first from now), as if submitted one by one, without the hop to the
        thread and back in between.  Stops early after a result ``keep_going``
        refuses; returns the results so far.  A call that raises ends the job
        and its exception is raised here.  A missed deadline or cancellation
        abandons the worker, as in :meth:`call`.
        """
        return await self.submit_each(calls, keep_going).result(deadline, what)

    def submit_each(
        self, calls: Sequence[Callable[[], T]], keep_going: Callable[[T], bool] | None = None
    ) -> Job[T]:
        """Queue ``calls`` as one job (as :meth:`call_each` does) and return at once.

        Jobs run in the order submitted; the thread starts the next as soon as
        one ends.  Await :meth:`Job.result` or call :meth:`Job.discard`.  On an
        abandoned worker the job is dropped unrun (:class:`WorkerGone`).
        """
        job = Job(self, calls, keep_going)
        if self._usable:
            self._jobs.put(job)
        else:
            job.discard()
        return job

    def submit_last(self, fn: Callable[[], object]) -> None:
        """Queue a final call (e.g. a polite close) without waiting, then stop."""
        if self._usable:
            self._jobs.put(fn)
        self.abandon()

    def abandon(self) -> None:
        """Stop accepting calls; the thread ends after its current call, if any
        (the rest of that job and the jobs still queued are dropped unrun)."""
        if self._usable:
            self._usable = False
            self._jobs.put(None)
