# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``tel400.counters.MemoryCounters`` (``memory://``).

Same behaviour (all-or-nothing acquisition, periods, PIN windows, expired
entries evicted a few per write in expiry order); entries are small C
structs behind a dict, the expiry queue a heap, and the compiled engine
calls :meth:`c_acquire` with C arrays instead of building ``CapCheck``
tuples.  Every operation runs holding the GIL without calling back into
Python, which makes it atomic with respect to other threads.
"""

import heapq
import time

from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.math cimport INFINITY
from libc.stdint cimport int64_t

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_REALTIME

from ..counters import CounterBackend

cdef int EVICT_PER_WRITE = 2


cdef class Entry:
    pass


cdef class CCounters:
    cdef int c_acquire(self, PyObject** keys, const int64_t* periods, const int64_t* limits,
                       const int64_t* increments, const int64_t* ttls, int n) except -2:
        """Like ``acquire``: -1 all admitted and counted, else the first index at its limit.

        May raise :class:`~tel400.BackendError`.  ``keys`` are borrowed.
        """
        raise NotImplementedError


cdef class MemoryCounters(CCounters):
    """Counters in this process's memory; exact within one process."""

    def __cinit__(self, *, clock=time.time):
        self._counters = {}
        self._pins = {}
        self._expiry = []
        self._clock = clock
        self._wall_clock = clock is time.time
        self._next_expiry = INFINITY
        self._seq = 0
        self.url = "memory://"

    cdef double _now(self) except? -1:
        cdef timespec ts
        if self._wall_clock:
            clock_gettime(CLOCK_REALTIME, &ts)
            return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
        return self._clock()

    cdef int64_t _current(self, object key, int64_t period):
        entry = self._counters.get(key)
        if entry is None or (<Entry>entry).period != period:
            return 0
        return (<Entry>entry).value

    cdef int64_t c_value(self, object key, int64_t period):
        return self._current(key, period)

    cdef int _evict(self, double now) except -1:
        cdef int k
        if now < self._next_expiry:
            return 0
        expiry = self._expiry
        for k in range(EVICT_PER_WRITE):
            if not expiry or (<tuple>expiry[0])[0] > now:
                break
            _, _, table, key, entry = heapq.heappop(expiry)
            entries = self._counters if table == 0 else self._pins
            if entries.get(key) is entry:
                del entries[key]
        self._next_expiry = (<tuple>expiry[0])[0] if expiry else INFINITY
        return 0

    cdef _push_expiry(self, double expires, int table, object key, Entry entry):
        self._seq += 1
        heapq.heappush(self._expiry, (expires, self._seq, table, key, entry))
        if expires < self._next_expiry:
            self._next_expiry = expires

    cdef int64_t _bump(self, object key, int64_t period, int64_t amount, double now, int64_t ttl):
        cdef Entry entry = self._counters.get(key)
        if entry is None or entry.period != period:
            entry = Entry()
            entry.period = period
            entry.value = 0
            entry.expires = now + ttl
            self._counters[key] = entry
            self._push_expiry(entry.expires, 0, key, entry)
        entry.value += amount
        self._evict(now)
        return entry.value

    cdef int c_acquire(self, PyObject** keys, const int64_t* periods, const int64_t* limits,
                       const int64_t* increments, const int64_t* ttls, int n) except -2:
        """:meth:`acquire` for the compiled engine: C arrays, borrowed keys, never a dry run."""
        cdef int i
        cdef double now
        cdef PyObject* found
        cdef int64_t current
        for i in range(n):
            found = PyDict_GetItem(self._counters, <object>keys[i])
            current = (<Entry>found).value if found != NULL and (<Entry>found).period == periods[i] else 0
            if current >= limits[i]:
                return i
        now = -1
        for i in range(n):
            if not increments[i]:
                continue
            found = PyDict_GetItem(self._counters, <object>keys[i])
            if found != NULL and (<Entry>found).period == periods[i]:
                (<Entry>found).value += increments[i]
            else:
                if now < 0:
                    now = self._now()
                self._bump(<object>keys[i], periods[i], increments[i], now, ttls[i])
        if now >= 0 or self._next_expiry != INFINITY:
            self._evict(now if now >= 0 else self._now())
        return -1

    def acquire(self, checks, *, dry_run=False):
        """See :meth:`tel400.counters.CounterBackend.acquire`."""
        cdef double now
        for i, check in enumerate(checks):
            if self._current(check.key, check.period) >= check.limit:
                return i
        if not dry_run:
            now = self._now()
            for check in checks:
                if check.increment:
                    self._bump(check.key, check.period, check.increment, now, check.ttl_s)
        return -1

    def add(self, key, period, amount, ttl_s):
        return self._bump(key, period, amount, self._now(), ttl_s)

    def value(self, key, period):
        return self._current(key, period)

    def pin_failures(self, key, now, window_s):
        entry = self._pins.get(key)
        if entry is None or now - (<Entry>entry).opened >= window_s:
            return 0
        return (<Entry>entry).value

    def add_pin_failure(self, key, double now, window_s):
        cdef Entry entry = self._pins.get(key)
        cdef double clock_now
        if entry is None or now - entry.opened >= window_s:
            clock_now = self._now()
            entry = Entry()
            entry.opened = now
            entry.value = 0
            entry.expires = clock_now + window_s
            self._pins[key] = entry
            self._push_expiry(entry.expires, 1, key, entry)
        entry.value += 1
        self._evict(self._now())
        return entry.value

    def clear_pin_failures(self, key):
        self._pins.pop(key, None)

    def close(self):
        pass

    def __len__(self):
        return len(self._counters) + len(self._pins)


CounterBackend.register(MemoryCounters)
