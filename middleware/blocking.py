"""Run a blocking library's calls off the event loop, each with a deadline.

python-OBD and gpsd-py3 block (python-OBD hard-codes a 10 s serial timeout and
retries, so one query against a hung adapter blocked 121 s; gpsd-py3 sets no
socket timeout at all).  Each connection gets one daemon thread of its own:
the calls of one device are serial anyway, and a thread stuck in a hung call
is simply abandoned (it cannot be killed).  It is a daemon so it never delays
process exit, and it is not the loop's default executor, whose few shared
threads a handful of hung calls would use up.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class DeadlineMissed(Exception):
    """A blocking call did not return in time; its worker is abandoned."""


class WorkerGone(Exception):
    """The worker was closed or abandoned; open a new one."""


# (call, future to settle, loop of that future); no future for fire-and-forget calls
_Job = tuple[Callable[[], Any], asyncio.Future[Any] | None, asyncio.AbstractEventLoop | None]


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
        if not self._usable:
            raise WorkerGone(f"{self.name}: worker already abandoned")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, future, loop))
        try:
            return await asyncio.wait_for(future, deadline)
        except TimeoutError:
            self.abandon()
            raise DeadlineMissed(f"{what} missed its {deadline:g} s deadline") from None
        except asyncio.CancelledError:
            self.abandon()
            raise

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
