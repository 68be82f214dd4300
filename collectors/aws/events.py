"""EventBridge state-change events -> the readings a poll would have sent for the same run.

Sans-I/O: takes the body of one SQS message (an EventBridge event, as the rule's SQS target
delivers it: the whole envelope, ``detail`` included) and returns what to do with it.  The
readings come from the same code as polling (``Run`` and ``Cycle.runs`` on the discovered
``Resource``), so a template cannot tell which path delivered a run.

States only move forward.  Each run (Glue job run, EMR step, EMR Serverless job run, EMR
cluster) keeps the rank of the state last sent; an event of a lower rank is stale, the same
state again is a duplicate, and a final state is final.  The memory of runs is bounded
(``SEEN_LIMIT``, least recently touched forgotten first) and shared with polling through the
services' ``RunTracker``: a run the poll already reported is not sent again by its event,
and the other way round.

Event shapes, as AWS documents them (EventBridge user guides):
- Glue Job State Change: docs.aws.amazon.com/glue/latest/dg/automating-awsglue-with-cloudwatch-events.html
- EMR Step Status Change, EMR Cluster State Change:
  docs.aws.amazon.com/emr/latest/ManagementGuide/emr-manage-cloudwatch-events.html
- EMR Serverless Job Run State Change:
  docs.aws.amazon.com/emr/latest/EMR-Serverless-UserGuide/using-eventbridge.html
- Glue Crawler State Change (states Started, Succeeded, Failed): the EventBridge user guide's
  event examples.

A crawler's event names the crawler but not the crawl (no id, no start time), so it cannot
give the value a poll gives for that crawl, and a different value would page a second time
for one failed crawl.  Its outcome is a poll of the crawler service out of turn instead: the
poll reads the crawl, sends it once (CrawlerService remembers what it sent) and the queue
deletes the event only after that value is in the spool.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from trapline.collectors.aws.poller import AccountsPoller, AwsPoller, CycleResult
from trapline.collectors.aws.resources import Cycle, Resource, Run, RunTracker
from trapline.collectors.aws.services import (
    GLUE_FINAL_STATES,
    EmrService,
    GlueService,
    ServerlessService,
    _run,
    _text,
)
from trapline.core.model import Item

# Runs remembered for ordering: about 470 bytes each with Glue's 67-character run ids (measured with
# tracemalloc), so at most ~10 MB; 20 000 runs is days of state changes for hundreds of jobs.
SEEN_LIMIT = 20_000
FINAL = 9  # the rank of every final state


class Verdict(StrEnum):
    """What became of one event; also the name of its counter."""

    APPLIED = "applied"  # readings sent
    DUPLICATE = "duplicate"  # this run was already sent in this state
    STALE = "stale"  # an earlier state than the one already sent (out of order)
    UNWATCHED = "unwatched"  # a resource this poller does not watch (filtered, not yet discovered)
    MALFORMED = "malformed"  # not an event this code can read: left to the dead-letter queue


@dataclass(frozen=True, slots=True)
class Kind:
    """One handled detail-type: its service, the item key of its runs, and its state ranks."""

    service: str
    key: str  # the run item of polling; "" for the cluster, whose readings are its state
    ranks: Mapping[str, int]


# Ranks of the documented states; every final state has rank FINAL.  States that share a rank
# are ordered by the event time: a cluster goes back and forth between RUNNING and WAITING, and
# the documentation does not say whether a Serverless run can be QUEUED after PENDING.
KINDS: dict[tuple[str, str], Kind] = {
    ("aws.glue", "Glue Job State Change"): Kind(
        "glue",
        "glue.job.run",
        {"STARTING": 0, "WAITING": 1, "RUNNING": 2, "STOPPING": 3} | dict.fromkeys(GLUE_FINAL_STATES, FINAL),
    ),
    ("aws.emr", "EMR Step Status Change"): Kind(
        "emr",
        "emr.step",
        {"PENDING": 0, "RUNNING": 1, "CANCEL_PENDING": 2}
        | dict.fromkeys(("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED"), FINAL),
    ),
    ("aws.emr", "EMR Cluster State Change"): Kind(
        "emr",
        "",
        {"STARTING": 0, "BOOTSTRAPPING": 1, "RUNNING": 2, "WAITING": 2, "TERMINATING": 3}
        | dict.fromkeys(("TERMINATED", "TERMINATED_WITH_ERRORS"), FINAL),
    ),
    ("aws.emr-serverless", "EMR Serverless Job Run State Change"): Kind(
        "emr_serverless",
        "emr.serverless.job.run",
        {"SUBMITTED": 0, "QUEUED": 1, "PENDING": 1, "SCHEDULED": 2, "RUNNING": 3, "CANCELLING": 4}
        | dict.fromkeys(("SUCCESS", "FAILED", "CANCELLED"), FINAL),
    ),
}


@dataclass(frozen=True, slots=True)
class Nudge:
    """A detail-type whose event only says that a resource changed: its service polls it now."""

    service: str
    name_field: str  # the detail field naming the resource (its id in the service's discovery)


NUDGES: dict[tuple[str, str], Nudge] = {
    ("aws.glue", "Glue Crawler State Change"): Nudge("glue_crawlers", "crawlerName"),
}


class BadEvent(ValueError):
    """An event that cannot be read; its text is the counter's reason (no event content in it)."""


class Watched(Protocol):
    """What one account and region's poller knows: its resources and its services' run memory."""

    def resource(self, service: str, resource_id: str) -> Resource | None: ...

    def run_tracker(self, service: str) -> RunTracker | None: ...

    def glue_run(self, job: Resource, state: str, ended: int | None, cycle: Cycle) -> None:
        """A Glue run's state beyond its run item: the job's metrics window and last success."""
        ...

    def cluster_state(self, cluster: Resource, state: str, code: str, message: str, cycle: Cycle) -> None:
        """An EMR cluster's state items."""
        ...

    def poll_now(self, service: str) -> CycleResult:
        """The run and state poll of one service, out of turn (blocking: AWS calls)."""
        ...


# (account id, region) -> its poller, None when events of that account and region are not ours
Lookup = Callable[[str, str], Watched | None]


class PollerView:
    """``Watched`` for the ``AwsPoller`` of one account and region."""

    def __init__(self, poller: AwsPoller) -> None:
        self.poller = poller

    def resource(self, service: str, resource_id: str) -> Resource | None:
        return next((r for r in self.poller.resources.get(service, []) if r.id == resource_id), None)

    def run_tracker(self, service: str) -> RunTracker | None:
        for known in self.poller.services:
            if isinstance(known, GlueService | ServerlessService) and known.name == service:
                return known.job_runs
            if isinstance(known, EmrService) and known.name == service:
                return known.steps
        return None

    def glue_run(self, job: Resource, state: str, ended: int | None, cycle: Cycle) -> None:
        for known in self.poller.services:
            if isinstance(known, GlueService):
                known.note_run(job, state, ended, cycle)

    def cluster_state(self, cluster: Resource, state: str, code: str, message: str, cycle: Cycle) -> None:
        for known in self.poller.services:
            if isinstance(known, EmrService):
                known.report_state(cluster, state, code, message, cycle)

    def poll_now(self, service: str) -> CycleResult:
        return self.poller.poll_now(service)


def lookup_for(poller: AwsPoller | AccountsPoller) -> Lookup:
    """Which poller an event of (account, region) belongs to.

    The single-account form knows its region but not its account id: it takes the events of
    its region from whichever account the queue is fed by.
    """
    if isinstance(poller, AwsPoller):
        view, region = PollerView(poller), poller.settings.region
        return lambda _account, event_region: view if event_region == region else None
    views = {(account.account_id, one.settings.region): PollerView(one) for account, one in poller.pollers}
    return lambda account, region: views.get((account, region))


@dataclass(frozen=True, slots=True)
class Event:
    """The envelope fields the mapping needs, and the detail."""

    source: str
    detail_type: str
    account: str
    region: str
    time: int  # epoch seconds
    detail: Mapping[str, Any]


@dataclass(slots=True)
class Outcome:
    verdict: Verdict
    items: list[Item] = field(default_factory=list)
    reason: str = ""  # why malformed or unwatched
    # A nudge: the service to poll now, on the poller that watches it; the poll's readings are
    # the event's (the verdict is APPLIED, whether or not the poll finds something new).
    poll: tuple[Watched, str] | None = None


def parse(body: str | bytes) -> Event:
    """The envelope of one SQS message body; ``BadEvent`` names what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadEvent("not JSON") from None
    if not isinstance(data, dict):
        raise BadEvent("not a JSON object")
    fields = {}
    for name in ("source", "detail-type", "region", "time"):
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise BadEvent(f"no {name}")
        fields[name] = value
    # AWS always sends the account; moto's envelope (5.2) has none.  Without it only the
    # single-account form, which takes any account, can place the event.
    account = data.get("account", "")
    if not isinstance(account, str):
        raise BadEvent("account not a string")
    fields["account"] = account
    detail = data.get("detail")
    if not isinstance(detail, dict):
        raise BadEvent("no detail")
    return Event(
        fields["source"],
        fields["detail-type"],
        fields["account"],
        fields["region"],
        _epoch(fields["time"]),
        detail,
    )


def _epoch(stamp: str) -> int:
    """EventBridge times are RFC 3339 in UTC ("2017-09-07T20:50:16Z"); a fraction is allowed."""
    try:
        parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadEvent("bad time") from None
    if parsed.tzinfo is None:
        raise BadEvent("bad time")
    return int(parsed.timestamp())


def _field(detail: Mapping[str, Any], name: str, required: bool = True) -> str:
    value = detail.get(name)
    if isinstance(value, str) and value:
        return value
    if value is None and not required:
        return ""
    raise BadEvent(f"no {name}" if value is None or value == "" else f"{name} not a string")


@dataclass(frozen=True, slots=True)
class _Seen:
    rank: int
    state: str
    time: int


class EventMapper:
    """Turns events into readings, once per run and state, never backwards."""

    def __init__(self, lookup: Lookup, limit: int = SEEN_LIMIT) -> None:
        self._lookup = lookup
        self._limit = limit
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self.counts: Counter[str] = Counter()  # verdict -> events
        self.malformed: Counter[str] = Counter()  # reason -> malformed events

    def apply(self, body: str | bytes) -> Outcome:
        try:
            outcome = self._apply(parse(body))
        except BadEvent as why:
            self.malformed[str(why)] += 1
            outcome = Outcome(Verdict.MALFORMED, reason=str(why))
        self.counts["received"] += 1
        self.counts[outcome.verdict] += 1
        return outcome

    def _apply(self, event: Event) -> Outcome:
        nudge = NUDGES.get((event.source, event.detail_type))
        if nudge is not None:
            return self._nudge(nudge, event)
        kind = KINDS.get((event.source, event.detail_type))
        if kind is None:
            raise BadEvent("unknown detail-type")
        detail = event.detail
        state = _field(detail, "state")
        rank = kind.ranks.get(state)
        if rank is None:
            raise BadEvent("unknown state")
        scope, run = _run_of(kind, event, state)
        watched = self._lookup(event.account, event.region)
        if watched is None:
            return Outcome(Verdict.UNWATCHED, reason="account or region not configured")
        resource = watched.resource(kind.service, scope)
        if resource is None:
            return Outcome(Verdict.UNWATCHED, reason=f"{kind.service} resource not discovered")
        tracker = watched.run_tracker(kind.service) if kind.key else None
        polled = tracker.state(scope, run.id) if tracker is not None else None
        # A state a poll reported has no event time: only its rank orders it.
        floor = None if polled is None else _Seen(kind.ranks.get(polled, 0), polled, event.time)
        verdict = self._order(
            (kind.service, event.account, event.region, scope, run.id), _Seen(rank, state, event.time), floor
        )
        if verdict is not Verdict.APPLIED:
            return Outcome(verdict)
        cycle = Cycle()
        if tracker is not None:
            tracker.note(scope, run.id, state, final=rank == FINAL)
            cycle.runs(resource, kind.key, [run])
        if kind.service == "glue":
            watched.glue_run(resource, state, run.clock if rank == FINAL else None, cycle)
        elif not kind.key:
            watched.cluster_state(resource, state, *cluster_reason(detail), cycle)
        return Outcome(Verdict.APPLIED, cycle.items)

    def _nudge(self, nudge: Nudge, event: Event) -> Outcome:
        name = _field(event.detail, nudge.name_field)
        _field(event.detail, "state")  # any state: the poll reads what it means
        watched = self._lookup(event.account, event.region)
        if watched is None:
            return Outcome(Verdict.UNWATCHED, reason="account or region not configured")
        if watched.resource(nudge.service, name) is None:
            return Outcome(Verdict.UNWATCHED, reason=f"{nudge.service} resource not discovered")
        return Outcome(Verdict.APPLIED, poll=(watched, nudge.service))

    def _order(self, ident: tuple[str, ...], new: _Seen, floor: _Seen | None) -> Verdict:
        known = [seen for seen in (self._seen.get(ident), floor) if seen is not None]
        if ident in self._seen:
            self._seen.move_to_end(ident)
        if any(seen.state == new.state for seen in known):
            return Verdict.DUPLICATE
        for seen in known:
            if new.rank < seen.rank or seen.rank == FINAL or (new.rank == seen.rank and new.time < seen.time):
                return Verdict.STALE
        self._seen[ident] = new
        self._seen.move_to_end(ident)
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return Verdict.APPLIED

    def remembered(self) -> int:
        return len(self._seen)


def _run_of(kind: Kind, event: Event, state: str) -> tuple[str, Run]:
    """The resource id and the run (for the cluster: the cluster itself) an event is about."""
    detail = event.detail
    final = kind.ranks[state] == FINAL
    ended = event.time if final else None
    if kind.service == "glue":
        failed = final and state not in ("SUCCEEDED", "STOPPED")
        # Glue's message of a success is "Job run succeeded": polling sends no error text then.
        error = _text(_field(detail, "message", required=False)) if failed else ""
        run = _run(_field(detail, "jobRunId"), state, None, ended, error=error)
        return _field(detail, "jobName"), run
    if kind.service == "emr_serverless":
        # createdAt/updatedAt are in the documented example; a missing one falls back to the
        # event time, as polling falls back to now.
        created = _optional_epoch(detail, "createdAt")
        updated = _optional_epoch(detail, "updatedAt") or event.time
        error = _text(_field(detail, "stateDetails", required=False))
        name = _field(detail, "jobRunName", required=False)
        run = _run(
            _field(detail, "jobRunId"), state, created, updated if final else None, name=name, error=error
        )
        return _field(detail, "applicationId"), run
    cluster = _field(detail, "clusterId")
    if not kind.key:
        return cluster, _run(cluster, state, None, event.time)
    failed = state in ("FAILED", "INTERRUPTED", "CANCELLED")
    error = _text(_field(detail, "message", required=False)) if failed else ""
    run = _run(
        _field(detail, "stepId"), state, None, ended, name=_field(detail, "name", required=False), error=error
    )
    return cluster, run


def _optional_epoch(detail: Mapping[str, Any], name: str) -> int | None:
    value = detail.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadEvent(f"{name} not a string")
    return _epoch(value)


def cluster_reason(detail: Mapping[str, Any]) -> tuple[str, str]:
    """The (code, message) of an EMR cluster event's ``stateChangeReason``, a JSON text."""
    raw = detail.get("stateChangeReason")
    if not isinstance(raw, str) or not raw:
        return "", ""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return "", ""
    if not isinstance(parsed, dict):
        return "", ""
    return str(parsed.get("code") or ""), str(parsed.get("message") or "")
