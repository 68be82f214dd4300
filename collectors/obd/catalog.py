"""The table of mode 01 PIDs trapline polls (``pids.toml``): number, size, scaling, unit.

Decoding is the linear SAE J1979 scaling written in the table, and the table
holds each PID's name and description too, so polling needs no third-party code:
python-OBD is imported only to describe a trouble code (``payload.describe_dtc``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources


class DecodeError(ValueError):
    """A PID's answer has the wrong number of data bytes."""


@dataclass(frozen=True, slots=True)
class PidSpec:
    name: str  # python-OBD command name, also the LLD {#PID} value
    pid: int
    code: str  # the PID as sent in a request: two hex digits
    size: int  # data bytes after the PID byte
    description: str
    unit: str
    multiply: int = 1
    divide: int = 1
    offset: int = 0
    signed: bool = False

    def decode(self, data: bytes) -> float:
        """This PID's data bytes as a number in the reported unit."""
        if len(data) != self.size:
            raise DecodeError(f"{self.name}: expected {self.size} data bytes, got {len(data)}")
        raw = int.from_bytes(data, "big", signed=self.signed)
        # integer product first: exact, and the same float as the J1979 formula
        return raw * self.multiply / self.divide + self.offset


@cache
def pid_table() -> Mapping[str, PidSpec]:
    """Every PID of ``pids.toml`` by name."""
    raw = tomllib.loads(resources.files(__package__).joinpath("pids.toml").read_text("utf-8"))
    table: dict[str, PidSpec] = {}
    for row in raw["pid"]:
        name = row["name"]
        table[name] = PidSpec(
            name=name,
            pid=row["pid"],
            code=f"{row['pid']:02X}",
            size=row["bytes"],
            description=row["description"],
            unit=row["unit"],
            multiply=row.get("multiply", 1),
            divide=row.get("divide", 1),
            offset=row.get("offset", 0),
            signed=row.get("signed", False),
        )
    return table
