# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tel400._select_py``: target selection in C.

Same strategies, same orders, same sticky hash (FNV-1a, SplitMix64's
finaliser, weighted rendezvous scores in IEEE doubles, so the sticky choice
is identical to the reference's bit for bit).  Randomness comes from
xoshiro256**, seeded from the router's ``random.Random``; its draws differ
from the reference's, which is why weighted picks are compared by share.
"""

cimport cython
from cpython cimport array
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport log
from libc.stdint cimport int64_t, uint64_t

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


cdef inline uint64_t _fnv1a64(const char* data, Py_ssize_t n) noexcept nogil:
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
    return _fnv1a64(data, n)


cdef tuple _orders_by_pick(targets, weights):
    """For each pick, the pick first and then the others by weight (heaviest first, ties in listed order).

    Typed loops over a small array (an insertion sort of at most a plan's
    targets): compiling a plan builds one of these per bridge rule.
    """
    cdef Py_ssize_t n = len(targets), i, j, pick, k
    cdef int* rank
    cdef int64_t* w
    cdef int x
    targets = tuple(targets)
    if n == 1:
        return (targets,)
    if n == 2:  # the pick, then the other, whatever the weights
        return (targets, (targets[1], targets[0]))
    rank = <int*>PyMem_Malloc((n + 1) * (sizeof(int) + sizeof(int64_t)))
    if rank == NULL:
        raise MemoryError()
    w = <int64_t*>(rank + n) if n % 2 == 0 else <int64_t*>(rank + n + 1)
    try:
        for i in range(n):
            w[i] = weights[i]
            x = <int>i
            j = i
            while j > 0 and w[rank[j - 1]] < w[x]:  # stable: equal weights keep their order
                rank[j] = rank[j - 1]
                j -= 1
            rank[j] = x
        orders = [None] * n
        for pick in range(n):
            order = [targets[pick]] + [None] * (n - 1)
            k = 1
            for i in range(n):
                if rank[i] != pick:
                    order[k] = targets[rank[i]]
                    k += 1
            orders[pick] = tuple(order)
        return tuple(orders)
    finally:
        PyMem_Free(rank)


@cython.no_gc  # strings, tuples of strings and an array('q'): no cycle can pass through
cdef class Selector:
    def order(self, str caller_key, rng, bint advance=True):
        """The targets, the pick first (Python-visible; the engine uses c_order)."""
        if not isinstance(rng, FastRandom):
            rng = FastRandom(rng.getrandbits(64))
        return self.c_order(caller_key, <FastRandom>rng, advance)

    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance):
        raise NotImplementedError


@cython.no_gc  # strings, tuples of strings and an array('q'): no cycle can pass through
cdef class Sequential(Selector):
    def __cinit__(self, targets, weights, *args):
        self.strategy = "sequential"
        self._order = tuple(t for t, w in zip(targets, weights) if w) + tuple(
            t for t, w in zip(targets, weights) if not w
        )

    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance):
        return self._order


@cython.no_gc  # strings, tuples of strings and an array('q'): no cycle can pass through
cdef class Weighted(Selector):
    def __cinit__(self, targets, weights, *args):
        self.strategy = "weighted"
        self._orders = _orders_by_pick(targets, weights)
        cdef Py_ssize_t n = len(weights)
        # one block: cumulative weights, then the target index of each
        self._cumulative = <int64_t*>PyMem_Malloc(n * (sizeof(int64_t) + sizeof(int)))
        if self._cumulative == NULL:
            raise MemoryError()
        self._indexes = <int*>(self._cumulative + n)
        self._count = 0
        self._total = 0
        for i, w in enumerate(weights):
            if w:
                self._total += w
                self._cumulative[self._count] = self._total
                self._indexes[self._count] = i
                self._count += 1

    def __dealloc__(self):
        PyMem_Free(self._cumulative)

    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance):
        cdef int64_t r = <int64_t>rng.below(<uint64_t>self._total)
        cdef int lo = 0, hi = self._count - 1, mid
        while lo < hi:  # first cumulative weight above r
            mid = (lo + hi) >> 1
            if self._cumulative[mid] <= r:
                lo = mid + 1
            else:
                hi = mid
        return <tuple>self._orders[self._indexes[lo]]


@cython.no_gc  # strings, tuples of strings and an array('q'): no cycle can pass through
cdef class RoundRobin(Selector):
    """Smooth weighted round robin; ``state`` is an ``array('q')`` kept over reloads."""

    def __cinit__(self, targets, weights, state=None):
        self.strategy = "round_robin"
        self._orders = _orders_by_pick(targets, weights)
        self._n = len(weights)
        self._weights = <int64_t*>PyMem_Malloc(self._n * sizeof(int64_t))
        if self._weights == NULL:
            raise MemoryError()
        self._total = 0
        for i, w in enumerate(weights):
            self._weights[i] = w
            self._total += w
        if state is None:
            state = _array.array("q", [0] * self._n)
        if not isinstance(state, _array.array) or state.typecode != "q" or len(state) != self._n:
            raise TypeError("round-robin state: expected array('q') with one slot per target")
        self._state = state

    def __dealloc__(self):
        PyMem_Free(self._weights)

    @property
    def state(self):
        return self._state

    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance):
        cdef int64_t* current = <int64_t*>self._state.data.as_longlongs
        cdef int64_t scratch[64]
        cdef int i, best = 0
        cdef int64_t value, best_value = 0
        cdef bint found = False
        if not advance:
            if self._n > 64:
                return _peek_round_robin(self._orders, self._state, self._n, self._total, [self._weights[i] for i in range(self._n)])
            for i in range(self._n):
                scratch[i] = current[i]
            current = scratch
        for i in range(self._n):
            current[i] += self._weights[i]
            value = current[i]
            if self._weights[i] and (not found or value > best_value):
                best, best_value, found = i, value, True
        current[best] -= self._total
        return <tuple>self._orders[best]


def _peek_round_robin(orders, state, n, total, weights):
    current = list(state)
    best, best_value = 0, None
    for i in range(n):
        current[i] += weights[i]
        if weights[i] and (best_value is None or current[i] > best_value):
            best, best_value = i, current[i]
    return orders[best]


@cython.no_gc  # strings, tuples of strings and an array('q'): no cycle can pass through
cdef class Sticky(Selector):
    def __cinit__(self, targets, weights, *args):
        self.strategy = "sticky"
        self._targets = tuple(targets)
        self._n = len(targets)
        self._zero = tuple(t for t, w in zip(targets, weights) if not w)
        self._weights = <int64_t*>PyMem_Malloc(self._n * sizeof(int64_t))
        self._seeds = <uint64_t*>PyMem_Malloc(self._n * sizeof(uint64_t))
        if self._weights == NULL or self._seeds == NULL:
            raise MemoryError()
        for i, (t, w) in enumerate(zip(targets, weights)):
            self._weights[i] = w
            self._seeds[i] = fnv_of(t)

    def __dealloc__(self):
        PyMem_Free(self._weights)
        PyMem_Free(self._seeds)

    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance):
        cdef uint64_t h = fnv_of(caller_key)
        cdef double scores[64]
        cdef int idx[64]
        cdef int count = 0, i, j, k
        cdef double u, s
        if self._n > 64:
            return _sticky_python(self._targets, [self._weights[i] for i in range(self._n)], caller_key) + self._zero
        for i in range(self._n):
            if self._weights[i]:
                u = ((_mix64(h ^ self._seeds[i]) >> 11) + 0.5) / 9007199254740992.0
                s = -(<double>self._weights[i]) / log(u)
                # insertion by descending score, ties in listed order
                j = count
                while j > 0 and scores[j - 1] < s:
                    scores[j] = scores[j - 1]
                    idx[j] = idx[j - 1]
                    j -= 1
                scores[j] = s
                idx[j] = i
                count += 1
        out = [None] * (count + len(self._zero))
        for k in range(count):
            out[k] = self._targets[idx[k]]
        for k in range(len(self._zero)):
            out[count + k] = self._zero[k]
        return tuple(out)


def _sticky_python(targets, weights, caller_key):
    from .._select_py import Sticky as Reference

    return Reference(targets, weights).order(caller_key, None)[: sum(1 for w in weights if w)]


SELECTORS = {"weighted": Weighted, "round_robin": RoundRobin, "sequential": Sequential, "sticky": Sticky}


def make_selector(strategy, targets, weights, state=None):
    return SELECTORS[strategy](targets, weights, state)
