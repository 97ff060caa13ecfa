from cpython.ref cimport PyObject
from libc.stdint cimport int64_t


cdef class Entry:
    cdef int64_t period    # counters: the period id
    cdef int64_t value
    cdef double expires    # wall-clock time after which the entry may be evicted
    cdef double opened     # PIN windows: when the window opened (the call's time)


cdef class CCounters:
    """Counter backends the compiled engine can call with C arrays."""
    cdef int c_acquire(self, PyObject** keys, const int64_t* periods, const int64_t* limits,
                       const int64_t* increments, const int64_t* ttls, int n) except -2


cdef class MemoryCounters(CCounters):
    cdef dict _counters
    cdef dict _pins
    cdef list _expiry
    cdef object _clock
    cdef bint _wall_clock          # _clock is time.time: read the clock in C
    cdef double _next_expiry       # the heap's first expiry (inf when empty)
    cdef unsigned long long _seq
    cdef readonly str url
    cdef int64_t _current(self, object key, int64_t period)
    cdef int _evict(self, double now) except -1
    cdef _push_expiry(self, double expires, int table, object key, Entry entry)
    cdef int64_t _bump(self, object key, int64_t period, int64_t amount, double now, int64_t ttl)
    cdef int c_acquire(self, PyObject** keys, const int64_t* periods, const int64_t* limits,
                       const int64_t* increments, const int64_t* ttls, int n) except -2
    cdef double _now(self) except? -1
    cdef int64_t c_value(self, object key, int64_t period)
