"""Operator-defined PIDs (``[[collectors.<name>.custom_pids]]``): mode 01 PIDs beyond
``pids.toml`` and manufacturer mode 22 PIDs, each decoded by a byte formula.

Each one is sent as its own request, to the ECU its ``header`` names (``ATSH``)
or to all of them; the answer is the ECU's positive response, the request's
service byte plus 0x40 and then the PID bytes echoed, followed by the data
bytes that the formula's letters A, B, C... stand for.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from trapline.collectors.obd.formula import Formula, FormulaError, parse
from trapline.core.config import Section

# service -> PID bytes after it: SAE J1979 mode 01, ISO 14229 ReadDataByIdentifier
PID_BYTES = {0x01: 1, 0x22: 2}
POSITIVE_OFFSET = 0x40  # a positive response's service byte is the request's plus this
NEGATIVE_RESPONSE = 0x7F
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")  # safe inside obd.pid[...] and as an LLD value
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_HEADER = re.compile(r"[0-9A-Fa-f]{3}|[0-9A-Fa-f]{6}|[0-9A-Fa-f]{8}")  # 11-bit CAN, legacy, 29-bit CAN


class AnswerError(ValueError):
    """The ECU gave no positive answer to a custom PID."""


@dataclass(frozen=True, slots=True)
class CustomPid:
    key: str  # the LLD {#PID} value: obd.pid[<key>]
    name: str
    request: str  # upper-case hex, service byte first
    header: str | None  # ATSH value; None: the protocol's functional (broadcast) header
    formula: Formula
    unit: str
    tier: str

    @property
    def expected(self) -> bytes:
        """The first bytes of a positive answer."""
        raw = bytes.fromhex(self.request)
        return bytes((raw[0] + POSITIVE_OFFSET,)) + raw[1:]

    def decode(self, payloads: Sequence[bytes]) -> float:
        """The value from the first ECU's positive answer among ``payloads``."""
        expected = self.expected
        for payload in payloads:
            if payload.startswith(expected):
                try:
                    return self.formula(payload[len(expected):])
                except FormulaError as exc:
                    raise AnswerError(f"custom PID {self.key}: {exc}") from None
        service = expected[0] - POSITIVE_OFFSET
        refusals = [p for p in payloads if len(p) >= 3 and p[0] == NEGATIVE_RESPONSE and p[1] == service]
        if refusals:
            code = refusals[0][2]
            raise AnswerError(f"custom PID {self.key}: the ECU refused {self.request} (code {code:02X})")
        raise AnswerError(f"custom PID {self.key}: no answer to {self.request}")


def read_custom_pids(
    entries: Sequence[Section], shipped: Collection[str], tiers: Collection[str]
) -> list[CustomPid]:
    """Every ``custom_pids`` entry, checked; a ``ConfigError`` names the first bad one."""
    seen: dict[str, str] = {}
    taken = {name.lower() for name in shipped}
    pids = []
    for entry in entries:
        pid = _read_entry(entry, taken, tiers)
        folded = pid.key.lower()
        if folded in seen:
            raise entry.error("key", f"custom PID {pid.key!r} is defined twice (first at {seen[folded]})")
        seen[folded] = entry.where("key")
        pids.append(pid)
    return pids


def _read_entry(entry: Section, shipped: Collection[str], tiers: Collection[str]) -> CustomPid:
    key = entry.text("key")
    if not _KEY.fullmatch(key):
        raise entry.error("key", f"{key!r} is not 1-64 letters, digits or _")
    label = f"custom PID {key!r}"
    if key.lower() in shipped:
        raise entry.error("key", f"{label} clashes with a PID of the shipped catalogue (pids.toml)")
    request = entry.text("request").replace(" ", "")
    if not _HEX.fullmatch(request):
        raise entry.error("request", f"{label}: {request!r} is not hex digits in pairs (e.g. 0142, 22F40D)")
    service = int(request[:2], 16)
    if service not in PID_BYTES:
        raise entry.error("request", f"{label}: service {request[:2]}: only 01 and 22 are polled")
    pid_bytes = len(request) // 2 - 1
    if pid_bytes != PID_BYTES[service]:
        wanted = PID_BYTES[service]
        raise entry.error("request", f"{label}: service {request[:2]} takes {wanted} PID byte(s), "
                                     f"{request!r} has {pid_bytes}")
    header = entry.text("header", "").replace(" ", "") or None
    if header is not None and not _HEADER.fullmatch(header):
        raise entry.error("header", f"{label}: {header!r} is not a CAN id of 3 or 8 hex digits "
                                    "(or 6 for the older protocols)")
    text = entry.text("formula")
    try:
        formula = parse(text)
    except FormulaError as exc:
        raise entry.error("formula", f"{label}: {text!r}: {exc}") from None
    if formula.size == 0:
        raise entry.error("formula", f"{label}: {text!r} uses no data byte (A, B, ...)")
    tier = entry.text("tier", "slow")
    if tier not in tiers:
        raise entry.error("tier", f"{label}: no tier {tier!r} (tiers: {', '.join(sorted(tiers))})")
    pid = CustomPid(
        key=key,
        name=entry.text("name", key),
        request=request.upper(),
        header=None if header is None else header.upper(),
        formula=formula,
        unit=entry.text("unit", ""),
        tier=tier,
    )
    entry.done()
    return pid

