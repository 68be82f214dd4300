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
where each call still has its own deadline.
"""

from __future__ import annotations

import asyncio
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


# (call, future to settle, loop of that future); no future for fire-and-forget calls
_Job = tuple[Callable[[], Any], asyncio.Future[Any] | None, asyncio.AbstractEventLoop | None]


class _Calls(Generic[T]):
    """Calls run back to back in the worker; ``progress`` is when the last one ended.

    The worker writes ``progress`` and the awaiting coroutine reads it (a float
    attribute: atomic under the GIL) to give every call its own deadline.
    """

    def __init__(self, calls: Sequence[Callable[[], T]], keep_going: Callable[[T], bool] | None) -> None:
        self.calls = calls
        self.keep_going = keep_going
        self.progress = time.monotonic()  # submission: the first call's deadline counts from here
        self.done = 0

    def __call__(self) -> list[T]:
        results: list[T] = []
        for call in self.calls:
            result = call()
            results.append(result)
            self.done += 1
            self.progress = time.monotonic()
            if self.keep_going is not None and not self.keep_going(result):
                break
        return results


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (deadline or cancellation)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class BlockingWorker:
    """One daemon thread that runs submitted blocking calls one after another."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._usable = True
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def usable(self) -> bool:
        return self._usable

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, future, loop = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = call()
            except Exception as exc:  # handed to the awaiting coroutine
                error = exc
            if future is None or loop is None:
                if error is not None:
                    log.debug("%s: final call failed: %r", self.name, error)
                continue
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

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
        if not self._usable:
            raise WorkerGone(f"{self.name}: worker already abandoned")
        job = _Calls(calls, keep_going)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[T]] = loop.create_future()
        self._jobs.put((job, future, loop))
        try:
            while not future.done():
                remaining = job.progress + deadline - time.monotonic()
                if remaining <= 0:
                    future.cancel()  # a late result is dropped, not logged as never retrieved
                    self.abandon()
                    step = f" (call {job.done + 1} of {len(calls)})" if len(calls) > 1 else ""
                    raise DeadlineMissed(f"{what}{step} missed its {deadline:g} s deadline")
                await asyncio.wait((future,), timeout=remaining)
        except asyncio.CancelledError:
            future.cancel()
            self.abandon()
            raise
        return future.result()

    def submit_last(self, fn: Callable[[], object]) -> None:
        """Queue a final call (e.g. a polite close) without waiting, then stop."""
        if self._usable:
            self._jobs.put((fn, None, None))
        self.abandon()

    def abandon(self) -> None:
        """Stop accepting calls; the thread ends after its current call, if any."""
        if self._usable:
            self._usable = False
            self._jobs.put(None)
