"""lz4-compressed batch blobs: new ones compressed, old plain ones still read, damage never loses a row."""

from __future__ import annotations

import secrets
from pathlib import Path
from unittest import mock

import pytest

from trapline.core.model import Discovery, Item, Reading
from trapline.middleware import spool as spool_module
from trapline.middleware.spool import Spool

# The first byte of a plain batch blob: a msgpack array (fixarray, array 16, array 32).
_MSGPACK_ARRAY_STARTS = {*range(0x90, 0xA0), 0xDC, 0xDD}


def ap_readings(n: int) -> list[Reading]:
    """Mist-like readings: a JSON document of ~1 KB each, alike from one access point to the next."""
    return [
        Reading(
            f"mist-ap-{i:012x}", "mist.ap.raw",
            f'{{"mac":"{i:012x}","uptime":{1000 + i},"radio_stat":{{"band_24":'
            f'{{"num_clients":{i % 30},"tx_bytes":{i * 977}}}}},"pad":"{"x" * 900}"}}',
            1_700_000_000 + i, i, "", {"site": f"s{i % 3}"},
        )
        for i in range(n)
    ]


def payloads(spool: Spool) -> list[bytes]:
    return [bytes(p) for (p,) in spool._db.execute("SELECT payload FROM batch ORDER BY id")]


def claimed_items(spool: Spool, dest: str = "z") -> list[Item]:
    return [s.item for s in spool.claim(dest, 100_000)]


def test_a_large_batch_is_stored_compressed_and_reads_back_equal(tmp_path: Path) -> None:
    items: list[Item] = [*ap_readings(300), Discovery("h", "rule", ({"{#AP}": "a"},), 1_700_000_000, 5)]
    spool = Spool(tmp_path / "s.db")
    spool.put(items, ["z"])
    (payload,) = payloads(spool)
    assert payload[:1] == spool_module._LZ4_MARKER
    assert len(payload) * 5 < len(spool_module._pack(items))
    spool.close()
    reopened = Spool(tmp_path / "s.db")
    assert claimed_items(reopened) == items


def test_part_of_a_compressed_batch_refused_keeps_every_reading(tmp_path: Path) -> None:
    items = ap_readings(50)
    spool = Spool(tmp_path / "s.db")
    spool.put(items, ["z"])
    claimed = spool.claim("z", 100)
    spool.ack([s.id for s in claimed[10:20]])  # a gap: the front moves to queue rows
    assert claimed_items(spool) == items[:10] + items[20:]


def test_small_and_incompressible_batches_stay_plain(tmp_path: Path) -> None:
    small = [Reading("car", "obd.rpm", 812.5, 1_700_000_000, 0, "rpm", {})]
    noise = [Reading("h", "k", secrets.token_urlsafe(600), 1_700_000_000, i, "", {}) for i in range(20)]
    spool = Spool(tmp_path / "s.db")
    spool.put(small, ["z"])
    spool.put(noise, ["z"])
    assert [p[0] in _MSGPACK_ARRAY_STARTS for p in payloads(spool)] == [True, True]
    assert claimed_items(spool) == [*small, *noise]


def test_plain_batches_of_an_older_version_still_read(tmp_path: Path) -> None:
    items = ap_readings(40)
    with mock.patch.object(spool_module, "_COMPRESS_FROM", 10**12):  # as versions before lz4 wrote them
        old = Spool(tmp_path / "s.db")
        old.put(items, ["z"])
        old.close()
    spool = Spool(tmp_path / "s.db")
    assert payloads(spool)[0][0] in _MSGPACK_ARRAY_STARTS
    spool.put(items[:30], ["z"])  # a new, compressed batch after the old one
    assert payloads(spool)[1][:1] == spool_module._LZ4_MARKER
    assert claimed_items(spool) == items + items[:30]


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[: len(blob) // 2],  # cut short
        lambda blob: blob[:5] + bytes(len(blob) - 5),  # body zeroed
        lambda blob: blob[:1] + b"\xff\xff\xff\x7f" + blob[5:],  # states ~2 GB
        lambda blob: blob[:1],  # nothing after the marker
    ],
    ids=["truncated", "zeroed", "huge-size", "marker-only"],
)
def test_a_damaged_batch_is_set_aside_counted_and_the_next_one_still_flows(
    tmp_path: Path, damage: object
) -> None:
    assert callable(damage)
    spool = Spool(tmp_path / "s.db")
    spool.put(ap_readings(20), ["z"])
    (blob,) = payloads(spool)
    spool._db.execute("UPDATE batch SET payload = ?", (damage(blob),))
    later = ap_readings(25)[20:]
    spool.put(later, ["z"])
    # The damaged batch no longer blocks its destination: the readings behind it come out.
    assert claimed_items(spool) == later
    assert spool.take_unreadable() == 20 and spool.take_unreadable() == 0
    assert spool.depth() == 5 and len(payloads(spool)) == 1
    # Its bytes are kept, untouched, for a person to look at.
    (kept,) = spool._db.execute("SELECT size, done, payload FROM batch_unreadable").fetchall()
    assert kept[:2] == (20, 0) and bytes(kept[2]) == damage(blob)


def test_a_damaged_plain_batch_is_set_aside_as_well(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    spool.put(ap_readings(3), ["z"])
    spool._db.execute("UPDATE batch SET payload = ?", (b"\x94\xc1",))
    assert claimed_items(spool) == [] and spool.take_unreadable() == 3 and spool.depth() == 0


@pytest.mark.parametrize(
    ("column", "damaged"),
    [("labels", "{not json"), ("value", b"12x"), ("host", b"\xff"), ("clock", "noon"), ("labels", "[1, 2]")],
    ids=["labels-not-json", "big-int-not-digits", "host-blob", "clock-text", "labels-not-object"],
)
def test_a_damaged_queue_row_is_set_aside_counted_and_the_rest_still_flows(
    tmp_path: Path, column: str, damaged: object
) -> None:
    """Refused readings live in queue rows of their own: one of them damaged must not stop the destination."""
    spool = Spool(tmp_path / "s.db")
    sent = ap_readings(4)
    spool.put(sent, ["z"])
    ids = [s.id for s in spool.claim("z", 10)]
    spool.defer(ids, next_try=1.0, refused=True)  # each reading now has a queue row, due again
    spool._db.execute(f"UPDATE queue SET {column} = ? WHERE id = ?", (damaged, ids[1]))
    claimed = spool.claim("z", 10)
    assert [s.item for s in claimed] == [sent[0], *sent[2:]]
    assert spool.take_unreadable() == 1 and spool.depth() == 3
    (kept,) = spool._db.execute(f"SELECT id, {column} FROM queue_unreadable").fetchall()
    assert kept == (ids[1], damaged)
    spool.ack(s.id for s in claimed)
    assert spool.claim("z", 10) == [] and spool.depth() == 0
