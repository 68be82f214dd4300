"""The spool keeps every reading until acked, across SIGKILL, within its bound."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from trapline.core.model import Discovery, Reading
from trapline.middleware.spool import Spool


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("h", f"k[{i % 7}]", i, 1_700_000_000 + i, i, "V", {"n": str(i)}) for i in range(start, n)]


def test_roundtrip_keeps_every_field(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    items = [*readings(3), Discovery("h", "lld", ({"{#X}": "a"}, {"{#X}": "b"}), 5, 6)]
    spool.put(items, ["zbx"])
    got = [s.item for s in spool.claim("zbx", 10)]
    assert got == items


def test_queues_are_per_destination(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(5), ["a", "b"])
    first_a = spool.claim("a", 10)
    spool.ack(s.id for s in first_a)
    assert spool.depth("a") == 0
    assert spool.depth("b") == 5
    assert [s.item for s in spool.claim("b", 10)] == readings(5)


def test_claim_does_not_remove_until_ack(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(4), ["z"])
    assert len(spool.claim("z", 10)) == 4
    assert len(spool.claim("z", 10)) == 4  # unacked rows are handed out again
    assert spool.depth() == 4


def test_defer_and_first_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(3), ["z"])
    rows = spool.claim("z", 10)
    spool.defer([rows[0].id], time.time() + 3600, refused=True)
    spool.defer([rows[1].id], time.time() + 3600, refused=False)
    due = spool.claim("z", 10)
    assert [s.id for s in due] == [rows[2].id]
    refused = spool.first_refused([r.id for r in rows])
    assert set(refused) == {rows[0].id}
    assert spool.claim("z", 10, now=time.time() + 7200)[0].attempts == 1


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_readings=1000)
    assert spool.put(readings(900), ["z"]) == 0
    assert spool.put(readings(1200, 900), ["z"]) == 200
    assert spool.dropped == 200
    assert spool.depth() == 1000
    kept = spool.claim("z", 5000)
    assert kept[0].item.value == 200 and kept[-1].item.value == 1199


def test_reopen_sees_everything(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(50), ["z"])
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.depth() == 50
    assert [s.item for s in again.claim("z", 100)] == readings(50)


@dataclass
class Recipient:
    name: str
    needs_labels: bool


def test_labels_are_stored_only_for_destinations_that_read_them(tmp_path: Path) -> None:
    class Silent:  # a destination that does not say: it keeps its labels
        name = "silent"

    spool = Spool(tmp_path / "s.db")
    items = readings(3)
    spool.put(items, [Recipient("mqtt", True), Recipient("zbx", False), "by-name", Silent()])
    for keeps in ("mqtt", "by-name", "silent"):
        assert [s.item for s in spool.claim(keeps, 10)] == items
    stripped = [s.item for s in spool.claim("zbx", 10)]
    assert stripped == [Reading(r.host, r.key, r.value, r.clock, r.ns, r.unit, {}) for r in items]
    # In a batch blob each reading's labels are its last field.
    batches = spool._db.execute("SELECT dest, payload FROM batch").fetchall()
    stored = {dest: sum(1 for entry in msgspec.msgpack.decode(blob) if entry[-1]) for dest, blob in batches}
    assert stored == {"mqtt": 3, "by-name": 3, "silent": 3, "zbx": 0}
    # The same once refusals gave every reading a row of its own.
    for dest in stored:
        spool.defer([s.id for s in spool.claim(dest, 10)], time.time() + 60, refused=True)
    rows = dict(spool._db.execute("SELECT dest, count(labels) FROM queue GROUP BY dest").fetchall())
    assert rows == stored


def test_claim_never_sorts_whole_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(20), ["z"])
    ids = [s.id for s in spool.claim("z", 20)]
    spool.defer(ids[:5], time.time() - 1, refused=True)  # refused rows due again: the retry path too
    statements: list[str] = []
    spool._db.set_trace_callback(statements.append)  # the SQL claim runs, values filled in
    assert len(spool.claim("z", 10)) == 10
    spool._db.set_trace_callback(None)
    plans = [
        " ".join(row[3] for row in spool._db.execute("EXPLAIN QUERY PLAN " + sql))
        for sql in statements
        if sql.lstrip().upper().startswith("SELECT")
    ]
    assert len(plans) >= 2
    for plan in plans:
        # Sorting is allowed only over what an index covers (ids), never over the rows.
        assert "TEMP B-TREE" not in plan or "COVERING INDEX" in plan, plan
    assert any("USING INDEX queue_by_dest (dest=? AND next_try=?)" in plan for plan in plans), plans


def test_claim_merges_due_retries_in_id_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(10), ["z"])
    ids = [s.id for s in spool.claim("z", 10)]
    now = time.time()
    spool.defer([ids[1], ids[5]], now - 1, refused=True)  # refused, due again
    spool.defer([ids[3]], now + 3600, refused=True)  # refused, not yet due
    spool.defer([ids[7]], 0.0, refused=False)  # unreachable: due at once
    assert [s.id for s in spool.claim("z", 100, now=now)] == [i for i in ids if i != ids[3]]
    assert [s.id for s in spool.claim("z", 4, now=now)] == [ids[0], ids[1], ids[2], ids[4]]
    assert [s.attempts for s in spool.claim("z", 3, now=now)] == [0, 1, 0]
    assert spool.next_due("z") == 0.0
    spool.ack(i for i in ids if i != ids[3])
    assert spool.next_due("z") == now + 3600
    assert spool.claim("z", 10, now=now) == []


def test_ack_removes_exactly_the_given_ids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(20), ["a", "b"])
    ids = [s.id for s in spool.claim("a", 100)]
    gone = ids[0:3] + ids[4:5] + ids[9:15] + ids[19:]  # runs and single rows, out of order below
    spool.ack(reversed(gone))
    assert [s.id for s in spool.claim("a", 100)] == [i for i in ids if i not in gone]
    assert spool.depth() == 40 - len(gone)
    assert spool.depth("b") == 20


# The schema and rows exactly as versions before the labels change wrote them.
_OLD_SCHEMA = """
CREATE TABLE queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dest TEXT NOT NULL, discovery INTEGER NOT NULL,
    host TEXT NOT NULL, key TEXT NOT NULL, value, clock INTEGER NOT NULL, ns INTEGER NOT NULL,
    unit TEXT NOT NULL, labels TEXT, enqueued REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    first_refused REAL, next_try REAL NOT NULL DEFAULT 0
);
CREATE INDEX queue_by_dest ON queue (dest, next_try, id);
"""


def write_old_spool(path: Path, columns: str, rows: list[tuple[object, ...]], then: str = "") -> None:
    """A spool file as versions before the batch rows wrote it; ``then`` is more SQL before the commit."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_OLD_SCHEMA)
        db.executemany(f"INSERT INTO queue ({columns}) VALUES ({','.join('?' * len(rows[0]))})", rows)
        if then:
            db.execute(then)
        db.commit()


def test_a_spool_of_an_older_version_drains(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    write_old_spool(
        path,
        "dest, discovery, host, key, value, clock, ns, unit, labels, enqueued,"
        " attempts, first_refused, next_try",
        [
            ("zbx", 0, "h", "k[0]", 1.5, 10, 0, "V", '{"pid":"RPM","n":"0"}', 5.0, 0, None, 0),
            ("zbx", 1, "h", "lld", '[{"{#X}":"a"}]', 11, 1, "", None, 5.0, 0, None, 0),
            ("zbx", 0, "h", "k[1]", "x", 12, 2, "", '{"n":"2"}', 5.0, 2, 6.0, 7.0),  # refused twice
        ],
    )
    spool = Spool(path)
    assert spool.depth() == 3
    assert spool.claim("zbx", 10, now=6.5)[-1].item == Discovery("h", "lld", ({"{#X}": "a"},), 11, 1)
    rows = spool.claim("zbx", 10, now=8.0)
    assert [s.item for s in rows] == [
        Reading("h", "k[0]", 1.5, 10, 0, "V", {"pid": "RPM", "n": "0"}),
        Discovery("h", "lld", ({"{#X}": "a"},), 11, 1),
        Reading("h", "k[1]", "x", 12, 2, "", {"n": "2"}),
    ]
    assert rows[2].attempts == 2 and spool.first_refused([rows[2].id]) == {rows[2].id: 6.0}
    spool.put(readings(2), ["zbx"])
    spool.ack(s.id for s in rows)
    assert [s.item for s in spool.claim("zbx", 10)] == readings(2)


def test_old_rows_and_new_batches_share_one_id_order(tmp_path: Path) -> None:
    """A spool of the previous version (rows only) is upgraded in place: old rows first, ids never reused."""
    path = tmp_path / "old.db"
    write_old_spool(
        path,
        "dest, discovery, host, key, value, clock, ns, unit, labels, enqueued",
        [("zbx", 0, "h", f"old[{i}]", i, 10 + i, 0, "", None, 5.0) for i in range(3)],
        then="DELETE FROM queue WHERE key = 'old[2]'",  # acked: its id must not come back
    )
    spool = Spool(path)
    assert spool.depth() == 2
    spool.put(readings(3), ["zbx"])
    rows = spool.claim("zbx", 10, now=0.0)
    assert [s.item.key for s in rows] == ["old[0]", "old[1]", "k[0]", "k[1]", "k[2]"]
    assert [s.id for s in rows] == [1, 2, 4, 5, 6]
    assert spool.claim("zbx", 3, now=0.0) == rows[:3]
    # One old row and one new reading refused: the others go on in id order.
    spool.defer([rows[0].id, rows[3].id], 100.0, refused=True)
    due = spool.claim("zbx", 10, now=50.0)
    assert [s.id for s in due] == [2, 4, 6]
    spool.ack(s.id for s in due)
    later = spool.claim("zbx", 10, now=100.0)
    assert [(s.id, s.attempts) for s in later] == [(1, 1), (5, 1)]
    assert set(spool.first_refused([1, 5])) == {1, 5}
    spool.ack(s.id for s in later)
    assert spool.depth() == 0
    spool.close()
    again = Spool(path)  # emptied and reopened: ids go on
    again.put(readings(1), ["zbx"])
    assert [s.id for s in again.claim("zbx", 10)] == [7]


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from trapline.core.model import Reading
    from trapline.middleware.spool import Spool
    spool = Spool(Path(sys.argv[1]))
    n = 0
    while True:
        spool.put([Reading("h", "seq", n + i, 1, 0) for i in range(100)], ["z"])
        n += 100
        print(n, flush=True)
    """
)


def test_committed_readings_survive_sigkill(tmp_path: Path) -> None:
    """Every batch the writer reported as committed is there after a SIGKILL mid-write."""
    db = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = 0
    for line in proc.stdout:
        committed = int(line)
        if committed >= 20_000:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spool = Spool(db)
    values = sorted(int(s.item.value) for s in spool.claim("z", 1_000_000))
    assert len(values) >= committed
    # No gap and no half-written batch: a contiguous run of whole batches.
    assert values == list(range(len(values)))
    assert len(values) % 100 == 0
