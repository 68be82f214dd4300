"""When a Glue trigger should have started its jobs: AWS cron schedules and conditional predicates.

Pure functions, no AWS calls.  The cron grammar is the one of Glue's "Time-based schedules for jobs
and crawlers" and EventBridge's "Cron expressions reference": ``cron(Minutes Hours Day-of-month
Month Day-of-week Year)`` in UTC, with ``, - * /`` in every field, ``?`` in either day field,
``L`` and ``nW`` in day-of-month, ``L``, ``nL`` and ``n#k`` in day-of-week (1 = SUN ... 7 = SAT),
month and weekday names; one of the two day fields must be ``?``.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

# English names whatever the locale (calendar.month_abbr follows the locale).
MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
MONTHS = {name: number for number, name in enumerate(MONTH_NAMES, 1)}
WEEKDAYS = {"SUN": 1, "MON": 2, "TUE": 3, "WED": 4, "THU": 5, "FRI": 6, "SAT": 7}
FIRST_YEAR, LAST_YEAR = 1970, 2199
DayRule = Callable[[dt.date], bool]


class CronError(ValueError):
    """A schedule this module cannot read: the trigger is then not judged (never paged on)."""


def _aws_weekday(day: dt.date) -> int:
    """1 = Sunday ... 7 = Saturday, as AWS numbers the day-of-week field."""
    return (day.weekday() + 1) % 7 + 1


def _number(text: str, names: Mapping[str, int]) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not text.isdigit():
        raise CronError(f"not a number: {text!r}")
    return int(text)


def _values(field: str, low: int, high: int, names: Mapping[str, int] | None = None) -> frozenset[int]:
    """The values of a field made of ``,`` ``-`` ``*`` ``/`` parts."""
    out: set[int] = set()
    for part in field.split(","):
        body, _, step_text = part.partition("/")
        step = _number(step_text, {}) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            first, last = body.split("-", 1)
            start, end = _number(first, names or {}), _number(last, names or {})
        else:
            start = _number(body, names or {})
            end = high if step_text else start  # "5/15": from 5 to the end, every 15
        if step < 1 or not low <= start <= high or not low <= end <= high:
            raise CronError(f"out of range {low}-{high}: {part!r}")
        if end < start:
            raise CronError(f"reversed range: {part!r}")
        out.update(range(start, end + 1, step))
    return frozenset(out)


def _nearest_weekday(year: int, month: int, wanted: int) -> int:
    """The day of ``nW``: the Monday-Friday day nearest ``wanted``, never leaving the month; none
    in a month without that day (the AWS docs do not say: no expected run is the safe reading)."""
    last = calendar.monthrange(year, month)[1]
    if wanted > last:
        return 0
    day = wanted
    weekday = dt.date(year, month, day).weekday()
    if weekday == 5:  # Saturday: Friday before, or Monday after when the 1st is a Saturday
        return day - 1 if day > 1 else day + 2
    if weekday == 6:  # Sunday: Monday after, or Friday before when it is the last day
        return day + 1 if day < last else day - 2
    return day


def _day_of_month(field: str) -> DayRule:
    if field == "L":
        return lambda d: d.day == calendar.monthrange(d.year, d.month)[1]
    if field.endswith("W"):
        wanted = _number(field[:-1], {})
        if not 1 <= wanted <= 31:
            raise CronError(f"day out of range: {field!r}")
        return lambda d: d.day == _nearest_weekday(d.year, d.month, wanted)
    days = _values(field, 1, 31)
    return lambda d: d.day in days


def _day_of_week(field: str) -> DayRule:
    if field == "L":
        return lambda d: _aws_weekday(d) == 7
    if field.endswith("L"):
        weekday = _number(field[:-1], WEEKDAYS)
        # The last such weekday of the month: a week later is in the next month.
        return lambda d: _aws_weekday(d) == weekday and (d + dt.timedelta(days=7)).month != d.month
    if "#" in field:
        day_text, _, nth_text = field.partition("#")
        weekday, nth = _number(day_text, WEEKDAYS), _number(nth_text, {})
        if not 1 <= weekday <= 7 or not 1 <= nth <= 5:
            raise CronError(f"out of range: {field!r}")
        return lambda d: _aws_weekday(d) == weekday and (d.day - 1) // 7 + 1 == nth
    weekdays = _values(field, 1, 7, WEEKDAYS)
    return lambda d: _aws_weekday(d) in weekdays


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed schedule; ``text`` is the expression as the trigger holds it."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: frozenset[int]
    years: tuple[int, ...]
    day: DayRule

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = expression.strip()
        if not (text.startswith("cron(") and text.endswith(")")):
            raise CronError(f"not a cron(...) schedule: {expression!r}")
        fields = text[5:-1].split()
        if len(fields) != 6:
            raise CronError(f"six fields expected: {expression!r}")
        minute, hour, dom, month, dow, year = fields
        if (dom == "?") == (dow == "?"):
            raise CronError(f"exactly one of day-of-month and day-of-week must be '?': {expression!r}")
        day = _day_of_week(dow) if dom == "?" else _day_of_month(dom)
        return cls(
            text,
            tuple(sorted(_values(minute, 0, 59))),
            tuple(sorted(_values(hour, 0, 23))),
            _values(month, 1, 12, MONTHS),
            tuple(sorted(_values(year, FIRST_YEAR, LAST_YEAR))),
            day,
        )

    def _days(self, start: dt.date, forward: bool) -> Iterator[dt.date]:
        """Matching days from ``start`` (included) onwards or backwards."""
        years = self.years if forward else tuple(reversed(self.years))
        months = sorted(self.months, reverse=not forward)
        for year in years:
            if (year < start.year) if forward else (year > start.year):
                continue
            for month in months:
                before = (year, month) < (start.year, start.month)
                if before if forward else (year, month) > (start.year, start.month):
                    continue
                last = calendar.monthrange(year, month)[1]
                days = range(1, last + 1) if forward else range(last, 0, -1)
                for number in days:
                    day = dt.date(year, month, number)
                    if (day >= start if forward else day <= start) and self.day(day):
                        yield day

    def last_at_or_before(self, moment: dt.datetime) -> dt.datetime | None:
        """The newest scheduled minute at or before ``moment`` (UTC)."""
        moment = moment.astimezone(dt.UTC)
        for day in self._days(moment.date(), forward=False):
            for hour in reversed(self.hours):
                for minute in reversed(self.minutes):
                    at = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
                    if at <= moment:
                        return at
        return None

    def next_after(self, moment: dt.datetime) -> dt.datetime | None:
        """The first scheduled minute strictly after ``moment`` (UTC)."""
        moment = moment.astimezone(dt.UTC)
        for day in self._days(moment.date(), forward=True):
            for hour in self.hours:
                for minute in self.minutes:
                    at = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=dt.UTC)
                    if at > moment:
                        return at
        return None


# Conditional triggers: the Predicate and Condition shapes of botocore's Glue service model.
JOB_OUTCOMES = frozenset({"SUCCEEDED", "STOPPED", "FAILED", "TIMEOUT"})
CRAWL_OUTCOMES = frozenset({"SUCCEEDED", "CANCELLED", "FAILED"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a job run or crawl last ended: its final state and when."""

    state: str
    ended: int


@dataclass(frozen=True, slots=True)
class Fired:
    """A predicate that holds: since when, and why, in words for the problem name."""

    at: int
    why: str


def predicate_fired(
    predicate: Mapping[str, object],
    jobs: Mapping[str, Outcome],
    crawlers: Mapping[str, Outcome],
) -> Fired | None:
    """Whether the predecessors' newest outcomes satisfy the predicate, and since when.

    ``Logical`` AND needs every condition to hold (it holds since the last of them ended), ANY
    needs one (it holds since the newest one that does ended: each matching end fires the
    trigger again).  A condition on a job or crawler without a known outcome does not hold, and
    a condition this module does not understand makes the predicate never hold: a trigger it
    cannot read is not judged.
    """
    conditions = predicate.get("Conditions", [])
    if not isinstance(conditions, Sequence) or not conditions:
        return None
    held: list[tuple[int, str]] = []
    for condition in conditions:
        if not isinstance(condition, Mapping) or condition.get("LogicalOperator", "EQUALS") != "EQUALS":
            return None
        met = _condition_met(condition, jobs, crawlers)
        if met is not None:
            held.append(met)
    logical = predicate.get("Logical", "AND")
    if logical == "ANY" and held:
        at, why = max(held)
        return Fired(at, why)
    if logical == "AND" and len(held) == len(conditions):
        return Fired(max(at for at, _ in held), ", ".join(why for _, why in held))
    return None


def _condition_met(
    condition: Mapping[str, object], jobs: Mapping[str, Outcome], crawlers: Mapping[str, Outcome]
) -> tuple[int, str] | None:
    job, crawler = condition.get("JobName"), condition.get("CrawlerName")
    if isinstance(job, str) and condition.get("State") in JOB_OUTCOMES:
        name, wanted, outcome = job, condition["State"], jobs.get(job)
    elif isinstance(crawler, str) and condition.get("CrawlState") in CRAWL_OUTCOMES:
        name, wanted, outcome = f"crawler {crawler}", condition["CrawlState"], crawlers.get(crawler)
    else:
        return None
    if outcome is None or outcome.state != wanted:
        return None
    return outcome.ended, f"{name} {wanted} at {clock_text(outcome.ended)}"


def clock_text(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
