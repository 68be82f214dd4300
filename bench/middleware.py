"""Per-reading cost of the middleware: normalize, filter, spool, Zabbix encode.

Each stage runs over the same N readings as the pipeline drives it (normalize and
filter one by one, the spool in ``flush`` groups of one transaction each, the Zabbix
encoder in requests of 250) and is reported in microseconds per reading, the median
of ``--runs`` runs.  Target: the whole path at most 20 us per reading.  The spool
queue is a Zabbix one, so labels are not stored (as the pipeline does); one more
put stage stores them, as for an MQTT destination.

The readings look like what the collectors produce: 1000 keys on 10 hosts, float
values that change (so the filter admits them), a unit that needs converting and
one label.

    python3 -m bench.middleware [--readings 50000] [--runs 7] [--flush 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The tree this file is in, not whatever trapline is installed, is what gets measured.
from bench._util import SpoolQueue, machine, median, table
from trapline.core.model import Item, Reading
from trapline.exporters.mqtt import MqttDestination
from trapline.exporters.zabbix import ZabbixDestination
from trapline.exporters.zabbix.protocol import encode_request, frame
from trapline.middleware.filters import FilterRule, Filters
from trapline.middleware.normalize import normalize
from trapline.middleware.spool import Spool

TARGET_US = 20.0
DEST = "zabbix[127.0.0.1:10051]"
REQUEST_SIZE = 250  # [zabbix] batch_size default
CLAIM_BATCH = 2000  # [spool] batch before it became 10000; kept so the figures compare across runs


ZABBIX = SpoolQueue(DEST, ZabbixDestination.needs_labels)
MQTT = SpoolQueue("mqtt[127.0.0.1:1883]", MqttDestination.needs_labels)


def make_readings(count: int, start_clock: int) -> list[Reading]:
    """Half the readings are already canonical; the other half need a lowercased key and a unit conversion."""
    readings = []
    for i in range(count):
        canonical = i % 2 == 0
        readings.append(
            Reading(
                f"vehicle-{i % 10}",
                f"obd.coolant_temp[{i % 1000}]" if canonical else f"obd.Run_Time[{i % 1000}]",
                20.0 + (i % 977) / 7,
                start_clock + i // 1000,
                (i % 1000) * 1000,
                "°C" if canonical else "ms",
                {"pid": str(i % 1000)},
            )
        )
    return readings


def per_reading_us(action: Callable[[], Any], count: int) -> tuple[float, float]:
    """(CPU, wall) microseconds per reading.  CPU time is what a busy shared machine cannot inflate;
    wall time adds waiting, chiefly the spool's fsync."""
    cpu, wall = time.process_time(), time.perf_counter()
    action()
    return (time.process_time() - cpu) / count * 1e6, (time.perf_counter() - wall) / count * 1e6


def stage_normalize(readings: list[Reading]) -> Callable[[], Any]:
    return lambda: [normalize(r) for r in readings]


def stage_filter(items: list[Item]) -> Callable[[], Any]:
    def run() -> None:
        # A fresh filter each run: a 5-minute heartbeat (state is kept and compared) but
        # every value differs from the last, so all are admitted and go on to the spool.
        filters = Filters([], FilterRule("*", 300.0, 0.0), 3600.0)
        for item in items:
            filters.admit(item)

    return run


def stage_spool_put(
    items: list[Item], flush: int, sync: str, workdir: Path, queue: SpoolQueue = ZABBIX
) -> Callable[[], Any]:
    def run() -> None:
        path = workdir / f"put-{sync}-{time.time_ns()}.db"
        spool = Spool(path, max_readings=10_000_000, sync=sync)
        try:
            for start in range(0, len(items), flush):
                spool.put(items[start : start + flush], [queue])
        finally:
            spool.close()

    return run


def stage_spool_drain(
    items: list[Item], sync: str, workdir: Path
) -> tuple[Callable[[], Any], Callable[[], None]]:
    """claim + ack of everything, as a delivery loop does when every value is accepted."""
    holder: dict[str, Spool] = {}

    def prepare() -> None:
        spool = Spool(workdir / f"drain-{sync}-{time.time_ns()}.db", max_readings=10_000_000, sync=sync)
        spool.put(items, [ZABBIX])
        holder["spool"] = spool

    def run() -> None:
        spool = holder["spool"]
        while batch := spool.claim(DEST, CLAIM_BATCH):
            spool.ack(s.id for s in batch)
        spool.close()

    return run, prepare


def stage_encode(readings: list[Reading]) -> Callable[[], Any]:
    def run() -> None:
        for start in range(0, len(readings), REQUEST_SIZE):
            frame(encode_request(readings[start : start + REQUEST_SIZE], 1_700_000_000, 0))

    return run


def measure(
    action: Callable[[], Any], count: int, runs: int, prepare: Callable[[], None] | None = None
) -> list[tuple[float, float]]:
    samples = []
    for _ in range(runs):
        if prepare is not None:
            prepare()
        samples.append(per_reading_us(action, count))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--flush", type=int, default=1000, help="readings per spool transaction")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the spool files go (default: a temp dir)"
    )
    args = parser.parse_args()
    count, runs = args.readings, args.runs
    print(f"# middleware cost per reading: {count} readings, {runs} runs, spool groups of {args.flush}")
    print(machine(), flush=True)

    readings = make_readings(count, int(time.time()))
    normalized: list[Item] = [normalize(r) for r in readings]
    encoded = [r for r in normalized if isinstance(r, Reading)]

    with tempfile.TemporaryDirectory(prefix="trapline-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        print(f"spool files in {workdir}", flush=True)
        stages: list[tuple[str, list[tuple[float, float]], bool]] = [
            ("normalize", measure(stage_normalize(readings), count, runs), True),
            ("filter (heartbeat rule, all admitted)", measure(stage_filter(normalized), count, runs), True),
        ]
        for sync in ("full", "normal"):
            stages.append(
                (
                    f"spool put, sync={sync}, {args.flush} per transaction",
                    measure(stage_spool_put(normalized, args.flush, sync, workdir), count, runs),
                    sync == "full",
                )
            )
        stages.append(
            (
                f"spool put, sync=full, {args.flush} per transaction, labels kept (MQTT queue)",
                measure(stage_spool_put(normalized, args.flush, "full", workdir, MQTT), count, runs),
                False,
            )
        )
        stages.append(
            (
                f"Zabbix encode_request + frame, {REQUEST_SIZE} per request",
                measure(stage_encode(encoded), count, runs),
                True,
            )
        )
        for sync in ("full", "normal"):
            drain, prepare = stage_spool_drain(normalized, sync, workdir)
            stages.append(
                (
                    f"spool claim {CLAIM_BATCH} + ack, sync={sync} (delivery side)",
                    measure(drain, count, runs, prepare),
                    False,
                )
            )

    def cpu(samples: list[tuple[float, float]]) -> float:
        return median([c for c, _ in samples])

    def wall(samples: list[tuple[float, float]]) -> float:
        return median([w for _, w in samples])

    rows = [
        [name, f"{cpu(s):.2f}", f"{min(c for c, _ in s):.2f} - {max(c for c, _ in s):.2f}", f"{wall(s):.2f}"]
        for name, s, _ in stages
    ]
    in_path = [s for _, s, on_path in stages if on_path]
    delivery_side = next(s for n, s, _ in stages if "claim" in n and "full" in n)
    path_cpu, path_wall = sum(cpu(s) for s in in_path), sum(wall(s) for s in in_path)
    rows.append(
        [
            "**intake path: normalize + filter + put(full) + encode**",
            f"**{path_cpu:.2f}**",
            "",
            f"{path_wall:.2f}",
        ]
    )
    rows.append(
        [
            "**the same + claim/ack(full)**",
            f"**{path_cpu + cpu(delivery_side):.2f}**",
            "",
            f"{path_wall + wall(delivery_side):.2f}",
        ]
    )
    print()
    print(table(["stage", "CPU us/reading (median)", "CPU range", "wall us/reading (median)"], rows))
    verdict = "met" if path_cpu <= TARGET_US else "MISSED"
    print(f"\ntarget <= {TARGET_US:.0f} us/reading (CPU) for the intake path: {verdict} ({path_cpu:.2f} us)")
    print(f"with the delivery side of the spool: {path_cpu + cpu(delivery_side):.2f} us CPU")
    print(machine())


if __name__ == "__main__":
    main()
