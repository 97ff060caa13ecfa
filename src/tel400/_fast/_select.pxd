from cpython cimport array
from libc.stdint cimport int32_t, int64_t, uint64_t


cdef enum:
    S_WEIGHTED = 0
    S_ROUND_ROBIN = 1
    S_SEQUENTIAL = 2
    S_STICKY = 3
    # orders of at most this many targets are chosen in stack arrays; longer ones allocate
    STACK_TARGETS = 64


cdef class FastRandom:
    cdef uint64_t s0, s1, s2, s3
    cdef uint64_t next64(self) noexcept nogil
    cdef uint64_t below(self, uint64_t n) noexcept nogil


# The selection itself, over C arrays: what the Selector classes and the
# compiled engine's packed plans both run (one author for every order).
cdef uint64_t fnv1a64(const char* data, Py_ssize_t n) noexcept nogil
cdef uint64_t fnv_of(str text) except? 0
cdef int select_order(int strategy, const int32_t* weights, const uint64_t* seeds, Py_ssize_t n, int64_t total,
                      int64_t* rr_current, uint64_t caller_hash, FastRandom rng, bint advance, int* out) except -1


cdef class Selector:
    cdef readonly str strategy
    cdef readonly tuple targets
    cdef int kind
    cdef Py_ssize_t n
    cdef int64_t total
    cdef int32_t* _weights
    cdef uint64_t* _seeds          # sticky only: fnv1a64 of each target's UTF-8, else NULL
    cdef array.array _state        # round_robin only: array('q'), one slot per target, else None
    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance)


cdef class Sequential(Selector):
    pass


cdef class Weighted(Selector):
    pass


cdef class RoundRobin(Selector):
    pass


cdef class Sticky(Selector):
    pass
