from libc.stdint cimport int32_t, int64_t, uint8_t


cdef struct LocalTime:
    double ts          # POSIX time of the call
    int64_t ordinal    # date.toordinal() of the local date
    int weekday        # Monday = 0
    int minute         # minute of the day, 0-1439
    int hour
    int year
    int month


cdef class ZoneTable:
    cdef int64_t* transitions   # UTC seconds at which offsets[i] starts to apply
    cdef int32_t* offsets
    cdef Py_ssize_t n
    cdef int64_t lo, hi          # the table is valid for lo <= t < hi
    cdef readonly object zone
    cdef int from_timestamp(self, double ts, LocalTime* out) except -1
    cdef int from_datetime(self, object at, LocalTime* out) except -1


cdef class CalendarTable:
    cdef uint8_t* states          # per day from lo: 0 day off, 1 working day, 2 ask the calendar
    cdef int64_t lo
    cdef Py_ssize_t n
    cdef readonly object calendar
    cdef int is_workday(self, int64_t ordinal) except -1


cdef ZoneTable zone_table(str name)
cdef CalendarTable calendar_table(object calendar)
