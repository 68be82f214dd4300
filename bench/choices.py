"""The measurements behind a few code shapes whose comments say "this is cheaper".

Each row times the shape the code has against the plainer one it replaced, in this
process, alternated over ``--runs`` rounds (medians of per-call times):

- a Reading as a frozen msgspec Struct (trapline/core/model.py) against a frozen dataclass
  of the same fields;
- a Mist frame as a msgspec Struct (collectors/mist/frames.py) against a frozen dataclass;
- normalize()'s memory of checked hosts and keys (middleware/normalize.py): a reading whose
  host and key were seen before, against one whose are new each time (the checks run);
- one shard weight of collectors/mist/shard.py (a keyed BLAKE2b digest), which a Mist id
  pays once per configured shard count;
- the Mist fleet's merged AP state kept as the JSON text it is sent as
  (collectors/mist/fleet.py) against the plain data it encodes (a dict tree, encoded when
  the value is emitted): bytes per AP, and the state's share of a full update (Mist's
  periodic one) and of a partial one (a few fields), each followed by its emit.

    python3 -m bench.choices [--calls 200000] [--runs 7] [--aps 10000]
"""

from __future__ import annotations

import argparse
import gc
import json
import timeit
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any

import msgspec
from msgspec import NODEFAULT

from bench._util import machine, median, table
from bench.mist import full_update, mac_of
from trapline.collectors.mist.fleet import FieldSchema, encode_json
from trapline.collectors.mist.frames import Subscribed, parse_json
from trapline.collectors.mist.shard import _weight
from trapline.core.model import Reading
from trapline.middleware import normalize as normalizing

# Reading's fields, defaults included, as a frozen dataclass: the shape it had before.
ReadingAsDataclass = make_dataclass(
    "ReadingAsDataclass",
    [
        (f.name, f.type, field(default=f.default) if f.default is not NODEFAULT else field())
        for f in msgspec.structs.fields(Reading)
        if f.default_factory is NODEFAULT
    ]
    + [("labels", Mapping[str, str], field(default_factory=dict))],
    frozen=True,
    slots=True,
)


@dataclass(frozen=True, slots=True)
class SubscribedAsDataclass:
    channel: str


def per_call(action: Callable[[], object], calls: int) -> float:
    """Microseconds per call of ``action``, the best of three repeats of ``calls`` calls."""
    return min(timeit.repeat(action, number=calls, repeat=3)) / calls * 1e6


def fresh_readings(calls: int) -> Callable[[], object]:
    """normalize() on a reading whose host and key it has not seen: every check runs."""
    names = iter([f"van-{k}" for k in range(calls * 4)])

    def once() -> object:
        host = next(names)
        return normalizing.normalize(Reading(host, f"obd.pid[{host}]", 1.0, 1, 0, "V"))

    return once


def partial_update(index: int) -> str:
    """A partial AP update as Mist streams between full ones: a counter and a gauge moved."""
    return json.dumps(
        {
            "mac": mac_of(index),
            "last_seen": 1_700_000_060,
            "num_clients": 7,
            "port_stat": {"eth0": {"rx_bytes": 10_000 + index, "tx_bytes": 20_000 + index}},
        }
    )


def bytes_per_ap(states: Callable[[], list[object]], aps: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = states()
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del kept
    return size / aps


def mist_state(calls: int, runs: int, aps: int) -> list[list[str]]:
    """The Mist AP state as text (B, the code) against plain data (A): bytes per AP and cost per update.

    Both sides get the update decoded by the schema (the collector's first step, not timed);
    what is timed is keeping the state and producing the value to send, as fleet.update and
    the emit that follows it do.
    """
    schema = FieldSchema.load()
    full = [schema.decode_kept(json.dumps(full_update(i, 1))) for i in range(aps)]
    text_states = [encode_json(kept).decode() for kept in full]
    partial = schema.decode_kept(partial_update(0))
    plain_state: dict[str, Any] = msgspec.to_builtins(full[0])
    text_state = text_states[0]

    def plain_full() -> object:
        return encode_json(msgspec.to_builtins(full[0])).decode()

    def text_full() -> object:
        return encode_json(full[0]).decode()

    def plain_partial() -> object:
        schema.merge(plain_state, msgspec.to_builtins(partial))
        return encode_json(plain_state).decode()

    def text_partial() -> object:
        state = parse_json(text_state)
        schema.merge(state, msgspec.to_builtins(partial))
        return encode_json(state).decode()

    rows = []
    plain_bytes = median(
        [bytes_per_ap(lambda: [msgspec.to_builtins(k) for k in full], aps) for _ in range(3)]
    )
    text_bytes = median(
        [bytes_per_ap(lambda: [encode_json(k).decode() for k in full], aps) for _ in range(3)]
    )
    rows.append(
        [
            f"Mist AP state: bytes per AP at {aps:,} APs, text (B) vs dicts (A)",
            f"{plain_bytes:,.0f} B",
            f"{text_bytes:,.0f} B",
            f"{text_bytes / plain_bytes:.2f}",
        ]
    )
    for label, plain, shaped in (
        ("Mist AP state: full update + emit, text (B) vs dicts (A)", plain_full, text_full),
        ("Mist AP state: partial update + emit, text (B) vs dicts (A)", plain_partial, text_partial),
    ):
        a = median([per_call(plain, calls // 10) for _ in range(runs)])
        b = median([per_call(shaped, calls // 10) for _ in range(runs)])
        rows.append([label, f"{a:.3f} us", f"{b:.3f} us", f"{b / a:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--aps", type=int, default=10_000, help="Mist APs whose state is measured")
    args = parser.parse_args()
    calls = args.calls
    seen = Reading("van-1", "obd.pid[RPM]", 1.0, 1, 0, "rpm", {"pid": "RPM"})
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "Reading: Struct (B) vs frozen dataclass (A)": (
            lambda: ReadingAsDataclass("van-1", "obd.voltage", 12.5, 1, 0, "V", {}),
            lambda: Reading("van-1", "obd.voltage", 12.5, 1, 0, "V", {}),
        ),
        "Mist frame: Struct (B) vs frozen dataclass (A)": (
            lambda: SubscribedAsDataclass("/sites/x/stats/devices"),
            lambda: Subscribed("/sites/x/stats/devices"),
        ),
        "normalize(): host and key seen before (B) vs new (A)": (
            fresh_readings(calls * args.runs),
            lambda: normalizing.normalize(seen),
        ),
    }
    rows = []
    for label, (plain, shaped) in pairs.items():
        a_times, b_times = [], []
        for _ in range(args.runs):
            a_times.append(per_call(plain, calls))
            b_times.append(per_call(shaped, calls))
        a, b = median(a_times), median(b_times)
        rows.append([label, f"{a:.3f} us", f"{b:.3f} us", f"{b / a:.2f}"])
    digest = median(
        [
            per_call(lambda: _weight("5c5b3500-0001-4e2f-9d0b-000000000001", 3), calls)
            for _ in range(args.runs)
        ]
    )
    rows.append(["Mist shard weight: one keyed BLAKE2b digest", "", f"{digest:.3f} us", ""])
    rows += mist_state(calls, args.runs, args.aps)
    print(machine())
    print(f"python3 -m bench.choices --calls {calls} --runs {args.runs} --aps {args.aps}")
    print(table(["shape", "A (median)", "B (median)", "B/A"], rows))


if __name__ == "__main__":
    main()
