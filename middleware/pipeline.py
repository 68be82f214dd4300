"""The asyncio pipeline: collectors -> normalize -> filter -> spool -> destinations.

Collectors put items into an in-memory intake; every ``flush_interval`` the
intake is normalized, filtered, shown to observers and committed to the spool
in one transaction.  One delivery loop per destination claims due rows from
the spool, hands them to the destination and applies the outcome: accepted
rows are deleted, refused rows are retried with backoff until
``max_retry_age`` and then rejected (counted, logged), rows of an unreachable
destination wait with capped backoff and never age.  SIGTERM stops the
collectors, commits what is in memory, lets delivery rounds in flight finish
and record their verdicts, gives the destinations a last chance within
``shutdown_timeout`` (one budget for both) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections.abc import Sequence

from trapline.core.backoff import Backoff, retry_delay
from trapline.core.logutil import ThrottledLog
from trapline.core.model import Item, Reading
from trapline.core.plugin import Collector, Delivery, Destination, Observer, Spooled
from trapline.middleware.filters import Filters
from trapline.middleware.normalize import Rejected, normalize
from trapline.middleware.settings import AgentSettings, SpoolSettings
from trapline.middleware.spool import Spool
from trapline.middleware.stats import AgentStats, CollectorStats
from trapline.middleware.watchdog import Sample, Watchdog

log = logging.getLogger(__name__)

# Wake the intake early when this many items wait, so a burst is committed promptly.
_INTAKE_HIGH_WATER = 5000
# After a spool error (disk full, I/O error) a delivery loop waits this long, not the
# growing backoff of a down destination: delivery resumes soon after space returns.
_SPOOL_ERROR_PAUSE = 1.0
# Seconds between WAL checkpoints that truncate the file: without them a WAL that grew
# (a burst, a long outage) keeps its size, and on a full disk it cannot shrink.
_CHECKPOINT_INTERVAL = 10.0
# The intake loop ends a round every flush_interval; this long without one, the spool's
# commits are stuck (the task died on a bug), whatever the collectors' stall_timeout.
_COMMIT_STALL = 60.0
# A delivery loop turns at least once a second when idle, after each round (a few request
# timeouts at worst) and after each backoff (at most 60 s): 300 s without a turn is a hang.
_DELIVERY_STALL = 300.0
# Drops are summarised in one log line at most this often.
_DROP_LOG_INTERVAL = 60.0
_UNREADABLE = "spool data unreadable"


class _Outbox:
    """The Outbox a collector writes to: counts, never blocks."""

    def __init__(self, pipeline: Pipeline, name: str) -> None:
        self._pipeline = pipeline
        self._stats: CollectorStats = pipeline.stats.collector(name)
        self.name = name
        self._throttled = ThrottledLog(logging.getLogger(f"trapline.collector.{name}"))
        self._resolutions = 0

    def put(self, item: Item) -> None:
        self._stats.readings += 1
        self._pipeline.accept(item)

    def error(self, reason: str, condition: str | None = None) -> None:
        self._stats.errors += 1
        self._throttled.warning(condition or "one-off errors", "collector %s: %s", self.name, reason)

    def resolved(self, condition: str, message: str) -> None:
        self._resolutions += 1
        self._throttled.resolved(condition, "collector %s: %s", self.name, message)

    def moves(self) -> int:
        """Changes whenever the collector used its outbox: its progress, for the watchdog."""
        return self._stats.readings + self._stats.errors + self._resolutions

    def committed(self, soon: bool = False) -> asyncio.Future[None]:
        return self._pipeline.committed(soon)


class Pipeline:
    def __init__(
        self,
        *,
        agent: AgentSettings,
        spool_settings: SpoolSettings,
        spool: Spool,
        filters: Filters,
        collectors: Sequence[Collector] = (),
        destinations: Sequence[Destination] = (),
        observers: Sequence[Observer] = (),
        watchdog: Watchdog | None = None,
    ) -> None:
        self.agent = agent
        self.spool_settings = spool_settings
        self.spool = spool
        self.filters = filters
        self.collectors = list(collectors)
        self.destinations = list(destinations)
        self.observers = list(observers)
        self.watchdog = watchdog
        self.stats = AgentStats()
        self._intake: list[Item] = []
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._unspooled: list[Item] = []  # normalized readings a failed spool write left behind
        # Per destination, spool ids whose verdict (accepted or rejected, already counted)
        # could not be written: they are never claimed again, and deleted once the spool
        # can be written, so nothing the destination accepted is sent twice.
        self._undeleted: dict[str, set[int]] = {d.name: set() for d in self.destinations}
        self._drops_unlogged: dict[str, int] = {}
        self._drops_logged_at: float | None = None
        self._intake_wake = asyncio.Event()
        self._dest_wake = {d.name: asyncio.Event() for d in self.destinations}
        self._stop = asyncio.Event()
        self._intake_rounds = 0
        self._delivery_turns = dict.fromkeys(self._dest_wake, 0)
        self._collector_runs: list[tuple[asyncio.Task[None], _Outbox]] = []
        self._throttled = ThrottledLog(log)
        for d in self.destinations:
            self.stats.destination(d.name)
        for c in self.collectors:
            self.stats.collector(c.name)

    # -- intake ----------------------------------------------------------------
    def outbox(self, name: str) -> _Outbox:
        return _Outbox(self, name)

    def accept(self, item: Item) -> None:
        self._intake.append(item)
        if len(self._intake) >= _INTAKE_HIGH_WATER:
            self._intake_wake.set()

    def committed(self, soon: bool = False) -> asyncio.Future[None]:
        """Resolves when everything accepted so far has been through the next flush_intake().

        ``soon`` starts that flush now instead of at the end of ``flush_interval``.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_waiters.append(waiter)
        if soon:
            self._intake_wake.set()
        return waiter

    def flush_intake(self) -> int:
        """Normalize, filter and spool everything waiting; returns rows spooled."""
        items, self._intake = self._intake, []
        waiters, self._commit_waiters = self._commit_waiters, []
        try:
            spooled = self._spool_items(items)
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        return spooled

    def _spool_items(self, items: list[Item]) -> int:
        admitted: list[Item] = []
        # Looked up once per flush, not once per reading: this loop runs for every reading.
        admit, keep_admitted, observers = self.filters.admit, admitted.append, self.observers
        for raw in items:
            try:
                item = normalize(raw)
                keep = admit(item)
            except Rejected as why:
                self.reject_reading(raw, str(why))
                continue
            except Exception as exc:  # a bug for one reading must not stop the intake for all
                self._reject_for_bug(raw, "normalize or filter", exc)
                continue
            if observers:
                self._observe(item)
            if keep:
                keep_admitted(item)
            else:
                self.stats.filtered += 1
        # Readings whose spool write failed last time go first, in their order.
        admitted, self._unspooled = self._unspooled + admitted, []
        if not admitted:
            return 0
        # Delivered rows must leave before the bound could count them as dropped.
        for dest in self._undeleted:
            self._delete_settled(dest)
        try:
            dropped = self.spool.put(admitted, self.destinations)
        except (sqlite3.Error, OSError) as exc:
            self._keep_unspooled(admitted, exc)
            raise
        except Exception:  # a reading the spool cannot store, which normalize let pass
            dropped, admitted = self._put_one_by_one(admitted)
        if dropped:
            self._count_dropped(dropped, f"spool full (max_readings={self.spool.max_readings})")
        for ev in self._dest_wake.values():
            ev.set()
        return len(admitted)

    def _observe(self, item: Item) -> None:
        for obs in self.observers:
            try:
                obs.observe(item)
            except Exception as exc:  # an observer's bug costs its own view, not the reading
                log.debug("observer %r failed", obs, exc_info=True)
                self._throttled.error("observer", "observer %r failed: %s", obs, type(exc).__name__)

    def _put_one_by_one(self, items: list[Item]) -> tuple[int, list[Item]]:
        """Spool what can be stored, in order, and reject the rest: (dropped by the bound, stored).

        Slow, and only after a put failed.
        """
        dropped, stored = 0, []
        for index, item in enumerate(items):
            try:
                dropped += self.spool.put([item], self.destinations)
            except (sqlite3.Error, OSError) as exc:
                self._keep_unspooled(items[index:], exc)
                raise
            except Exception as exc:
                self._reject_for_bug(item, "spool", exc)
            else:
                stored.append(item)
        return dropped, stored

    def _reject_for_bug(self, item: Item, stage: str, exc: Exception) -> None:
        log.debug("%s failed on a reading", stage, exc_info=True)
        self.reject_reading(item, f"{stage} failed: {type(exc).__name__}")

    def _keep_unspooled(self, items: list[Item], exc: Exception) -> None:
        """The spool cannot be written (disk full, I/O error): hold the readings in memory.

        Held readings are retried at every flush; beyond ``max_memory_bytes`` (an
        estimate) the oldest are dropped and counted: a crash loses what memory holds,
        so it must not grow with the length of the disk's trouble.
        """
        sizes = [_approx_size(item) for item in items]
        total, first = sum(sizes), 0
        while total > self.spool_settings.max_memory_bytes and first < len(items):
            total -= sizes[first]
            first += 1
        if first:
            bound = self.spool_settings.max_memory_bytes
            self._count_dropped(first, f"spool not writable, beyond max_memory_bytes={bound}")
        self._unspooled = items[first:]
        self._throttled.error(
            "spool-write", "cannot write the spool (%s): %d readings (~%d bytes) held in memory, retrying",
            exc, len(self._unspooled), total,
        )

    def _count_dropped(self, count: int, why: str) -> None:
        """Count readings dropped unsent, once each; the log gets a summary (``_log_drops``)."""
        self.stats.dropped += count
        self._drops_unlogged[why] = self._drops_unlogged.get(why, 0) + count
        self._log_drops()

    def _log_drops(self, final: bool = False) -> None:
        now = time.monotonic()
        last = self._drops_logged_at
        if not self._drops_unlogged or not (final or last is None or now - last >= _DROP_LOG_INTERVAL):
            return
        window = f"in the last {now - last:.0f}s" if last is not None else "just now"
        reasons = "; ".join(f"{n} {why}" for why, n in self._drops_unlogged.items())
        log.error("dropped %d readings %s (%s); %d since start",
                  sum(self._drops_unlogged.values()), window, reasons, self.stats.dropped)
        self._drops_unlogged.clear()
        self._drops_logged_at = now

    def reject_reading(self, item: Item, reason: str) -> None:
        self.stats.rejected[reason] += 1
        key = getattr(item, "key", None) or getattr(item, "rule", "?")
        self._throttled.warning("reject:" + reason, "rejected %s:%s: %s", item.host, key, reason)

    async def _intake_loop(self) -> None:
        checkpointed = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.agent.flush_interval):
                    await self._intake_wake.wait()
            self._intake_wake.clear()
            with contextlib.suppress(sqlite3.Error, OSError):  # logged and kept by flush_intake
                self.flush_intake()
            self._log_drops()  # a summary is due even when no new drop comes to trigger it
            if time.monotonic() - checkpointed >= _CHECKPOINT_INTERVAL:
                checkpointed = time.monotonic()
                try:
                    self.spool.checkpoint()
                except (sqlite3.Error, OSError) as exc:
                    self._throttled.warning("checkpoint", "spool WAL checkpoint failed: %s", exc)
            self._intake_rounds += 1

    # -- delivery --------------------------------------------------------------
    async def deliver_once(self, dest: Destination) -> Delivery | None:
        """One delivery round for ``dest``; None when nothing was due."""
        settled = self._undeleted[dest.name]
        self._delete_settled(dest.name)
        limit = self.spool_settings.batch
        batch = self.spool.claim(dest.name, limit + len(settled))
        if settled:  # their verdict is known: never send them again
            batch = [s for s in batch if s.id not in settled][:limit]
        if lost := self.spool.take_unreadable():
            self.stats.rejected[_UNREADABLE] += lost
            log.error(
                "spool: %d readings for %s were damaged; moved to the batch_unreadable and"
                " queue_unreadable tables of %s",
                lost,
                dest.name,
                self.spool.path,
            )
        if not batch:
            return None
        started = time.monotonic()
        try:
            outcome = await dest.deliver(batch)
        except Exception as exc:  # a destination bug must not stop delivery
            log.exception("destination %s failed unexpectedly", dest.name)
            outcome = Delivery(unreachable=f"internal error: {type(exc).__name__}")
        self.stats.destination(dest.name).record_latency(time.monotonic() - started)
        self._apply(dest.name, batch, outcome)
        return outcome

    def _apply(self, dest: str, batch: list[Spooled], outcome: Delivery) -> None:
        stats = self.stats.destination(dest)
        now = time.time()
        stats.sent += len(outcome.accepted)
        for reason in outcome.rejected.values():
            self.stats.rejected[reason] += 1
        if outcome.rejected:
            self._throttled.warning(
                "dest-reject:" + dest, "%s rejected %d values: %s",
                dest, len(outcome.rejected), next(iter(outcome.rejected.values())),
            )
        self._undeleted[dest].update(outcome.accepted, outcome.rejected)
        self._delete_settled(dest)
        settled = set(outcome.accepted) | set(outcome.rejected) | set(outcome.retry)
        unsettled = [s.id for s in batch if s.id not in settled]
        refused = dict(outcome.retry)
        if outcome.unreachable is not None:
            # Rows without a verdict were not refused: they wait for the destination
            # without ageing, due again at once; the delivery loop backs off first.
            self.spool.defer(unsettled, 0.0, refused=False)
        else:
            refused.update((sid, "destination returned no outcome") for sid in unsettled)
        if refused:
            self._retry_refused(dest, batch, refused, now)

    def _retry_refused(self, dest: str, batch: list[Spooled], refused: dict[int, str], now: float) -> None:
        stats = self.stats.destination(dest)
        stats.failed += len(refused)
        first = self.spool.first_refused(refused)
        attempts = {s.id: s.attempts for s in batch}
        expired = {sid: why for sid, why in refused.items()
                   if now - first.get(sid, now) >= self.spool_settings.max_retry_age}
        for why in expired.values():
            self.stats.rejected[f"not accepted within max_retry_age: {why}"] += 1
        if expired:
            self._throttled.error(
                "expired:" + dest,
                "%s: %d values still refused after %.0fs, rejected: %s",
                dest, len(expired), self.spool_settings.max_retry_age, next(iter(expired.values())),
            )
            self._undeleted[dest].update(expired)
            self._delete_settled(dest)
        by_delay: dict[float, list[int]] = {}
        for sid in refused.keys() - expired.keys():
            delay = retry_delay(attempts.get(sid, 0) + 1, self.spool_settings.retry_initial,
                                self.spool_settings.retry_cap)
            by_delay.setdefault(round(now + delay, 1), []).append(sid)
        for due, ids in by_delay.items():
            self.spool.defer(ids, due, refused=True)

    def _delete_settled(self, dest: str) -> bool:
        """Delete the rows whose verdict is counted; on a spool error keep them for the next try."""
        settled = self._undeleted[dest]
        if not settled:
            return True
        try:
            self.spool.ack(settled)  # ack and reject both delete: one write for both
        except (sqlite3.Error, OSError) as exc:
            self._throttled.error(
                "spool-delete:" + dest,
                "cannot delete %d delivered or rejected readings of %s from the spool (%s);"
                " they are not sent again, deleting is retried",
                len(settled), dest, exc,
            )
            return False
        settled.clear()
        return True

    async def _delivery_loop(self, dest: Destination) -> None:
        backoff = Backoff(initial=1.0, cap=60.0)
        wake = self._dest_wake[dest.name]
        # Stops with the pipeline: after stop() the final drain takes over.
        while not self._stop.is_set():
            self._delivery_turns[dest.name] += 1
            try:
                outcome = await self.deliver_once(dest)
            except (sqlite3.Error, OSError) as exc:  # the spool's disk, not the destination
                self._throttled.warning(
                    "spool-error:" + dest.name, "delivery to %s: spool error (%s); retrying in %.0fs",
                    dest.name, exc, _SPOOL_ERROR_PAUSE,
                )
                await self._sleep_unless_stopping(_SPOOL_ERROR_PAUSE)
                continue
            except Exception as exc:  # a bug: this destination must go on
                log.debug("delivery round for %s failed", dest.name, exc_info=True)
                outcome = Delivery(unreachable=f"delivery round failed: {type(exc).__name__}: {exc}")
            self._throttled.resolved("spool-error:" + dest.name, "delivery to %s: spool works again",
                                     dest.name)
            if outcome is None:
                wake.clear()
                if self._stop.is_set():
                    break
                due = self.spool.next_due(dest.name)
                wait = 1.0 if due is None else min(max(due - time.time(), 0.05), 1.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await wake.wait()
                continue
            if outcome.unreachable is not None:
                if outcome.accepted:
                    # Part of the round got through: a flaky link, not a dead one.  Pause
                    # briefly, but do not let the wait grow towards the cap while data flows.
                    backoff.reset()
                delay = backoff.next_delay()
                self._throttled.warning(
                    "unreachable:" + dest.name, "%s unreachable (%s); retrying in %.1fs, data kept in spool",
                    dest.name, outcome.unreachable, delay,
                )
                await self._sleep_unless_stopping(delay)
            else:
                backoff.reset()
                self._throttled.resolved("unreachable:" + dest.name, "%s reachable again", dest.name)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # -- self-monitoring -------------------------------------------------------
    def self_readings(self) -> list[Item]:
        stats = self.spool.stats()
        for d in self.destinations:
            self.stats.destination(d.name).backlog = self.spool.depth(d.name)
        host = self.agent.host or "trapline"
        return self.stats.readings(host, stats.depth, stats.oldest_enqueued)

    async def _self_loop(self) -> None:
        outbox = self.outbox("self")
        while True:
            for item in self.self_readings():
                if self.agent.host or not self.destinations:
                    outbox.put(item)
                else:  # no agent host: only observers (Prometheus) see them
                    for obs in self.observers:
                        obs.observe(item)
            await asyncio.sleep(self.agent.self_interval)

    def progress(self) -> list[Sample]:
        """What the watchdog checks: spool commits, delivery loops, every collector still running."""
        samples = [Sample("spool commits", self._intake_rounds,
                          max(_COMMIT_STALL, 10 * self.agent.flush_interval))]
        samples += [Sample(f"delivery to {name}", turns, max(_DELIVERY_STALL, self.agent.stall_timeout))
                    for name, turns in self._delivery_turns.items()]
        samples += [Sample(f"collector {outbox.name}", outbox.moves(), self.agent.stall_timeout)
                    for task, outbox in self._collector_runs if not task.done()]
        return samples

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        for wake in self._dest_wake.values():  # an idle delivery loop ends now, not after its wait
            wake.set()

    async def run(self, install_signal_handlers: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        for obs in self.observers:
            await obs.start()
        outboxes = [self.outbox(c.name) for c in self.collectors]
        self._collector_runs = [
            (asyncio.create_task(self._run_collector(c, out), name=f"collector:{c.name}"), out)
            for c, out in zip(self.collectors, outboxes, strict=True)
        ]
        collector_tasks = [task for task, _ in self._collector_runs]
        service_tasks = [asyncio.create_task(self._intake_loop(), name="intake"),
                         asyncio.create_task(self._self_loop(), name="self")]
        if self.watchdog is not None:
            service_tasks.append(asyncio.create_task(self.watchdog.run(self.progress), name="watchdog"))
        delivery_tasks = [asyncio.create_task(self._delivery_loop(d), name=f"deliver:{d.name}")
                          for d in self.destinations]
        log.info("trapline running: %d collectors, %d destinations, %d observers, spool %s (%d waiting)",
                 len(self.collectors), len(self.destinations), len(self.observers),
                 self.spool.path, self.spool.depth())
        if self.watchdog is not None:
            self.watchdog.ready(f"running; collectors: {len(self.collectors)}")
        try:
            await self._stop.wait()
        finally:
            log.info("stopping: committing readings in memory, last delivery attempt")
            if self.watchdog is not None:
                self.watchdog.stopping()
            self.stop()  # also when run() itself was cancelled: the delivery loops must end
            deadline = loop.time() + self.agent.shutdown_timeout
            await _cancel(collector_tasks)
            await _cancel(service_tasks)
            with contextlib.suppress(sqlite3.Error, OSError):  # logged with the count held
                self.flush_intake()
            await self._finish_rounds(delivery_tasks, deadline - loop.time())
            await self._drain(deadline - loop.time())
            for name, settled in self._undeleted.items():
                if not self._delete_settled(name):
                    log.error("%d readings %s accepted stay in the spool and will be sent again",
                              len(settled), name)
            self._log_drops(final=True)
            for d in self.destinations:
                await d.close()
            for obs in self.observers:
                await obs.close()
            log.info("stopped; %d readings stay in the spool for the next start", self.spool.depth())
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

    async def _finish_rounds(self, tasks: list[asyncio.Task[None]], seconds: float) -> None:
        """Let the delivery rounds in flight end and record their verdicts.

        Cancelling a round would lose the acknowledgements of requests Zabbix
        already answered, and the drain would send those values again.  Only a
        round still running when ``shutdown_timeout`` is up is cancelled: its
        rows were not acked and stay in the spool for the next start.
        """
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=max(seconds, 0.0))
        if late:
            log.warning(
                "%d delivery round(s) still running after shutdown_timeout, cancelled; their"
                " readings stay in the spool", len(late),
            )
        await _cancel(tasks)  # also collects the ended ones, and any exception they kept

    async def _drain(self, seconds: float) -> None:
        async def drain_one(dest: Destination) -> None:
            try:
                while (outcome := await self.deliver_once(dest)) is not None:
                    if outcome.unreachable is not None or not outcome.accepted:
                        return
            except Exception as exc:  # what is left stays in the spool for the next start
                log.warning("last delivery to %s failed: %s: %s", dest.name, type(exc).__name__, exc)

        if seconds <= 0 or not self.destinations:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(drain_one(d) for d in self.destinations))

    async def _run_collector(self, collector: Collector, outbox: _Outbox) -> None:
        backoff = Backoff(initial=1.0, cap=60.0)
        while True:
            try:
                await collector.run(outbox)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a collector bug must not take the agent down
                delay = backoff.next_delay()
                outbox.error(f"crashed with {type(exc).__name__}; restarting in {delay:.1f}s")
                log.debug("collector %s crash", collector.name, exc_info=True)
                await asyncio.sleep(delay)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# Bytes of a normalized Reading besides its text: tracemalloc over 100,000 readings with
# a 7-character host and a 19-character key gave ~360 bytes each, strings included.
_ITEM_OVERHEAD = 330


def _approx_size(item: Item) -> int:
    """Rough bytes an item holds in memory: the objects plus its text."""
    if isinstance(item, Reading):
        value = item.value
        text = len(value) if isinstance(value, str) else 0
        labels = sum(len(k) + len(v) + 100 for k, v in item.labels.items()) if item.labels else 0
        return _ITEM_OVERHEAD + len(item.host) + len(item.key) + text + len(item.unit) + labels
    return _ITEM_OVERHEAD + len(item.host) + len(item.rule) + sum(
        100 + sum(len(k) + len(str(v)) for k, v in row.items()) for row in item.rows
    )
