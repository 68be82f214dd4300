"""The AWS cron schedules and conditional predicates of Glue triggers (collectors/aws/schedule.py).

The grammar comes from the AWS docs, Glue "Time-based schedules for jobs and crawlers" and
EventBridge "Cron expressions reference": six fields ``Minutes Hours Day-of-month Month
Day-of-week Year``, ``, - * /`` everywhere, ``?`` in one day field, ``L``/``nW`` in day-of-month,
``L``/``nL``/``n#k`` in day-of-week with 1 = SUN, names for months and weekdays, UTC.  The property
test builds each expression from a structure and checks the answers against a minute-by-minute
scan that reads the structure, not the text: the parser and the search are both under test.
The predicate shapes (Predicate: Logical, Conditions: LogicalOperator, JobName, State,
CrawlerName, CrawlState) are those of botocore's Glue service model.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapline.collectors.aws.schedule import Cron, CronError, Fired, Outcome, predicate_fired

WINDOW = dt.timedelta(days=2)  # the scan's reach either side of the moment
MINUTE = dt.timedelta(minutes=1)
MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAY_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@dataclass(frozen=True)
class Field:
    text: str
    values: frozenset[int]


def _part(low: int, high: int, names: list[str] | None, whole: range) -> st.SearchStrategy[Field]:
    """One comma part: a value, a range, a stepped range or ``*`` with a step, as text and values.

    Values are drawn in ``low``-``high``; ``whole`` is the field's range in the grammar, where
    ``*`` and an open ``n/step`` reach.
    """

    def shown(value: int, by_name: bool) -> str:
        return names[value - low] if names and by_name else str(value)

    @st.composite
    def build(draw: st.DrawFn) -> Field:
        start = draw(st.integers(low, high))
        end = draw(st.integers(start, high))
        step = draw(st.integers(1, max(1, high - low)))
        by_name = draw(st.booleans())
        form = draw(st.sampled_from(["value", "range", "from-step", "range-step", "star-step"]))
        if form == "value":
            return Field(shown(start, by_name), frozenset({start}))
        if form == "range":
            return Field(f"{shown(start, by_name)}-{shown(end, by_name)}", frozenset(range(start, end + 1)))
        if form == "from-step":
            return Field(f"{start}/{step}", frozenset(range(start, whole.stop, step)))
        if form == "range-step":
            return Field(f"{start}-{end}/{step}", frozenset(range(start, end + 1, step)))
        return Field(f"*/{step}", frozenset(range(whole.start, whole.stop, step)))

    return build()


def _field(
    low: int, high: int, names: list[str] | None = None, whole: range | None = None
) -> st.SearchStrategy[Field]:
    whole = whole or range(low, high + 1)
    star = st.just(Field("*", frozenset(whole)))
    listed = st.lists(_part(low, high, names, whole), min_size=1, max_size=3).map(
        lambda parts: Field(",".join(p.text for p in parts), frozenset().union(*(p.values for p in parts)))
    )
    return st.one_of(star, listed)


def _weekday(day: dt.date) -> int:
    return day.isoweekday() % 7 + 1  # ISO Monday 1 ... Sunday 7 -> AWS Sunday 1 ... Saturday 7


def _month_end(day: dt.date) -> int:
    return calendar.monthrange(day.year, day.month)[1]


@st.composite
def _days(draw: st.DrawFn) -> tuple[str, str, Callable[[dt.date], bool]]:
    """(day-of-month text, day-of-week text, which dates match)."""
    form = draw(st.sampled_from(["dom", "dom-L", "dom-W", "dow", "dow-L", "dow-nL", "dow-#"]))
    if form == "dom":
        days = draw(_field(1, 31))
        return days.text, "?", lambda d: d.day in days.values
    if form == "dom-L":
        return "L", "?", lambda d: d.day == _month_end(d)
    if form == "dom-W":
        wanted = draw(st.integers(1, 28))

        def nearest(d: dt.date) -> bool:
            weekdays = [n for n in range(1, _month_end(d) + 1) if d.replace(day=n).isoweekday() <= 5]
            return d.day == min(weekdays, key=lambda n: abs(n - wanted))

        return f"{wanted}W", "?", nearest
    if form == "dow":
        weekdays = draw(_field(1, 7, DAY_NAMES))
        return "?", weekdays.text, lambda d: _weekday(d) in weekdays.values
    if form == "dow-L":
        return "?", "L", lambda d: _weekday(d) == 7
    weekday = draw(st.integers(1, 7))
    if form == "dow-nL":
        return "?", f"{weekday}L", lambda d: _weekday(d) == weekday and d.day > _month_end(d) - 7
    nth = draw(st.integers(1, 5))
    return "?", f"{weekday}#{nth}", lambda d: _weekday(d) == weekday and nth * 7 - 6 <= d.day <= nth * 7


MOMENTS = st.datetimes(dt.datetime(2025, 1, 1), dt.datetime(2027, 12, 31), timezones=st.just(dt.UTC))


@given(
    minutes=_field(0, 59),
    hours=_field(0, 23),
    days=_days(),
    months=_field(1, 12, MONTH_NAMES),
    years=_field(2024, 2028, whole=range(1970, 2200)),
    moment=MOMENTS,
)
@settings(max_examples=150, deadline=None)
def test_schedule_answers_match_a_minute_by_minute_scan(
    *,
    minutes: Field,
    hours: Field,
    days: tuple[str, str, Callable[[dt.date], bool]],
    months: Field,
    years: Field,
    moment: dt.datetime,
) -> None:
    dom, dow, day_matches = days
    expression = f"cron({minutes.text} {hours.text} {dom} {months.text} {dow} {years.text})"
    cron = Cron.parse(expression)

    def scheduled(at: dt.datetime) -> bool:
        return (
            at.minute in minutes.values
            and at.hour in hours.values
            and at.month in months.values
            and at.year in years.values
            and day_matches(at.date())
        )

    start = moment.replace(second=0, microsecond=0)
    earlier = next(
        (start - n * MINUTE for n in range(WINDOW // MINUTE) if scheduled(start - n * MINUTE)), None
    )
    later = next(
        (start + n * MINUTE for n in range(1, WINDOW // MINUTE) if scheduled(start + n * MINUTE)), None
    )
    found_before, found_after = cron.last_at_or_before(moment), cron.next_after(moment)
    if earlier is not None:
        assert found_before == earlier, expression
    else:
        assert found_before is None or found_before <= start - WINDOW, expression
    if later is not None:
        assert found_after == later, expression
    else:
        assert found_after is None or found_after >= start + WINDOW - MINUTE, expression


def test_documented_examples() -> None:
    """Examples from the Glue docs' table, at a known moment (Monday 2026-12-07 06:00 UTC)."""
    monday = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)
    daily = Cron.parse("cron(15 12 * * ? *)")
    assert daily.last_at_or_before(monday) == dt.datetime(2026, 12, 6, 12, 15, tzinfo=dt.UTC)
    assert daily.next_after(monday) == dt.datetime(2026, 12, 7, 12, 15, tzinfo=dt.UTC)
    weekdays = Cron.parse("cron(0 18 ? * MON-FRI *)")
    assert weekdays.last_at_or_before(monday) == dt.datetime(2026, 12, 4, 18, 0, tzinfo=dt.UTC)  # Friday
    quarter = Cron.parse("cron(0/15 * * * ? *)")
    assert quarter.next_after(monday) == dt.datetime(2026, 12, 7, 6, 15, tzinfo=dt.UTC)
    second_tuesday = Cron.parse("cron(0 8 ? * 3#2 *)")
    assert second_tuesday.next_after(monday) == dt.datetime(2026, 12, 8, 8, 0, tzinfo=dt.UTC)
    assert Cron.parse("cron(0 0 30 FEB ? *)").next_after(monday) is None  # a day that never comes


@pytest.mark.parametrize(
    "expression",
    [
        "rate(5 minutes)",  # a rate, not a cron: EventBridge has them, Glue triggers do not
        "cron(0 2 * * *)",  # five fields
        "cron(0 2 * * * *)",  # both day fields set
        "cron(0 2 ? * ? *)",  # neither
        "cron(60 2 * * ? *)",
        "cron(0 2 5-1 * ? *)",
        "cron(0 2 * FOO ? *)",
        "cron(0 2 ? * 8#1 *)",
        "cron(0 2 0/0 * ? *)",
    ],
)
def test_unreadable_schedules_are_refused(expression: str) -> None:
    with pytest.raises(CronError):
        Cron.parse(expression)


LOAD_DONE = Outcome("SUCCEEDED", 1_800_000_000)
CRAWL_DONE = Outcome("SUCCEEDED", 1_800_000_600)


def _condition(job: str, state: str = "SUCCEEDED") -> dict[str, str]:
    return {"LogicalOperator": "EQUALS", "JobName": job, "State": state}


def test_and_holds_once_every_predecessor_ended_as_required() -> None:
    predicate = {
        "Logical": "AND",
        "Conditions": [
            _condition("load"),
            {"LogicalOperator": "EQUALS", "CrawlerName": "raw", "CrawlState": "SUCCEEDED"},
        ],
    }
    fired = predicate_fired(predicate, {"load": LOAD_DONE}, {"raw": CRAWL_DONE})
    assert fired == Fired(
        CRAWL_DONE.ended,
        "load SUCCEEDED at 2027-01-15 08:00 UTC, crawler raw SUCCEEDED at 2027-01-15 08:10 UTC",
    )
    assert predicate_fired(predicate, {"load": LOAD_DONE}, {}) is None  # the crawl has no outcome yet
    failed = {"load": Outcome("FAILED", LOAD_DONE.ended)}
    assert predicate_fired(predicate, failed, {"raw": CRAWL_DONE}) is None


def test_any_holds_since_the_newest_matching_end() -> None:
    predicate = {
        "Logical": "ANY",
        "Conditions": [_condition("load", "FAILED"), _condition("extract", "FAILED")],
    }
    jobs = {
        "load": Outcome("FAILED", LOAD_DONE.ended),
        "extract": Outcome("FAILED", LOAD_DONE.ended + 60),
    }
    assert predicate_fired(predicate, jobs, {}) == Fired(
        LOAD_DONE.ended + 60, "extract FAILED at 2027-01-15 08:01 UTC"
    )
    assert predicate_fired(predicate, {"load": LOAD_DONE}, {}) is None


@pytest.mark.parametrize(
    "predicate",
    [
        {},
        {"Logical": "AND", "Conditions": []},
        {
            "Logical": "AND",
            "Conditions": [{"LogicalOperator": "NOT_EQUALS", "JobName": "load", "State": "SUCCEEDED"}],
        },
        {"Logical": "AND", "Conditions": [_condition("load", "RUNNING")]},  # not an outcome
    ],
)
def test_predicates_that_never_hold(predicate: dict[str, object]) -> None:
    assert predicate_fired(predicate, {"load": LOAD_DONE}, {}) is None
