# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Local time and working days without ``datetime`` on the hot path.

``datetime.fromtimestamp(ts, zone)`` costs about 0.2 µs; a call needs the
local date, weekday and minute in its plan's zone, so each zone is compiled
once into a table of UTC offset changes (found by probing the zone daily
and bisecting to the second, for 1970-2100), and a call does one binary
search and integer arithmetic.  Times outside the table take the
``datetime`` path, so results never depend on the table's range.

Working days are a per-calendar array of day states built from
:class:`tel400.OfficialCalendar` itself; days it does not describe (years
the calendar package does not cover) are asked of the calendar object, so
its fallback warning and metric behave exactly as in the reference.
"""

import datetime as _dt
import zoneinfo

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport floor, rint
from libc.stdint cimport int32_t, int64_t, uint8_t

cdef int64_t _EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal()
cdef int64_t _TABLE_FIRST = 0  # 1970-01-01
cdef int64_t _TABLE_LAST = 4102444800  # 2100-01-01
cdef int64_t _DAY = 86400

_UTC = _dt.timezone.utc


cdef inline int64_t _floor_div(int64_t a, int64_t b) nogil:
    cdef int64_t q = a / b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef void _civil(int64_t days, LocalTime* out) noexcept nogil:
    """Year and month from days since 1970-01-01 (H. Hinnant's algorithm)."""
    cdef int64_t z = days + 719468
    cdef int64_t era = (z if z >= 0 else z - 146096) / 146097
    cdef int64_t doe = z - era * 146097
    cdef int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    cdef int64_t y = yoe + era * 400
    cdef int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    cdef int64_t mp = (5 * doy + 2) / 153
    cdef int64_t m = mp + 3 if mp < 10 else mp - 9
    out.year = <int>(y + (1 if m <= 2 else 0))
    out.month = <int>m


cdef void _fill(int64_t local_seconds, LocalTime* out) noexcept nogil:
    cdef int64_t days = _floor_div(local_seconds, _DAY)
    cdef int64_t sod = local_seconds - days * _DAY
    out.ordinal = days + _EPOCH_ORDINAL
    out.weekday = <int>((out.ordinal - 1) % 7)
    out.minute = <int>(sod / 60)
    out.hour = <int>(sod / 3600)
    _civil(days, out)


cdef class ZoneTable:
    """UTC offset changes of one zone, for 1970-2100."""

    def __cinit__(self, str name):
        self.zone = zoneinfo.ZoneInfo(name)
        changes = _probe(self.zone)
        self.n = len(changes)
        self.transitions = <int64_t*>PyMem_Malloc(self.n * sizeof(int64_t))
        self.offsets = <int32_t*>PyMem_Malloc(self.n * sizeof(int32_t))
        if self.transitions == NULL or self.offsets == NULL:
            raise MemoryError()
        for i, (t, offset) in enumerate(changes):
            self.transitions[i] = t
            self.offsets[i] = offset
        self.lo = _TABLE_FIRST
        self.hi = _TABLE_LAST

    def __dealloc__(self):
        PyMem_Free(self.transitions)
        PyMem_Free(self.offsets)

    cdef int from_timestamp(self, double ts, LocalTime* out) except -1:
        cdef int64_t secs = <int64_t>floor(ts)
        cdef double us = rint((ts - <double>secs) * 1e6)  # datetime rounds to the microsecond, half to even
        cdef Py_ssize_t lo_i, hi_i, mid
        if us >= 1e6:
            secs += 1
        out.ts = ts
        if secs < self.lo or secs >= self.hi:
            _from_datetime(_dt.datetime.fromtimestamp(ts, self.zone), out)
            out.ts = ts
            return 0
        lo_i = 0
        hi_i = self.n
        while hi_i - lo_i > 1:
            mid = (lo_i + hi_i) >> 1
            if self.transitions[mid] <= secs:
                lo_i = mid
            else:
                hi_i = mid
        _fill(secs + self.offsets[lo_i], out)
        return 0

    cdef int from_datetime(self, object at, LocalTime* out) except -1:
        """An aware datetime (any zone) or a naive one (read in this zone)."""
        if at.tzinfo is None:
            _from_datetime(at, out)
            out.ts = at.replace(tzinfo=self.zone).timestamp()
            return 0
        return self.from_timestamp(at.timestamp(), out)

    def local(self, double ts):
        """(ordinal, weekday, minute, hour, year, month) for a POSIX time (for tests)."""
        cdef LocalTime t
        self.from_timestamp(ts, &t)
        return (t.ordinal, t.weekday, t.minute, t.hour, t.year, t.month)

    @property
    def transitions_count(self):
        return self.n


cdef int _from_datetime(object local, LocalTime* out) except -1:
    out.ordinal = local.toordinal()
    out.weekday = local.weekday()
    out.hour = local.hour
    out.minute = local.hour * 60 + local.minute
    out.year = local.year
    out.month = local.month
    return 0


def _offset_at(zone, int64_t t):
    return int(_dt.datetime.fromtimestamp(t, _UTC).astimezone(zone).utcoffset().total_seconds())


def _probe(zone):
    """[(utc_second, offset)], the first entry from 1970, one per change."""
    changes = [(_TABLE_FIRST, _offset_at(zone, _TABLE_FIRST))]
    cdef int64_t t = _TABLE_FIRST
    cdef int64_t lo, hi, mid
    previous = changes[0][1]
    while t < _TABLE_LAST:
        nxt = min(t + _DAY, _TABLE_LAST)
        offset = _offset_at(zone, nxt)
        if offset != previous:
            lo, hi = t, nxt  # offset(lo) == previous, offset(hi) == offset
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_at(zone, mid) == previous:
                    lo = mid
                else:
                    hi = mid
            changes.append((hi, offset))
            previous = offset
        t = nxt
    return changes


cdef dict _zones = {}


cdef ZoneTable zone_table(str name):
    table = _zones.get(name)
    if table is None:
        table = _zones[name] = ZoneTable(name)
    return table


cdef class CalendarTable:
    """Working days of one :class:`~tel400.OfficialCalendar`, a byte per day."""

    def __cinit__(self, calendar):
        self.calendar = calendar
        years = set(calendar.covered_years())
        for ordinal in calendar.extra_holidays | calendar.extra_workdays:
            years.add(_dt.date.fromordinal(ordinal).year)
        first, last = min(years), max(years)
        self.lo = _dt.date(first, 1, 1).toordinal()
        self.n = _dt.date(last, 12, 31).toordinal() - self.lo + 1
        self.states = <uint8_t*>PyMem_Malloc(self.n)
        if self.states == NULL:
            raise MemoryError()
        extras = calendar.extra_holidays | calendar.extra_workdays
        cdef Py_ssize_t i
        for i in range(self.n):
            ordinal = self.lo + i
            if ordinal in extras or calendar.covers(_dt.date.fromordinal(ordinal).year):
                self.states[i] = 1 if calendar.is_workday(ordinal) else 0
            else:
                self.states[i] = 2

    def __dealloc__(self):
        PyMem_Free(self.states)

    cdef int is_workday(self, int64_t ordinal) except -1:
        cdef int64_t i = ordinal - self.lo
        if 0 <= i < self.n and self.states[i] != 2:
            return self.states[i]
        return 1 if self.calendar.is_workday(ordinal) else 0

    def workday(self, int64_t ordinal):
        return bool(self.is_workday(ordinal))


cdef dict _calendars = {}


cdef CalendarTable calendar_table(object calendar):
    table = _calendars.get(calendar)
    if table is None:
        if len(_calendars) > 256:
            _calendars.clear()
        table = _calendars[calendar] = CalendarTable(calendar)
    return table


def zone_table_for(str name):
    """The cached :class:`ZoneTable` of a zone (for tests)."""
    return zone_table(name)


def calendar_table_for(calendar):
    """The cached :class:`CalendarTable` of a calendar (for tests)."""
    return calendar_table(calendar)
