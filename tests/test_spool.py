"""The spool keeps every reading until acked, across SIGKILL, within its bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from trapline.middleware.model import Discovery, Reading
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


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from trapline.middleware.model import Reading
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
