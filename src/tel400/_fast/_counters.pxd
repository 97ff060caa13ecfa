from cpython.ref cimport PyObject
from libc.stdint cimport int64_t


cdef class Entry:
    cdef int64_t period    # counters: the period id
    cdef int64_t value
    cdef double expires    # wall-clock time after which the entry may be evicted
    cdef double opened     # PIN windows: when the window opened (the call's time)


cdef class CCounters:
    """Counter backends the compiled engine can call with C arrays."""
    cdef int c_acquire(self, PyObject** keys, const Py_hash_t* hashes, const int64_t* periods,
                       const int64_t* limits, const int64_t* increments, const int64_t* ttls, int n) except -2


cdef class MemoryCounters(CCounters):
    cdef dict _counters            # key -> Entry of its newest period
    cdef dict _others              # (key, period) -> Entry of an older period
    cdef dict _held                # key -> how many periods of it are held
    cdef dict _pins                # key -> Entry (a PIN window)
    cdef list _expiry              # heap of (expires, seq, table, key, entry)
    cdef object _clock
    cdef bint _wall_clock          # _clock is time.time: read the clock in C
    cdef double _next_expiry       # the heap's first expiry (inf when empty)
    cdef unsigned long long _seq
    cdef object _refusal_log
    cdef readonly str url
    cdef readonly Py_ssize_t max_keys
    cdef readonly dict refused     # new entries refused at the bound, by kind
    cdef Py_ssize_t _size(self)
    cdef Entry _counter(self, object key, int64_t period)
    cdef Entry _other(self, object key, int64_t period)
    cdef int64_t _current(self, object key, int64_t period)
    cdef Entry _new_counter(self, object key, int64_t period, double now, int64_t ttl)
    cdef bint _holds(self, int table, object key, Entry entry)
    cdef _remove(self, int table, object key, Entry entry)
    cdef _push_expiry(self, double expires, int table, object key, Entry entry)
    cdef _compact_expiry(self)
    cdef int _evict(self, double now, int limit) except -1
    cdef bint _has_room(self, Py_ssize_t new_keys, Py_ssize_t new_periods)
    cdef int _make_room(self, Py_ssize_t new_keys, Py_ssize_t new_periods, double now, str kind) except -1
    cdef int _refuse(self, str kind) except -1
    cdef int c_acquire(self, PyObject** keys, const Py_hash_t* hashes, const int64_t* periods,
                       const int64_t* limits, const int64_t* increments, const int64_t* ttls, int n) except -2
    cdef double _now(self) except? -1
    cdef int64_t c_value(self, object key, int64_t period)
