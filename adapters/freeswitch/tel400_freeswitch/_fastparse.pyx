# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of the Event Socket parser in ``tel400_freeswitch.protocol``.

Same frames, same errors, same limits as the Python reference: a header block
is found and every line of it checked in one pass over a char buffer, header
look-ups compare names without regard to case in place (no lower-cased copy of
the block) and URL-decode only the value asked for.  What is rare goes to the
reference's own functions, passed in by :func:`bind` (the error messages, a
Content-Length that is not plain digits, iterating every header), so there is
one copy of that logic; the classes the frames are made of (``Frame``,
``Event``, ``ProtocolError``) and the limits are the reference's too.

``protocol.py`` binds and selects this module; nothing else imports it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcpy

cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL

# bound from protocol.py (bind): one definition of each, in the reference
cdef object _Frame = None
cdef object _Event = None
cdef object _ProtocolError = None
cdef object _BadEvent = None           # the reference's BadEvent: an event's own block failed, its frame taken
cdef object _not_a_header = None      # (block, what) -> ProtocolError, its message
cdef object _content_length_py = None  # the reference's Content-Length check, for anything but plain digits
cdef object _everything_py = None     # (block) -> {name: decoded value}, for iteration
cdef Py_ssize_t _MAX_BODY_BYTES = 0    # the module limit on Content-Length, and the default body limit
cdef Py_ssize_t _MAX_HEADER_BYTES = 0  # the default header block limit
cdef Py_ssize_t _SLACK_BYTES = 0
cdef object _tuple_new = tuple.__new__
cdef object _headers_type = None        # the class parsed Headers get (a Mapping subclass of Headers)

cdef enum:
    MAX_NAME = 1024  # the reference's MAX_NAME_BYTES (tests/test_esl_protocol.py holds them equal)

#: The longest header name read.
MAX_NAME_BYTES = MAX_NAME


def bind(*, frame, event, error, bad_event, not_a_header, content_length, everything, max_header_bytes,
         max_body_bytes, slack_bytes, headers_type):
    """Called once by protocol.py: the reference's classes, rare paths and limits."""
    global _Frame, _Event, _ProtocolError, _BadEvent, _not_a_header, _content_length_py, _everything_py
    global _MAX_HEADER_BYTES, _MAX_BODY_BYTES, _SLACK_BYTES, _headers_type
    _Frame, _Event, _ProtocolError, _BadEvent = frame, event, error, bad_event
    _not_a_header, _content_length_py, _everything_py = not_a_header, content_length, everything
    _MAX_HEADER_BYTES, _MAX_BODY_BYTES, _SLACK_BYTES = max_header_bytes, max_body_bytes, slack_bytes
    _headers_type = headers_type


# the bytes a header name is made of (printable ASCII but the space and the colon, the reference's
# _NAME_CHARS): one table load a byte
cdef bint _NAME_CHAR[256]
for _c in range(256):
    _NAME_CHAR[_c] = 0x21 <= _c <= 0x7e and _c != ord(":")


cdef inline bint _name_char(unsigned char c) nogil:
    return _NAME_CHAR[c]


cdef inline unsigned char _lower(unsigned char c) nogil:
    return c + 32 if c'A' <= c <= c'Z' else c


cdef inline int _hex(unsigned char c) nogil:
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


cdef Py_ssize_t _line_end(const unsigned char* s, Py_ssize_t at, Py_ssize_t n) nogil:
    """The line feed ending the header line at ``at``, -1 if it is not one (name, colon, …, line feed),
    -2 if it is well begun but its line feed has not come by ``n``."""
    cdef Py_ssize_t i = at
    cdef Py_ssize_t stop = at + MAX_NAME
    if stop > n:
        stop = n
    while i < stop and _name_char(s[i]):
        i += 1
    if i == at:
        return -1 if i < n else -2
    if i == n:
        return -2
    if s[i] != c':':
        return -1
    cdef const void* feed = memchr(s + i, c'\n', n - i)
    if feed == NULL:
        return -2
    return <const unsigned char*>feed - s


cdef bint _lines_ok(const unsigned char* s, Py_ssize_t n) nogil:
    """Every line of s[:n] (each ended by a line feed) is a header line."""
    cdef Py_ssize_t at = 0, end
    while at < n:
        end = _line_end(s, at, n)
        if end < 0:
            return False
        at = end + 1
    return True


cdef object _decode(const unsigned char* s, Py_ssize_t n):
    """A raw value: blanks before it and carriage returns after it dropped, ``%XX`` decoded, UTF-8."""
    while n > 0 and (s[0] == c' ' or s[0] == c'\t'):
        s += 1
        n -= 1
    while n > 0 and s[n - 1] == c'\r':
        n -= 1
    if memchr(s, c'%', n) == NULL:
        return PyUnicode_DecodeUTF8(<const char*>s, n, "replace")
    cdef bytearray out = bytearray(n)
    cdef unsigned char* o = <unsigned char*>PyByteArray_AS_STRING(out)
    cdef Py_ssize_t i = 0, j = 0
    cdef int hi, lo
    while i < n:
        if s[i] == c'%' and i + 2 < n:
            hi, lo = _hex(s[i + 1]), _hex(s[i + 2])
            if hi >= 0 and lo >= 0:
                o[j] = <unsigned char>(hi * 16 + lo)
                j += 1
                i += 3
                continue
        o[j] = s[i]
        j += 1
        i += 1
    return PyUnicode_DecodeUTF8(<const char*>o, j, "replace")


cdef dict _needles = {}


cdef bytes _needle(object name):
    """``name`` lower-cased as ASCII bytes, or None for a name no header line can have.  Cached."""
    cdef PyObject* hit = PyDict_GetItem(_needles, name) if type(name) is str else NULL
    if hit != NULL:
        return <bytes>hit
    if type(name) is not str:
        if not isinstance(name, str):
            return None
        name = str(name)  # a str subclass: looked up as the str it is
    cdef Py_ssize_t n, i
    cdef bytes needle = None
    cdef unsigned char lowered[MAX_NAME]
    if PyUnicode_IS_COMPACT_ASCII(name):
        raw = PyUnicode_AsUTF8AndSize(name, &n)
        if 1 <= n <= MAX_NAME:
            # lower-cased in a buffer of our own: bytes of length 1 are shared singletons, never written to
            for i in range(n):
                if not _name_char(<unsigned char>raw[i]):
                    break
                lowered[i] = _lower(<unsigned char>raw[i])
            else:
                needle = PyBytes_FromStringAndSize(<const char*>lowered, n)
    if type(name) is str:
        if len(_needles) >= 1024:
            _needles.clear()
        _needles[name] = needle
    return needle


cdef object _find(bytes block, bytes needle):
    """The decoded value of the last line of ``block`` named ``needle`` (any case), or None."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(block)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(block)
    cdef const unsigned char* want = <const unsigned char*>PyBytes_AS_STRING(needle)
    cdef Py_ssize_t k = PyBytes_GET_SIZE(needle)
    cdef Py_ssize_t at = 0, found = -1, i
    cdef const void* feed
    while at < n:
        if at + k < n and s[at + k] == c':' and _lower(s[at]) == want[0]:
            i = 1
            while i < k and _lower(s[at + i]) == want[i]:
                i += 1
            if i == k:
                found = at
        feed = memchr(s + at, c'\n', n - at)
        if feed == NULL:
            break
        at = <const unsigned char*>feed - s + 1
    if found < 0:
        return None
    at = found + k + 1
    feed = memchr(s + at, c'\n', n - at)
    return _decode(s + at, <const unsigned char*>feed - (s + at))


cdef class Headers:
    """The compiled :class:`tel400_freeswitch.protocol.Headers` (protocol.py adds the Mapping side)."""

    cdef bytes _block    # the validated block; None when built from pairs
    cdef dict _cache     # name as asked -> value or None
    cdef dict _all       # every header, decoded (built on first iteration, or given as pairs)
    cdef dict _folded    # built from pairs: lower-cased name -> value

    def __init__(self, pairs=()):
        everything = {}
        for name, value in pairs:
            everything[name] = value
        self._all = everything
        self._block = None
        self._folded = {name.lower(): value for name, value in everything.items()}
        self._cache = {}

    cpdef get(self, name, default=None):
        """The value of ``name`` (any case), or ``default``."""
        cdef PyObject* hit = PyDict_GetItem(self._cache, name)
        cdef object value
        if hit != NULL:
            value = <object>hit
        else:
            if self._block is None:
                value = self._folded.get(name.lower()) if isinstance(name, str) else None
            else:
                needle = _needle(name)
                value = None if needle is None else _find(self._block, needle)
            PyDict_SetItem(self._cache, name, value)
        return default if value is None else value

    cdef dict _everything(self):
        if self._all is None:
            self._all = _everything_py(self._block)
        return self._all

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name):
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self):
        return iter(self._everything())

    def __len__(self):
        return len(self._everything())

    def keys(self):
        return self._everything().keys()

    def items(self):
        return self._everything().items()

    def values(self):
        return self._everything().values()

    def __repr__(self):
        return f"Headers({self._everything()!r})"


cdef Headers _headers(const unsigned char* s, Py_ssize_t n):
    cdef Headers headers = Headers.__new__(_headers_type)
    headers._block = PyBytes_FromStringAndSize(<const char*>s, n)
    headers._cache = {}
    return headers


cdef Py_ssize_t _length(object text, Py_ssize_t limit) except -1:
    """Content-Length: plain digits here, anything else (and every error) by the reference."""
    cdef Py_ssize_t n, i, value = 0
    cdef const char* raw
    if text is not None and PyUnicode_IS_COMPACT_ASCII(text):
        raw = PyUnicode_AsUTF8AndSize(text, &n)
        if 0 < n < 9:
            for i in range(n):
                if not (c'0' <= raw[i] <= c'9'):
                    break
                value = value * 10 + (raw[i] - c'0')
            else:
                if value <= limit:
                    return value
    return _content_length_py(text)


cdef object _parse_event(bytes body):
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t at = 0, end, after = -1
    while at < n:
        if s[at] == c'\n':
            after = at + 1
            break
        if s[at] == c'\r' and at + 1 < n and s[at + 1] == c'\n':
            after = at + 2
            break
        end = _line_end(s, at, n)
        if end < 0:
            break
        at = end + 1
    if after < 0:
        # no empty line after the headers (or a line that is not one): all of it is headers, as esl reads it
        block = body if n == 0 or s[n - 1] == c'\n' else body + b"\n"
        s = <const unsigned char*>PyBytes_AS_STRING(block)
        n = PyBytes_GET_SIZE(block)
        if not _lines_ok(s, n):
            raise _not_a_header(block, "event")
        return _Event(_headers(s, n))
    cdef Headers headers = _headers(s, at)
    length_text = _find(headers._block, b"content-length")
    headers._cache["Content-Length"] = length_text
    if length_text is None:
        return _tuple_new(_Event, (headers, None))
    cdef Py_ssize_t length = _length(length_text, _MAX_BODY_BYTES)
    if length > n - after:
        raise _ProtocolError("event: inner body shorter than its Content-Length")
    return _tuple_new(_Event, (headers, body[after:after + length]))


def parse_event(bytes body not None):
    """The event in a ``text/event-plain`` body (see the reference's ``parse_event``)."""
    return _parse_event(body)


cdef inline const unsigned char* _ptr(object buffer):
    if type(buffer) is bytes:
        return <const unsigned char*>PyBytes_AS_STRING(buffer)
    return <const unsigned char*>PyByteArray_AS_STRING(buffer)


cdef class EslProtocol:
    """Parses what FreeSWITCH sends; a bounded buffer, one frame at a time (compiled).

    The twin of the reference ``EslProtocol`` in ``tel400_freeswitch.protocol``:
    the same buffer, frames, errors and limits (by default the reference's
    ``MAX_HEADER_BYTES`` and ``MAX_BODY_BYTES``).
    """

    cdef object _buffer          # bytes as they came, or a bytearray once compacted
    cdef Py_ssize_t _start       # the first byte not yet returned in a frame
    cdef Py_ssize_t _scan        # where the search for the end of an incomplete header block resumes
    cdef Headers _pending        # headers whose body has not fully arrived
    cdef Py_ssize_t _length
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_body_bytes
    cdef public bint closed

    def __init__(self, *, max_header_bytes=None, max_body_bytes=None):
        if _ProtocolError is None:
            raise RuntimeError("tel400_freeswitch._fastparse: import it through tel400_freeswitch.protocol")
        self._buffer = b""
        self._start = 0
        self._scan = 0
        self._pending = None
        self._length = 0
        self.max_header_bytes = _MAX_HEADER_BYTES if max_header_bytes is None else max_header_bytes
        self.max_body_bytes = _MAX_BODY_BYTES if max_body_bytes is None else max_body_bytes
        self.closed = False

    @property
    def buffered_bytes(self):
        """Bytes received and not yet returned in a frame."""
        return len(self._buffer) - self._start

    cpdef receive_data(self, data):
        """Feed bytes from the socket (``b""`` for end of stream)."""
        if not data:
            self.closed = True
            return
        buffer, start = self._buffer, self._start
        if start == len(buffer):  # everything read: keep the new bytes as they came
            buffer = bytes(data)
            self._scan = 0
        else:  # compact (once per read, not once per frame) and append
            if type(buffer) is bytes:
                buffer = bytearray(memoryview(buffer)[start:])
            else:
                del buffer[:start]
            buffer += data
            self._scan = max(self._scan - start, 0)
        self._buffer, self._start = buffer, 0
        if len(buffer) > self.max_header_bytes + self.max_body_bytes + _SLACK_BYTES:
            raise _ProtocolError("receive buffer over its limit")

    cpdef next_frame(self):
        """The next complete frame, or ``None`` until more bytes arrive."""
        cdef object buffer = self._buffer
        cdef const unsigned char* s = _ptr(buffer)
        cdef Py_ssize_t n = len(buffer)
        cdef Py_ssize_t start = self._start, at, end = -1, after = 0, length
        cdef Headers headers = self._pending
        cdef const void* feed
        if headers is None:
            if start == n:
                return None
            if s[start] == c'\r' or s[start] == c'\n':  # stray empty lines between frames: dropped
                while start < n and (s[start] == c'\r' or s[start] == c'\n'):
                    start += 1
                self._start = start
                if start == n:
                    return None
            # the block's end: the first line feed followed by an empty line (\n or \r\n)
            at = self._scan if self._scan > start else start
            while True:
                feed = memchr(s + at, c'\n', n - at)
                if feed == NULL:
                    break
                at = <const unsigned char*>feed - s
                if at + 1 < n and s[at + 1] == c'\n':
                    end, after = at, at + 2
                    break
                if at + 2 < n and s[at + 1] == c'\r' and s[at + 2] == c'\n':
                    end, after = at, at + 3
                    break
                at += 1
            if end < 0:
                if n - start > self.max_header_bytes:
                    raise _ProtocolError(f"header block over {self.max_header_bytes} bytes")
                self._scan = max(start + 1, n - 2)  # an end can start in the last two bytes
                return None
            if end - start > self.max_header_bytes:
                raise _ProtocolError(f"header block over {self.max_header_bytes} bytes")
            if not _lines_ok(s + start, end + 1 - start):
                block = PyBytes_FromStringAndSize(<const char*>s + start, end + 1 - start)
                raise _not_a_header(block, "frame")
            headers = _headers(s + start, end + 1 - start)
            length_text = _find(headers._block, b"content-length")
            headers._cache["Content-Length"] = length_text
            if length_text is None:
                self._start = after
                return _tuple_new(_Frame, (headers, None, None))
            length = _length(length_text, _MAX_BODY_BYTES)
            if length > self.max_body_bytes:
                raise _ProtocolError(f"body over {self.max_body_bytes} bytes")
            start = self._start = after
            self._length = length
        else:
            length = self._length
        if n - start < length:
            self._pending = headers
            return None
        self._pending = None
        self._start = start + length
        body = PyBytes_FromStringAndSize(<const char*>s + start, length)
        content_type = headers.get("Content-Type")
        if content_type is not None and content_type.lower() == "text/event-plain":
            try:
                event = _parse_event(body)
            except _ProtocolError as exc:
                raise _BadEvent(str(exc)) from None  # the frame is taken: the next one can be read
            return _tuple_new(_Frame, (headers, body, event))
        return _tuple_new(_Frame, (headers, body, None))

    def frames(self):
        """Every complete frame now in the buffer."""
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame
