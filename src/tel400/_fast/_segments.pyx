# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tel400._lookup_py``: the prefix partition in C memory.

A lookup reads a bucket of the key's first four digits (which narrows the
search to the few intervals starting there), then does a branchless binary
search over those interval starts and one byte read for the province index.
The built-in table (about 24,000 intervals) takes 190 KB plus 40 KB of
buckets.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t, uint8_t

cdef enum:
    BUCKETS = 10000

cdef int64_t BUCKET_SPAN = 10000000  # keys are 11 digits: the first 4 pick a bucket

from ._numbers cimport c_normalize_or_none


cdef class IntervalLookup:
    """Province index by key, over a partition given as starts and codes."""

    def __cinit__(self, starts, codes):
        cdef Py_ssize_t i
        self.n = len(starts)
        if self.n == 0 or len(codes) != self.n:
            raise ValueError("a partition needs one code per start, and at least one")
        self.starts = <int64_t*>PyMem_Malloc(self.n * sizeof(int64_t))
        self.codes = <uint8_t*>PyMem_Malloc(self.n * sizeof(uint8_t))
        if self.starts == NULL or self.codes == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.starts[i] = starts[i]
            self.codes[i] = codes[i]
        self.buckets = <int32_t*>PyMem_Malloc((BUCKETS + 1) * sizeof(int32_t))
        if self.buckets == NULL:
            raise MemoryError()
        cdef Py_ssize_t j = 0
        cdef int b
        for b in range(BUCKETS + 1):
            # the interval holding the bucket's first key
            while j + 1 < self.n and self.starts[j + 1] <= b * BUCKET_SPAN:
                j += 1
            self.buckets[b] = <int32_t>j

    def __dealloc__(self):
        PyMem_Free(self.starts)
        PyMem_Free(self.codes)
        PyMem_Free(self.buckets)

    cdef int c_index(self, int64_t key) noexcept nogil:
        cdef int64_t b
        cdef const int64_t* base
        cdef Py_ssize_t length, half
        if key < 0:
            return 0
        b = key // BUCKET_SPAN
        if b >= BUCKETS:
            base = self.starts + self.buckets[BUCKETS]
            length = self.n - self.buckets[BUCKETS]
        else:
            base = self.starts + self.buckets[b]
            length = self.buckets[b + 1] - self.buckets[b] + 1
        # Branchless: the loop always runs log2(n) times, and the compiler
        # turns the select into a conditional move.
        while length > 1:
            half = length >> 1
            base = base + half if base[half] <= key else base
            length -= half
        return self.codes[base - self.starts]

    def index_of_key(self, int64_t key):
        """Province index for a key (0: unknown).  O(log n)."""
        return self.c_index(key)

    def index_of_number(self, number):
        """Province index of a number in any written form (0: unknown or not a number)."""
        cdef int64_t key
        if c_normalize_or_none(number, &key) is None:
            return 0
        return self.c_index(key)

    @property
    def nbytes(self):
        return self.n * (sizeof(int64_t) + sizeof(uint8_t)) + (BUCKETS + 1) * sizeof(int32_t)
