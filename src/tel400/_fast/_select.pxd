from cpython cimport array
from libc.stdint cimport int64_t, uint64_t


cdef class FastRandom:
    cdef uint64_t s0, s1, s2, s3
    cdef uint64_t next64(self) noexcept nogil
    cdef uint64_t below(self, uint64_t n) noexcept nogil


cdef class Selector:
    cdef readonly str strategy
    cdef tuple c_order(self, str caller_key, FastRandom rng, bint advance)


cdef class Sequential(Selector):
    cdef tuple _order


cdef class Weighted(Selector):
    cdef tuple _orders
    cdef int64_t* _cumulative
    cdef int* _indexes
    cdef int _count
    cdef int64_t _total


cdef class RoundRobin(Selector):
    cdef tuple _orders
    cdef int64_t* _weights
    cdef int _n
    cdef int64_t _total
    cdef array.array _state


cdef class Sticky(Selector):
    cdef tuple _targets
    cdef tuple _zero
    cdef int64_t* _weights
    cdef uint64_t* _seeds
    cdef int _n
