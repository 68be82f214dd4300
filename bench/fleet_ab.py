"""In-process A/B of the Mist fleet: another version of ``fleet.py`` against this tree's.

Both fleets get the same frames (the bench's AP updates, decoded outside the
clock) and run ``update`` + ``due`` on them in turn, A then B, many times over;
the figure is the median of the per-pair ratios B/A of CPU time.  In one process
and interleaved, so the host's speed drifts (2x within minutes here) hit both
alike, where separate end-to-end runs cannot be compared.  The other version
is imported with this tree's other modules, so it must not need changes in them.

    python3 -m bench.fleet_ab OTHER_FLEET_PY [--basic] [--pairs 15]
    git show REV:collectors/mist/fleet.py > /tmp/fleet_a.py && python3 -m bench.fleet_ab /tmp/fleet_a.py
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from types import ModuleType
from typing import Any

import trapline.collectors.mist.fleet as this_fleet
from bench import mist as bench
from bench._util import machine
from trapline.collectors.mist.frames import DataFrame, decode_frame

APS = 1000


def load_other(path: str) -> ModuleType:
    name = "trapline.collectors.mist.fleet_other"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def warm_fleet(module: ModuleType) -> Any:
    """A fleet that knows every AP and has announced it, as after the collector's first minute."""
    policy = module.FleetPolicy("Mist discovery", "mist-ap-", frozenset({"ap"}), 300.0, 0.0, 0.0, 3600.0)
    fleet = module.Fleet(policy, module.FieldSchema.load())
    sites = bench.site_ids()
    fleet.set_sites({s: module.SiteInfo(s, s, "o1", "Bench org") for s in sites})
    for index in range(APS):
        fleet.update(sites[index % bench.SITES], bench.full_update(index, 0), 0.0)
    fleet.due(0.0)
    fleet.due(0.0)
    return fleet


def cpu_per_update(fleet: Any, updates: list[tuple[str, str]]) -> float:
    started = time.process_time()
    for site, data in updates:
        fleet.update(site, data, 1.0)
        fleet.due(1.0, sweep=False)
    return (time.process_time() - started) / len(updates) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="a fleet.py of another version (A); this tree's is B")
    parser.add_argument("--basic", action="store_true", help="partial updates instead of full ones")
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args()
    events = [decode_frame(f, 1 << 20) for f in bench.data_frames(APS, 5 * APS, 1, basic=args.basic)]
    updates = [
        (e.channel.split("/")[2], e.data)
        for e in events
        if isinstance(e, DataFrame) and isinstance(e.data, str)
    ]
    assert len(updates) == len(events)
    fleet_a, fleet_b = warm_fleet(load_other(args.other)), warm_fleet(this_fleet)
    a_costs, b_costs, ratios = [], [], []
    for _ in range(args.pairs):
        a, b = cpu_per_update(fleet_a, updates), cpu_per_update(fleet_b, updates)
        a_costs.append(a)
        b_costs.append(b)
        ratios.append(b / a)
    kind = "basic" if args.basic else "full"
    print(machine())
    print(
        f"fleet update+due, {kind} updates, {len(updates)} per run, {args.pairs} pairs: "
        f"A {statistics.median(a_costs):.2f} us, B {statistics.median(b_costs):.2f} us, "
        f"B/A median {statistics.median(ratios):.3f} (range {min(ratios):.3f} - {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
