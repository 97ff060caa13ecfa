# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tel400._numbers_py``: normalisation on a char buffer.

The fast path handles ASCII input of up to 64 characters, which is every
number a switch sends.  Anything else (full-width digits, other types,
overlong strings) and every error goes to the reference implementation, so
the results and the error messages are the reference's by construction.
"""

from cpython.unicode cimport PyUnicode_GET_LENGTH
from libc.stdint cimport int64_t

from .. import _numbers_py

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    object PyUnicode_FromStringAndSize(const char* s, Py_ssize_t size)

cdef enum:
    MAX_INPUT = 64
    KEY_WIDTH = 11
    MAX_SERVICE_DIGITS = 20

cdef inline bint _mobile_second(char c) nogil:
    return c'3' <= c <= c'9'


cdef inline bint _is_mobile(const char* s, int n) nogil:
    return n == 11 and s[0] == c'1' and _mobile_second(s[1])


cdef inline bint _is_toll_free(const char* s, int n) nogil:
    return n >= 3 and (s[0] == c'4' or s[0] == c'8') and s[1] == c'0' and s[2] == c'0'


cdef inline bint _is_fixed_nsn(const char* s, int n) nogil:
    if n < 9 or n > 11:
        return False
    return (c'2' <= s[0] <= c'9') or (s[0] == c'1' and s[1] == c'0')


cdef int _after_cc(const char* s, int n, NormalForm* out) nogil:
    """The national part after +86; 0 on success, -1 if not a number."""
    if n > 1 and s[0] == c'0' and s[1] != c'0':
        s += 1
        n -= 1
    if _is_mobile(s, n) or (_is_toll_free(s, n) and n == 10):
        out.lead = 0
        out.start = s
        out.length = n
        return 0
    if _is_fixed_nsn(s, n):
        out.lead = c'0'
        out.start = s
        out.length = n
        return 0
    return -1


cdef int parse(const char* raw, Py_ssize_t raw_len, char* buf, NormalForm* out) nogil:
    """Normalise ``raw`` (ASCII) into ``out``, which points into ``buf``.

    Returns 0 on success, -1 when the input is not a number.
    """
    cdef int n = 0
    cdef Py_ssize_t i
    cdef char c
    for i in range(raw_len):
        c = raw[i]
        if c == c' ' or c == c'-' or c == c'(' or c == c')' or c == c'\t' or c == c'.':
            continue
        buf[n] = c
        n += 1
    cdef const char* s = buf
    cdef bint international = False
    if n >= 1 and s[0] == c'+':
        international = True
        s += 1
        n -= 1
    elif n >= 2 and s[0] == c'0' and s[1] == c'0':
        international = True
        s += 2
        n -= 2
    if n == 0:
        return -1
    for i in range(n):
        if s[i] < c'0' or s[i] > c'9':
            return -1
    if international:
        if n >= 2 and s[0] == c'8' and s[1] == c'6':
            return _after_cc(s + 2, n - 2, out)
        if s[0] == c'0' or n < 7 or n > 15:
            return -1
        out.lead = c'+'
        out.start = s
        out.length = n
        return 0
    return _national(s, n, out)


cdef int _national(const char* s, int n, NormalForm* out) nogil:
    out.lead = 0
    out.start = s
    out.length = n
    if s[0] == c'1':
        if n > 1 and _mobile_second(s[1]):
            return 0 if n == 11 else -1
        return 0 if 3 <= n <= MAX_SERVICE_DIGITS else -1
    if s[0] == c'0':
        if n == 12 and s[1] == c'1' and _mobile_second(s[2]):
            out.start = s + 1
            out.length = 11
            return 0
        return 0 if (10 <= n <= 12 and s[1] != c'0') else -1
    if n >= 11 and s[0] == c'8' and s[1] == c'6':
        if _is_mobile(s + 2, n - 2) or (_is_toll_free(s + 2, n - 2) and n - 2 == 10) or _is_fixed_nsn(s + 2, n - 2):
            return _after_cc(s + 2, n - 2, out)
    if _is_toll_free(s, n):
        return 0 if n == 10 else -1
    return 0 if 3 <= n <= 8 else -1


cdef int64_t key_of(NormalForm* f) nogil:
    """The prefix-table key of a normal form, or -1 (see ``national_key``)."""
    cdef const char* s = f.start
    cdef int n = f.length
    cdef int i
    cdef int64_t key = 0
    if f.lead == c'+':
        return -1
    if f.lead == c'0':
        pass  # fixed line given after +86: the digits are already the NSN
    elif n == 11 and s[0] == c'1' and _mobile_second(s[1]):
        pass
    elif 10 <= n <= 12 and s[0] == c'0':
        s += 1
        n -= 1
    else:
        return -1
    if n > KEY_WIDTH:
        return -1
    for i in range(KEY_WIDTH):
        key = key * 10 + ((s[i] - c'0') if i < n else 0)
    return key


cdef object form_to_str(object raw, NormalForm* f):
    """The normal form as a str; ``raw`` itself when it is already normal."""
    cdef char out[MAX_INPUT + 2]
    cdef int i
    if f.lead == 0:
        if f.length == PyUnicode_GET_LENGTH(raw):
            return raw  # nothing was stripped or changed
        return PyUnicode_FromStringAndSize(f.start, f.length)
    out[0] = f.lead
    for i in range(f.length):
        out[i + 1] = f.start[i]
    return PyUnicode_FromStringAndSize(out, f.length + 1)


cdef object c_normalize_or_none(object raw, int64_t* key):
    """Normal form of ``raw`` or None; ``key`` gets its prefix-table key (or -1)."""
    cdef Py_ssize_t size
    cdef const char* data
    cdef char buf[MAX_INPUT]
    cdef NormalForm form
    key[0] = -1
    if raw is None:
        return None
    if type(raw) is str and PyUnicode_IS_COMPACT_ASCII(raw):
        data = PyUnicode_AsUTF8AndSize(raw, &size)
        if size <= MAX_INPUT:
            if parse(data, size, buf, &form) != 0:
                return None
            key[0] = key_of(&form)
            return form_to_str(raw, &form)
    result = _numbers_py.normalize_or_none(raw)
    if result is not None:
        key[0] = national_key(result)
    return result


def normalize(raw):
    """Compiled :func:`tel400._numbers_py.normalize` (same results, same errors)."""
    cdef int64_t key
    result = c_normalize_or_none(raw, &key)
    if result is None:
        return _numbers_py.normalize(raw)  # raises the reference's NumberError
    return result


def normalize_or_none(raw):
    """Compiled :func:`tel400._numbers_py.normalize_or_none`."""
    cdef int64_t key
    return c_normalize_or_none(raw, &key)


cpdef int64_t national_key(str number):
    """Compiled :func:`tel400._numbers_py.national_key`."""
    cdef Py_ssize_t size
    cdef const char* data
    cdef NormalForm form
    if not PyUnicode_IS_COMPACT_ASCII(number):
        return -1
    data = PyUnicode_AsUTF8AndSize(number, &size)
    if size > MAX_INPUT:
        return -1
    form.lead = 0
    form.start = data
    form.length = <int>size
    return key_of(&form)
