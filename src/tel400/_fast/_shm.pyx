# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""``shm:///path``: counters shared by every process on one host.

A file (normally under /dev/shm) mapped into each process holds a fixed-size
open-addressing table of slots::

    header  64 bytes: magic, layout version, slot count, statistics
    slot    24 bytes: key (64-bit hash, 0 = empty), state, expiry (UNIX s)

Every (key, period) is a counter of its own, in its own slot (the slot's
key is a hash of both), as on ``redis://``: a call dated in another period
is counted there and never resets the current count, and a charge at a
call's end lands in the period the call was routed in.  A counter's state
packs its period and value into one 64-bit word (period: low 24 bits of the
period id; value: 40 bits), so a check-and-add is one compare-and-swap.
PIN failures (one slot per key) pack the window's opening time (32 bits)
and the count (32 bits).

Updates are lock-free (GCC/C11 atomics on the shared mapping).  Inserting a
key takes a POSIX record lock on the file, so two processes cannot give one
key two slots; the lock belongs to the process, so a process that dies
holding it releases it, and forked children take it like anyone else.  Slots
whose key expired more than a day ago are reused for new keys (a daily cap
thus holds at most three slots in turn, an hourly cap 26, a weekly or
monthly cap 2).  A key looks for a slot among the ``MAX_PROBES`` slots from
its hash's place, which bounds the work of every lookup however full the
table is; with no free or reusable slot there the table counts as full:
:class:`~tel400.BackendError` is raised (the plan's ``on_backend_error``
applies), the event is counted (``full_events``, ``tel400_shm_table_full``)
and logged at most once a minute; nothing is overwritten silently, and the
caps a call already holds are checked before any slot is claimed, so a full
table never admits a call that a held cap refuses.  Filled with distinct
keys, tables refused their first key at 77 % full; sizing for at most 70 %
(docs/deploy.md, "Sizing shm:// for a million numbers") avoids refusals.

Several caps of one call are acquired one by one and, if a later one is at
its limit, the earlier increments are taken back: a cap is never exceeded,
but while two calls race for the last places of two caps, one of them can
be refused although a place would have been left.  Keys are 64-bit hashes
(FNV-1a, mixed): two of a million keys colliding has a chance of about
3 in 100 million.
"""

import os

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from ._counters cimport CCounters

from ..counters import CounterBackend, RefusalLog
from ..exceptions import BackendError

cdef extern from *:
    """
    #include <errno.h>
    #include <sys/mman.h>
    #include <fcntl.h>
    #include <unistd.h>
    #include <time.h>

    typedef struct {
        char magic[8];
        uint32_t layout;
        uint32_t reserved;
        uint64_t slots;
        uint64_t full_events;
        uint64_t inserts;
        uint64_t reuses;
        uint64_t rollbacks;
        uint64_t pad;
    } tel400_shm_header;

    typedef struct {
        uint64_t key;
        uint64_t state;
        int64_t expires;
    } tel400_shm_slot;

    static inline uint64_t tel400_load(uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void tel400_store(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int64_t tel400_load_i(int64_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void tel400_store_i(int64_t* p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline int tel400_cas(uint64_t* p, uint64_t* expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline void tel400_add(uint64_t* p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }

    static int tel400_lock(int fd, int lock) {
        struct flock fl;
        fl.l_type = lock ? F_WRLCK : F_UNLCK;
        fl.l_whence = SEEK_SET;
        fl.l_start = 0;
        fl.l_len = 1;
        int rc;
        do { rc = fcntl(fd, F_SETLKW, &fl); } while (rc == -1 && errno == EINTR);
        return rc;
    }

    static int64_t tel400_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec;
    }
    """
    ctypedef struct tel400_shm_header:
        char magic[8]
        uint32_t layout
        uint64_t slots
        uint64_t full_events
        uint64_t inserts
        uint64_t reuses
        uint64_t rollbacks

    ctypedef struct tel400_shm_slot:
        uint64_t key
        uint64_t state
        int64_t expires

    uint64_t tel400_load(uint64_t* p) nogil
    void tel400_store(uint64_t* p, uint64_t v) nogil
    int64_t tel400_load_i(int64_t* p) nogil
    void tel400_store_i(int64_t* p, int64_t v) nogil
    bint tel400_cas(uint64_t* p, uint64_t* expected, uint64_t desired) nogil
    void tel400_add(uint64_t* p, uint64_t v) nogil
    int tel400_lock(int fd, int lock) nogil
    int64_t tel400_now() nogil
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset) nogil
    int munmap(void* addr, size_t length) nogil
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    void* MAP_FAILED

cdef enum:
    LAYOUT = 2          # 2: a slot per (key, period)
    HEADER_BYTES = 64
    SLOT_BYTES = 24
    MAX_CAPS = 64
    MAX_PROBES = 256    # slots a key may look at from its hash's place

cdef uint64_t VALUE_MASK = (<uint64_t>1 << 40) - 1
cdef uint64_t PERIOD_MASK = (<uint64_t>1 << 24) - 1
cdef int64_t MAX_VALUE = <int64_t>VALUE_MASK
cdef int64_t REUSE_AFTER_S = 86400  # a slot is reused a day after its key expired
cdef bytes MAGIC = b"TEL400SH"
#: The table's size when none is given and no table exists yet: 16,777,216
#: slots, a 402,653,248-byte file (384 MiB; sparse: a page of it takes memory
#: once a key lands in it).  It holds a million numbers with two daily caps
#: each (at most 6 million slots) at 36 % full: see docs/deploy.md, "Sizing
#: shm:// for a million numbers".
DEFAULT_SLOTS = 1 << 24


cdef inline uint64_t _pack(int64_t period, int64_t value) noexcept nogil:
    return ((<uint64_t>period & PERIOD_MASK) << 40) | (<uint64_t>value & VALUE_MASK)


cdef inline int64_t _value_in(uint64_t state, int64_t period) noexcept nogil:
    """The value the state holds for ``period`` (0 when it belongs to another period)."""
    if (state >> 40) != (<uint64_t>period & PERIOD_MASK):
        return 0
    return <int64_t>(state & VALUE_MASK)


cdef inline uint64_t _hash(const char* data, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = 0xCBF29CE484222325ULL
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>data[i]) * 0x100000001B3ULL
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL
    h = h ^ (h >> 31)
    return h | 1  # 0 marks an empty slot


cdef uint64_t key_hash(object key) except 0:
    cdef Py_ssize_t n
    cdef const char* data = PyUnicode_AsUTF8AndSize(key, &n)
    return _hash(data, n)


cdef inline uint64_t _with_period(uint64_t h, int64_t period) noexcept nogil:
    """The slot key of one period of a counter: its key's hash mixed with the period."""
    h ^= <uint64_t>period * 0x9E3779B97F4A7C15ULL
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL
    h = h ^ (h >> 31)
    return h | 1


cdef uint64_t counter_hash(object key, int64_t period) except 0:
    return _with_period(key_hash(key), period)


cdef class ShmCounters(CCounters):
    """Counters in a shared mapping: exact across every process on the host.

    Args:
        path: the file, e.g. ``/dev/shm/tel400.counters`` (created if missing).
        slots: table size, a power of two of at least 16 (24 bytes each);
            every process opening the file must agree.  ``None`` (the
            default): the size of the table already in the file, or
            :data:`DEFAULT_SLOTS` for a new file.
    """

    cdef readonly str url
    cdef readonly str path
    cdef int fd
    cdef size_t size
    cdef char* base
    cdef tel400_shm_header* header
    cdef tel400_shm_slot* table
    cdef uint64_t mask
    cdef uint64_t probes       # MAX_PROBES, or the whole table when smaller
    cdef int pid
    cdef object _refusal_log

    def __cinit__(self, path, slots=None):
        self.fd = -1
        self.base = NULL

    def __init__(self, path, slots=None):
        if slots is not None and (slots < 16 or slots & (slots - 1)):
            raise ValueError(f"shm counters: slots must be a power of two of at least 16, got {slots}")
        self.path = os.fspath(path)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise BackendError(f"shm counters: cannot open {self.path}: {exc.strerror}") from None
        if tel400_lock(self.fd, 1) != 0:
            raise BackendError(f"shm counters: cannot lock {self.path}")
        try:
            existing = os.fstat(self.fd).st_size
            if slots is None:
                slots = self._slots_in_file(existing) if existing else DEFAULT_SLOTS
            self.size = HEADER_BYTES + <size_t>slots * SLOT_BYTES
            self._check_room(slots)
            if existing == 0:
                os.ftruncate(self.fd, self.size)
            elif existing != self.size:
                raise BackendError(
                    f"shm counters: {self.path} holds a table of another size "
                    f"({existing} bytes, expected {self.size} for {slots} slots)"
                )
            self.base = <char*>mmap(NULL, self.size, PROT_READ | PROT_WRITE, MAP_SHARED, self.fd, 0)
            if <void*>self.base == MAP_FAILED:
                self.base = NULL
                raise BackendError(f"shm counters: cannot map {self.path}")
            self.header = <tel400_shm_header*>self.base
            self.table = <tel400_shm_slot*>(self.base + HEADER_BYTES)
            if existing == 0:
                self.header.layout = LAYOUT
                self.header.slots = slots
                memcpy(self.header.magic, <const char*>MAGIC, 8)
            elif memcmp(self.header.magic, <const char*>MAGIC, 8) != 0 or self.header.layout != LAYOUT \
                    or self.header.slots != <uint64_t>slots:
                raise BackendError(f"shm counters: {self.path} is not a tel400 counter table of this layout")
        finally:
            tel400_lock(self.fd, 0)
        self.url = f"shm://{self.path}?slots={slots}"
        self.mask = slots - 1
        self.probes = min(<uint64_t>slots, <uint64_t>MAX_PROBES)
        self.pid = os.getpid()
        self._refusal_log = RefusalLog("shm", f"slots={slots}")

    def _check_room(self, slots):
        """Refuse a table its file system cannot hold in full.

        The file is sparse: its pages are allocated as keys land in them, and
        a page the file system has no room for would kill the process with
        SIGBUS in the middle of a call (a container's /dev/shm is often
        64 MB, and the default table is 384 MiB).  So the unallocated part
        must fit in the free space now; filling the file system with other
        files later is the operator's to avoid.
        """
        allocated = os.fstat(self.fd).st_blocks * 512
        fs = os.fstatvfs(self.fd)
        free = fs.f_bavail * fs.f_frsize
        if self.size > allocated + free:
            raise BackendError(
                f"shm counters: a table of {slots} slots takes {self.size} bytes, but the file system of "
                f"{self.path} has {free} bytes free; give it fewer slots (shm:///path?slots=N, a power of two) "
                "or more room (e.g. docker run --shm-size)"
            )

    def _slots_in_file(self, Py_ssize_t existing):
        """The slot count of the table already in the file (its header, checked against its size)."""
        header = os.pread(self.fd, HEADER_BYTES, 0)
        slots = int.from_bytes(header[16:24], "little")
        if header[:8] != MAGIC or int.from_bytes(header[8:12], "little") != LAYOUT \
                or existing != HEADER_BYTES + slots * SLOT_BYTES:
            raise BackendError(f"shm counters: {self.path} is not a tel400 counter table of this layout")
        return slots

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
        if self.fd >= 0:
            os.close(self.fd)

    def close(self):
        """Unmap the table (the file and its counts stay for other processes)."""
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    cdef int _ready(self) except -1:
        if self.base == NULL:
            raise BackendError("shm counters: the table was closed")
        return 0

    # -- slots ----------------------------------------------------------------

    cdef tel400_shm_slot* _find(self, uint64_t key) noexcept nogil:
        """The slot of ``key``, or NULL if it has none."""
        cdef uint64_t i = key & self.mask
        cdef uint64_t probes = 0
        cdef uint64_t k
        while probes < self.probes:
            k = tel400_load(&self.table[i].key)
            if k == key:
                return &self.table[i]
            if k == 0:
                return NULL
            i = (i + 1) & self.mask
            probes += 1
        return NULL

    cdef tel400_shm_slot* _claim(self, uint64_t key, int64_t ttl, str kind) except NULL:
        """The slot of ``key``, inserting it (under the file lock) if needed."""
        cdef tel400_shm_slot* slot = self._find(key)
        cdef tel400_shm_slot* reusable = NULL
        cdef uint64_t i, probes, k
        cdef int64_t now
        if slot != NULL:
            return slot
        if tel400_lock(self.fd, 1) != 0:
            raise BackendError("shm counters: cannot lock the table")
        try:
            now = tel400_now()
            i = key & self.mask
            probes = 0
            while probes < self.probes:
                k = tel400_load(&self.table[i].key)
                if k == key:
                    return &self.table[i]
                if k == 0:
                    break
                if reusable == NULL and tel400_load_i(&self.table[i].expires) + REUSE_AFTER_S < now:
                    reusable = &self.table[i]
                i = (i + 1) & self.mask
                probes += 1
            if reusable != NULL:
                slot = reusable
                tel400_add(&self.header.reuses, 1)
            elif probes < self.probes:
                slot = &self.table[i]
            else:
                tel400_add(&self.header.full_events, 1)
                self._refusal_log.note(kind)
                raise BackendError(
                    f"shm counters: table {self.path} is full ({self.mask + 1} slots); "
                    "give it more slots (shm:///path?slots=N) or shorter-lived caller caps"
                )
            tel400_store(&slot.state, 0)
            tel400_store_i(&slot.expires, now + ttl)
            tel400_store(&slot.key, key)  # published last: readers see a ready slot
            tel400_add(&self.header.inserts, 1)
            return slot
        finally:
            tel400_lock(self.fd, 0)

    cdef int64_t _add(self, tel400_shm_slot* slot, int64_t period, int64_t amount, int64_t ttl) except? -1:
        """Add to a counter unconditionally; a new period starts from zero."""
        cdef uint64_t old = tel400_load(&slot.state)
        cdef int64_t value
        while True:
            value = _value_in(old, period)
            if value + amount > MAX_VALUE:
                raise BackendError("shm counters: value out of range")
            if tel400_cas(&slot.state, &old, _pack(period, value + amount)):
                if value == 0:
                    tel400_store_i(&slot.expires, tel400_now() + ttl)
                return value + amount

    cdef int c_acquire(self, PyObject** keys, const Py_hash_t* key_hashes, const int64_t* periods,
                       const int64_t* limits, const int64_t* increments, const int64_t* ttls, int n) except -2:
        """Check and count every cap; -1 when all were counted, else the first index at its limit.

        The caps already counted decide first: a cap at its limit refuses
        the call even when another cap of it (a new caller) finds no free
        slot, so a full table never turns a refusal into the plan's
        ``on_backend_error`` (``allow`` would connect it).  Only then are
        slots claimed for new keys (:class:`~tel400.BackendError` when the
        table is full, with nothing counted), then the caps counted one by
        one.  Cost: O(caps) slot lookups of at most ``MAX_PROBES`` each.
        """
        cdef tel400_shm_slot* slots[MAX_CAPS]
        cdef uint64_t old
        cdef int64_t value
        cdef int i, j
        cdef uint64_t hashes[MAX_CAPS]
        self._ready()
        if n > MAX_CAPS:
            raise BackendError(f"shm counters: at most {MAX_CAPS} caps per call")
        for i in range(n):
            hashes[i] = counter_hash(<object>keys[i], periods[i])
            slots[i] = self._find(hashes[i])
            value = 0 if slots[i] == NULL else _value_in(tel400_load(&slots[i].state), periods[i])
            if value >= limits[i]:
                return i  # nothing counted yet
        for i in range(n):
            if slots[i] == NULL and increments[i]:
                slots[i] = self._claim(hashes[i], ttls[i], "cap")
        for i in range(n):
            if slots[i] == NULL:  # never counted: its value is 0
                if limits[i] <= 0:
                    self._take_back(slots, periods, increments, i)
                    return i
                continue
            old = tel400_load(&slots[i].state)
            while True:
                value = _value_in(old, periods[i])
                if value >= limits[i]:
                    self._take_back(slots, periods, increments, i)
                    return i
                if not increments[i]:
                    break
                if tel400_cas(&slots[i].state, &old, _pack(periods[i], value + increments[i])):
                    if value == 0:
                        tel400_store_i(&slots[i].expires, tel400_now() + ttls[i])
                    break
        return -1

    cdef void _take_back(self, tel400_shm_slot** slots, const int64_t* periods, const int64_t* increments,
                         int upto) noexcept nogil:
        """Undo the increments of caps 0..upto-1 (a later cap was at its limit)."""
        cdef int j
        cdef uint64_t old
        cdef int64_t value
        for j in range(upto):
            if not increments[j] or slots[j] == NULL:
                continue
            old = tel400_load(&slots[j].state)
            while True:
                value = _value_in(old, periods[j])
                if value < increments[j]:
                    break  # the period moved on meanwhile: nothing of ours is left
                if tel400_cas(&slots[j].state, &old, _pack(periods[j], value - increments[j])):
                    break
            tel400_add(&self.header.rollbacks, 1)

    # -- the CounterBackend interface ------------------------------------------

    def acquire(self, checks, *, dry_run=False):
        """See :meth:`tel400.counters.CounterBackend.acquire`."""
        cdef int n = len(checks)
        cdef int i
        cdef int64_t periods[MAX_CAPS]
        cdef int64_t limits[MAX_CAPS]
        cdef int64_t increments[MAX_CAPS]
        cdef int64_t ttls[MAX_CAPS]
        cdef PyObject* keys[MAX_CAPS]
        if n > MAX_CAPS:
            raise BackendError(f"shm counters: at most {MAX_CAPS} caps per call")
        if dry_run:
            for i, check in enumerate(checks):
                if self.value(check.key, check.period) >= check.limit:
                    return i
            return -1
        key_objects = [check.key for check in checks]
        for i, check in enumerate(checks):
            keys[i] = <PyObject*>key_objects[i]
            periods[i] = check.period
            limits[i] = check.limit
            increments[i] = check.increment
            ttls[i] = check.ttl_s
        return self.c_acquire(keys, NULL, periods, limits, increments, ttls, n)

    def add(self, key, int64_t period, int64_t amount, int64_t ttl_s):
        self._ready()
        return self._add(self._claim(counter_hash(key, period), ttl_s, "charge"), period, amount, ttl_s)

    def value(self, key, int64_t period):
        self._ready()
        cdef tel400_shm_slot* slot = self._find(counter_hash(key, period))
        return 0 if slot == NULL else _value_in(tel400_load(&slot.state), period)

    def pin_failures(self, key, double now, int64_t window_s):
        self._ready()
        cdef tel400_shm_slot* slot = self._find(key_hash(key))
        cdef uint64_t state
        if slot == NULL:
            return 0
        state = tel400_load(&slot.state)
        if state == 0 or <int64_t>now - <int64_t>(state >> 32) >= window_s:
            return 0
        return <int64_t>(state & 0xFFFFFFFF)

    def add_pin_failure(self, key, double now, int64_t window_s):
        self._ready()
        cdef tel400_shm_slot* slot = self._claim(key_hash(key), window_s, "pin")
        cdef uint64_t old = tel400_load(&slot.state)
        cdef uint64_t new
        cdef int64_t t = <int64_t>now
        while True:
            if old == 0 or t - <int64_t>(old >> 32) >= window_s:
                new = (<uint64_t>(<uint32_t>t) << 32) | 1
            else:
                new = old + 1
            if tel400_cas(&slot.state, &old, new):
                tel400_store_i(&slot.expires, tel400_now() + window_s)
                return <int64_t>(new & 0xFFFFFFFF)

    def clear_pin_failures(self, key):
        self._ready()
        cdef tel400_shm_slot* slot = self._find(key_hash(key))
        if slot != NULL:
            tel400_store(&slot.state, 0)

    def stats(self):
        """Table statistics: slots, used, full_events, inserts, reuses, rollbacks.

        O(1): ``used`` is the header's inserts less its reuses (slots are
        never emptied), so a metrics scrape never walks the table (at the
        default size a walk took 0.6 s and made the whole sparse file
        resident).
        """
        self._ready()
        cdef uint64_t inserts = tel400_load(&self.header.inserts)
        cdef uint64_t reuses = tel400_load(&self.header.reuses)
        return {
            "slots": self.mask + 1,
            "used": inserts - reuses,
            "full_events": self.header.full_events,
            "inserts": self.header.inserts,
            "reuses": self.header.reuses,
            "rollbacks": self.header.rollbacks,
        }

    def _check(self):
        """Assert the invariants (tests): the header's ``used`` is the slots holding a key, and
        every key is found from its hash's place within ``MAX_PROBES``.  O(slots)."""
        self._ready()
        cdef uint64_t used = 0, i, k
        for i in range(self.mask + 1):
            k = tel400_load(&self.table[i].key)
            if k != 0:
                used += 1
                assert self._find(k) == &self.table[i], f"slot {i}: its key is not found from its place"
        assert used == self.stats()["used"], (used, self.stats())

    def __len__(self):
        return self.stats()["used"]

    def __reduce__(self):
        return (ShmCounters, (self.path, self.mask + 1))


CounterBackend.register(ShmCounters)
