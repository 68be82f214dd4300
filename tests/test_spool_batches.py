"""Batch rows in the spool: the usual round stays on them, everything else still holds."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trapline.core.model import Discovery, Item, Reading
from trapline.core.plugin import Spooled
from trapline.middleware import spool as spool_module
from trapline.middleware.spool import Spool


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("h", f"k[{i % 7}]", i, 1_700_000_000 + i, i, "V", {"n": str(i)}) for i in range(start, n)]


def ids(rows: list[Spooled]) -> list[int]:
    return [s.id for s in rows]


def values(rows: list[Spooled]) -> list[object]:
    return [s.item.value for s in rows if isinstance(s.item, Reading)]


def queue_rows(spool: Spool) -> int:
    count: int = spool._db.execute("SELECT count(*) FROM queue").fetchone()[0]
    return count


def test_a_claim_limit_splits_a_batch_acked_in_two_claims(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(10), ["z"])
    first = spool.claim("z", 4)
    assert values(first) == [0, 1, 2, 3]
    spool.ack(ids(first))
    second = spool.claim("z", 100)
    assert values(second) == list(range(4, 10))
    assert ids(first) + ids(second) == sorted(set(ids(first) + ids(second)))
    spool.ack(ids(second))
    assert spool.depth() == 0 and spool.claim("z", 100) == []
    # The usual round never needed a row per reading.
    assert queue_rows(spool) == 0


def test_partial_refusal_of_a_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(10), ["z"])
    claimed = spool.claim("z", 6)
    refused = [claimed[1].id, claimed[4].id]
    spool.ack(s.id for s in claimed if s.id not in refused)
    before = time.time()
    spool.defer(refused, before + 60, refused=True)
    # The accepted are gone, the refused wait, the unclaimed rest is due as before.
    assert values(spool.claim("z", 10, now=before)) == [6, 7, 8, 9]
    assert queue_rows(spool) == 2  # only the refused needed rows of their own
    assert spool.depth("z") == 6
    retried = spool.claim("z", 10, now=before + 61)
    assert values(retried) == [1, 4, 6, 7, 8, 9]
    assert [s.attempts for s in retried] == [1, 1, 0, 0, 0, 0]
    first = spool.first_refused(refused)
    assert set(first) == set(refused) and all(before <= t <= time.time() for t in first.values())
    spool.defer(refused, before + 120, refused=True)  # refused again: attempts grow, the first time stays
    assert [s.attempts for s in spool.claim("z", 2, now=before + 121)] == [2, 2]
    assert spool.first_refused(refused) == first


def test_a_u64_value_keeps_its_value_in_a_row_of_its_own(tmp_path: Path) -> None:
    """SQLite integers stop at 2**63 - 1; a batch holds a u64 counter, and so must a refused reading."""
    spool = Spool(tmp_path / "s.db")
    big = [Reading("h", "c", 2**64 - 1, 1), Reading("h", "c", -(2**63), 2)]
    spool.put(big, ["z"])
    spool.defer(ids(spool.claim("z", 10)), 1.0, refused=True)
    assert queue_rows(spool) == 2
    assert [s.item for s in spool.claim("z", 10, now=2.0)] == big


def test_reject_part_of_a_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(5), ["z"])
    claimed = spool.claim("z", 5)
    spool.reject([claimed[2].id])
    assert values(spool.claim("z", 10)) == [0, 1, 3, 4]
    spool.reject([claimed[0].id])  # the front: the rest stays as it is
    assert values(spool.claim("z", 10)) == [1, 3, 4]
    assert spool.depth() == 3


def test_defer_of_a_whole_claim_while_unreachable(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(8), ["z"])
    claimed = spool.claim("z", 5)
    spool.defer(ids(claimed), 0.0, refused=False)
    again = spool.claim("z", 5)
    assert again == claimed  # same ids, items, first try, no attempt counted
    assert spool.first_refused(ids(claimed)) == {}
    assert spool.next_due("z") == 0.0
    assert queue_rows(spool) == 0  # nothing to remember: the batch stays whole


def test_bound_drops_part_of_a_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_readings=10)
    spool.put(readings(6), ["a"])
    spool.put(readings(9, 6), ["b"])
    assert spool.put(readings(14, 9), ["a"]) == 4  # the four oldest: the front of the first batch
    assert spool.dropped == 4
    assert values(spool.claim("a", 100)) == [4, 5, 9, 10, 11, 12, 13]
    assert values(spool.claim("b", 100)) == [6, 7, 8]
    assert spool.depth() == 10 and spool.depth("a") == 7
    assert spool.put(readings(25, 14), ["b"]) == 11  # more than all the others: the put's own front too
    assert spool.dropped == 15 and spool.depth() == 10
    assert values(spool.claim("b", 100)) == list(range(15, 25))
    assert spool.claim("a", 100) == []


def test_reopen_in_the_middle_of_a_partially_acked_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(10), ["z"])
    spool.ack(ids(spool.claim("z", 3)))
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.depth() == 7 and again.depth("z") == 7
    rest = again.claim("z", 100)
    assert values(rest) == list(range(3, 10))
    again.ack(ids(rest))
    assert again.depth() == 0


def test_ids_after_emptying_and_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(readings(5), ["a", "b"])
    seen = ids(spool.claim("a", 10)) + ids(spool.claim("b", 10))
    spool.ack(seen)
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert again.depth() == 0
    again.put(readings(3), ["a"])
    fresh = ids(again.claim("a", 10))
    assert min(fresh) > max(seen)
    assert spool_module.sqlite3.connect(tmp_path / "s.db").execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'queue'"
    ).fetchone() == (max(fresh),)


def test_large_puts_become_several_batches_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    with mock.patch.object(spool_module, "_BATCH_READINGS", 4):
        spool.put(readings(10), ["a", "b"])
        assert spool._db.execute("SELECT count(*) FROM batch").fetchone() == (6,)
        for dest in ("a", "b"):
            rows = spool.claim(dest, 7)
            assert values(rows) == list(range(7))
            spool.ack(ids(rows))
            assert values(spool.claim(dest, 10)) == [7, 8, 9]
    assert queue_rows(spool) == 0


def test_claim_of_batches_never_sorts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    plan = " ".join(
        row[3] for row in spool._db.execute("EXPLAIN QUERY PLAN " + spool_module._CLAIM_BATCHES, ("z",))
    )
    assert "TEMP B-TREE" not in plan and "batch_by_dest" in plan, plan


DRAINER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from trapline.core.model import Reading
    from trapline.middleware.spool import Spool
    spool = Spool(Path(sys.argv[1]))
    put = acked = 0
    while True:
        spool.put([Reading("h", "seq", put + i, 1, 0) for i in range(100)], ["z"])
        put += 100
        claimed = spool.claim("z", 37)  # splits batches: acks of whole batches and of fronts
        spool.ack(s.id for s in claimed)
        acked += len(claimed)
        print(put, acked, flush=True)
    """
)


def test_sigkill_while_batches_are_acked_in_parts(tmp_path: Path) -> None:
    """After a SIGKILL exactly the readings not yet acked remain: none lost, none twice."""
    db = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", DRAINER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    put = acked = 0
    for line in proc.stdout:
        put, acked = map(int, line.split())
        if put >= 20_000:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The drainer ran on until the kill landed: what it reported meanwhile is still in the pipe.
    for line in proc.stdout:
        if line.endswith("\n"):
            put, acked = map(int, line.split())
    spool = Spool(db)
    values = [int(s.item.value) for s in spool.claim("z", 10**6)]
    assert values == list(range(values[0], values[-1] + 1))  # in order, no gap, no double
    # At most one more put and one more ack committed than reported.
    assert values[0] in (acked, acked + 37) and values[-1] + 1 in (put, put + 100)
    assert spool.depth() == len(values)


# -- a model of the spool's promises, against random operations --------------------------------


@dataclass
class Waiting:
    dest: str
    item: Item
    attempts: int = 0
    next_try: float = 0.0
    first_refused: float | None = None
    first_try: float | None = None


@dataclass
class Model:
    """What the spool promises, kept the plain way: a dict of every reading still spooled."""

    max_readings: int
    rows: dict[int, Waiting] = field(default_factory=dict)
    issued: int = 0  # highest id ever seen
    dropped: int = 0

    def due(self, dest: str, now: float) -> list[int]:
        return sorted(i for i, w in self.rows.items() if w.dest == dest and w.next_try <= now)


DESTS = {"mqtt": True, "zbx": False}  # name -> needs labels


@dataclass(frozen=True)
class Queue:
    name: str
    needs_labels: bool


def as_stored(item: Item, labelled: bool) -> Item:
    if isinstance(item, Reading) and not labelled:
        return Reading(item.host, item.key, item.value, item.clock, item.ns, item.unit, {})
    return item


item_strategy = st.one_of(
    st.builds(
        Reading,
        st.sampled_from(["h1", "h2"]),
        st.sampled_from(["k", "k[1]"]),
        st.one_of(
            st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False), st.text()
        ),
        st.integers(0, 2**31),
        st.integers(0, 999_999_999),
        st.sampled_from(["", "s"]),
        st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    ),
    st.builds(
        Discovery,
        st.just("h1"),
        st.just("lld"),
        st.lists(st.dictionaries(st.just("{#X}"), st.text(max_size=3)), max_size=2).map(tuple),
        st.integers(0, 2**31),
        st.integers(0, 999_999_999),
    ),
)
pick = st.lists(st.integers(0, 40), max_size=8)  # positions among the spooled ids (modulo their number)
operation = st.one_of(
    st.tuples(st.just("put"), st.lists(item_strategy, max_size=7),
              st.sampled_from([["mqtt"], ["zbx"], ["mqtt", "zbx"], ["zbx", "mqtt"]])),
    st.tuples(
        st.just("claim"), st.sampled_from(list(DESTS)), st.integers(1, 9), st.sampled_from([0.0, 10.0, 100.0])
    ),
    st.tuples(st.just("ack"), pick),
    st.tuples(st.just("reject"), pick),
    st.tuples(st.just("ack front"), st.sampled_from(list(DESTS)), st.integers(1, 9)),
    st.tuples(st.just("defer"), pick, st.sampled_from([-1.0, 0.0, 5.0, 50.0]), st.booleans()),
    st.tuples(st.just("reopen")),
)


def check(spool: Spool, model: Model) -> None:
    assert spool.depth() == len(model.rows)
    stats = spool.stats()
    assert stats.depth == len(model.rows)
    first_tries = [w.first_try for w in model.rows.values() if w.first_try is not None]
    assert stats.oldest_enqueued == min(first_tries, default=None)
    for dest in DESTS:
        mine = [w for w in model.rows.values() if w.dest == dest]
        assert spool.depth(dest) == len(mine)
        assert spool.next_due(dest) == (min(w.next_try for w in mine) if mine else None)
    assert spool.dropped == model.dropped
    refused = spool.first_refused(model.rows)
    assert refused == {i: w.first_refused for i, w in model.rows.items() if w.first_refused is not None}


def apply(spool: Spool, model: Model, op: tuple[object, ...], path: Path) -> Spool:
    kind = op[0]
    known = sorted(model.rows)
    chosen = lambda positions: [known[p % len(known)] for p in positions] if known else []  # noqa: E731
    if kind == "put":
        items, dests = op[1], op[2]
        assert isinstance(items, list) and isinstance(dests, list)
        before = set(model.rows)
        dropped = spool.put(items, [Queue(d, DESTS[d]) for d in dests])
        # New readings are the newest: the bound drops the oldest first, the put's own last.
        new = [(d, as_stored(item, DESTS[d])) for d in dests for item in items]
        excess = max(0, len(model.rows) + len(new) - model.max_readings)
        assert dropped == excess
        model.dropped += excess
        for rid in sorted(model.rows)[:excess]:
            del model.rows[rid]
        kept_new = new[max(0, excess - len(before)) :]
        # Learn the ids the spool gave them: unseen, above every id ever issued, in put order per queue.
        for d in dests:
            fresh = [s for s in spool.claim(d, 10**6, now=math.inf) if s.id not in before]
            assert [s.item for s in fresh] == [item for dest, item in kept_new if dest == d]
            assert all(s.id > model.issued for s in fresh) and all(s.attempts == 0 for s in fresh)
            for s in fresh:
                model.rows[s.id] = Waiting(d, s.item, first_try=s.first_try)
        model.issued = max([model.issued, *model.rows])
    elif kind == "claim":
        dest, limit, now = op[1], op[2], op[3]
        assert isinstance(dest, str) and isinstance(limit, int) and isinstance(now, float)
        got = spool.claim(dest, limit, now=now)
        want = model.due(dest, now)[:limit]
        assert [s.id for s in got] == want
        assert [(s.item, s.attempts, s.first_try) for s in got] == [
            (model.rows[i].item, model.rows[i].attempts, model.rows[i].first_try) for i in want
        ]
    elif kind in ("ack", "reject"):
        assert isinstance(op[1], list)
        gone = [*chosen(op[1]), model.issued + 1]  # an id never issued is ignored
        (spool.ack if kind == "ack" else spool.reject)(gone)
        for rid in gone:
            model.rows.pop(rid, None)
    elif kind == "ack front":  # the usual round: ack what a claim handed out
        dest, limit = op[1], op[2]
        assert isinstance(dest, str) and isinstance(limit, int)
        handed = [s.id for s in spool.claim(dest, limit, now=0.0)]
        assert handed == model.due(dest, 0.0)[:limit]
        spool.ack(handed)
        for rid in handed:
            del model.rows[rid]
    elif kind == "defer":
        positions, next_try, refused = op[1], op[2], op[3]
        assert isinstance(positions, list) and isinstance(next_try, float) and isinstance(refused, bool)
        targets = chosen(positions)
        spool.defer(targets, next_try, refused)
        stamps = spool.first_refused(targets)
        for rid in set(targets):
            row = model.rows[rid]
            row.next_try = max(next_try, 0.0)
            if refused:
                row.attempts += 1
                if row.first_refused is None:
                    row.first_refused = stamps[rid]
    else:
        spool.close()
        spool = Spool(path, max_readings=model.max_readings, sync="normal")
        model.dropped = 0
    return spool


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, max_size=25), st.integers(6, 20))
def test_spool_behaves_like_its_model(operations: list[tuple[object, ...]], max_readings: int) -> None:
    # Small batches so that puts span several rows and claims split them.
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(spool_module, "_BATCH_READINGS", 3):
        path = Path(tmp) / "s.db"
        spool = Spool(path, max_readings=max_readings, sync="normal")  # no fsync: many examples
        model = Model(max_readings)
        try:
            for op in operations:
                spool = apply(spool, model, op, path)
                check(spool, model)
        finally:
            spool.close()
