"""What the services have in common: a watched resource, its runs, and the cycle's output."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from trapline.collectors.aws.session import describe_failure
from trapline.core.model import Item, Reading, Value, now_clock

log = logging.getLogger(__name__)
T = TypeVar("T")

# Stop paging a run history after this many pages in one cycle, whatever happened.
MAX_PAGES = 10


# ASCII that may stand unquoted in a Zabbix item key parameter, and still means the same
# after Zabbix substitutes it into a key prototype (which quotes values it dislikes).
_KEY_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~:/@+=")
ID_SHOWN = 16  # a run id longer than this is shortened in problem names
ERROR_SHOWN = 160  # error characters quoted in a problem name; the item keeps all of it


# AWS tag keys (matched in any case) that problems carry as Zabbix tags of the same name, so that
# a failure can be routed to its team and a resource put in maintenance by its owner.
ROUTING_TAGS = {"team": "{#TEAM}", "owner": "{#OWNER}"}


def routing(tags: Mapping[str, str]) -> dict[str, str]:
    """The LLD macros of ``ROUTING_TAGS`` from a resource's AWS tags, empty where a tag is not set.

    Every macro is always present: an LLD macro missing from a row would stay in the
    Zabbix tag as the literal ``{#TEAM}``.
    """
    lowered = {key.lower(): value for key, value in tags.items()}
    return {macro: lowered.get(key, "") for key, macro in ROUTING_TAGS.items()}


def key_param(value: str) -> str:
    """``value`` as one unquoted item key parameter: other ASCII, blanks and controls percent-encoded.

    Quoting is not an option: an LLD macro value is quoted again by Zabbix when it
    lands in a key prototype, so the key the collector sends would not match.
    Printable non-ASCII stays as it is, so keys remain readable.
    """
    out = []
    for char in value:
        if char in _KEY_SAFE or (char > "\x7f" and char.isprintable() and not char.isspace()):
            out.append(char)
        else:
            out.extend(f"%{b:02X}" for b in char.encode())
    return "".join(out)


def _one_line(text: str, limit: int) -> str:
    flat = "".join(c for c in " ".join(text.split()) if c.isprintable())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def _shown(text: str, limit: int) -> str:
    """``text`` for a run title: one line, without the characters JSON escapes, at most ``limit``."""
    return _one_line(text.replace('"', "'").replace("\\", "/"), limit)


def job_label(name: str) -> str:
    """A job name fit for item and problem names: one line, not longer than a title should be."""
    return _one_line(name, 64)


def short_id(run_id: str) -> str:
    """Start and end of a long id: enough to tell runs apart and to find the run in the console."""
    if len(run_id) <= ID_SHOWN:
        return run_id
    return f"{run_id[: ID_SHOWN - 5]}\u2026{run_id[-4:]}"


@dataclass(frozen=True, slots=True)
class Resource:
    """A discovered cluster, application or job, and where its readings go."""

    service: str
    id: str  # the CloudWatch dimension value (cluster id, application id, job name)
    name: str
    host: str  # Zabbix host that receives its readings
    key_param: str | None  # parameter appended to item keys; None on a per-resource host
    lld: Mapping[str, str]
    flags: frozenset[str] = frozenset()  # job arguments set to "true" (Glue)

    def key(self, base: str) -> str:
        return base if self.key_param is None else f"{base}[{self.key_param}]"


@dataclass(frozen=True, slots=True)
class Run:
    """One run (Glue job run, EMR step, EMR Serverless job run) in one state."""

    id: str
    state: str
    started: float  # epoch seconds, orders the runs
    clock: int  # epoch seconds of this state (end time when finished)
    values: tuple[tuple[str, Value], ...]  # JSON field -> value, read by dependent items
    name: str = ""
    error: str = ""

    def title(self) -> str:
        """What a problem name quotes: run (and its name), state, and the start of the error."""
        label = short_id(self.id) if not self.name else f"{_shown(self.name, 64)} ({short_id(self.id)})"
        text = f"{label} {self.state}"
        return f"{text}: {_shown(self.error, ERROR_SHOWN)}" if self.error.strip() else text

    def as_json(self) -> str:
        """The run as one value: every field of a problem comes from the same value.

        Zabbix expands each ``{ITEM.VALUE<n>}`` from its own item when the trigger is
        evaluated, so fields spread over several items can belong to different runs.
        The title is first and free of quotes, so an event name can cut it out with regsub.
        """
        fields: dict[str, Value] = {"title": self.title(), "id": self.id, "state": self.state}
        if self.name:
            fields["name"] = self.name
        fields["error"] = self.error
        fields.update(self.values)
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def epoch(value: dt.datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


class RunTracker:
    """Remembers the state each run was last reported in, per job/cluster/application.

    The first time a scope is seen only its newest run is reported (the last
    state), not the whole history; afterwards every run that is new or changed
    state since the previous poll, oldest first.
    """

    def __init__(self) -> None:
        self._states: dict[str, dict[str, str]] = {}
        # Run states the event path sent for scopes no poll has seen yet: the first poll then
        # leaves out its newest run if an event already reported it in that state.
        self._noted: dict[str, dict[str, str]] = {}
        # Final states the event path sent that no poll has seen yet.  A poll that read the
        # runs just before the event arrived sees the run still going: it must not report that
        # earlier state after the final one (the run would look unfinished, and overdue later).
        self._ended: dict[str, dict[str, str]] = {}
        # The event path notes runs from the event loop while a poll runs in a worker thread.
        self._lock = threading.Lock()

    def knows_any(self, scope: str, ids: Iterable[str]) -> bool:
        known = self._states.get(scope)
        return known is not None and any(i in known for i in ids)

    def primed(self, scope: str) -> bool:
        return scope in self._states

    def state(self, scope: str, run_id: str) -> str | None:
        """The state ``run_id`` was last reported in, by a poll or an event; None if never."""
        with self._lock:
            return self._states.get(scope, self._noted.get(scope, {})).get(run_id)

    def note(self, scope: str, run_id: str, state: str, final: bool = False) -> None:
        """An event reported the run in ``state``: a poll must not report it in that state again,
        nor, when ``final``, in any other."""
        with self._lock:
            self._states.get(scope, self._noted.setdefault(scope, {}))[run_id] = state
            if final:
                self._ended.setdefault(scope, {})[run_id] = state

    def changes(self, scope: str, runs: Sequence[Run]) -> list[Run]:
        newest_first = sorted(runs, key=lambda r: r.started, reverse=True)
        with self._lock:
            previous = self._states.get(scope)
            ended = self._ended.pop(scope, {})
            # Runs this poll saw in an earlier state than the final one an event sent.
            behind = {r.id: ended[r.id] for r in newest_first if ended.get(r.id, r.state) != r.state}
            if behind:
                self._ended[scope] = behind  # until a poll catches up with them
            self._states[scope] = {r.id: behind.get(r.id, r.state) for r in newest_first}
            noted = self._noted.pop(scope, {})
        if previous is None:
            return [r for r in newest_first[:1] if r.id not in behind and noted.get(r.id) != r.state]
        changed = [r for r in reversed(newest_first) if r.id not in behind and previous.get(r.id) != r.state]
        # Sent in the order of their own clocks: Zabbix's last() is the newest by clock, so a
        # value sent after one with a later clock would leave the trigger judging the older run.
        return sorted(changed, key=lambda r: (r.clock, r.started))

    def keep_only(self, scopes: Iterable[str]) -> None:
        wanted = set(scopes)
        with self._lock:
            for states in (self._states, self._noted, self._ended):
                for scope in list(states):
                    if scope not in wanted:
                        del states[scope]


def pages_until_known(
    tracker: RunTracker,
    scope: str,
    pages: Iterable[Sequence[T]],
    run_id: Callable[[T], str],
) -> list[T]:
    """Collect pages (newest first) until one holds a run reported before.

    A scope seen for the first time needs only its first page.
    """
    collected: list[T] = []
    for count, page in enumerate(pages, start=1):
        collected.extend(page)
        if not tracker.primed(scope) or tracker.knows_any(scope, map(run_id, page)) or count >= MAX_PAGES:
            break
    return collected


@dataclass(slots=True)
class Cycle:
    """Everything one poll cycle produced: items, and errors counted by reason."""

    items: list[Item] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    throttled: bool = False
    credentials_failed: bool = False
    halted: bool = False  # endpoint down or credentials refused: skip the rest of the cycle
    throttles: int = 0  # calls refused for the rate (after botocore's retries)
    denied: int = 0  # calls refused by IAM
    missing: Counter[str] = field(default_factory=Counter)  # service -> series without datapoint
    where: str = ""  # "<label>/<region>: " in the list form, so that a log line names its account

    def reading(
        self, host: str, key: str, value: Value, clock: int | None = None, *, unit: str = "", ns: int = 0
    ) -> None:
        if clock is None:
            self.items.append(Reading.now(host, key, value, unit))
        else:
            self.items.append(Reading(host, key, value, clock, ns, unit))

    def runs(self, resource: Resource, key: str, runs: Iterable[Run]) -> None:
        for run in runs:
            # Two runs of one job may end in the same second: a nanosecond part derived from
            # the run and its state keeps their values apart in Zabbix (one history row per
            # item, clock and ns), and stays the same when a poll reports the run again.
            ns = zlib.crc32(f"{run.id}/{run.state}".encode()) % 1_000_000_000
            self.reading(resource.host, resource.key(key), run.as_json(), run.clock, ns=ns)

    def guard(self, what: str, action: Callable[[], T]) -> T | None:
        """Run one step; a failure is counted and worded, never raised."""
        if self.halted:
            return None
        try:
            return action()
        except Exception as exc:
            failure = describe_failure(exc)
            self.errors[failure.reason] += 1
            self.throttled |= failure.throttled
            self.throttles += failure.throttled
            self.denied += failure.denied
            self.credentials_failed |= failure.credentials
            self.halted |= failure.halts
            if failure.reason.startswith("unexpected"):
                log.exception("%s%s: %s", self.where, what, failure.reason)
            else:
                log.warning("%s%s: %s", self.where, what, failure.reason)
            return None


def now_epoch() -> int:
    return now_clock()[0]
