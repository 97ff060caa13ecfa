"""The FreeSWITCH Event Socket, outbound mode, as a sans-IO protocol.

Bytes in (:meth:`EslProtocol.receive_data`), frames out
(:meth:`EslProtocol.next_frame`); commands out as bytes
(:func:`command`, :func:`sendmsg`).  No sockets here: the asyncio server
(:mod:`tel400_freeswitch.server`) and the tests' FreeSWITCH peer both drive it.

The wire format is FreeSWITCH's own (``mod_event_socket.c``,
``switch_event.c``, ``libs/esl/src/esl.c``): a frame is ``Name: value``
lines ended by an empty line, then a body of ``Content-Length`` bytes if the
headers say so.  Header values are URL-decoded (the connect reply, which
carries the channel's data, is a serialized event with every value
URL-encoded and no Content-Length).  A ``text/event-plain`` body is itself
an event: URL-encoded headers, an empty line, and an inner body if it has a
Content-Length.  Lines may end in ``\\r\\n``; empty lines between frames are
skipped.

How it stays cheap (a call is ~15 frames, ~13 KB, ~350 headers of which the
session reads about 20):

* The buffer is read from an offset and compacted once per
  :meth:`~EslProtocol.receive_data`; a read that ends on a frame boundary is
  kept as it came (no copy).
* A header block is found and validated in one pass of a compiled pattern
  (``_FRAME_HEAD``: ``Name: value`` lines up to an empty line).  When the
  block has not fully arrived, the search for its end resumes where the last
  one stopped, so a block arriving a byte at a time costs O(its size), not
  O(size²).  The two heads FreeSWITCH writes most (an event's
  ``Content-Length``/``Content-Type``, a command's reply) are matched byte for
  byte first (``_USUAL_HEAD``), their values taken from the match.
* :class:`Headers` keep the raw block.  ``get(name)`` finds the line
  (case-insensitively, the last one if a name repeats), URL-decodes that one
  value and caches it: O(block) for the first look-up of a block (lower-casing
  it), O(value) for each new name, O(1) for a name seen before.  Iterating
  decodes everything once.

A compiled twin (``_fastparse.pyx``: the same frames, look-ups, errors and
limits, one test suite over both) replaces :class:`EslProtocol`,
:class:`Headers` and :func:`parse_event` when the core's compiled hot path is
in use; :data:`IMPLEMENTATION` says which runs, :data:`PARSERS` holds both.

Validation is not lazy: every line of a frame's header block and of an
event's header block is checked when :meth:`~EslProtocol.next_frame` returns
the frame, and so are the frame's and the event's Content-Length, so a
malformed frame is a :class:`ProtocolError` from ``next_frame``, never from a
later ``get``.

What can go wrong is a :class:`ProtocolError`: a header block or body over
the limits, a line that is not a header, a Content-Length that is not a
number in range.  The connection it came from is closed; nothing else is.

Limits (both tunable per :class:`EslProtocol`): a header block of at most
``max_header_bytes`` (empty lines between frames not counted: they are
dropped as they are read), a body of at most ``max_body_bytes``; the buffer
never holds more than ``max_header_bytes + max_body_bytes + 64 KiB``.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

#: Largest header block accepted (FreeSWITCH's events are a few KB).
MAX_HEADER_BYTES = 64 * 1024
#: Longest header name read.  FreeSWITCH writes a channel variable's name as
#: it is, and a caller's SIP header ``X-…`` becomes the variable ``sip_h_X-…``.
MAX_NAME_BYTES = 1024
#: Largest body accepted (FreeSWITCH itself refuses over 16 MiB).
MAX_BODY_BYTES = 16 * 1024 * 1024
#: What the buffer may hold beyond one frame's limits (the rest of a socket read).
_SLACK_BYTES = 65536

_HEX = b"0123456789ABCDEFabcdef"
# Characters FreeSWITCH's switch_url_encode escapes (SWITCH_URL_UNSAFE), plus
# everything outside printable ASCII.
_UNSAFE = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')

# One header line: a name, a colon, anything up to the line feed (a \r before it is stripped from the
# value).  Possessive repeats: a line that does not fit fails at once, without backtracking.
# A name: printable ASCII but the space and the colon.  FreeSWITCH URL-encodes values, never names, and a
# caller chooses the names of its SIP headers (any token: RFC 3261 allows -.!%*_+`'~ beside letters and
# digits); refusing one would drop a connection that carries every other call.
_NAME_CHARS = rb"[!-9;-~]{1,%d}" % MAX_NAME_BYTES
_LINE = rb"%s:.*+\n" % _NAME_CHARS
#: A frame's or event's header lines and the empty line ending them (``\n`` or ``\r\n``).
_FRAME_HEAD = re.compile(rb"((?:%s)*+)\r?\n" % _LINE)
#: Header lines, each ended by ``\n`` (a block found by searching for its end).
_HEADER_LINES = re.compile(rb"(?:%s)*+" % _LINE)
_ONE_LINE = re.compile(rb"%s:.*+" % _NAME_CHARS)
_BLANK_LINES = re.compile(rb"[\r\n]*+")
_NAME = re.compile(_NAME_CHARS.decode("ascii"))


class ProtocolError(Exception):
    """The peer sent something that is not the Event Socket protocol."""


class BadEvent(ProtocolError):
    """A well-framed event whose own block is not an event (a header name FreeSWITCH should not write).

    The frame was taken whole, so the stream is still in step: a reader that
    serves many calls on one connection may skip the event and go on.
    """


def url_decode(value: bytes) -> str:
    """``%XX`` → the byte, as ``esl_url_decode`` does (``+`` stays ``+``); UTF-8.

    A ``%`` not followed by two hex digits stays as it is.  O(len(value)).
    """
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    return unquote_to_bytes(value).decode("utf-8", "replace")


def url_encode(value: str) -> str:
    """FreeSWITCH's ``switch_url_encode``: unsafe bytes as ``%XX``; ``/`` and ``,`` stay.

    Like FreeSWITCH it does not encode a ``%`` that already starts a ``%XX``
    escape (``double_encode`` off).
    """
    raw = value.encode("utf-8")
    out = []
    n = len(raw)
    for i, c in enumerate(raw):
        if c == 0x25 and i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            out.append("%")
        elif c < 0x20 or c > 0x7E or c in _UNSAFE:
            out.append(f"%{c:02X}")
        else:
            out.append(chr(c))
    return "".join(out)


_UNSEEN = object()


@functools.lru_cache(maxsize=1024)
def _needle(name: str) -> bytes | None:
    """What marks ``name``'s line in a lower-cased block (``\\nname:``), or None for a name no line can have.

    A name with ``:`` or a line feed must not match across lines.  Cached:
    the session asks the same few names of every frame.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None
    return b"\n" + name.lower().encode("ascii") + b":"


class Headers(Mapping):
    """Header name → URL-decoded value, read-only, looked up without regard to case.

    Built by the parser over a validated header block, which it keeps (and a
    lower-cased copy): ``get`` decodes only the values asked for, O(block)
    for a name not asked before (one ``rfind``), O(1) after.  ``[]`` and
    ``in`` are case-insensitive too; iteration, ``len`` and
    ``keys``/``items``/``values`` see each name as it was written and decode
    every value once (as the ``dict`` this class used to be: a repeated name
    keeps its last value).  ``Headers(pairs)`` builds one from decoded
    ``(name, value)`` pairs.
    """

    # _block: the validated block (None when built from pairs); _folded: the block lower-cased behind
    # a "\n" (built from pairs: lower-cased name → value); _cache: name as asked → value or None;
    # _all: every header, decoded (built on first iteration)
    __slots__ = ("_block", "_folded", "_cache", "_all")

    def __init__(self, pairs: Iterator[tuple[str, str]] = ()) -> None:
        everything: dict[str, str] = {}
        for name, value in pairs:
            everything[name] = value
        self._all: dict[str, str] | None = everything
        self._block: bytes | None = None  # no block: look-ups go to the pairs, by lower-cased name
        self._folded = {name.lower(): value for name, value in everything.items()}
        self._cache: dict[str, str | None] = {}  # name as asked → value (None: absent)

    def get(self, name: str, default=None):  # type: ignore[override]
        """The value of ``name`` (any case), or ``default``."""
        cache = self._cache
        value = cache.get(name, _UNSEEN)  # not try/except: misses are common, and raising costs ~1 µs
        if value is _UNSEEN:
            if self._block is None:
                value = self._folded.get(name.lower()) if isinstance(name, str) else None
            else:
                needle = _needle(name)
                value = None if needle is None else self._find(needle)
            cache[name] = value
        return default if value is None else value

    def _find(self, needle: bytes) -> str | None:
        """The decoded value of the last line ``needle`` (from :func:`_needle`) marks, or None."""
        at = self._folded.rfind(needle)
        if at < 0:
            return None
        block = self._block
        start = at + len(needle) - 1  # the folded copy has one more byte, its leading "\n"
        raw = block[start:block.index(b"\n", start)].lstrip(b" \t").rstrip(b"\r")
        if b"%" in raw:
            raw = unquote_to_bytes(raw)
        return raw.decode("utf-8", "replace")

    def _everything(self) -> dict[str, str]:
        if self._all is None:
            self._all = _every_header(self._block)  # type: ignore[arg-type]
        return self._all

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self):
        return iter(self._everything())

    def __len__(self) -> int:
        return len(self._everything())

    def keys(self):
        return self._everything().keys()

    def items(self):
        return self._everything().items()

    def values(self):
        return self._everything().values()

    def __repr__(self) -> str:
        return f"Headers({self._everything()!r})"


def _every_header(block: bytes) -> dict[str, str]:
    """Every header of a validated block, decoded (a repeated name keeps its last value).  Both parsers'."""
    everything: dict[str, str] = {}
    for line in block.split(b"\n")[:-1]:
        name, _, value = line.partition(b":")
        everything[name.decode("ascii")] = url_decode(value.lstrip(b" \t").rstrip(b"\r"))
    return everything


class Event(NamedTuple):
    """An event (a ``text/event-plain`` body, or the connect reply's channel data)."""

    headers: Headers
    body: bytes | None = None

    @property
    def name(self) -> str | None:
        return self.headers.get("Event-Name")

    def get(self, name: str, default=None):
        return self.headers.get(name, default)


class Frame(NamedTuple):
    """One frame from FreeSWITCH."""

    headers: Headers
    body: bytes | None = None
    event: Event | None = None

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").lower()

    @property
    def is_reply(self) -> bool:
        """A command's answer: ``command/reply`` or ``api/response``."""
        return self.content_type in ("command/reply", "api/response")

    @property
    def reply_text(self) -> str:
        if self.content_type == "api/response":
            return (self.body or b"").decode("utf-8", "replace")
        return self.headers.get("Reply-Text") or ""

    @property
    def ok(self) -> bool:
        return self.reply_text.startswith("+OK")

    @property
    def is_disconnect(self) -> bool:
        return self.content_type == "text/disconnect-notice"

    @property
    def disposition(self) -> str | None:
        return self.headers.get("Content-Disposition")


def _not_a_header(block: bytes, what: str) -> ProtocolError:
    """The error for a block that failed ``_HEADER_LINES``: its first line that is not a header."""
    for line in block.split(b"\n"):
        if not _ONE_LINE.fullmatch(line):
            shown = line.rstrip(b"\r")[:80]
            return ProtocolError(f"{what}: not a header line: {shown!r}")
    return ProtocolError(f"{what}: not a header block")  # not reached: a block that fails has such a line


def _header_lines(block: bytes, what: str) -> Headers:
    """Headers over ``block`` (lines each ended by ``\\n``), after checking every line. O(len(block))."""
    if _HEADER_LINES.fullmatch(block) is None:
        raise _not_a_header(block, what)
    return _headers(block)


def _headers(block: bytes) -> Headers:
    """Headers over a block that matched ``_HEADER_LINES``: lower-cased once, nothing decoded.

    O(len(block)).
    """
    headers = _new(_PyHeaders)
    headers._block = block
    headers._folded = b"\n" + block.lower()  # "\n": the first line is found like the others
    headers._cache = {}
    headers._all = None
    return headers


_new = object.__new__
_tuple_new = tuple.__new__  # NamedTuple's own __new__ is a Python function: twice the cost per frame
_CONTENT_LENGTH = b"\ncontent-length:"
_CONTENT_TYPE = b"\ncontent-type:"

# The two frame heads mod_event_socket writes most, byte for byte: an event's, and a command's reply
# with nothing to URL-decode.  Matched first, they need no search for Content-Length and Content-Type.
_USUAL_HEAD = re.compile(rb"(Content-Length: ([0-9]{1,8})\nContent-Type: text/event-plain\n)\n"
                         rb"|(Content-Type: command/reply\nReply-Text: (?![ \t])([^%\r\n]*+)\n)\n")


def _usual_headers(head: re.Match) -> Headers:
    """The headers of a ``_USUAL_HEAD`` match, with the values it captured already decoded."""
    if head[1] is not None:
        headers = _headers(head[1])
        headers._cache.update({"Content-Length": head[2].decode("ascii"), "Content-Type": "text/event-plain"})
    else:
        headers = _headers(head[3])
        headers._cache.update({"Content-Length": None, "Content-Type": "command/reply",
                               "Reply-Text": head[4].decode("utf-8", "replace")})
    return headers


def parse_event(body: bytes) -> Event:
    """The event in a ``text/event-plain`` body: its headers checked, its inner body cut.

    Raises:
        ProtocolError: a line that is not a header, a bad inner Content-Length,
            an inner body shorter than it.
    """
    head = _FRAME_HEAD.match(body)
    if head is None:
        # no empty line after the headers (or a line that is not one): all of it is headers, as esl reads it
        block = body if not body or body.endswith(b"\n") else body + b"\n"
        return Event(_header_lines(block, "event"))
    headers = _headers(head[1])
    length_text = headers._cache["Content-Length"] = headers._find(_CONTENT_LENGTH)
    if length_text is None:
        return _tuple_new(Event, (headers, None))
    length = _content_length(length_text)
    start = head.end()
    if length > len(body) - start:
        raise ProtocolError("event: inner body shorter than its Content-Length")
    return _tuple_new(Event, (headers, body[start:start + length]))


def _content_length(text: str | None) -> int:
    if text is not None and text.isdigit() and text.isascii() and len(text) < 9:  # the usual case
        length = int(text)
        if length <= MAX_BODY_BYTES:
            return length
    # isascii: str.isdigit() also accepts digits such as '²' that int() refuses; past 18 digits
    # int() may refuse too (4,300), and no length that long is in range anyway
    if text is None or not (text.strip().isascii() and text.strip().isdigit() and len(text.strip()) <= 18):
        raise ProtocolError(f"bad Content-Length {text[:40]!r}" if text else f"bad Content-Length {text!r}")
    length = int(text.strip())
    if length > MAX_BODY_BYTES:
        raise ProtocolError(f"Content-Length {length} over the limit of {MAX_BODY_BYTES}")
    return length


class EslProtocol:
    """Parses what FreeSWITCH sends; a bounded buffer, one frame at a time.

    The buffer holds what has not been returned as a frame yet, from
    ``_start``; it is compacted when more data arrives.  Costs: O(bytes) over
    a connection, however the bytes are split.
    """

    def __init__(self, *, max_header_bytes: int = MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._buffer: bytes | bytearray = b""
        self._start = 0  # the first byte not yet returned in a frame
        # where the search for the end of an incomplete header block resumes (0: not searched yet)
        self._scan = 0
        self._pending: Headers | None = None  # headers whose body has not fully arrived
        self._length = 0
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.closed = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned in a frame.

        At most ``max_header_bytes + max_body_bytes`` + 64 KiB.
        """
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket (``b""`` for end of stream).  O(unread bytes + len(data)).

        Raises:
            ProtocolError: more is buffered than one frame can ever need
                (the caller reads frames after every call, so this means a
                header block or body that never ends).
        """
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
            raise ProtocolError("receive buffer over its limit")

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive.

        Raises:
            ProtocolError: the bytes are not a frame.
        """
        buffer, start = self._buffer, self._start
        headers = self._pending
        if headers is None:
            if start == len(buffer):
                return None
            if buffer[start] in b"\r\n":  # stray empty lines between frames: dropped, however many
                start = self._start = _BLANK_LINES.match(buffer, start).end()
                if start == len(buffer):
                    return None
            if self._scan <= start:  # first look: find the block's end and check its lines in one pass
                limit = start + self.max_header_bytes + 3  # a block of the limit, and its empty line
                head = _USUAL_HEAD.match(buffer, start, limit)
                if head is not None:
                    headers = _usual_headers(head)
                    after = head.end()
                elif (head := _FRAME_HEAD.match(buffer, start, limit)) is not None:
                    if head.end(1) - 1 - start > self.max_header_bytes:
                        raise ProtocolError(f"header block over {self.max_header_bytes} bytes")
                    headers = _headers(head[1])
                    after = head.end()
                else:
                    headers, after = self._search_head(buffer, start)
            else:
                headers, after = self._search_head(buffer, start)
            if headers is None:
                return None
            cache = headers._cache
            length_text = cache.get("Content-Length", _UNSEEN)
            if length_text is _UNSEEN:
                length_text = cache["Content-Length"] = headers._find(_CONTENT_LENGTH)
            if length_text is None:
                self._start = after
                return _tuple_new(Frame, (headers, None, None))
            length = _content_length(length_text)
            if length > self.max_body_bytes:
                raise ProtocolError(f"body over {self.max_body_bytes} bytes")
            start = self._start = after
            self._length = length
        else:
            length = self._length
        if len(buffer) - start < length:
            self._pending = headers
            return None
        self._pending = None
        self._start = start + length
        body = bytes(buffer[start:start + length])
        cache = headers._cache
        content_type = cache.get("Content-Type", _UNSEEN)
        if content_type is _UNSEEN:
            content_type = cache["Content-Type"] = headers._find(_CONTENT_TYPE)
        if content_type is not None and content_type.lower() == "text/event-plain":
            try:
                event = _py_parse_event(body)
            except ProtocolError as exc:
                raise BadEvent(str(exc)) from None  # the frame is taken: the next one can be read
            return _tuple_new(Frame, (headers, body, event))
        return _tuple_new(Frame, (headers, body, None))

    def _search_head(self, buffer: bytes | bytearray, start: int) -> tuple[Headers | None, int]:
        """The header block from ``start`` found by searching for its end, resuming the last search.

        Used when the block was not all there at the first look (or has a bad
        line).  Returns (headers, first byte after the empty line), or (None, 0)
        until the end arrives.
        """
        scan = max(self._scan, start)
        end = buffer.find(b"\n\n", scan)
        crlf = buffer.find(b"\n\r\n", scan, end + 2 if end >= 0 else len(buffer))
        if crlf >= 0:
            end, after = crlf, crlf + 3
        elif end >= 0:
            after = end + 2
        else:
            if len(buffer) - start > self.max_header_bytes:
                raise ProtocolError(f"header block over {self.max_header_bytes} bytes")
            self._scan = max(start + 1, len(buffer) - 2)  # an end can start in the last two bytes
            return None, 0
        if end - start > self.max_header_bytes:
            raise ProtocolError(f"header block over {self.max_header_bytes} bytes")
        return _header_lines(bytes(buffer[start:end + 1]), "frame"), after

    def frames(self) -> Iterator[Frame]:
        """Every complete frame now in the buffer."""
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame


# --- the compiled twin ----------------------------------------------------------------
# At the end of this section the public names EslProtocol, Headers and parse_event become the active
# parser's; the reference's own code above reaches its pieces through these two, so it stays the reference.

_PyHeaders = Headers
_py_parse_event = parse_event


class Parser(NamedTuple):
    """One implementation of the parser: its name and its three public pieces."""

    name: str
    EslProtocol: type
    Headers: type
    parse_event: Callable[[bytes], Event]


#: The reference, always there.
PYTHON = Parser("python", EslProtocol, Headers, parse_event)


def _load_compiled() -> Parser | None:
    """The compiled twin (``_fastparse``), when the core's compiled hot path is in use and it is built.

    Like the core (``tel400._impl``): ``TEL400_NO_EXTENSIONS=1`` or another
    interpreter than CPython gives the reference; a twin that fails to import
    gives it too, with one warning.
    """
    import tel400

    if tel400.IMPLEMENTATION != "cython":
        return None
    try:
        from . import _fastparse
    except ImportError as exc:
        warnings.warn(f"tel400_freeswitch: the compiled Event Socket parser is not available ({exc}); "
                      "using the pure-Python reference", RuntimeWarning, stacklevel=2)
        return None

    class CompiledHeaders(_fastparse.Headers, Mapping):
        __slots__ = ()
        __doc__ = Headers.__doc__

    CompiledHeaders.__name__ = CompiledHeaders.__qualname__ = "Headers"

    _fastparse.bind(frame=Frame, event=Event, error=ProtocolError, bad_event=BadEvent,
                    not_a_header=_not_a_header, content_length=_content_length, everything=_every_header,
                    max_header_bytes=MAX_HEADER_BYTES, max_body_bytes=MAX_BODY_BYTES, slack_bytes=_SLACK_BYTES,
                    headers_type=CompiledHeaders)
    return Parser("cython", _fastparse.EslProtocol, CompiledHeaders, _fastparse.parse_event)


CYTHON = _load_compiled()
#: Every parser importable here, by name (the tests run each over the same suite).
PARSERS = {parser.name: parser for parser in (PYTHON, CYTHON) if parser is not None}
_ACTIVE = CYTHON or PYTHON
#: ``"cython"`` when the compiled parser is in use, else ``"python"``.
IMPLEMENTATION = _ACTIVE.name
EslProtocol = _ACTIVE.EslProtocol  # type: ignore[misc]
Headers = _ACTIVE.Headers  # type: ignore[misc]
parse_event = _ACTIVE.parse_event  # type: ignore[assignment]


# --- what the adapter sends ---------------------------------------------------------

_SAFE_VALUE = re.compile(r"\A[^\x00-\x1f\x7f]*\Z")
_APP = re.compile(r"\A[A-Za-z0-9_]{1,64}\Z")


def _check(value: str, what: str) -> str:
    if not _SAFE_VALUE.match(value):
        raise ValueError(f"{what}: control characters (CR, LF, …) cannot go into an Event Socket header")
    return value


def command(name: str, *args: str) -> bytes:
    """A one-line command (``connect``, ``myevents``, ``linger``, ``exit``, ``event plain X``)."""
    line = " ".join((name,) + args)
    _check(line, "command")
    return f"{line}\n\n".encode()


def sendmsg(app: str, arg: str = "", *, event_uuid: str | None = None, uuid: str | None = None,
            event_lock: bool = True) -> bytes:
    """Execute a dialplan application on the channel.

    ``app`` is an application name (letters, digits, ``_``); ``arg`` may
    contain anything printable.  An argument with line breaks goes as a
    body (``Content-Type: text/plain``), as FreeSWITCH expects; it can never
    end the header block.
    """
    if not _APP.match(app):
        raise ValueError(f"application name {app!r}: expected letters, digits and _")
    lines = ["sendmsg" + (f" {_check(uuid, 'uuid')}" if uuid else ""), "call-command: execute",
             f"execute-app-name: {app}"]
    body = b""
    if arg:
        if _SAFE_VALUE.match(arg):
            lines.append(f"execute-app-arg: {arg}")
        else:
            body = arg.encode()
            lines.append("content-type: text/plain")
            lines.append(f"content-length: {len(body)}")
    if event_lock:
        lines.append("event-lock: true")
    if event_uuid:
        lines.append(f"Event-UUID: {_check(event_uuid, 'event uuid')}")
    return ("\n".join(lines) + "\n\n").encode() + body


def hangup(cause: str = "NORMAL_CLEARING", *, uuid: str | None = None) -> bytes:
    """Hang the channel up with a cause (``USER_BUSY``, ``CALL_REJECTED``, …)."""
    if not re.match(r"\A[A-Z_]{1,64}\Z", cause):
        raise ValueError(f"hangup cause {cause!r}: expected an upper-case cause name")
    head = "sendmsg" + (f" {_check(uuid, 'uuid')}" if uuid else "")
    return f"{head}\ncall-command: hangup\nhangup-cause: {cause}\n\n".encode()
