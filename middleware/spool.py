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

Bound: at most ``max_readings`` rows.  When a new batch would exceed it, the
oldest rows are deleted (fresh data matters more to monitoring than old), each
one counted in ``dropped`` and logged by the pipeline.

Labels are stored only for destinations that read them (``needs_labels``, e.g.
MQTT); a Zabbix queue gets its readings back with empty labels.  Rows written
by older versions still carry their labels and decode as before.

Layout: one index ``(dest, next_try, id)``.  Rows that were never refused have
``next_try = 0`` (a put, or a deferral while the destination was unreachable),
so that slice of the index is already in id order: ``claim`` walks it without
sorting and merges in the few refused rows that are due again.  ``next_due`` is
the minimum of the same index.  Spool files of older versions have exactly
this layout.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Protocol

from trapline.middleware.model import Discovery, Item, Reading
from trapline.middleware.plugin import Spooled

_SCHEMA = """
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
"""

_COLUMNS = "id, discovery, host, key, value, clock, ns, unit, labels, enqueued, attempts"
# Rows never refused, oldest first: the index walks them in id order, no sort.
_CLAIM_WAITING = f"SELECT {_COLUMNS} FROM queue WHERE dest = ? AND next_try = 0 ORDER BY id LIMIT ?"
# Refused rows whose retry time has come.  Only their ids are sorted (the index covers them).
_DUE_RETRIES = "SELECT id FROM queue WHERE dest = ? AND next_try > 0 AND next_try <= ? ORDER BY id LIMIT ?"
_ROWS_BY_ID = f"SELECT {_COLUMNS} FROM queue WHERE id IN (SELECT value FROM json_each(?))"

# One encoder for every row: json.dumps with options builds a new encoder per call.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode

_Row = tuple[int, int, str, str, object, int, int, str, str | None, float, int]
_row_id = itemgetter(0)


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


class Spool:
    def __init__(self, path: Path, max_readings: int = 1_000_000, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"spool sync must be 'full' or 'normal', not {sync!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_readings = max_readings
        self.dropped = 0
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per group.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        # Builds with SECURE_DELETE (Debian's) zero every deleted row and rewrite every
        # freed page: that doubled the cost of ack and the writes to flash.  FAST still
        # zeroes deleted rows in pages that are written anyway.
        self._db.execute("PRAGMA secure_delete=FAST")
        self._db.executescript(_SCHEMA)
        self._depth: int = self._db.execute("SELECT count(*) FROM queue").fetchone()[0]

    # -- writing -------------------------------------------------------------
    def put(self, items: Sequence[Item], destinations: Sequence[str | Recipient]) -> int:
        """Append items for every destination in one transaction; returns rows dropped by the bound.

        A destination given by name alone gets the readings' labels stored, as does one
        that does not say whether it ``needs_labels``: nothing is left out unless asked.
        """
        if not items or not destinations:
            return 0
        now = time.time()
        rows = [
            _encode(item, name, now, labelled)
            for name, labelled in map(_queue_of, destinations)
            for item in items
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO queue (dest, discovery, host, key, value, clock, ns, unit, labels, enqueued)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            self._depth += len(rows)
            dropped = self._enforce_bound()
        return dropped

    def _enforce_bound(self) -> int:
        excess = self._depth - self.max_readings
        if excess <= 0:
            return 0
        self._db.execute(
            "DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT ?)", (excess,)
        )
        self._depth -= excess
        self.dropped += excess
        return excess

    def ack(self, ids: Iterable[int]) -> None:
        """The destination accepted these rows: remove them."""
        self._delete(ids)

    def reject(self, ids: Iterable[int]) -> None:
        """Give up on these rows (the pipeline has counted and logged them)."""
        self._delete(ids)

    def _delete(self, ids: Iterable[int]) -> None:
        id_list = list(ids)
        if not id_list:
            return
        with self._transaction():
            cur = self._db.execute(
                "DELETE FROM queue WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(id_list),)
            )
            self._depth -= cur.rowcount

    def defer(self, ids: Iterable[int], next_try: float, refused: bool) -> None:
        """Retry these rows at ``next_try``; ``refused`` marks a refusal by the destination."""
        id_list = json.dumps(list(ids))
        now = time.time()
        # Due at once (or earlier) means waiting again, in id order among the unrefused rows.
        next_try = max(next_try, 0.0)
        with self._transaction():
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
        """When each of these rows was first refused (rows never refused are absent)."""
        rows = self._db.execute(
            "SELECT id, first_refused FROM queue WHERE first_refused IS NOT NULL"
            " AND id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        )
        return {row[0]: row[1] for row in rows}

    # -- reading -------------------------------------------------------------
    def claim(self, dest: str, limit: int, now: float | None = None) -> list[Spooled]:
        """The oldest rows due for ``dest``; they stay spooled until acked."""
        due = time.time() if now is None else now
        rows: list[_Row] = self._db.execute(_CLAIM_WAITING, (dest, limit)).fetchall()
        retries = [rid for (rid,) in self._db.execute(_DUE_RETRIES, (dest, due, limit))]
        if retries:
            rows += self._db.execute(_ROWS_BY_ID, (json.dumps(retries),)).fetchall()
            rows = sorted(rows, key=_row_id)[:limit]
        return [_decode(row) for row in rows]

    def next_due(self, dest: str) -> float | None:
        row = self._db.execute("SELECT min(next_try) FROM queue WHERE dest = ?", (dest,)).fetchone()
        value: float | None = row[0]
        return value

    def depth(self, dest: str | None = None) -> int:
        if dest is None:
            return self._depth
        count: int = self._db.execute("SELECT count(*) FROM queue WHERE dest = ?", (dest,)).fetchone()[0]
        return count

    def stats(self) -> SpoolStats:
        oldest = self._db.execute("SELECT min(enqueued) FROM queue").fetchone()[0]
        return SpoolStats(self._depth, oldest)

    def close(self) -> None:
        self._db.close()

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
    """(queue name, whether its rows keep labels)."""
    if isinstance(destination, str):
        return destination, True
    return destination.name, bool(getattr(destination, "needs_labels", True))


def _encode(item: Item, dest: str, now: float, labelled: bool) -> tuple[object, ...]:
    if isinstance(item, Discovery):
        rows = _compact_json([dict(r) for r in item.rows])
        return (dest, 1, item.host, item.rule, rows, item.clock, item.ns, "", None, now)
    labels = _compact_json(dict(item.labels)) if labelled and item.labels else None
    return (dest, 0, item.host, item.key, item.value, item.clock, item.ns, item.unit, labels, now)


def _decode(row: _Row) -> Spooled:
    rid, is_discovery, host, key, value, clock, ns, unit, labels, enqueued, attempts = row
    item: Item
    if is_discovery:
        item = Discovery(host, key, tuple(json.loads(str(value))), clock, ns)
    else:
        assert isinstance(value, (str, int, float))
        item = Reading(host, key, value, clock, ns, unit, json.loads(labels) if labels else {})
    return Spooled(rid, item, enqueued, attempts)
