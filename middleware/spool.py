"""The durable spool: SQLite in WAL mode, one queue per destination.

Delivery is at-least-once: a reading leaves the spool only after its
destination accepted it (``ack``).  A crash between "accepted" and "ack"
means the reading is sent again; Zabbix keeps one history row per
(item, clock, ns), so the re-send does not double it.

fsync policy (``[spool] sync``):

* ``full`` (default): every commit fsyncs the WAL.  A reading committed to
  the spool survives SIGKILL *and* power loss.  The pipeline commits in
  groups (every ``flush_interval``), so at most that window of readings that
  were still in memory can be lost on a power cut.
* ``normal``: commits survive SIGKILL; a power cut may lose the last few
  commits.  Less flash wear on an SD card.

Bound: at most ``max_readings`` readings.  When a put would exceed it, the
oldest readings are dropped (fresh data matters more to monitoring than old),
each one counted in ``dropped`` and logged by the pipeline.

Labels are stored only for destinations that read them (``needs_labels``, e.g.
MQTT); a Zabbix queue gets its readings back with empty labels.  Rows written
by older versions still carry their labels and decode as before.

Layout.  Every change is one transaction.  A ``put`` stores its readings as
``batch`` rows, one per destination and up to ``_BATCH_READINGS`` readings,
each a single msgpack blob: SQLite's cost is per row, so a row per reading
made it the dearest stage of a large reading's path.  (msgpack, not JSON: it
copies strings as they are, where JSON escapes every quote of a JSON value;
half the time to encode a Mist reading, a fifth to decode.)  A batch's readings
have consecutive spool ids from the row's ``id`` on.  ``batch_progress`` counts
the readings at the front of a batch that have left it (acked, rejected, dropped
by the bound); it is a table of its own because changing a column of the batch
row would make SQLite write its whole blob again.  So the usual round - claim in
id order, ack what was claimed, the last batch perhaps only in part - touches
one small row per batch and never rewrites a blob.  Anything else (part of a batch refused or deferred, an ack
with gaps) moves the readings concerned, and those before them in the batch, to
per-reading ``queue`` rows in the same transaction (the batch keeps what
follows); there each keeps its own ``next_try``, ``attempts`` and
``first_refused``.  ``claim`` merges both tables in id order.

``queue`` has one index ``(dest, next_try, id)``.  Rows that were never refused
have ``next_try = 0`` (unreachable destinations defer to 0), so that slice of
the index is already in id order: ``claim`` walks it without sorting and merges
in the few refused rows that are due again.  Batch readings are never refused:
they are always due.

Spool ids come from one counter, the ``queue`` row of ``sqlite_sequence`` (the
record AUTOINCREMENT keeps), advanced in each put's transaction: ids are never
reused, also after the spool was emptied, and a version that knows only
``queue`` would continue after them.  Files of older versions hold only
``queue`` rows: they are read as they are, the new tables are added on open.

Compression.  A batch blob of ``_COMPRESS_FROM`` bytes or more is stored as
``_LZ4_MARKER`` + an lz4 block, if that saves at least an eighth: a Mist reading
(~1.6 KB of JSON) then costs a fraction of a page to write to the WAL, to
checkpoint and to read back, where the page-sized I/O was most of the spool's
cost.  Plain blobs (small batches, older versions) start with a msgpack array
byte, never the marker.

Damage.  A batch blob that no longer decodes (a damaged page, a bad sector)
would stop its destination for good if ``claim`` raised on it at every round.
Instead ``claim`` moves the row, bytes untouched, to ``batch_unreadable`` (for
a person to look at), leaves it out of the depth, and counts its readings in
``unreadable``, which the pipeline reports as rejected; the readings behind it
keep flowing.  A ``queue`` row whose columns no longer make a reading or a
discovery is moved to ``queue_unreadable`` the same way.
"""

from __future__ import annotations

import json
import sqlite3
import time
from bisect import bisect_left
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import count, repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, Protocol, cast

import lz4.block
import msgspec

from trapline.core.model import Discovery, Item, Reading
from trapline.core.plugin import Spooled

# Readings per batch row: large enough that SQLite's per-row cost vanishes, small
# enough that a claim splitting a batch decodes little beyond its limit and that a
# refusal moves few readings to the queue.
_BATCH_READINGS = 1000

# executescript runs each statement in its own transaction unless told otherwise;
# one transaction makes the upgrade of an old file all or nothing.
_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dest TEXT NOT NULL,
    discovery INTEGER NOT NULL,
    host TEXT NOT NULL,
    key TEXT NOT NULL,
    value,
    clock INTEGER NOT NULL,
    ns INTEGER NOT NULL,
    unit TEXT NOT NULL,
    labels TEXT,
    enqueued REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_refused REAL,
    next_try REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_by_dest ON queue (dest, next_try, id);
CREATE TABLE IF NOT EXISTS batch (
    id INTEGER PRIMARY KEY,
    dest TEXT NOT NULL,
    size INTEGER NOT NULL,
    enqueued REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_by_dest ON batch (dest);
CREATE TABLE IF NOT EXISTS batch_progress (id INTEGER PRIMARY KEY, done INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batch_unreadable (
    id INTEGER PRIMARY KEY,
    dest TEXT NOT NULL,
    size INTEGER NOT NULL,
    done INTEGER NOT NULL,
    found REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_unreadable (
    id INTEGER PRIMARY KEY,
    dest TEXT,
    discovery,
    host,
    key,
    value,
    clock,
    ns,
    unit,
    labels,
    enqueued,
    attempts,
    found REAL NOT NULL
);
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'queue', coalesce(max(id), 0) FROM queue
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'queue');
COMMIT;
"""
# The payload is the last column: reading the others never touches its overflow pages.

_COLUMNS = "id, discovery, host, key, value, clock, ns, unit, labels, enqueued, attempts"
# Rows never refused, oldest first: the index walks them in id order, no sort.
_CLAIM_WAITING = f"SELECT {_COLUMNS} FROM queue WHERE dest = ? AND next_try = 0 ORDER BY id LIMIT ?"
# Refused rows whose retry time has come.  Only their ids are sorted (the index covers them).
_DUE_RETRIES = "SELECT id FROM queue WHERE dest = ? AND next_try > 0 AND next_try <= ? ORDER BY id LIMIT ?"
_ROWS_BY_ID = f"SELECT {_COLUMNS} FROM queue WHERE id IN (SELECT value FROM json_each(?))"
_INSERT_ROW = (
    "INSERT INTO queue (id, dest, discovery, host, key, value, clock, ns, unit, labels, enqueued)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)

# (first id, readings gone from its front, enqueued, payload) of a destination's batches; the
# index on dest holds them in rowid order, so no sort.
_CLAIM_BATCHES = (
    "SELECT b.id, coalesce(p.done, 0), b.enqueued, b.payload FROM batch b"
    " LEFT JOIN batch_progress p ON p.id = b.id WHERE b.dest = ? ORDER BY b.id"
)
_SPANS = "SELECT b.id, b.size, coalesce(p.done, 0) FROM batch b LEFT JOIN batch_progress p ON p.id = b.id"
# Batches that may hold ids from ?1 to ?2: the one starting at or before ?1, and those after it.
_SPANS_COVERING = (
    _SPANS + " WHERE b.id BETWEEN coalesce((SELECT max(id) FROM batch WHERE id <= ?1), ?1) AND ?2"
    " ORDER BY b.id"
)
_LIVE_IN_BATCHES = (
    "SELECT coalesce(sum(b.size - coalesce(p.done, 0)), 0)"
    " FROM batch b LEFT JOIN batch_progress p ON p.id = b.id"
)
_ADVANCE_IDS = "UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'queue' RETURNING seq"
_SET_PROGRESS = "INSERT OR REPLACE INTO batch_progress (id, done) VALUES (?, ?)"

# One encoder for every row: json.dumps with options builds a new encoder per call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode

_Row = tuple[int, int, str, str, object, int, int, str, str | None, float, int]
_row_id = itemgetter(0)
_spooled_id = attrgetter("id")

# A batch entry is a Reading's fields in order (7) or a Discovery's (5): the length tells them apart.
_READING_FIELDS = 7
_SQLITE_INT_MIN, _SQLITE_INT_MAX = -(2**63), 2**63 - 1
_NO_LABELS: Mapping[str, str] = {}


def _plain(obj: object) -> object:
    """msgpack knows dicts, not every Mapping (labels and discovery rows may be any)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise NotImplementedError


# A batch blob of this many bytes or more is stored lz4-compressed, behind _LZ4_MARKER: Mist
# readings are ~1.6 KB of JSON each, and the spool's cost was mostly page-sized I/O (WAL
# writes, checkpoint, reading the blob back).  Below it (a few small OBD readings) the
# blob fits a page anyway and the call would not pay.
_COMPRESS_FROM = 2048
# A plain blob is a msgpack array: its first byte is 0x90-0x9f, 0xdc or 0xdd, never this.
_LZ4_MARKER = b"\x04"
# LZ4 expands by at most ~255x: a stated size beyond that is a corrupt header, not a huge batch.
_LZ4_MAX_RATIO = 255
_SIZE_HEADER = 4  # lz4.block's store_size prefix: the plain size, little-endian


class CorruptBatch(msgspec.DecodeError):
    """A compressed batch blob that does not decompress: it fails as a damaged msgpack blob does."""


_pack = msgspec.msgpack.Encoder(enc_hook=_plain).encode
_unpack = msgspec.msgpack.Decoder().decode
# A batch of readings only (the usual one) decodes straight into Readings (array_like
# Structs): no list per entry, no Python call per reading.
_unpack_readings = msgspec.msgpack.Decoder(list[Reading]).decode


class Recipient(Protocol):
    """What ``put`` needs to know of a destination; every ``Destination`` is one."""

    @property
    def name(self) -> str: ...

    @property
    def needs_labels(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class SpoolStats:
    depth: int
    oldest_enqueued: float | None


@dataclass(frozen=True, slots=True)
class _Span:
    """The readings a batch row still holds: ids ``start`` up to (excluding) ``end``."""

    id: int
    done: int
    start: int
    end: int


class Spool:
    def __init__(self, path: Path, max_readings: int = 1_000_000, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"spool sync must be 'full' or 'normal', not {sync!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_readings = max_readings
        self.dropped = 0
        self.unreadable = 0  # readings set aside as damaged (batches and rows), until take_unreadable()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per group.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        # Builds with SECURE_DELETE (Debian's) zero every deleted row and rewrite every
        # freed page: that doubled the cost of ack and the writes to flash.  FAST still
        # zeroes deleted rows in pages that are written anyway.
        self._db.execute("PRAGMA secure_delete=FAST")
        self._db.executescript(_SCHEMA)
        queued: int = self._db.execute("SELECT count(*) FROM queue").fetchone()[0]
        batched: int = self._db.execute(_LIVE_IN_BATCHES).fetchone()[0]
        self._depth = queued + batched

    # -- writing -------------------------------------------------------------
    def put(self, items: Sequence[Item], destinations: Sequence[str | Recipient]) -> int:
        """Append items for every destination in one transaction; returns readings dropped by the bound.

        A destination given by name alone gets the readings' labels stored, as does one
        that does not say whether it ``needs_labels``: nothing is left out unless asked.
        """
        if not items or not destinations:
            return 0
        now = time.time()
        queues = [_queue_of(d) for d in destinations]
        starts = range(0, len(items), _BATCH_READINGS)
        # Encoded once per kind of queue, not per destination.
        payloads = {
            labelled: [_pack_batch(items[s : s + _BATCH_READINGS], labelled) for s in starts]
            for labelled in {labelled for _, labelled in queues}
        }
        total = len(items) * len(queues)
        with self._transaction():
            (last_id,) = self._db.execute(_ADVANCE_IDS, (total,)).fetchall()[0]
            first_id = last_id - total + 1
            # Each queue gets the next len(items) ids; its batch rows start every _BATCH_READINGS.
            rows = [
                (first_id + q * len(items) + s, name, min(_BATCH_READINGS, len(items) - s), now, payload)
                for q, (name, labelled) in enumerate(queues)
                for s, payload in zip(starts, payloads[labelled], strict=True)
            ]
            self._db.executemany(
                "INSERT INTO batch (id, dest, size, enqueued, payload) VALUES (?,?,?,?,?)", rows
            )
            dropped = self._enforce_bound(self._depth + total)
        self._depth += total - dropped
        self.dropped += dropped
        return dropped

    def _enforce_bound(self, depth: int) -> int:
        """Drop the oldest readings beyond ``max_readings``, whichever table holds them."""
        excess = depth - self.max_readings
        if excess <= 0:
            return 0
        oldest = self._db.execute("SELECT id FROM queue ORDER BY id LIMIT ?", (excess,))
        queue_ids = [rid for (rid,) in oldest]
        taken = 0  # queue_ids[:taken] go
        left = excess
        whole: list[int] = []
        trimmed: tuple[int, int] | None = None
        spans = self._spans(_SPANS + " ORDER BY b.id", ())
        for span in spans:
            while left and taken < len(queue_ids) and queue_ids[taken] < span.start:
                taken += 1
                left -= 1
            if not left:
                break
            if span.end - span.start <= left:
                whole.append(span.id)
                left -= span.end - span.start
            else:
                trimmed = (span.id, span.done + left)
                left = 0
                break
        spans.close()  # the newer batches are never read
        taken += left  # what the batches could not give comes from the queue's oldest
        self._delete_rows(queue_ids[:taken])
        self._delete_batches(whole)
        if trimmed is not None:
            self._db.execute(_SET_PROGRESS, trimmed)
        return excess

    def ack(self, ids: Iterable[int]) -> None:
        """The destination accepted these readings: remove them."""
        self._delete(ids)

    def reject(self, ids: Iterable[int]) -> None:
        """Give up on these readings (the pipeline has counted and logged them)."""
        self._delete(ids)

    def _delete(self, ids: Iterable[int]) -> None:
        wanted = sorted(set(ids))
        if not wanted:
            return
        with self._transaction():
            removed = 0
            elsewhere: list[int] = []  # ids no batch holds: queue rows (or gone already)
            done_upto = 0  # wanted[:done_upto] are sorted out
            fronts: list[tuple[_Span, int]] = []  # (batch, last id that leaves): nothing stays behind
            gapped: list[tuple[_Span, int, set[int]]] = []  # the same, but readings before it stay
            for span in self._spans(_SPANS_COVERING, (wanted[0], wanted[-1])):
                first = bisect_left(wanted, span.start, done_upto)
                past = bisect_left(wanted, span.end, first)
                hits = past - first
                if not hits:
                    continue
                elsewhere += wanted[done_upto:first]
                done_upto = past
                removed += hits
                last = wanted[past - 1]
                if last - span.start + 1 == hits:  # sorted, unique: exactly the front
                    fronts.append((span, last))
                else:
                    gapped.append((span, last, set(wanted[first:past])))
            elsewhere += wanted[done_upto:]
            self._advance(fronts)
            for span, last, leaving in gapped:
                self._split_front(span, last, leaving)
            removed += self._delete_rows(elsewhere)
        self._depth -= removed

    def _delete_rows(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        cur = self._db.execute(
            "DELETE FROM queue WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)
        )
        return cur.rowcount

    def _delete_batches(self, batch_ids: Sequence[int]) -> None:
        if not batch_ids:
            return
        listed = json.dumps(batch_ids)
        self._db.execute("DELETE FROM batch WHERE id IN (SELECT value FROM json_each(?))", (listed,))
        self._db.execute("DELETE FROM batch_progress WHERE id IN (SELECT value FROM json_each(?))", (listed,))

    def _advance(self, fronts: Sequence[tuple[_Span, int]]) -> None:
        """The readings of each batch up to the given id have left it: move its front, or drop it."""
        self._delete_batches([span.id for span, last in fronts if last + 1 == span.end])
        self._db.executemany(
            _SET_PROGRESS, [(span.id, last + 1 - span.id) for span, last in fronts if last + 1 < span.end]
        )

    def _split_front(self, span: _Span, last: int, leaving: set[int]) -> None:
        """A batch's readings up to id ``last`` get queue rows of their own, except those ``leaving``
        the spool; the rest stays in the batch."""
        dest, enqueued, payload = self._db.execute(
            "SELECT dest, enqueued, payload FROM batch WHERE id = ?", (span.id,)
        ).fetchone()
        items = _unpack_batch(payload)[span.done : last + 1 - span.id]
        self._db.executemany(
            _INSERT_ROW,
            [
                (rid, *_encode(item, dest, enqueued))
                for rid, item in zip(count(span.start), items)
                if rid not in leaving
            ],
        )
        self._advance([(span, last)])

    def defer(self, ids: Iterable[int], next_try: float, refused: bool) -> None:
        """Retry these readings at ``next_try``; ``refused`` marks a refusal by the destination."""
        wanted = sorted(set(ids))
        if not wanted:
            return
        id_list = json.dumps(wanted)
        now = time.time()
        # Due at once (or earlier) means waiting again, in id order among the unrefused rows.
        next_try = max(next_try, 0.0)
        with self._transaction():
            if refused or next_try > 0:
                # Batch readings wait with next_try = 0 and no attempts: only these
                # changes need rows of their own (and so the readings before them in
                # the batch, which keeps only what follows).
                touched = [
                    (span, wanted[past - 1])
                    for span in self._spans(_SPANS_COVERING, (wanted[0], wanted[-1]))
                    if (past := bisect_left(wanted, span.end)) and wanted[past - 1] >= span.start
                ]
                for span, last in touched:
                    self._split_front(span, last, set())
            if refused:
                self._db.execute(
                    "UPDATE queue SET attempts = attempts + 1, next_try = ?,"
                    " first_refused = coalesce(first_refused, ?)"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (next_try, now, id_list),
                )
            else:
                self._db.execute(
                    "UPDATE queue SET next_try = ? WHERE id IN (SELECT value FROM json_each(?))",
                    (next_try, id_list),
                )

    def first_refused(self, ids: Iterable[int]) -> dict[int, float]:
        """When each of these readings was first refused (readings never refused are absent)."""
        rows = self._db.execute(
            "SELECT id, first_refused FROM queue WHERE first_refused IS NOT NULL"
            " AND id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        )
        return {row[0]: row[1] for row in rows}

    # -- reading -------------------------------------------------------------
    def claim(self, dest: str, limit: int, now: float | None = None) -> list[Spooled]:
        """The oldest readings due for ``dest``; they stay spooled until acked."""
        due = time.time() if now is None else now
        rows: list[_Row] = self._db.execute(_CLAIM_WAITING, (dest, limit)).fetchall()
        retries = [rid for (rid,) in self._db.execute(_DUE_RETRIES, (dest, due, limit))]
        if retries:
            rows += self._db.execute(_ROWS_BY_ID, (json.dumps(retries),)).fetchall()
            rows = sorted(rows, key=_row_id)[:limit]
        batched = self._claim_batches(dest, limit)
        if not rows:
            return batched
        queued: list[Spooled] = []
        damaged: list[int] = []
        for row in rows:
            try:
                queued.append(_decode(row))
            except (ValueError, TypeError, RecursionError):
                damaged.append(row[0])
        if damaged:
            self._set_aside_rows(damaged)
        if not batched:
            return queued
        return sorted(queued + batched, key=_spooled_id)[:limit]

    def _claim_batches(self, dest: str, limit: int) -> list[Spooled]:
        claimed: list[Spooled] = []
        damaged: list[int] = []
        cur = self._db.execute(_CLAIM_BATCHES, (dest,))
        # Stop reading at the limit: later batches' blobs are never loaded.
        for batch_id, done, enqueued, payload in cur:
            try:
                items = _unpack_batch(payload)[done : done + limit - len(claimed)]
            except msgspec.DecodeError:
                damaged.append(batch_id)
                continue
            claimed += map(Spooled, count(batch_id + done), items, repeat(enqueued), repeat(0))
            if len(claimed) >= limit:
                break
        cur.close()
        if damaged:
            self._set_aside(damaged)
        return claimed

    def _set_aside(self, batch_ids: list[int]) -> None:
        """Move batches whose blob does not decode to batch_unreadable; their readings count as lost."""
        listed = json.dumps(batch_ids)
        with self._transaction():
            self._db.execute(
                "INSERT INTO batch_unreadable (id, dest, size, done, found, payload)"
                " SELECT b.id, b.dest, b.size, coalesce(p.done, 0), ?, b.payload FROM batch b"
                " LEFT JOIN batch_progress p ON p.id = b.id WHERE b.id IN (SELECT value FROM json_each(?))",
                (time.time(), listed),
            )
            lost: int = self._db.execute(
                "SELECT coalesce(sum(size - done), 0) FROM batch_unreadable"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (listed,),
            ).fetchone()[0]
            self._delete_batches(batch_ids)
        self._depth -= lost
        self.unreadable += lost

    def _set_aside_rows(self, ids: list[int]) -> None:
        """Move queue rows that do not decode to queue_unreadable; each counts as one lost reading."""
        listed = json.dumps(ids)
        with self._transaction():
            self._db.execute(
                "INSERT INTO queue_unreadable (id, dest, discovery, host, key, value, clock, ns, unit,"
                " labels, enqueued, attempts, found) SELECT id, dest, discovery, host, key, value, clock,"
                " ns, unit, labels, enqueued, attempts, ? FROM queue"
                " WHERE id IN (SELECT value FROM json_each(?))",
                (time.time(), listed),
            )
            moved = self._delete_rows(ids)
        self._depth -= moved
        self.unreadable += moved

    def take_unreadable(self) -> int:
        """Readings set aside as unreadable since the last call."""
        lost, self.unreadable = self.unreadable, 0
        return lost

    def next_due(self, dest: str) -> float | None:
        if self._db.execute("SELECT 1 FROM batch WHERE dest = ? LIMIT 1", (dest,)).fetchone():
            return 0.0  # batch readings are always due
        row = self._db.execute("SELECT min(next_try) FROM queue WHERE dest = ?", (dest,)).fetchone()
        value: float | None = row[0]
        return value

    def depth(self, dest: str | None = None) -> int:
        if dest is None:
            return self._depth
        queued: int = self._db.execute("SELECT count(*) FROM queue WHERE dest = ?", (dest,)).fetchone()[0]
        batched: int = self._db.execute(_LIVE_IN_BATCHES + " WHERE b.dest = ?", (dest,)).fetchone()[0]
        return queued + batched

    def stats(self) -> SpoolStats:
        oldest = self._db.execute(
            "SELECT min(e) FROM (SELECT min(enqueued) AS e FROM queue"
            " UNION ALL SELECT min(enqueued) FROM batch)"
        ).fetchone()[0]
        return SpoolStats(self._depth, oldest)

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        self._db.close()

    def _spans(self, sql: str, params: tuple[int, ...]) -> Generator[_Span, None, None]:
        """Batch rows as spans, read as needed: finish or close the iteration before writing."""
        cur = self._db.execute(sql, params)
        try:
            for batch_id, size, done in cur:
                yield _Span(batch_id, done, batch_id + done, batch_id + size)
        finally:
            cur.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _queue_of(destination: str | Recipient) -> tuple[str, bool]:
    """(queue name, whether its readings keep labels)."""
    if isinstance(destination, str):
        return destination, True
    return destination.name, bool(getattr(destination, "needs_labels", True))


def _pack_batch(items: Sequence[Item], labelled: bool) -> bytes:
    """Each item as the array of its fields (Readings and Discoveries are array_like Structs),
    compressed when large enough (``_COMPRESS_FROM``) and when that makes it clearly smaller."""
    if labelled:
        plain = _pack(items)
    else:
        plain = _pack(
            [
                (item.host, item.key, item.value, item.clock, item.ns, item.unit, _NO_LABELS)
                if isinstance(item, Reading) and item.labels
                else item
                for item in items
            ]
        )
    if len(plain) < _COMPRESS_FROM:
        return plain
    packed = _LZ4_MARKER + lz4.block.compress(plain)
    # A saving under an eighth (already compressed or random values) is not worth decompressing.
    return packed if len(packed) * 8 < len(plain) * 7 else plain


def _decompress(payload: bytes) -> bytes:
    stated = int.from_bytes(payload[1 : 1 + _SIZE_HEADER], "little")
    if len(payload) <= 1 + _SIZE_HEADER or stated > _LZ4_MAX_RATIO * len(payload):
        raise CorruptBatch(f"compressed batch of {len(payload)} bytes states {stated} bytes")
    try:
        plain: bytes = lz4.block.decompress(memoryview(payload)[1:])
    except lz4.block.LZ4BlockError as exc:
        raise CorruptBatch(f"compressed batch of {len(payload)} bytes: {exc}") from exc
    return plain


def _unpack_batch(payload: bytes) -> list[Item]:
    if payload[:1] == _LZ4_MARKER:  # blobs of older versions are plain msgpack
        payload = _decompress(payload)
    try:
        return cast(list[Item], _unpack_readings(payload))
    except msgspec.ValidationError:  # the batch holds a discovery: its rows are no reading's value
        return [_unpack_item(entry) for entry in _unpack(payload)]


def _unpack_item(entry: list[Any]) -> Item:
    if len(entry) == _READING_FIELDS:
        return Reading(*entry)
    host, rule, rows, clock, ns = entry
    return Discovery(host, rule, tuple(rows), clock, ns)


def _encode(item: Item, dest: str, enqueued: float) -> tuple[object, ...]:
    """A queue row's columns; labels are stored when the item has them (put left them out where unread)."""
    if isinstance(item, Discovery):
        rows = _compact_json([dict(r) for r in item.rows])
        return (dest, 1, item.host, item.rule, rows, item.clock, item.ns, "", None, enqueued)
    labels = _compact_json(dict(item.labels)) if item.labels else None
    value: object = item.value
    if isinstance(value, int) and not _SQLITE_INT_MIN <= value <= _SQLITE_INT_MAX:
        value = str(value).encode()  # a batch holds up to 2**64 - 1 (a u64 counter); SQLite does not
    return (dest, 0, item.host, item.key, value, item.clock, item.ns, item.unit, labels, enqueued)


def _decode(row: _Row) -> Spooled:
    """The reading or discovery of a queue row; ValueError when its columns are damaged."""
    rid, is_discovery, host, key, value, clock, ns, unit, labels, enqueued, attempts = row
    if not (type(host) is str and type(key) is str and type(clock) is int and type(ns) is int):
        raise ValueError("queue row with damaged columns")
    item: Item
    if is_discovery:
        rows = json.loads(str(value))
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("queue row with damaged discovery rows")
        item = Discovery(host, key, tuple(rows), clock, ns)
    else:
        if isinstance(value, bytes):  # an int beyond SQLite's, as _encode keeps it
            value = int(value)
        decoded = json.loads(labels) if labels else {}
        if not isinstance(value, str | int | float) or not isinstance(decoded, dict) or type(unit) is not str:
            raise ValueError("queue row with damaged value, unit or labels")
        item = Reading(host, key, value, clock, ns, unit, decoded)
    return Spooled(rid, item, enqueued, attempts)
