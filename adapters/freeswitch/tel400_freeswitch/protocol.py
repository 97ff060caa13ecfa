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
Content-Length.

What can go wrong is a :class:`ProtocolError`: a header block or body over
the limits, a line that is not a header, a Content-Length that is not a
number in range.  The connection it came from is closed; nothing else is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

#: Largest header block accepted (FreeSWITCH's events are a few KB).
MAX_HEADER_BYTES = 64 * 1024
#: Largest body accepted (FreeSWITCH itself refuses over 16 MiB).
MAX_BODY_BYTES = 16 * 1024 * 1024

_HEX = b"0123456789ABCDEFabcdef"
# Characters FreeSWITCH's switch_url_encode escapes (SWITCH_URL_UNSAFE), plus
# everything outside printable ASCII.
_UNSAFE = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')


class ProtocolError(Exception):
    """The peer sent something that is not the Event Socket protocol."""


def url_decode(value: bytes) -> str:
    """``%XX`` → the byte, as ``esl_url_decode`` does (``+`` stays ``+``); UTF-8."""
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == 0x25 and i + 2 < n and value[i + 1] in _HEX and value[i + 2] in _HEX:
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "replace")


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


class Headers(dict):
    """Header name → value, looked up without regard to case."""

    def __init__(self, pairs: Iterator[tuple[str, str]] = ()) -> None:
        super().__init__()
        self._lower: dict[str, str] = {}
        for name, value in pairs:
            self[name] = value

    def __setitem__(self, name: str, value: str) -> None:
        super().__setitem__(name, value)
        self._lower[name.lower()] = value

    def get(self, name: str, default=None):  # type: ignore[override]
        return self._lower.get(name.lower(), default)


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


def _parse_header_block(block: bytes, what: str) -> Headers:
    headers = Headers()
    for line in block.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or not _NAME.match(name):
            raise ProtocolError(f"{what}: not a header line: {line[:80]!r}")
        headers[name.decode("ascii")] = url_decode(value.lstrip(b" \t"))
    return headers


_NAME = re.compile(rb"\A[A-Za-z0-9_.\-]{1,128}\Z")


def parse_event(body: bytes) -> Event:
    """The event in a ``text/event-plain`` body."""
    head, sep, rest = body.partition(b"\n\n")
    headers = _parse_header_block(head, "event")
    inner = None
    if sep and headers.get("Content-Length") is not None:
        length = _content_length(headers.get("Content-Length"))
        if length > len(rest):
            raise ProtocolError("event: inner body shorter than its Content-Length")
        inner = rest[:length]
    return Event(headers, inner)


def _content_length(text: str | None) -> int:
    # isascii: str.isdigit() also accepts digits such as '²' that int() refuses
    if text is None or not (text.strip().isascii() and text.strip().isdigit()):
        raise ProtocolError(f"bad Content-Length {text!r}")
    length = int(text.strip())
    if length > MAX_BODY_BYTES:
        raise ProtocolError(f"Content-Length {length} over the limit of {MAX_BODY_BYTES}")
    return length


class EslProtocol:
    """Parses what FreeSWITCH sends; a bounded buffer, one frame at a time."""

    def __init__(self, *, max_header_bytes: int = MAX_HEADER_BYTES, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._buffer = bytearray()
        self._pending: Headers | None = None  # headers whose body has not fully arrived
        self._length = 0
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.closed = False

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket (``b""`` for end of stream).

        Raises:
            ProtocolError: more is buffered than one frame can ever need
                (the caller reads frames after every call, so this means a
                header block or body that never ends).
        """
        if not data:
            self.closed = True
            return
        self._buffer += data
        if len(self._buffer) > self.max_header_bytes + self.max_body_bytes + 65536:
            raise ProtocolError("receive buffer over its limit")

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` until more bytes arrive.

        Raises:
            ProtocolError: the bytes are not a frame.
        """
        if self._pending is None:
            # FreeSWITCH ends lines with \n; tolerate \r\n like esl does.
            end = self._buffer.find(b"\n\n")
            crlf = self._buffer.find(b"\r\n\r\n")
            if crlf != -1 and (end == -1 or crlf < end):
                end, skip = crlf, 4
            else:
                skip = 2
            if end == -1:
                if len(self._buffer) > self.max_header_bytes:
                    raise ProtocolError(f"header block over {self.max_header_bytes} bytes")
                return None
            if end > self.max_header_bytes:
                raise ProtocolError(f"header block over {self.max_header_bytes} bytes")
            block = bytes(self._buffer[:end])
            del self._buffer[:end + skip]
            if not block.strip(b"\r\n"):
                return self.next_frame()  # stray empty lines between frames
            headers = _parse_header_block(block, "frame")
            length_text = headers.get("Content-Length")
            if length_text is None:
                return Frame(headers)
            self._length = _content_length(length_text)
            if self._length > self.max_body_bytes:
                raise ProtocolError(f"body over {self.max_body_bytes} bytes")
            self._pending = headers
        if len(self._buffer) < self._length:
            return None
        body = bytes(self._buffer[:self._length])
        del self._buffer[:self._length]
        headers, self._pending = self._pending, None
        event = None
        if (headers.get("Content-Type") or "").lower() == "text/event-plain":
            event = parse_event(body)
        return Frame(headers, body, event)

    def frames(self) -> Iterator[Frame]:
        """Every complete frame now in the buffer."""
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame


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
