"""Which Mist orgs and sites one collector instance owns when several split an MSP's orgs between them.

Every instance is configured with the same orgs and sites and its own ``shard = "k/N"``;
an org (with all its sites) or a site configured by id belongs to exactly one of the N
shards, decided from its id alone, so instances agree without talking to each other and
an instance decides the same after a restart.  An org stays whole so that one discovery
rule creates its host group: Zabbix 6.0 refuses to create a group that another rule's
prototype created, and the hosts of the second rule would go without it (7.0 shares it).

The choice is rendezvous (highest random weight) hashing over BLAKE2b digests salted with
the shard number, not Python's ``hash()``, which is salted per process.  Rendezvous hashing
moves few ids when N changes: going from N to N+1 instances moves only the ids the new
shard wins (about 1/(N+1) of them), where ``hash % N`` would move most.  A site that
moves loses its AP hosts on the old instance's discovery host, so few moves matter.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_SPEC = re.compile(r" *([0-9]{1,4}) */ *([0-9]{1,4}) *")  # ASCII digits: \d would take any script
# Far above any sensible instance count; bounds the per-id cost, one digest per shard
# (bench/RESULTS.md, "Code shapes").
MAX_SHARDS = 100


def _weight(mist_id: str, shard: int) -> bytes:
    # Mist ids are lowercase UUIDs; a hand-typed uppercase id still lands in the same shard.
    return hashlib.blake2b(mist_id.lower().encode(), digest_size=8, salt=shard.to_bytes(16, "big")).digest()


def shard_of(mist_id: str, count: int) -> int:
    """The shard (1..count) that owns an org or site id: the one with the highest weight for it."""
    return max(range(1, count + 1), key=lambda shard: _weight(mist_id, shard))


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (both from 1); ``Shard(1, 1)`` owns everything."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"the number of shards must be 1 to {MAX_SHARDS}, not {self.count}")
        if not 1 <= self.index <= self.count:
            raise ValueError(f"the shard number must be 1 to {self.count}, not {self.index}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"k/N"``: this instance is shard k of N; ValueError says what is wrong."""
        match = _SPEC.fullmatch(text)
        if match is None:
            raise ValueError(
                f'{text[:40]!r} is not of the form "k/N" (this instance is shard k of N, e.g. "2/3")'
            )
        return cls(int(match[1]), int(match[2]))

    def owns(self, mist_id: str) -> bool:
        return self.count == 1 or shard_of(mist_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


ALL_SITES = Shard(1, 1)
