"""Small helpers shared by the benchmarks: medians, tables, machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SpoolQueue:
    """What Spool.put needs of a destination (its queue name, whether it reads labels), without one."""

    name: str
    needs_labels: bool


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (readable on a terminal, pasteable into RESULTS.md)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def wait_for_count(count: Callable[[], int], expected: int, stall_limit: float, interval: float) -> int:
    """Poll `count` until it reaches `expected` or stays put for `stall_limit` seconds; the last count."""
    last, last_change = -1, time.monotonic()
    while True:
        current = count()
        if current >= expected:
            return current
        if current != last:
            last, last_change = current, time.monotonic()
        elif time.monotonic() - last_change > stall_limit:
            return current
        time.sleep(interval)
