"""The DTCs a vehicle last reported as present, kept on disk across agent restarts.

A code is sent as 1 while the ECU reports it and as 0 once when it is gone,
which resolves its problem in Zabbix.  Without this file a code cleared while
the agent was stopped would never get its 0: after a restart the collector
would not know it had ever reported it.  One small JSON file per collector in
the agent's state directory, replaced atomically so a power cut leaves either
the old or the new set.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path

from trapline.wire.vehicle_state import replace_file

log = logging.getLogger(__name__)

Dtc = tuple[str, str]  # (code such as "P0143", "stored" or "pending")

_CODE = re.compile(r"[PCBU][0-3][0-9A-F]{3}")
_STATES = frozenset(("stored", "pending"))
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]")
_FORMAT = 1


class UnreadableMemory(ValueError):
    """The file cannot be read or is not what this module writes; ``str()`` says why."""


def memory_path(state_dir: Path, collector: str) -> Path:
    return state_dir / f"obd-{_UNSAFE_IN_NAME.sub('_', collector)}.dtcs.json"


class DtcMemory:
    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host

    def load(self) -> set[Dtc]:
        """The codes saved for this host; empty if there is no file yet or it was another host's.

        Raises :class:`UnreadableMemory` for a file that cannot be read or parsed.
        """
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnreadableMemory(f"cannot read {self.path}: {exc}") from None
        well_formed = isinstance(raw, dict) and raw.get("format") == _FORMAT
        if not well_formed or not isinstance(raw.get("reported"), list):
            raise UnreadableMemory(f"{self.path} is not a DTC memory file (format {_FORMAT})")
        if raw.get("host") != self.host:  # the vehicle got another host name: nothing to resolve there
            log.info("%s was written for host %r, not %r; ignored", self.path, raw.get("host"), self.host)
            return set()
        codes: set[Dtc] = set()
        for entry in raw["reported"]:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                    and _CODE.fullmatch(entry[0]) and entry[1] in _STATES):
                raise UnreadableMemory(f"{self.path} holds a malformed DTC entry {entry!r}")
            codes.add((entry[0], entry[1]))
        return codes

    def save(self, codes: Iterable[Dtc]) -> None:
        """Replace the file atomically (see :func:`replace_file`).

        Blocks on the disk: call it off the event loop.  Raises ``OSError``.
        """
        body = json.dumps({"format": _FORMAT, "host": self.host, "reported": sorted(map(list, codes))})
        replace_file(self.path, body)
