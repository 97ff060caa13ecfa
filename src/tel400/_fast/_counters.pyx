# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``tel400.counters.MemoryCounters`` (``memory://``).

Same behaviour (all-or-nothing acquisition, a counter per (key, period),
PIN windows, expired entries evicted a few per write in expiry order, the
``max_keys`` bound and what happens at it); entries are small C
structs behind a dict, the expiry queue a heap, and the compiled engine
calls :meth:`c_acquire` with C arrays instead of building ``CapCheck``
tuples.  Every operation runs holding the GIL without calling back into
Python, which makes it atomic with respect to other threads.
"""

import heapq
import time

from cpython.dict cimport PyDict_GetItem, PyDict_Size
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

from ..counters import DEFAULT_MAX_KEYS, REFUSAL_KINDS, CounterBackend, RefusalLog, check_max_keys
from ..exceptions import BackendError

cdef int EVICT_PER_WRITE = 2


cdef class Entry:
    pass


cdef class CCounters:
    cdef int c_acquire(self, PyObject** keys, const Py_hash_t* hashes, const int64_t* periods,
                       const int64_t* limits, const int64_t* increments, const int64_t* ttls, int n) except -2:
        """Like ``acquire``: -1 all admitted and counted, else the first index at its limit.

        May raise :class:`~tel400.BackendError`.  ``keys`` are borrowed;
        ``hashes`` are theirs (``hash(key)``), or NULL: a backend that looks
        keys up in a dict need not then read a key to hash it (the key of a
        number called rarely is in main memory).
        """
        raise NotImplementedError


cdef extern from "Python.h":
    PyObject* _PyDict_GetItem_KnownHash(object mp, object key, Py_hash_t hash) except? NULL


cdef inline PyObject* _get(dict table, PyObject* key, const Py_hash_t* hashes, int i) except? NULL:
    """``table[key]`` borrowed, or NULL; by the hash given when there is one (the key's str is
    then not read: the dict's keys are the engine's own key objects, found by identity)."""
    if hashes == NULL:
        return PyDict_GetItem(table, <object>key)
    return _PyDict_GetItem_KnownHash(table, <object>key, hashes[i])


cdef class MemoryCounters(CCounters):
    """Counters in this process's memory; exact within one process.

    Every (key, period) is a counter of its own and at most ``max_keys``
    entries are held, as in the reference (see its docstring).  One period
    of each key, normally the newest, sits in a dict by key, which the hot
    path reads; other periods of the key (a call dated yesterday, a late
    charge) sit in a dict by (key, period), read only when the first misses.
    """

    def __cinit__(self, *, clock=time.time, max_keys=DEFAULT_MAX_KEYS):
        # Bound: see the reference (keys not held yet up to max_keys, new
        # periods of held keys up to twice that).
        self.max_keys = check_max_keys(max_keys)
        self.url = "memory://" if max_keys == DEFAULT_MAX_KEYS else f"memory://?max_keys={max_keys}"
        self.refused = dict.fromkeys(REFUSAL_KINDS, 0)
        self._refusal_log = RefusalLog("memory", f"max_keys={max_keys}")
        self._counters = {}
        self._others = {}
        self._held = {}
        self._pins = {}
        self._expiry = []
        self._clock = clock
        self._wall_clock = clock is time.time
        self._next_expiry = INFINITY
        self._seq = 0

    cdef double _now(self) except? -1:
        cdef timespec ts
        if self._wall_clock:
            clock_gettime(CLOCK_REALTIME, &ts)
            return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9
        return self._clock()

    cdef Py_ssize_t _size(self):
        return len(self._counters) + len(self._others) + len(self._pins)

    # -- entries ----------------------------------------------------------------

    cdef Entry _counter(self, object key, int64_t period):
        """The entry of (key, period), or None."""
        cdef PyObject* found = PyDict_GetItem(self._counters, key)
        if found != NULL and (<Entry>found).period == period:
            return <Entry>found
        return self._other(key, period)

    cdef inline Entry _other(self, object key, int64_t period):
        """The entry of (key, period) when it is not its key's newest period, or None."""
        if not self._others:
            return None
        return self._others.get((key, period))

    cdef int64_t _current(self, object key, int64_t period):
        cdef Entry entry = self._counter(key, period)
        return 0 if entry is None else entry.value

    cdef int64_t c_value(self, object key, int64_t period):
        return self._current(key, period)

    cdef Entry _new_counter(self, object key, int64_t period, double now, int64_t ttl):
        """A new entry for (key, period); the newest period of a key goes first."""
        cdef Entry entry = Entry()
        cdef PyObject* found = PyDict_GetItem(self._counters, key)
        entry.period = period
        entry.value = 0
        entry.expires = now + ttl
        if found == NULL:
            self._counters[key] = entry
        elif period > (<Entry>found).period:
            self._others[(key, (<Entry>found).period)] = <Entry>found
            self._counters[key] = entry
        else:
            self._others[(key, period)] = entry
        self._held[key] = self._held.get(key, 0) + 1
        self._push_expiry(entry.expires, 0, key, entry)
        return entry

    cdef bint _holds(self, int table, object key, Entry entry):
        if table == 1:
            return self._pins.get(key) is entry
        return self._counters.get(key) is entry or self._others.get((key, entry.period)) is entry

    cdef _remove(self, int table, object key, Entry entry):
        if table == 1:
            del self._pins[key]
            return
        if self._counters.get(key) is entry:
            del self._counters[key]
        else:
            del self._others[(key, entry.period)]
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]

    cdef _push_expiry(self, double expires, int table, object key, Entry entry):
        self._seq += 1
        heapq.heappush(self._expiry, (expires, self._seq, table, key, entry))
        if expires < self._next_expiry:
            self._next_expiry = expires

    cdef _compact_expiry(self):
        """Drop the items of entries that have gone (cleared PIN windows), when they pile up."""
        if len(self._expiry) > 2 * self._size() + 64:
            live = [item for item in self._expiry
                    if self._holds((<tuple>item)[2], (<tuple>item)[3], (<tuple>item)[4])]
            heapq.heapify(live)
            self._expiry = live
            self._next_expiry = (<tuple>live[0])[0] if live else INFINITY

    cdef int _evict(self, double now, int limit) except -1:
        """Evict up to ``limit`` expired entries (heap items looked at; -1: all), in expiry order."""
        cdef Entry entry
        cdef double expires
        cdef int table
        if now < self._next_expiry:
            return 0
        expiry = self._expiry
        while limit != 0 and expiry and (<tuple>expiry[0])[0] <= now:
            limit -= 1
            expires, _, table, key, entry = heapq.heappop(expiry)
            if not self._holds(table, key, entry):
                continue
            if entry.expires > expires:  # renewed since: wait for its new time
                self._push_expiry(entry.expires, table, key, entry)
            else:
                self._remove(table, key, entry)
        self._next_expiry = (<tuple>expiry[0])[0] if expiry else INFINITY
        return 0

    cdef bint _has_room(self, Py_ssize_t new_keys, Py_ssize_t new_periods):
        """Room for entries of keys not held yet, and for new periods of held keys."""
        cdef Py_ssize_t size = self._size()
        if new_keys and size + new_keys > self.max_keys:
            return False
        return size + new_keys + new_periods <= 2 * self.max_keys

    cdef int _make_room(self, Py_ssize_t new_keys, Py_ssize_t new_periods, double now, str kind) except -1:
        """Room for new entries, evicting expired ones first; else BackendError."""
        if self._has_room(new_keys, new_periods):
            return 0
        self._evict(now, -1)
        if not self._has_room(new_keys, new_periods):
            self._refuse(kind)
        return 0

    cdef int _refuse(self, str kind) except -1:
        self.refused[kind] += 1
        self._refusal_log.note(kind)
        raise BackendError(
            f"memory counters: full (max_keys={self.max_keys}; raise it with memory://?max_keys=N)"
        )

    # -- the interface ------------------------------------------------------------

    cdef int c_acquire(self, PyObject** keys, const Py_hash_t* hashes, const int64_t* periods,
                       const int64_t* limits, const int64_t* increments, const int64_t* ttls, int n) except -2:
        """:meth:`acquire` for the compiled engine: C arrays, borrowed keys, never a dry run."""
        cdef int i
        cdef Py_ssize_t new_keys = 0, new_periods = 0
        cdef double now
        cdef PyObject* found
        cdef Entry entry
        cdef int64_t current
        now = -1  # the clock is read only for a call that gets counted (or near the bound)
        if PyDict_Size(self._counters) + PyDict_Size(self._others) + PyDict_Size(self._pins) + n \
                > self.max_keys:
            now = self._now()
            self._evict(now, -1)  # near the bound: expired entries go first
        for i in range(n):
            found = _get(self._counters, keys[i], hashes, i)
            if found != NULL and (<Entry>found).period == periods[i]:
                current = (<Entry>found).value
            else:  # another period of the key, or a key not counted yet
                entry = self._other(<object>keys[i], periods[i])
                if entry is None:
                    current = 0
                    if increments[i]:
                        if found != NULL or <object>keys[i] in self._held:
                            new_periods += 1
                        else:
                            new_keys += 1
                else:
                    current = entry.value
            if current >= limits[i]:
                return i
        if (new_keys or new_periods) and not self._has_room(new_keys, new_periods):
            self._refuse("cap")
        if now < 0:
            now = self._now()
        for i in range(n):
            if not increments[i]:
                continue
            found = _get(self._counters, keys[i], hashes, i)
            if found != NULL and (<Entry>found).period == periods[i]:
                (<Entry>found).value += increments[i]
                continue
            entry = self._other(<object>keys[i], periods[i])
            if entry is None:
                entry = self._new_counter(<object>keys[i], periods[i], now, ttls[i])
            entry.value += increments[i]
        self._evict(now, EVICT_PER_WRITE)
        return -1

    def acquire(self, checks, *, dry_run=False):
        """See :meth:`tel400.counters.CounterBackend.acquire`."""
        cdef double now = 0
        cdef Py_ssize_t new_keys = 0, new_periods = 0
        cdef Entry entry
        if not dry_run:
            now = self._now()
            if self._size() + len(checks) > self.max_keys:
                self._evict(now, -1)  # near the bound: expired entries go first
        for i, check in enumerate(checks):
            entry = self._counter(check.key, check.period)
            if (0 if entry is None else entry.value) >= check.limit:
                return i
            if entry is None and check.increment:
                if check.key in self._held:
                    new_periods += 1
                else:
                    new_keys += 1
        if dry_run:
            return -1
        if (new_keys or new_periods) and not self._has_room(new_keys, new_periods):
            self._refuse("cap")
        for check in checks:
            if check.increment:
                entry = self._counter(check.key, check.period)
                if entry is None:
                    entry = self._new_counter(check.key, check.period, now, check.ttl_s)
                entry.value += check.increment
        self._evict(now, EVICT_PER_WRITE)
        return -1

    def add(self, key, int64_t period, int64_t amount, int64_t ttl_s):
        cdef double now = self._now()
        cdef Entry entry = self._counter(key, period)
        if entry is None:
            if key in self._held:
                self._make_room(0, 1, now, "charge")
            else:
                self._make_room(1, 0, now, "charge")
            entry = self._new_counter(key, period, now, ttl_s)
        entry.value += amount
        self._evict(now, EVICT_PER_WRITE)
        return entry.value

    def value(self, key, period):
        return self._current(key, period)

    def pin_failures(self, key, now, window_s):
        entry = self._pins.get(key)
        if entry is None or now - (<Entry>entry).opened >= window_s:
            return 0
        return (<Entry>entry).value

    def add_pin_failure(self, key, double now, window_s):
        cdef double clock_now = self._now()
        cdef Entry entry = self._pins.get(key)
        if entry is None:
            self._make_room(1, 0, clock_now, "pin")
            entry = Entry()
            entry.opened = now
            entry.value = 0
            entry.expires = clock_now + window_s
            self._pins[key] = entry
            self._push_expiry(entry.expires, 1, key, entry)
            self._compact_expiry()
        elif now - entry.opened >= window_s:  # a new window, in the same entry
            entry.opened = now
            entry.value = 0
            entry.expires = clock_now + window_s
        entry.value += 1
        self._evict(clock_now, EVICT_PER_WRITE)
        return entry.value

    def clear_pin_failures(self, key):
        self._pins.pop(key, None)
        self._compact_expiry()

    def usage(self):
        """Entries held, the bound, and new entries refused at it by kind (for metrics)."""
        return {"keys": self._size(), "max_keys": self.max_keys, "refused": dict(self.refused)}

    def _check(self):
        """Assert the invariants: within the bound, one expiry item per entry, a bounded queue."""
        cdef Py_ssize_t size = self._size()
        assert size <= 2 * self.max_keys
        assert sum(self._held.values()) == len(self._counters) + len(self._others)
        held = [item for item in self._expiry if self._holds(item[2], item[3], item[4])]
        assert len(held) == size, (len(held), size)
        assert len(self._expiry) <= 2 * size + 64
        for key, entry in self._counters.items():  # each (key, period) in one place only
            assert (key, (<Entry>entry).period) not in self._others

    def close(self):
        pass

    def __len__(self):
        return self._size()


CounterBackend.register(MemoryCounters)
