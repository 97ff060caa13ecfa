from libc.stdint cimport int64_t


cdef struct NormalForm:
    char lead            # 0, or a character written before the digits: c'0' or c'+'
    const char* start    # the digits, inside a caller-owned buffer
    int length


cdef object c_normalize_or_none(object raw, int64_t* key)
cpdef int64_t national_key(str number)
