from libc.stdint cimport int32_t, int64_t, uint8_t


cdef class IntervalLookup:
    cdef int64_t* starts
    cdef uint8_t* codes
    cdef Py_ssize_t n
    cdef int32_t* buckets      # per leading-digits bucket: first interval that can hold its keys
    cdef int c_index(self, int64_t key) noexcept nogil
