"""China's official working-day calendar (State Council notices, with 调休).

The data comes from the ``chinese-calendar`` package, chosen over
``holidays`` because it lists both sides of each State Council notice: the
public holidays *and* the weekends that become working days (调休), year by
year, as published; ``holidays`` computes the statutory festivals but only
knows the adjusted working weekends through its "substituted" entries and
does not expose them as working days.

The package lags the State Council by a release.  For a year it does not
cover, and the operator has not described in the plan, a working day falls
back to Monday–Friday; the first lookup in such a year logs a warning and
every such lookup counts in a metric (``tel400_calendar_fallback_total``).
Operators fill the gap in the plan file with
``calendar = { holidays = [...], workdays = [...], years = [2027] }``: the
dates are added to the calendar in any year, and ``years`` says which years
they describe completely, so that those stop counting as fallbacks.
"""

from __future__ import annotations

import datetime as _dt
import functools
import threading
from collections import Counter
from collections.abc import Iterable

import structlog

_log = structlog.get_logger("tel400.calendar")

#: Lookups that fell back to Monday–Friday, by year (read by the metrics collector).
FALLBACK_LOOKUPS: Counter[int] = Counter()
_warned: set[int] = set()
_warn_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _package_data() -> tuple[frozenset[int], frozenset[int], int, int]:
    from chinese_calendar import constants

    holidays = frozenset(d.toordinal() for d in constants.holidays)
    workdays = frozenset(d.toordinal() for d in constants.workdays)
    # The package's own rule: the years between its first and last holiday.
    first = min(constants.holidays).year
    last = max(constants.holidays).year
    return holidays, workdays, first, last


def package_years() -> tuple[int, int]:
    """First and last year the calendar package covers."""
    _, _, first, last = _package_data()
    return first, last


def weekday_of(ordinal: int) -> int:
    """Monday = 0 … Sunday = 6, from ``date.toordinal()`` (day 1 was a Monday)."""
    return (ordinal - 1) % 7


class OfficialCalendar:
    """Working days: the official calendar plus an operator's additions.

    Args:
        holidays: extra days off (dates), e.g. for a year the package lacks.
        workdays: extra working days (dates), e.g. an adjusted weekend.
        years: years the operator's lists describe completely; lookups in
            them are not fallbacks (no warning, no metric).

    An operator's date wins over the package.  Immutable; equal inputs give
    equal calendars, so routers can share one per distinct override set.
    """

    __slots__ = ("_extra_holidays", "_extra_workdays", "_operator_years", "_first", "_last", "_ph", "_pw", "_lo", "_hi")

    def __init__(
        self, holidays: Iterable[_dt.date] = (), workdays: Iterable[_dt.date] = (), years: Iterable[int] = ()
    ) -> None:
        extra_holidays = frozenset(d.toordinal() for d in holidays)
        extra_workdays = frozenset(d.toordinal() for d in workdays)
        both = extra_holidays & extra_workdays
        if both:
            day = _dt.date.fromordinal(min(both))
            raise ValueError(f"{day.isoformat()} is listed both as a holiday and as a working day")
        self._extra_holidays = extra_holidays
        self._extra_workdays = extra_workdays
        self._operator_years = frozenset(years)
        self._ph, self._pw, self._first, self._last = _package_data()
        self._lo = _dt.date(self._first, 1, 1).toordinal()
        self._hi = _dt.date(self._last, 12, 31).toordinal()

    @property
    def extra_holidays(self) -> frozenset[int]:
        return self._extra_holidays

    @property
    def extra_workdays(self) -> frozenset[int]:
        return self._extra_workdays

    def covers(self, year: int) -> bool:
        """Whether the package or the operator describes this year."""
        return self._first <= year <= self._last or year in self._operator_years

    def covered_years(self) -> list[int]:
        """Every year described, in order."""
        return sorted(set(range(self._first, self._last + 1)) | self._operator_years)

    def is_workday(self, ordinal: int) -> bool:
        """Whether a date (``date.toordinal()``) is an official working day.

        Cost: O(1), a few set lookups.
        """
        if ordinal in self._extra_workdays:
            return True
        if ordinal in self._extra_holidays:
            return False
        if self._lo <= ordinal <= self._hi:
            if ordinal in self._pw:
                return True
            return weekday_of(ordinal) < 5 and ordinal not in self._ph
        year = _dt.date.fromordinal(ordinal).year
        if year not in self._operator_years:
            _fell_back(year)
        return weekday_of(ordinal) < 5

    def day_kind(self, ordinal: int) -> str:
        """What a date is, for people reading a calendar: one of :data:`DAY_KINDS`.

        ``holiday`` is a day off by notice (or the operator's list),
        ``adjusted_workday`` a Saturday or Sunday that is a working day (调休);
        the others are ordinary ``workday`` and ``weekend`` days.  Unlike
        :meth:`is_workday` it never counts a fallback: it only describes.
        """
        weekend = weekday_of(ordinal) >= 5
        in_package = self._lo <= ordinal <= self._hi
        notice_workday = in_package and ordinal in self._pw and ordinal not in self._extra_holidays
        if ordinal in self._extra_workdays or notice_workday:
            return "adjusted_workday" if weekend else "workday"
        if ordinal in self._extra_holidays or (in_package and ordinal in self._ph):
            return "holiday"
        return "weekend" if weekend else "workday"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OfficialCalendar):
            return NotImplemented
        return (self._extra_holidays, self._extra_workdays, self._operator_years) == (
            other._extra_holidays,
            other._extra_workdays,
            other._operator_years,
        )

    def __hash__(self) -> int:
        return hash((self._extra_holidays, self._extra_workdays, self._operator_years))

    def __repr__(self) -> str:
        return (
            f"<OfficialCalendar {self._first}-{self._last}"
            f" +{len(self._extra_holidays)} holidays +{len(self._extra_workdays)} workdays>"
        )


#: What :meth:`OfficialCalendar.day_kind` answers.
DAY_KINDS = ("workday", "weekend", "holiday", "adjusted_workday")


def _fell_back(year: int) -> None:
    FALLBACK_LOOKUPS[year] += 1
    if year in _warned:
        return
    with _warn_lock:
        if year in _warned:
            return
        _warned.add(year)
    first, last = package_years()
    _log.warning(
        "calendar_year_not_covered",
        year=year,
        covered=f"{first}-{last}",
        fallback="workday = Monday to Friday",
        fix="add the year's holidays and working days to the plan's [calendar] table",
    )


def describe_years(calendar: OfficialCalendar | None = None) -> list[tuple[int, str]]:
    """(year, source) for the years around today: package, operator or fallback."""
    calendar = calendar or OfficialCalendar()
    first, last = package_years()
    this_year = _dt.date.today().year
    years = sorted(set(calendar.covered_years()) | {this_year, this_year + 1})
    out = []
    for year in years:
        if first <= year <= last:
            out.append((year, "chinese-calendar"))
        elif year in calendar._operator_years:
            out.append((year, "plan"))
        else:
            out.append((year, "fallback: Monday-Friday"))
    return out
