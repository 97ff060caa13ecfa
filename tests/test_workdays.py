"""The official calendar: holidays, adjusted working weekends (调休), gaps."""

from __future__ import annotations

import datetime as dt

import pytest
import structlog

from tel400 import workdays
from tel400.workdays import OfficialCalendar, weekday_of


def od(y, m, d):
    return dt.date(y, m, d).toordinal()


def test_weekday_of_matches_datetime():
    for offset in range(30):
        day = dt.date(2026, 11, 1) + dt.timedelta(days=offset)
        assert weekday_of(day.toordinal()) == day.weekday()


@pytest.mark.parametrize(
    "day, is_workday",
    [
        ((2026, 10, 1), False),  # National Day, a Thursday
        ((2026, 10, 7), False),  # the Golden Week's last day off, a Wednesday
        ((2026, 10, 10), True),  # a Saturday made a working day (调休)
        ((2026, 9, 20), True),  # a Sunday made a working day
        ((2026, 2, 17), False),  # Spring Festival
        ((2026, 2, 14), True),  # Saturday before it, worked
        ((2026, 11, 24), True),  # an ordinary Tuesday
        ((2026, 11, 28), False),  # an ordinary Saturday
    ],
)
def test_state_council_calendar(day, is_workday):
    assert OfficialCalendar().is_workday(od(*day)) is is_workday


def test_operator_additions_win():
    calendar = OfficialCalendar(holidays=[dt.date(2026, 11, 24)], workdays=[dt.date(2026, 11, 28)])
    assert not calendar.is_workday(od(2026, 11, 24))
    assert calendar.is_workday(od(2026, 11, 28))


def test_contradictory_additions_are_refused():
    with pytest.raises(ValueError, match="both as a holiday and as a working day"):
        OfficialCalendar(holidays=[dt.date(2027, 1, 1)], workdays=[dt.date(2027, 1, 1)])


def test_uncovered_year_falls_back_to_monday_friday_and_warns_once():
    year = 2041  # far beyond any calendar release
    workdays._warned.discard(year)
    before = workdays.FALLBACK_LOOKUPS[year]
    calendar = OfficialCalendar()
    assert not calendar.covers(year)
    with structlog.testing.capture_logs() as logs:
        assert calendar.is_workday(od(year, 1, 1))  # a Tuesday; no holiday data, no crash
        assert not calendar.is_workday(od(year, 1, 5))  # Saturday
        assert calendar.is_workday(od(year, 1, 7))
    warnings = [e for e in logs if e["event"] == "calendar_year_not_covered"]
    assert len(warnings) == 1
    assert warnings[0]["year"] == year and warnings[0]["log_level"] == "warning"
    assert workdays.FALLBACK_LOOKUPS[year] == before + 3


def test_operator_described_year_does_not_warn():
    year = 2042
    workdays._warned.discard(year)
    partial = OfficialCalendar(holidays=[dt.date(year, 1, 1)])
    assert not partial.covers(year)  # an added date alone does not describe the year
    calendar = OfficialCalendar(holidays=[dt.date(year, 1, 1)], years=[year])
    assert calendar.covers(year)
    with structlog.testing.capture_logs() as logs:
        assert not calendar.is_workday(od(year, 1, 1))
        assert calendar.is_workday(od(year, 1, 2))  # Thursday
    assert not [e for e in logs if e["event"] == "calendar_year_not_covered"]


def test_package_years_cover_this_year_or_say_so():
    first, last = workdays.package_years()
    assert first <= 2026 <= last
    years = dict(workdays.describe_years())
    assert years[2026] == "chinese-calendar"
