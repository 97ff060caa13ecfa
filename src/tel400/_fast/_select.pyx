# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tel400._select_py``: target selection in C.

Same strategies, same orders, same sticky hash (FNV-1a, SplitMix64's
finaliser, weighted rendezvous scores in IEEE doubles, so the sticky choice
is identical to the reference's bit for bit).  Randomness comes from
xoshiro256**, seeded from the router's ``random.Random``; its draws differ
from the reference's, which is why weighted picks are compared by share.

The selection is written once, :func:`select_order`, over C arrays (the
weights in listed order, a round-robin state, sticky seeds): it writes the
order as target indexes.  The :class:`Selector` classes (the compiler's
description, what explain's tracer runs) and the compiled engine's packed
plans (``_engine.pyx``: targets as UTF-8 in the plan's own block) both call
it, and each turns the indexes into its tuple of strings.  Nothing is
precomputed per pick: an order costs O(targets) per call (a sort of the
others by weight, heaviest first), which for the one or two targets most
rules have is a few nanoseconds, and keeps no tuple per pick in memory.
"""

cimport cython
from cpython cimport array
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport log
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcpy

import array as _array

cdef extern from *:
    ctypedef unsigned long long uint128_t "unsigned __int128"


cdef inline uint64_t _rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t _splitmix(uint64_t* state) noexcept nogil:
    state[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = state[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef class FastRandom:
    """xoshiro256**: a fast, well-tested generator (not for secrets)."""

    def __cinit__(self, seed=0):
        self.seed(seed)

    def seed(self, seed):
        cdef uint64_t state = <uint64_t>(hash(seed) & 0xFFFFFFFFFFFFFFFF)
        self.s0 = _splitmix(&state)
        self.s1 = _splitmix(&state)
        self.s2 = _splitmix(&state)
        self.s3 = _splitmix(&state)

    cdef uint64_t next64(self) noexcept nogil:
        cdef uint64_t result = _rotl(self.s1 * 5, 7) * 9
        cdef uint64_t t = self.s1 << 17
        self.s2 ^= self.s0
        self.s3 ^= self.s1
        self.s1 ^= self.s2
        self.s0 ^= self.s3
        self.s2 ^= t
        self.s3 = _rotl(self.s3, 45)
        return result

    cdef uint64_t below(self, uint64_t n) noexcept nogil:
        """Uniform in [0, n), without modulo bias (Lemire's method)."""
        cdef uint64_t x, threshold
        cdef uint128_t m
        x = self.next64()
        m = <uint128_t>x * n
        if <uint64_t>m < n:
            threshold = (-n) % n
            while <uint64_t>m < threshold:
                x = self.next64()
                m = <uint128_t>x * n
        return <uint64_t>(m >> 64)

    def randrange(self, n):
        if n <= 0:
            raise ValueError("empty range")
        return self.below(n)

    def random(self):
        return (self.next64() >> 11) * (1.0 / 9007199254740992.0)

    def getrandbits(self, int k):
        if k != 64:
            raise ValueError("FastRandom gives 64 bits at a time")
        return self.next64()


cdef uint64_t FNV_OFFSET = 0xCBF29CE484222325ULL
cdef uint64_t FNV_PRIME = 0x100000001B3ULL


cdef uint64_t fnv1a64(const char* data, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = FNV_OFFSET
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ <unsigned char>data[i]) * FNV_PRIME
    return h


cdef inline uint64_t _mix64(uint64_t x) noexcept nogil:
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef uint64_t fnv_of(str text) except? 0:
    cdef Py_ssize_t n
    cdef const char* data = PyUnicode_AsUTF8AndSize(text, &n)
    return fnv1a64(data, n)


# -- the strategies, over C arrays ------------------------------------------------

cdef inline Py_ssize_t _weighted_pick(const int32_t* weights, Py_ssize_t n, int64_t total, FastRandom rng) noexcept:
    """The first target whose running sum of weights (listed order) exceeds a uniform draw in [0, total).

    The reference's bisect over cumulative weights, as a scan: O(targets).
    """
    cdef int64_t r
    cdef Py_ssize_t i
    if total <= 0:
        return 0
    r = <int64_t>rng.below(<uint64_t>total)
    for i in range(n):
        r -= weights[i]
        if r < 0:
            return i
    return n - 1


cdef inline Py_ssize_t _round_robin_pick(const int32_t* weights, int64_t* current, Py_ssize_t n,
                                         int64_t total) noexcept nogil:
    """Smooth weighted round robin (nginx's): add each weight, take the largest (first on ties), subtract the total."""
    cdef Py_ssize_t i, best = 0
    cdef int64_t best_value = 0
    cdef bint found = False
    for i in range(n):
        current[i] += weights[i]
        if weights[i] and (not found or current[i] > best_value):
            best, best_value, found = i, current[i], True
    current[best] -= total
    return best


cdef inline void _failover_order(const int32_t* weights, Py_ssize_t n, Py_ssize_t pick, int* out) noexcept nogil:
    """The pick, then the others by weight, heaviest first, ties in listed order (a stable insertion sort)."""
    cdef Py_ssize_t i, j, k = 1
    out[0] = <int>pick
    for i in range(n):
        if i == pick:
            continue
        j = k
        while j > 1 and weights[out[j - 1]] < weights[i]:
            out[j] = out[j - 1]
            j -= 1
        out[j] = <int>i
        k += 1


cdef inline void _sequential_order(const int32_t* weights, Py_ssize_t n, int* out) noexcept nogil:
    """The listed order; a zero weight means failover only, so those go last."""
    cdef Py_ssize_t i, k = 0
    for i in range(n):
        if weights[i]:
            out[k] = <int>i
            k += 1
    for i in range(n):
        if not weights[i]:
            out[k] = <int>i
            k += 1


cdef inline void _sticky_order(const int32_t* weights, const uint64_t* seeds, Py_ssize_t n, uint64_t h,
                               double* scores, int* out) noexcept nogil:
    """Weighted rendezvous: targets by descending score -w/ln(u), ties in listed order; zero weights last."""
    cdef Py_ssize_t i, j, count = 0
    cdef double u, s
    for i in range(n):
        if weights[i]:
            u = ((_mix64(h ^ seeds[i]) >> 11) + 0.5) / 9007199254740992.0
            s = -(<double>weights[i]) / log(u)
            j = count
            while j > 0 and scores[j - 1] < s:
                scores[j] = scores[j - 1]
                out[j] = out[j - 1]
                j -= 1
            scores[j] = s
            out[j] = <int>i
            count += 1
    for i in range(n):
        if not weights[i]:
            out[count] = <int>i
            count += 1


cdef int select_order(int strategy, const int32_t* weights, const uint64_t* seeds, Py_ssize_t n, int64_t total,
                      int64_t* rr_current, uint64_t caller_hash, FastRandom rng, bint advance, int* out) except -1:
    """Write into ``out`` (``n`` ints) the order of a rule's targets: every index once, the pick first.

    ``weights`` in listed order; ``seeds`` (sticky) the targets' FNV-1a;
    ``rr_current`` (round robin) the state, advanced unless ``advance`` is
    false (a dry run peeks on a copy); ``caller_hash`` (sticky) the caller's
    FNV-1a.  O(targets) (sticky and the failover sort: O(targets^2) worst,
    an insertion sort of at most ``limits.MAX_TARGETS``); allocates only for
    more than STACK_TARGETS targets.
    """
    cdef int64_t stack_current[STACK_TARGETS]
    cdef double stack_scores[STACK_TARGETS]
    cdef void* scratch = NULL
    cdef int64_t* current
    cdef Py_ssize_t pick
    if n <= 1:  # one target: every strategy gives it (a round robin's state would come back unchanged)
        out[0] = 0
        return 0
    if strategy == S_SEQUENTIAL:
        _sequential_order(weights, n, out)
        return 0
    if (strategy == S_STICKY or (strategy == S_ROUND_ROBIN and not advance)) and n > STACK_TARGETS:
        scratch = PyMem_Malloc(n * sizeof(double) if strategy == S_STICKY else n * sizeof(int64_t))
        if scratch == NULL:
            raise MemoryError()
    try:
        if strategy == S_STICKY:
            _sticky_order(weights, seeds, n, caller_hash, <double*>scratch if scratch != NULL else stack_scores, out)
            return 0
        if strategy == S_ROUND_ROBIN:
            current = rr_current
            if not advance:
                current = <int64_t*>scratch if scratch != NULL else stack_current
                memcpy(current, rr_current, n * sizeof(int64_t))
            pick = _round_robin_pick(weights, current, n, total)
        else:
            pick = _weighted_pick(weights, n, total, rng)
        _failover_order(weights, n, pick, out)
        return 0
    finally:
        PyMem_Free(scratch)


cdef dict _STRATEGY_CODES = {"weighted": S_WEIGHTED, "round_robin": S_ROUND_ROBIN, "sequential": S_SEQUENTIAL,
                             "sticky": S_STICKY}


def strategy_code(str strategy):
    """The code a packed plan keeps for a strategy name."""
    return _STRATEGY_CODES[strategy]


# -- the selectors the compiler describes rules with ------------------------------

@cython.no_gc  # strings, a tuple of strings and an array('q'): no cycle can pass through
cdef class Selector:
    """A bridge rule's targets and weights, choosing with :func:`select_order`.

    Built by the compiler for each bridge action (``make_selector``); the
    compiled engine copies what it holds into its packed plan, and
    explain's tracer calls :meth:`order`.  Keeps no order: O(targets) per call.
    """

    def __cinit__(self, targets, weights, state=None):
        cdef Py_ssize_t i
        self.targets = tuple(targets)
        self.n = len(self.targets)
        if len(weights) != self.n:
            raise ValueError("a selector needs one weight per target")
        self._weights = <int32_t*>PyMem_Malloc(max(self.n, 1) * sizeof(int32_t))
        if self._weights == NULL:
            raise MemoryError()
        self._seeds = NULL
        self._state = None
        self.total = 0
        for i in range(self.n):
            self._weights[i] = weights[i]
            self.total += self._weights[i]

    def __dealloc__(self):
        PyMem_Free(self._weights)
        PyMem_Free(self._seeds)

    @property
    def weights(self):
        """The weights, in listed order."""
        return tuple([self._weights[i] for i in range(self.n)])

    def order(self, str caller_key, rng, bint advance=True):
        """The targets, the pick first (Python-visible; the engine runs select_order on its packed form)."""
        if not isinstance(rng, FastRandom):
            rng = FastRandom(rng.getrandbits(64))
        return self.c_order(caller_key, <FastRandom>rng, advance)

    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance):
        cdef int stack[STACK_TARGETS]
        cdef int* out = stack
        cdef Py_ssize_t k
        cdef uint64_t h = fnv_of(caller_key) if self.kind == S_STICKY else 0
        cdef int64_t* current = <int64_t*>self._state.data.as_longlongs if self._state is not None else NULL
        if self.n > STACK_TARGETS:
            out = <int*>PyMem_Malloc(self.n * sizeof(int))
            if out == NULL:
                raise MemoryError()
        try:
            select_order(self.kind, self._weights, self._seeds, self.n, self.total, current, h, rng, advance, out)
            result = PyTuple_New(self.n)
            for k in range(self.n):
                item = self.targets[out[k]]
                Py_INCREF(item)
                PyTuple_SET_ITEM(result, k, item)
            return result
        finally:
            if out != stack:
                PyMem_Free(out)


@cython.no_gc
cdef class Sequential(Selector):
    def __cinit__(self, targets, weights, *args):
        self.strategy = "sequential"
        self.kind = S_SEQUENTIAL


@cython.no_gc
cdef class Weighted(Selector):
    def __cinit__(self, targets, weights, *args):
        self.strategy = "weighted"
        self.kind = S_WEIGHTED


@cython.no_gc
cdef class RoundRobin(Selector):
    """Smooth weighted round robin; ``state`` is an ``array('q')`` kept over reloads."""

    def __cinit__(self, targets, weights, state=None):
        self.strategy = "round_robin"
        self.kind = S_ROUND_ROBIN
        if state is None:
            state = _array.array("q", bytes(8 * self.n))
        if not isinstance(state, _array.array) or state.typecode != "q" or len(state) != self.n:
            raise TypeError("round-robin state: expected array('q') with one slot per target")
        self._state = state

    @property
    def state(self):
        return self._state


@cython.no_gc
cdef class Sticky(Selector):
    def __cinit__(self, targets, weights, *args):
        cdef Py_ssize_t i
        self.strategy = "sticky"
        self.kind = S_STICKY
        self._seeds = <uint64_t*>PyMem_Malloc(max(self.n, 1) * sizeof(uint64_t))
        if self._seeds == NULL:
            raise MemoryError()
        for i in range(self.n):
            self._seeds[i] = fnv_of(self.targets[i])


SELECTORS = {"weighted": Weighted, "round_robin": RoundRobin, "sequential": Sequential, "sticky": Sticky}


def make_selector(strategy, targets, weights, state=None):
    return SELECTORS[strategy](targets, weights, state)
