"""Time slots, days and date ranges: parsing, and matching against oracles."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tel400.timespec import parse_dates, parse_days, parse_time


def test_slot_inclusive_minutes():
    slots = parse_time("08:00-11:59")
    assert slots.matches(8 * 60)
    assert slots.matches(11 * 60 + 59)
    assert not slots.matches(12 * 60)
    assert not slots.matches(7 * 60 + 59)


def test_slot_wrapping_midnight():
    night = parse_time("20:00-07:59")
    assert night.matches(20 * 60)
    assert night.matches(23 * 60 + 59)
    assert night.matches(0)
    assert night.matches(7 * 60 + 59)
    assert not night.matches(8 * 60)
    assert not night.matches(19 * 60 + 59)


def test_several_slots_and_canonical_text():
    slots = parse_time(["8:00-11:59", "14:00-17:59"])
    assert slots.text == "08:00-11:59,14:00-17:59"
    assert parse_time(slots.text) == slots
    assert slots.matches(15 * 60)
    assert not slots.matches(12 * 60 + 30)


@pytest.mark.parametrize(
    "value, message",
    [
        ("25:00-26:00", "bad time '25:00'"),
        ("08:00-24:00", "bad time '24:00'"),
        ("08:60-09:00", "bad time '08:60'"),
        ("0800-0900", "bad time '0800'"),
        ("08:00", "expected 'HH:MM-HH:MM'"),
        ("", "empty entry"),
        ("08:00-09:00,", "empty entry"),
        (8, "expected time slots"),
        ([8], "as strings"),
    ],
)
def test_bad_time(value, message):
    with pytest.raises(ValueError, match=message):
        parse_time(value)


@pytest.mark.parametrize(
    "value, weekdays",
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat,sun", {5, 6}),
        (["sat", "sun"], {5, 6}),
        ("fri-mon", {4, 5, 6, 0}),
        ("Monday,wed", {0, 2}),
        ("周一-周五", {0, 1, 2, 3, 4}),
        ("any", set(range(7))),
        ("sun-sun", {6}),
    ],
)
def test_days(value, weekdays):
    days = parse_days(value)
    assert {d for d in range(7) if days.matches(d, False) and days.matches(d, True)} == weekdays


def test_workday_holiday_tokens():
    workday = parse_days("workday")
    assert workday.needs_calendar
    assert workday.matches(5, True)  # a Saturday that is an adjusted working day
    assert not workday.matches(0, False)  # a Monday that is a public holiday
    mixed = parse_days("workday,sat")
    assert mixed.matches(5, False) and mixed.matches(2, True) and not mixed.matches(6, False)
    both = parse_days("workday,holiday")
    assert not both.needs_calendar and all(both.matches(d, False) for d in range(7))


@pytest.mark.parametrize("value", ["monday-funday", "weekend", "mon--fri", "", 5])
def test_bad_days(value):
    with pytest.raises(ValueError):
        parse_days(value)


def test_dates():
    dates = parse_dates("2026-12-01..2026-12-31")
    assert dates.matches(dt.date(2026, 12, 1).toordinal())
    assert dates.matches(dt.date(2026, 12, 31).toordinal())
    assert not dates.matches(dt.date(2027, 1, 1).toordinal())
    listed = parse_dates(["2026-12-25", dt.date(2027, 1, 1)])
    assert listed.text == "2026-12-25,2027-01-01"
    assert listed.matches(dt.date(2027, 1, 1).toordinal())
    assert not listed.matches(dt.date(2026, 12, 26).toordinal())


@pytest.mark.parametrize(
    "value, message",
    [
        ("2026-12-31..2026-12-01", "ends before it starts"),
        ("2026-13-01", "bad date"),
        ("12/01/2026", "bad date"),
        (dt.datetime(2026, 1, 1, 8), "date and time"),
        (20261201, "expected dates"),
    ],
)
def test_bad_dates(value, message):
    with pytest.raises(ValueError, match=message):
        parse_dates(value)


def _oracle_minutes(text: str) -> set[dt.time]:
    """Every minute of a slot, walked one by one from its start (slow, obvious)."""
    start_s, end_s = text.split("-")
    start = dt.datetime.combine(dt.date(2000, 1, 1), dt.time.fromisoformat(start_s))
    end = dt.time.fromisoformat(end_s)
    minutes = set()
    t = start
    while True:
        minutes.add(t.time())
        if t.time() == end:
            return minutes
        t += dt.timedelta(minutes=1)


clock = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")


@given(clock, clock, st.integers(0, 1439))
def test_slot_matching_agrees_with_walking_the_clock(start, end, minute):
    text = f"{start}-{end}"
    slots = parse_time(text)
    t = dt.time(minute // 60, minute % 60)
    assert slots.matches(minute) == (t in _oracle_minutes(text))
    assert bool(slots.minute_mask() >> minute & 1) == slots.matches(minute)
