"""Which Glue jobs should have started by now, and why: the silent failure of a job never launched.

The triggers (GetTriggers) say when: a SCHEDULED trigger at each time of its cron schedule, a
CONDITIONAL one once its predecessors ended as its predicate requires.  A job is due when such a
time has passed and no run of the job was seen active since.  ON_DEMAND and EVENT triggers promise
no time; conditional triggers inside a workflow fire per workflow run, so they are judged by the
workflow run, not here.  Only ACTIVATED triggers count: a deactivated schedule never makes a job
due.  No grace is applied here: the value carries the time the job was due and the template's
trigger waits ``{$AWS.GLUE.MISSED.GRACE}`` after it, the one place the grace lives.

A trigger is judged from the moment this poller first saw it activated with its present
definition: times before that (before the poller started, or before the schedule changed) never
make a job due.  Pure: no AWS calls.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trapline.collectors.aws.schedule import Cron, CronError, Outcome, clock_text, predicate_fired

if TYPE_CHECKING:
    from mypy_boto3_glue.type_defs import TriggerTypeDef

log = logging.getLogger(__name__)

NOTHING_DUE = json.dumps({"due": 0, "why": ""}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Due:
    """A start that has not happened: when it was due, and which trigger promised it."""

    at: int
    why: str

    def as_json(self) -> str:
        # "why" is what the problem name shows; it is the second field so that "due" stays the
        # JSONPath-cheap first one.
        return json.dumps({"due": self.at, "why": self.why}, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Seen:
    """What the poller knows at ``now``: when each job was last seen active, how runs and crawls ended."""

    now: int
    active_until: Mapping[str, int]
    jobs: Mapping[str, Outcome]
    crawlers: Mapping[str, Outcome] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Watched:
    """An activated trigger that starts jobs at a knowable time."""

    name: str
    jobs: frozenset[str]
    cron: Cron | None  # SCHEDULED
    predicate: Mapping[str, object] | None  # CONDITIONAL outside a workflow
    seen_since: int  # first seen activated with this definition

    def due(self, job: str, seen: Seen) -> Due | None:
        """The start of ``job`` this trigger promised by ``seen.now`` that has not been seen."""
        active_until = seen.active_until.get(job, 0)
        since = max(self.seen_since, active_until)
        if self.cron is not None:
            at = self.cron.next_after(dt.datetime.fromtimestamp(since, dt.UTC))
            if at is None or at.timestamp() > seen.now:
                return None
            when = int(at.timestamp())
            return Due(when, f"trigger {self.name}: {self.cron.text} at {clock_text(when)}")
        if self.predicate is not None:
            fired = predicate_fired(self.predicate, seen.jobs, seen.crawlers)
            if fired is None or fired.at < self.seen_since or fired.at <= active_until:
                return None
            return Due(fired.at, f"trigger {self.name}: {fired.why}")
        return None


def _definition(trigger: TriggerTypeDef) -> str:
    """What makes a trigger the same trigger: a changed schedule or predicate is judged anew."""
    parts = {k: trigger.get(k) for k in ("Name", "Type", "Schedule", "Predicate", "Actions", "WorkflowName")}
    return json.dumps(parts, sort_keys=True, default=str)


class JobTriggers:
    """The watched triggers of the discovered jobs, kept across discoveries."""

    def __init__(self) -> None:
        self._watched: dict[str, Watched] = {}  # definition -> trigger
        self._unreadable: set[str] = set()  # definitions already logged as unreadable

    def update(self, triggers: Iterable[TriggerTypeDef], now: int) -> None:
        """The triggers as GetTriggers listed them: those activated and timed are watched."""
        watched: dict[str, Watched] = {}
        for trigger in triggers:
            if trigger.get("State") != "ACTIVATED":
                continue
            definition = _definition(trigger)
            known = self._watched.get(definition)
            if known is not None:
                watched[definition] = known
                continue
            made = self._watch(trigger, definition, now)
            if made is not None:
                watched[definition] = made
        self._watched = watched

    def _watch(self, trigger: TriggerTypeDef, definition: str, now: int) -> Watched | None:
        name = trigger.get("Name", "")
        jobs = frozenset(a["JobName"] for a in trigger.get("Actions", []) if a.get("JobName"))
        kind = trigger.get("Type")
        if not jobs:
            return None
        if kind == "SCHEDULED":
            try:
                cron = Cron.parse(trigger.get("Schedule", ""))
            except CronError as exc:
                if definition not in self._unreadable:
                    self._unreadable.add(definition)
                    log.warning("glue trigger %s: schedule not judged: %s", name, exc)
                return None
            return Watched(name, jobs, cron, None, now)
        if kind == "CONDITIONAL" and not trigger.get("WorkflowName"):
            predicate: Mapping[str, object] = dict(trigger.get("Predicate", {}))
            return Watched(name, jobs, None, predicate, now)
        return None

    def due(self, job: str, seen: Seen) -> Due | None:
        """The earliest start of ``job`` that some trigger promised and that has not been seen."""
        promised = (w.due(job, seen) for w in self._watched.values() if job in w.jobs)
        return min((d for d in promised if d is not None), key=lambda d: d.at, default=None)


def _newest_outcome(ends: Iterable[tuple[str, int | None]]) -> Outcome | None:
    """The newest of (state, end) pairs that ended."""
    ended = [(end, state) for state, end in ends if end is not None]
    if not ended:
        return None
    end, state = max(ended)
    return Outcome(state, end)


def never_started(graph: Mapping[str, Any]) -> list[str]:
    """Jobs of a finished workflow run that a conditional trigger should have started and did not.

    ``graph`` is the run's WorkflowGraph (GetWorkflowRun with IncludeGraph): its job nodes carry
    the run's job runs, its crawler nodes the run's crawls, its trigger nodes the triggers.  A
    trigger whose predicate the run's own outcomes satisfy, with an action job that has no run in
    the run, is a start that was promised and missed.  A branch whose predicate never held (an
    on-failure path after a success) is how workflows are drawn, not a miss.
    """
    nodes: list[Mapping[str, Any]] = [n for n in graph.get("Nodes", []) if isinstance(n, Mapping)]
    jobs: dict[str, Outcome] = {}
    crawlers: dict[str, Outcome] = {}
    ran: set[str] = set()
    for node in nodes:
        name = str(node.get("Name", ""))
        if node.get("Type") == "JOB":
            runs = node.get("JobDetails", {}).get("JobRuns", [])
            if runs:
                ran.add(name)
            outcome = _newest_outcome((r.get("JobRunState", ""), _end(r.get("CompletedOn"))) for r in runs)
        elif node.get("Type") == "CRAWLER":
            crawls = node.get("CrawlerDetails", {}).get("Crawls", [])
            outcome = _newest_outcome((c.get("State", ""), _end(c.get("CompletedOn"))) for c in crawls)
        else:
            continue
        if outcome is not None:
            (jobs if node.get("Type") == "JOB" else crawlers)[name] = outcome
    missed = []
    for node in nodes:
        trigger = node.get("TriggerDetails", {}).get("Trigger", {}) if node.get("Type") == "TRIGGER" else {}
        if trigger.get("Type") != "CONDITIONAL":
            continue
        fired = predicate_fired(trigger.get("Predicate", {}), jobs, crawlers)
        if fired is None:
            continue
        for action in trigger.get("Actions", []):
            job = action.get("JobName")
            if job and job not in ran:
                missed.append(f"{job} never started (trigger {trigger.get('Name', '')}: {fired.why})")
    return missed


def _end(value: object) -> int | None:
    return int(value.timestamp()) if isinstance(value, dt.datetime) else None
