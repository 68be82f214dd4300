"""The table of mode 01 PIDs trapline polls (``pids.toml``), joined with python-OBD.

python-OBD knows each PID's number, answer length and decoder; the table adds
what trapline reports (unit) and keeps the list of decodable PIDs as data.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import obd
from obd.protocols.protocol import Message

_MODE_01_ANSWER = 0x41


class DecodeError(ValueError):
    """python-OBD could not turn a PID's bytes into a number."""


@dataclass(frozen=True, slots=True)
class PidSpec:
    name: str  # python-OBD command name, also the LLD {#PID} value
    pid: int
    code: str  # the PID as sent in a request: two hex digits
    size: int  # data bytes after the PID byte
    description: str
    unit: str
    convert: str  # pint unit of the reported value
    decoder: Callable[[list[Message]], Any]
    # False where python-OBD already decodes into ``convert`` (most PIDs): pint's
    # conversion is then skipped, it costs as much as the decoding itself
    needs_conversion: bool = True

    def decode(self, data: bytes) -> float:
        """Decode this PID's data bytes with python-OBD's decoder, in the reported unit."""
        if len(data) != self.size:
            raise DecodeError(f"{self.name}: expected {self.size} data bytes, got {len(data)}")
        try:
            quantity = self.decoder([_message(self.pid, data)])
            if self.needs_conversion:
                quantity = quantity.to(self.convert)
            value = float(quantity.magnitude)
        except Exception as exc:  # python-OBD's decoders raise whatever they hit
            raise DecodeError(f"{self.name}: cannot decode {data.hex()}: {exc}") from None
        return value


def _message(pid: int, data: bytes) -> Message:
    message = Message([])
    message.data = bytearray((_MODE_01_ANSWER, pid)) + bytearray(data)
    return message


def _decodes_into(command: Any, unit: str) -> bool:
    """Whether python-OBD's decoder of ``command`` gives values in ``unit`` already.

    Each of these decoders has one fixed unit, so one sample answer tells.
    """
    try:
        return bool(command.decode([_message(command.pid, bytes(command.bytes - 2))]).units == obd.Unit(unit))
    except Exception:  # cannot tell: keep converting every value
        return False


@cache
def pid_table() -> Mapping[str, PidSpec]:
    """Every PID of ``pids.toml`` by name (validated against python-OBD once)."""
    raw = tomllib.loads(resources.files(__package__).joinpath("pids.toml").read_text("utf-8"))
    table: dict[str, PidSpec] = {}
    for row in raw["pid"]:
        command = obd.commands[row["name"]]
        if command.mode != 1:
            raise ValueError(f"pids.toml: {row['name']} is not a mode 01 PID")
        table[row["name"]] = PidSpec(
            name=row["name"],
            pid=command.pid,
            code=f"{command.pid:02X}",
            size=command.bytes - 2,
            description=command.desc,
            unit=row["unit"],
            convert=row["convert"],
            decoder=command.decode,
            needs_conversion=not _decodes_into(command, row["convert"]),
        )
    return table


def by_number() -> Mapping[int, PidSpec]:
    return {spec.pid: spec for spec in pid_table().values()}
