"""The measurements behind a few code shapes whose comments say "this is cheaper".

Each row times the shape the code has against the plainer one it replaced, in this
process, alternated over ``--runs`` rounds (medians of per-call times):

- a Reading as a frozen msgspec Struct (trapline/core/model.py) against a frozen dataclass
  of the same fields;
- a Mist frame as a msgspec Struct (collectors/mist/frames.py) against a frozen dataclass;
- normalize()'s memory of checked hosts and keys (middleware/normalize.py): a reading whose
  host and key were seen before, against one whose are new each time (the checks run);
- one shard weight of collectors/mist/shard.py (a keyed BLAKE2b digest), which a Mist id
  pays once per configured shard count.

    python3 -m bench.choices [--calls 200000] [--runs 7]
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, make_dataclass

import msgspec
from msgspec import NODEFAULT

from bench._util import machine, median, table
from trapline.collectors.mist.frames import Subscribed
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=7)
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
    digest = median([per_call(lambda: _weight("5c5b3500-0001-4e2f-9d0b-000000000001", 3), calls)
                     for _ in range(args.runs)])
    rows.append(["Mist shard weight: one keyed BLAKE2b digest", "", f"{digest:.3f} us", ""])
    print(machine())
    print(f"python3 -m bench.choices --calls {calls} --runs {args.runs}")
    print(table(["shape", "A (median)", "B (median)", "B/A"], rows))


if __name__ == "__main__":
    main()
