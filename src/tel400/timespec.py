"""The time conditions of a rule: minutes of the day, days, date ranges.

Each parser takes what a plan file holds (a string, a list of strings, or
TOML's native dates) and returns a frozen value object that keeps the text
it came from (for messages and for writing the plan back) beside the parsed
form the router matches against.  Parsers raise ``ValueError`` with a message
saying what was expected; :mod:`tel400.plans` adds where.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable

import attrs

from . import limits
from ._show import show

MINUTES_PER_DAY = 1440

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_ALIASES = {
    **{name: i for i, name in enumerate(WEEKDAY_NAMES)},
    **{
        name: i
        for i, name in enumerate(
            ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        )
    },
    **{name: i for i, name in enumerate(("周一", "周二", "周三", "周四", "周五", "周六", "周日"))},
    "周天": 6,
}
ALL_WEEKDAYS = 0b1111111

_TIME = re.compile(r"\A([01]?[0-9]|2[0-3]):([0-5][0-9])\Z")


def _items(value: object, what: str) -> list[str]:
    """A comma-separated string or a list of strings, as a list of tokens."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"expected {what} as strings, got {show(item)}")
            parts.extend(item.split(","))
    else:
        raise ValueError(f"expected {what} as a string or a list of strings, got {show(value)}")
    tokens = [p.strip() for p in parts]
    if not tokens or any(not t for t in tokens):
        raise ValueError(f"expected {what}, got an empty entry in {show(value)}")
    return tokens


# --- minutes of the day ----------------------------------------------------


def _minute(text: str, whole: str) -> int:
    m = _TIME.match(text.strip())
    if not m:
        raise ValueError(
            f"bad time {show(text.strip())} in {show(whole)}: expected HH:MM from 00:00 to 23:59"
        )
    return int(m.group(1)) * 60 + int(m.group(2))


@attrs.frozen
class TimeSlots:
    """Minute ranges of the day, both ends included; ``20:00-07:59`` wraps."""

    text: str
    slots: tuple[tuple[int, int], ...]

    def matches(self, minute: int) -> bool:
        """Whether a minute of the day (0–1439) falls in a slot.  O(slots)."""
        for start, end in self.slots:
            if start <= end:
                if start <= minute <= end:
                    return True
            elif minute >= start or minute <= end:
                return True
        return False

    def minute_mask(self) -> int:
        """The slots as a 1440-bit integer (bit m set: minute m matches)."""
        mask = 0
        for start, end in self.slots:
            if start <= end:
                mask |= ((1 << (end - start + 1)) - 1) << start
            else:
                mask |= ((1 << (MINUTES_PER_DAY - start)) - 1) << start
                mask |= (1 << (end + 1)) - 1
        return mask

    def __str__(self) -> str:
        return self.text


MAX_ENTRIES = limits.MAX_CONDITION_ENTRIES  # slots or date ranges in one condition


def parse_time(value: object) -> TimeSlots:
    """``"08:00-11:59"``, ``"20:00-07:59"``, ``"08:00-11:59,14:00-17:59"`` or a list."""
    slots = []
    for token in _items(value, "time slots like '08:00-11:59'"):
        start, sep, end = token.partition("-")
        if not sep:
            raise ValueError(f"bad time slot {show(token)}: expected 'HH:MM-HH:MM'")
        slots.append((_minute(start, token), _minute(end, token)))
    if len(slots) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} time slots in one rule")
    return TimeSlots(",".join(f"{_hhmm(s)}-{_hhmm(e)}" for s, e in slots), tuple(slots))


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# --- days ------------------------------------------------------------------


@attrs.frozen
class Days:
    """Weekdays (a 7-bit mask, Monday = bit 0) OR the official workday/holiday."""

    text: str
    weekdays: int
    workday: bool = False
    holiday: bool = False

    def matches(self, weekday: int, is_workday: bool) -> bool:
        """Whether a day matches.  O(1)."""
        if self.weekdays >> weekday & 1:
            return True
        return self.workday if is_workday else self.holiday

    @property
    def needs_calendar(self) -> bool:
        return self.workday or self.holiday

    def __str__(self) -> str:
        return self.text


def _weekday(token: str, whole: str) -> int:
    try:
        return _WEEKDAY_ALIASES[token.lower()]
    except KeyError:
        raise ValueError(
            f"bad day {show(token)} in {show(whole)}: expected mon..sun, a range like mon-fri, "
            "workday, holiday or any"
        ) from None


def parse_days(value: object) -> Days:
    """``"mon-fri"``, ``"sat,sun"``, ``"workday"``, ``"holiday"``, ``"workday,sat"``, ``"any"``.

    Ranges may wrap the week: ``fri-mon`` is Friday to Monday.
    """
    mask, workday, holiday = 0, False, False
    tokens = _items(value, "days like 'mon-fri' or 'workday'")
    if len(tokens) > limits.MAX_LIST_ITEMS:
        raise ValueError(f"at most {limits.MAX_LIST_ITEMS} entries in one days condition")
    whole = ",".join(tokens)
    for token in tokens:
        low = token.lower()
        if low in ("any", "all", "daily"):
            mask = ALL_WEEKDAYS
        elif low in ("workday", "workdays", "工作日"):
            workday = True
        elif low in ("holiday", "holidays", "节假日"):
            holiday = True
        elif "-" in low:
            first, _, last = low.partition("-")
            a, b = _weekday(first.strip(), whole), _weekday(last.strip(), whole)
            day = a
            while True:
                mask |= 1 << day
                if day == b:
                    break
                day = (day + 1) % 7
        else:
            mask |= 1 << _weekday(low, whole)
    if (workday and holiday) or mask == ALL_WEEKDAYS:
        # Every day is one or the other: the calendar need not be consulted.
        mask, workday, holiday = ALL_WEEKDAYS, False, False
    return Days(whole, mask, workday, holiday)


# --- dates -----------------------------------------------------------------


@attrs.frozen
class DateRanges:
    """Date ranges, both ends included, as proleptic ordinals."""

    text: str
    ranges: tuple[tuple[int, int], ...]

    def matches(self, ordinal: int) -> bool:
        """Whether a date (``date.toordinal()``) lies in a range.  O(ranges)."""
        for start, end in self.ranges:
            if start <= ordinal <= end:
                return True
        return False

    def __str__(self) -> str:
        return self.text


def _date(value: object, whole: object) -> _dt.date:
    if isinstance(value, _dt.datetime):
        raise ValueError(f"expected a date, got a date and time {show(value)} in {show(whole)}")
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"bad date {show(value)} in {show(whole)}: expected YYYY-MM-DD") from None


def parse_date_list(value: object, what: str = "dates") -> list[tuple[_dt.date, _dt.date]]:
    """Dates and ``start..end`` ranges, from strings, TOML dates or lists of them."""
    raw: Iterable[object]
    if isinstance(value, (str, _dt.date)):
        raw = [value]
    elif isinstance(value, (list, tuple)):
        raw = value
    else:
        raise ValueError(f"expected {what} as 'YYYY-MM-DD..YYYY-MM-DD' or a list, got {show(value)}")
    out = []
    for item in raw:
        if isinstance(item, _dt.date):
            out.append((_date(item, value), _date(item, value)))
            continue
        if not isinstance(item, str):
            raise ValueError(f"expected {what} as strings or dates, got {show(item)}")
        for token in _items(item, what):
            first, sep, last = token.partition("..")
            start = _date(first, token)
            end = _date(last, token) if sep else start
            if end < start:
                raise ValueError(f"date range {show(token)} ends before it starts")
            out.append((start, end))
    if not out:
        raise ValueError(f"expected at least one date in {what}")
    return out


def parse_dates(value: object) -> DateRanges:
    """``"2026-12-01..2026-12-31"``, ``"2026-12-25"``, lists of those, TOML dates."""
    ranges = parse_date_list(value)
    if len(ranges) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} date ranges in one rule")
    text = ",".join(s.isoformat() if s == e else f"{s.isoformat()}..{e.isoformat()}" for s, e in ranges)
    return DateRanges(text, tuple((s.toordinal(), e.toordinal()) for s, e in ranges))
