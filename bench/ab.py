"""Alternate `bench/mist.py --only throughput --runs 1` between two source trees; print B/A ratios.

The machine's speed drifts within minutes, so two trees are only compared run
against run in the same window: A, B, B, A, ... and the median of the per-pair
ratios of agent CPU per update, per mode.

    python3 -m bench.ab TREE_A TREE_B RUNS [extra bench/mist.py arguments]
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict

_RUN_LINE = re.compile(r"run \d+ (.+?): .* CPU ([\d.]+) us/update")


def _mist_bench(tree: str) -> list[str]:
    # Trees from before bench/ became a package run the file directly.
    if os.path.exists(os.path.join(tree, "bench", "__init__.py")):
        return ["-m", "bench.mist"]
    return ["bench/mist.py"]


def cpu_per_mode(tree: str, extra: list[str]) -> dict[str, float]:
    command = ["flock", "/tmp/trapline-bench.lock", sys.executable, *_mist_bench(tree)]
    command += ["--only", "throughput"]
    env = os.environ | {"PYTHONPATH": tree}
    out = subprocess.run(
        [*command, "--runs", "1", *extra], cwd=tree, env=env, capture_output=True, text=True, check=True
    ).stdout
    return {m.group(1): float(m.group(2)) for m in _RUN_LINE.finditer(out)}


def main() -> None:
    tree_a, tree_b, runs, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    trees = (tree_a, tree_b)
    # Indexed by position, not path: an A/A run (the same tree twice) must keep two lists.
    cpu: list[dict[str, list[float]]] = [defaultdict(list), defaultdict(list)]
    for run in range(runs):
        for side in (0, 1) if run % 2 == 0 else (1, 0):
            for mode, value in cpu_per_mode(trees[side], extra).items():
                cpu[side][mode].append(value)
        print(f"round {run + 1}: A {dict(cpu[0])}; B {dict(cpu[1])}", flush=True)
    for mode, a_values in cpu[0].items():
        b_values = cpu[1].get(mode)
        if not b_values:
            continue
        ratios = [b / a for a, b in zip(a_values, b_values, strict=True)]
        print(
            f"{mode}: A {statistics.median(a_values):.1f} us, B {statistics.median(b_values):.1f} us, "
            f"B/A median {statistics.median(ratios):.3f} (range {min(ratios):.3f} - {max(ratios):.3f})"
        )


if __name__ == "__main__":
    main()
