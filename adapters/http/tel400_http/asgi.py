"""The little of HTTP the service needs, on raw ASGI.

No framework: the route endpoint is the hot path of the service, and a
framework's request and response objects, middleware stack and router cost
a fifth of the requests per second on a one-endpoint JSON service (measured,
see docs/performance.md).  What a framework would give is here in a hundred
lines: reading a bounded body, JSON and form decoding with clear errors,
JSON responses, and one exception type that every handler raises for a
client's mistake.  JSON goes through orjson: parsing and writing a decision
with the standard library cost more than routing it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import orjson


class HttpError(Exception):
    """A client's mistake, answered with ``status`` and a JSON body.

    The body is ``{"error": code, "message": message, **extra}``: ``code`` is
    stable for programs, ``message`` is for people.
    """

    def __init__(self, status: int, code: str, message: str, *, headers: list[tuple[bytes, bytes]] | None = None,
                 **extra) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []
        self.extra = extra

    def body(self) -> dict:
        return {"error": self.code, "message": self.message, **self.extra}


class Request:
    """One HTTP request: the ASGI scope, and the body once read."""

    __slots__ = ("scope", "receive", "method", "path", "params", "body")

    def __init__(self, scope, receive, params: dict[str, str] | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.params = params or {}
        self.body = b""

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return value
        return None

    @property
    def query(self) -> dict[str, str]:
        # Blank values kept: ``?limit=`` is a limit given empty (refused), not a limit left out.
        return dict(parse_qsl(self.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))

    async def read(self, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes (413) before reading it if possible."""
        length = self.header(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise HttpError(400, "bad_request", "Content-Length is not a number")
            if int(length) > limit:
                raise HttpError(413, "body_too_large", f"the body is limited to {limit} bytes")
        message = await self.receive()
        if message["type"] == "http.request" and not message.get("more_body", False):  # one piece: most requests
            body = message.get("body", b"")
            if len(body) > limit:
                raise HttpError(413, "body_too_large", f"the body is limited to {limit} bytes")
            self.body = body
            return body
        return await self._read_chunks(message, limit)

    async def _read_chunks(self, message, limit: int) -> bytes:
        chunks = []
        size = 0
        while True:
            if message is None:
                message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "body_too_large", f"the body is limited to {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
            message = None
        self.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.body

    def json(self) -> dict:
        """The body as a JSON object; 400 when it is not JSON, 422 when it is not an object."""
        if not self.body:
            raise HttpError(400, "bad_json", "expected a JSON object in the body, got nothing")
        try:
            data = orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, "bad_json", f"the body is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(422, "bad_request", f"expected a JSON object, got {type(data).__name__}")
        return data

    def form(self) -> dict[str, str]:
        """The body as ``application/x-www-form-urlencoded`` fields (the last of repeated names wins)."""
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "bad_form", "the form is not UTF-8") from None
        return dict(parse_qsl(text, keep_blank_values=True))

    def is_form(self) -> bool:
        content_type = self.header(b"content-type") or b""
        return content_type.split(b";", 1)[0].strip().lower() == b"application/x-www-form-urlencoded"


class ClientGone(Exception):
    """The client went away before its request was read."""


JSON = b"application/json"


encode_json = orjson.dumps  # UTF-8, compact


async def send(send_, status: int, body: bytes, content_type: bytes = JSON,
               headers: list[tuple[bytes, bytes]] | None = None) -> None:
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        head.extend(headers)
    await send_({"type": "http.response.start", "status": status, "headers": head})
    await send_({"type": "http.response.body", "body": body})


def field(data: dict, name: str, kind: type | tuple[type, ...], *, required: bool = False, default=None):
    """``data[name]`` checked against ``kind`` (422 naming the field otherwise).

    ``bool`` is never accepted where a number is expected, nor a number where
    a string is.
    """
    if name not in data or data[name] is None:
        if required:
            raise HttpError(422, "missing_field", f"{name}: required", field=name)
        return default
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise HttpError(422, "wrong_type", f"{name}: expected {expected}, got {_json_type(value)}", field=name)
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
               list: "an array"}


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
