"""The Zabbix destination: spool batches in, per-value verdicts out.

The server answers a request with counts only (``processed: N; failed: M``),
never with *which* values failed.  To keep every value that was not accepted
(and only those) in the spool, the destination

* remembers which (host, key) pairs the server accepted (*good*; the oldest
  of 200,000 are forgotten).
  Good keys travel together; every other key travels in requests of its own,
  which the server accepts or refuses as a whole (one item), so the verdict
  is exact without re-sending anything;
* only when a request of good keys partly fails (an item deleted or disabled
  while we were sending) locates the failed values by bisection: it re-sends
  one half after :data:`RESEND_DELAY`, and the other half's count follows.

Why re-sending is avoided, measured here (6.0.14 and 7.0.22, PostgreSQL): a
copy of a value with the same (item, clock, ns) that reaches the database
after the original is dropped by the primary key (the server logs "[Z3008]
... skipped N duplicates"; the other values are stored).  But on 7.0 copies
that meet in the history cache are stored as extra rows with a shifted ns,
and one re-sent copy still landed as an extra row after a 1.5 s delay.  So
the rare bisection case can leave a duplicate row on 7.0; first contact with
new keys (the common case) never re-sends.

Values that failed go to ``Delivery.retry``: an item that LLD just created is
accepted after the server's next configuration cache sync, and the retried
values then arrive with their original clock.  The pipeline turns retries that
are too old into rejections.  Only the server's own count of failed values is
a refusal: a request that failed in transit (refused or dropped connection,
timeout, a reply cut short or unreadable, a whole-request "failed") says
nothing about its values, which may or may not be stored.  Such values get no
verdict and do not age; the round ends there, so a broken link or server sees
one failing connection per round and backoff, not a burst of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trapline.core.logutil import ThrottledLog
from trapline.core.model import Reading
from trapline.core.plugin import Delivery, Spooled
from trapline.exporters.zabbix.autoregistration import AutoRegistration
from trapline.exporters.zabbix.client import SendError
from trapline.exporters.zabbix.diagnose import Diagnoser, Ident, listing
from trapline.exporters.zabbix.protocol import (
    Reply,
    data_entries_by_item,
    encode_request,
    frame,
    request_json,
)

log = logging.getLogger(__name__)

NOT_ACCEPTED = "not accepted by Zabbix (item missing, not yet in config cache, disabled, ...)"
# A re-sent copy must reach the server after the history syncer (1 s cycle) wrote
# the original: then the primary key drops it.  Both copies in the history
# cache at once end as two rows on 7.0 (ns shifted), so wait before re-sending.
RESEND_DELAY = 1.5
_KEY_CACHE_MAX = 200_000  # (host, key) pairs remembered per class; a pair costs ~200 bytes


@dataclass(slots=True)
class SenderStats:
    """Counters for self-monitoring, read by the pipeline."""

    values_sent: int = 0  # every value put on the wire, re-sends included
    values_processed: int = 0
    values_failed: int = 0
    requests: int = 0
    errors: int = 0  # requests without a usable reply
    last_latency: float = 0.0  # seconds, connect to reply
    latency_sum: float = 0.0

    @property
    def average_latency(self) -> float:
        answered = self.requests - self.errors
        return self.latency_sum / answered if answered > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "values_sent": self.values_sent,
            "values_processed": self.values_processed,
            "values_failed": self.values_failed,
            "requests": self.requests,
            "errors": self.errors,
            "last_latency_seconds": self.last_latency,
            "average_latency_seconds": self.average_latency,
        }


@dataclass(slots=True)
class _ItemValues:
    """Values of one item in spool order, with their spool ids.

    The unit that lanes, requests and verdicts work on: per-item work (key
    cache, lane choice, escaping host and key) is done once per item, not
    once per value.
    """

    ident: Ident
    ids: list[int]
    readings: list[Reading]

    def split(self, at: int) -> tuple[_ItemValues, _ItemValues]:
        return (
            _ItemValues(self.ident, self.ids[:at], self.readings[:at]),
            _ItemValues(self.ident, self.ids[at:], self.readings[at:]),
        )


def _by_item(batch: Sequence[Spooled]) -> tuple[list[_ItemValues], list[_ItemValues]]:
    """(discovery, data) grouped per item, items in order of first appearance."""
    lld: dict[Ident, _ItemValues] = {}
    data: dict[Ident, _ItemValues] = {}
    for spooled in batch:
        item, groups = spooled.item, data
        if not isinstance(item, Reading):  # quicker to ask than "is it a Discovery" (see filters)
            item, groups = item.as_reading(), lld
        ident = (item.host, item.key)
        values = groups.get(ident)
        if values is None:
            groups[ident] = _ItemValues(ident, [spooled.id], [item])
        else:
            values.ids.append(spooled.id)
            values.readings.append(item)
    return list(lld.values()), list(data.values())


def _count(chunk: list[_ItemValues]) -> int:
    return sum(len(values.ids) for values in chunk)


def _pack(items: list[_ItemValues], size: int) -> Iterator[list[_ItemValues]]:
    """Requests of at most ``size`` values, splitting an item where a request is full."""
    chunk: list[_ItemValues] = []
    room = size
    for values in items:
        rest = values
        while len(rest.ids) > room:
            head, rest = rest.split(room)
            chunk.append(head)
            yield chunk
            chunk, room = [], size
        chunk.append(rest)
        room -= len(rest.ids)
        if room == 0:
            yield chunk
            chunk, room = [], size
    if chunk:
        yield chunk


class _BoundedSet(dict[Ident, None]):
    """A set that forgets the members it learned first when full.

    A dict underneath so that ``in`` is the dict's own lookup: it runs for
    every item of every request.  A forgotten key only costs requests of its
    own until the server accepts it again.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def add(self, ident: Ident) -> None:
        if ident not in self:
            self[ident] = None
            if len(self) > self._limit:
                del self[next(iter(self))]

    def discard(self, ident: Ident) -> None:
        self.pop(ident, None)


@dataclass(slots=True)
class _Round:
    """What one ``deliver`` call learned, filled in by concurrent requests."""

    delivery: Delivery = field(default_factory=Delivery)
    failed: list[_ItemValues] = field(default_factory=list)
    # Requests that got no verdict (transport failure, garbage, a whole-request
    # "failed"): the first one ends the round, so no lane opens another connection.
    transport_errors: list[str] = field(default_factory=list)


class Transport(Protocol):
    """What sends one framed request (a :class:`~.client.ClusterClient` in production)."""

    async def send(self, framed: bytes) -> Reply: ...


class ZabbixDestination:
    """One ``servers`` entry (a server, a proxy, or an HA cluster of servers)."""

    needs_labels = False  # trapper values have no labels

    def __init__(
        self,
        name: str,
        client: Transport,
        batch_size: int = 250,
        concurrency: int = 4,
        compress: bool = False,
        *,
        diagnoser: Diagnoser | None = None,
        resend_delay: float = RESEND_DELAY,
        registration: AutoRegistration | None = None,
        active_checks_interval: float = 60.0,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be >= 1")
        self.name = name
        self.client = client
        self.batch_size = batch_size
        self.compress = compress
        self.stats = SenderStats()
        self.diagnoser = diagnoser
        self.resend_delay = resend_delay
        self.registration = registration
        # Not used here: the application's active checks poller asks through this
        # destination's client (exporters/zabbix/active_checks.py).
        self.active_checks_interval = active_checks_interval
        self.concurrency = concurrency
        self._good = _BoundedSet(_KEY_CACHE_MAX)
        self._diagnoses: set[asyncio.Task[None]] = set()
        # Refused values are retried every few seconds for up to max_retry_age: say so
        # once a minute per set of hosts, not on every retry.
        self._refusals = ThrottledLog(log)

    # -- Destination protocol -------------------------------------------------
    async def deliver(self, batch: Sequence[Spooled]) -> Delivery:
        if self.registration is not None:
            # Values for a host the server does not know yet would be refused and age
            # towards rejection: they wait unsent, and the round asks again after backoff.
            waiting = await self.registration.wait_reason()
            if waiting is not None:
                return Delivery(unreachable=waiting)
        lld, data = _by_item(batch)
        state = _Round()
        # LLD first, in requests of its own: the items it creates must exist
        # (after the next config sync) before their values can be accepted.
        await self._send_all(lld, state)
        if not state.transport_errors:
            await self._send_all(data, state)
        delivery = state.delivery
        if state.transport_errors:
            log.warning(
                "zabbix %s: %d request(s) without a verdict, round ended, values kept: %s",
                self.name,
                len(state.transport_errors),
                state.transport_errors[0],
            )
            # Values without a verdict are in no bucket: the pipeline keeps them
            # due without ageing them (they were not refused, their fate is
            # unknown) and backs off before the next round.
            delivery.unreachable = state.transport_errors[0]
        if state.failed:
            self._report_failed(state.failed, len(batch))
        return delivery

    async def check(self) -> str:
        """Send an empty request: a trapper answers it with ``processed: 0``."""
        try:
            reply = await self.client.send(frame(encode_request((), 0, 0), self.compress))
        except SendError as exc:
            raise RuntimeError(str(exc)) from None
        if not reply.ok:
            raise RuntimeError(f"server refused an empty request: {reply.info[:200]}")
        detail = "trapper answers"
        if self.diagnoser is not None:
            detail += f"; {await self.diagnoser.check()}"
        return detail

    async def close(self) -> None:
        for task in list(self._diagnoses):
            task.cancel()
        if self._diagnoses:
            await asyncio.gather(*self._diagnoses, return_exceptions=True)

    # -- sending --------------------------------------------------------------
    def _chunks(self, lane: list[_ItemValues]) -> list[list[_ItemValues]]:
        """Keys known to be accepted travel together; every other key gets requests of its own.

        A request that holds one key is accepted or refused as a whole (one
        item), so its verdict is exact and nothing has to be re-sent to find
        out which values failed.  Re-sending is what must be avoided: Zabbix
        7.0 may store a re-sent value a second time with a shifted ns.  New
        keys (fresh from LLD, not yet in the server's config cache) are the
        ones that get refused, so only they pay for the extra requests, and
        only until their first acceptance.
        """
        good = [values for values in lane if values.ident in self._good]
        chunks = list(_pack(good, self.batch_size))
        for values in lane:
            if values.ident not in self._good:
                chunks.extend(_pack([values], self.batch_size))
        return chunks

    async def _send_all(self, items: list[_ItemValues], state: _Round) -> None:
        """Send in ``concurrency`` lanes; every value of one item travels in the same lane.

        Zabbix evaluates values in the order they arrive, also late ones, so two
        requests in flight at once must never carry values of the same item:
        within a lane requests go one after another, in spool order.
        """
        if not items:
            return
        # No more lanes than full requests: a small batch stays one request.
        count = max(1, min(self.concurrency, -(-_count(items) // self.batch_size)))
        lanes: list[list[_ItemValues]] = [[] for _ in range(count)]
        sizes = [0] * count
        for values in items:  # each item joins the shortest lane, so requests stay full
            shortest = sizes.index(min(sizes))
            lanes[shortest].append(values)
            sizes[shortest] += len(values.ids)
        await asyncio.gather(*(self._send_lane(lane, state) for lane in lanes if lane))

    async def _send_lane(self, lane: list[_ItemValues], state: _Round) -> None:
        for chunk in self._chunks(lane):
            if state.transport_errors:  # a request of this round got no verdict: back off, do not burst
                return
            await self._send_chunk(chunk, state)

    async def _request(self, chunk: list[_ItemValues]) -> Reply:
        """One request on its own connection; raises SendError without a usable verdict."""
        count = _count(chunk)
        entries = data_entries_by_item([(values.ident, values.readings) for values in chunk])
        clock_ns = time.time_ns()
        request = request_json(entries, clock_ns // 1_000_000_000, clock_ns % 1_000_000_000)
        payload = frame(request, self.compress)
        self.stats.requests += 1
        self.stats.values_sent += count
        started = time.monotonic()
        try:
            reply = await self.client.send(payload)
        except SendError:
            self.stats.errors += 1
            raise
        if not reply.ok:
            self.stats.errors += 1
            raise SendError(f"server refused the request: {reply.info[:300] or 'no reason given'}")
        if reply.total != count:
            self.stats.errors += 1
            raise SendError(f"server counted {reply.total} values of {count} sent")
        latency = time.monotonic() - started
        self.stats.last_latency = latency
        self.stats.latency_sum += latency
        self.stats.values_processed += reply.processed
        self.stats.values_failed += reply.failed
        return reply

    async def _send_chunk(self, chunk: list[_ItemValues], state: _Round) -> None:
        try:
            reply = await self._request(chunk)
        except SendError as exc:
            state.transport_errors.append(f"zabbix {self.name}: {exc}")
            return
        await self._settle(chunk, reply.failed, state)

    async def _settle(self, chunk: list[_ItemValues], failed: int, state: _Round) -> None:
        """Sort values already sent, of which ``failed`` were refused, into accepted and failed."""
        if failed <= 0:
            for values in chunk:
                self._good.add(values.ident)
                state.delivery.accepted.extend(values.ids)
            return
        if failed >= _count(chunk):
            state.failed.extend(chunk)
            for values in chunk:
                self._good.discard(values.ident)
                state.delivery.retry.update(dict.fromkeys(values.ids, self._failure_reason(values.ident)))
            return
        first, second = _halves(chunk)
        await asyncio.sleep(self.resend_delay)
        try:
            first_failed = (await self._request(first)).failed
            second_failed = failed - first_failed
            if not 0 <= second_failed <= _count(second):
                # The server's view changed between requests (a config sync
                # happened): the first count says nothing about the rest, ask again.
                second_failed = (await self._request(second)).failed
        except SendError as exc:
            state.transport_errors.append(f"zabbix {self.name}: while locating refused values: {exc}")
            return
        await asyncio.gather(
            self._settle(first, first_failed, state), self._settle(second, second_failed, state)
        )

    # -- failures -------------------------------------------------------------
    def _failure_reason(self, ident: Ident) -> str:
        known = self.diagnoser.cached(ident) if self.diagnoser else None
        return f"{NOT_ACCEPTED}: {known}" if known else NOT_ACCEPTED

    def _report_failed(self, failed: list[_ItemValues], batch_len: int) -> None:
        by_host: dict[str, set[str]] = {}
        for host, key in (values.ident for values in failed):
            by_host.setdefault(host, set()).add(key)
        summary = "; ".join(f"{host}: {listing(keys)}" for host, keys in sorted(by_host.items()))
        self._refusals.warning(
            "refused:" + ",".join(sorted(by_host)),
            "zabbix %s: %d of %d values not accepted (kept for retry): %s",
            self.name,
            _count(failed),
            batch_len,
            summary[:2000],
        )
        if self.diagnoser is None:
            return
        samples = {values.ident: values.readings[-1].value for values in failed}
        task = asyncio.get_running_loop().create_task(self.diagnoser.explain(samples))
        # Diagnosis runs beside delivery: a slow API must never hold up the spool.
        self._diagnoses.add(task)
        task.add_done_callback(self._diagnosis_done)

    def _diagnosis_done(self, task: asyncio.Task[None]) -> None:
        self._diagnoses.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("zabbix %s: diagnosis failed: %s", self.name, task.exception())


def _halves(chunk: list[_ItemValues]) -> tuple[list[_ItemValues], list[_ItemValues]]:
    """Split between items (a refused item refuses all its values), or between values of one item."""
    if len(chunk) == 1:
        first, second = chunk[0].split(len(chunk[0].ids) // 2)
        return [first], [second]
    middle = len(chunk) // 2
    return chunk[:middle], chunk[middle:]
