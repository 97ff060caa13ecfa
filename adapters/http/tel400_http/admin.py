"""The admin JSON API on Starlette: ``/v1/numbers…`` and ``/openapi.json``.

The service (:class:`tel400_http.app.Service`) answers the switch and
operations endpoints on its raw fast path and hands every other request to
the app built here, the catch-all.  Bodies and query strings are decoded by
msgspec with the Structs of :mod:`tel400_http.schemas`, the same ones the
OpenAPI document is generated from; every mistake is a 4xx with today's body
``{"error", "message", "field"?}`` (never a 500: anything unexpected is
logged and answered ``internal_error``).

Writes run in a thread under the service's write lock (SQLite, scrypt).  A
number's plan carries its version as an ``ETag`` (the SHA-256 of the stored
tree's canonical JSON, as the portal's plan editor computes it); a ``PUT``
with ``If-Match`` is refused with 412 when the plan changed meanwhile, so two
administrators never silently overwrite each other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tel400
from tel400 import pins
from tel400.stores import WritableStore

from . import schemas, smsreport
from .asgi import ClientGone, HttpError, encode_json
from .auth import ALL
from .editing import PlanEditor, StaleEdit, etag
from .records import check_month

_log = structlog.get_logger("tel400.http")

_PLAN_SECRETS = ("pin", "pin_hash")
#: The largest PIN body (a PIN is at most 8 digits; the switch endpoints' bound).
PIN_BODY = 16 * 1024
_JSON = "application/json"
#: The ``endpoint`` label of tel400_http_requests_total for each operation: the names the raw
#: dispatcher gave them before the move, so that dashboards keep working.
METRIC_NAMES = {
    "openapi": "openapi", "listNumbers": "numbers.list", "getNumber": "numbers.get", "putNumber": "numbers.put",
    "deleteNumber": "numbers.delete", "getBlacklist": "blacklist.get", "blacklistAdd": "blacklist.add",
    "blacklistRemove": "blacklist.remove", "putPin": "pin.put", "deletePin": "pin.delete", "audit": "audit",
    "report": "report", "calls": "calls.list",
    "listContacts": "contacts.list", "getContact": "contacts.get", "putContact": "contacts.put",
    "deleteContact": "contacts.delete", "importContacts": "contacts.import", "listOptOuts": "opt_outs.list",
    "createJob": "sms_jobs.create", "listJobs": "sms_jobs.list", "getJob": "sms_jobs.get",
    "pauseJob": "sms_jobs.pause", "resumeJob": "sms_jobs.resume", "cancelJob": "sms_jobs.cancel",
}
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]


def create_admin(service) -> Starlette:
    """The admin API of ``service`` as a Starlette app (one route per admin operation of schemas.OPERATIONS)."""
    from .sms_admin import SmsAdminApi  # it uses this module's decoding helpers

    api = _AdminApi(service)
    sms = SmsAdminApi(service, api)
    by_path: dict[str, dict] = {}
    for op in schemas.OPERATIONS:
        if not op.raw:
            handler = getattr(api, op.op_id, None) or getattr(sms, op.op_id)
            by_path.setdefault(op.path, {})[op.method] = _endpoint(service, METRIC_NAMES[op.op_id], handler)
    # Every method reaches the path's dispatcher, which answers the 405 itself (Starlette's would add HEAD)
    routes = [Route(path, _by_method(methods), methods=_ANY_METHOD) for path, methods in by_path.items()]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _framework_refusal})
    app.state.service = service
    return app


def _endpoint(service, name: str, handler):
    """``handler`` answering like the raw path: HttpError as its JSON, anything else a logged 500; counted."""

    async def endpoint(request: Request) -> Response:
        try:
            response = await handler(request)
        except HttpError as exc:
            response = _error_response(exc)
        except ClientGone:
            response = Response(status_code=499)  # nobody reads it; counted as what it is
        except Exception:
            _log.exception("request_failed", endpoint=name, method=request.method, path=request.url.path)
            response = _error_response(HttpError(500, "internal_error", "tel400 failed on this request; see its log"))
        key = (name, response.status_code)
        service.requests[key] = service.requests.get(key, 0) + 1
        return response

    endpoint.__name__ = name
    return endpoint


def _by_method(endpoints: dict):
    """One path's endpoints by method; 405 naming the others (only those: no implicit HEAD)."""
    allow = ", ".join(endpoints)

    async def endpoint(request: Request) -> Response:
        chosen = endpoints.get(request.method)
        if chosen is None:
            raise HTTPException(405, headers={"Allow": allow})
        return await chosen(request)

    endpoint.allowed = tuple(endpoints)  # the methods served, for the tests and the curious
    return endpoint


def _error_response(exc: HttpError) -> Response:
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in exc.headers}
    return Response(encode_json(exc.body()), exc.status, headers=headers, media_type=_JSON)


async def _framework_refusal(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 and 405, in the API's error shape."""
    path = request.url.path
    if exc.status_code == 405:
        error = HttpError(405, "method_not_allowed", f"{request.method} is not allowed on {path}",
                          headers=[(b"allow", (exc.headers or {}).get("Allow", "").encode("latin-1"))])
    elif exc.status_code == 404:
        error = HttpError(404, "not_found", f"no endpoint {path}")
    else:
        error = HttpError(exc.status_code, "bad_request", str(exc.detail))
    name = "method_not_allowed" if exc.status_code == 405 else "not_found"
    requests = request.app.state.service.requests
    requests[(name, exc.status_code)] = requests.get((name, exc.status_code), 0) + 1
    return _error_response(error)


# -- decoding with the Structs --------------------------------------------------------------------

_FIELD_AT = re.compile(r"at `\$\.([^`\[]+)")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]*)`")


def _invalid(exc: msgspec.ValidationError, *, code: str = "wrong_type") -> HttpError:
    """A msgspec validation error as the API's 422, naming the field at fault."""
    text = str(exc)
    for pattern, kind in ((_UNKNOWN, "unknown_field"), (_MISSING, "missing_field"), (_FIELD_AT, code)):
        m = pattern.search(text)
        if m:
            name = m.group(1)[:40]
            message = _FIELD_AT.sub("", text).rstrip(" -")
            return HttpError(422, kind, f"{name}: {message}", field=name)
    return HttpError(422, "bad_request", text)


def _int_fields(struct) -> frozenset[str]:
    info = msgspec.inspect.type_info(struct)
    out = set()
    for f in info.fields:
        kinds = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        if any(isinstance(k, msgspec.inspect.IntType) for k in kinds):
            out.add(f.name)
    return frozenset(out)


_INTS = {op.query: _int_fields(op.query) for op in schemas.OPERATIONS if op.query is not None}


def _query(request: Request, struct):
    """The query string as ``struct``; 422 naming the parameter that is unknown, empty or out of range."""
    raw = dict(request.query_params)
    for name in _INTS[struct]:
        value = raw.get(name)
        # isascii and isdigit: msgspec's lax mode would read "1e3" and "1.0" as whole numbers; str.isdigit
        # alone accepts "²".  A whole number is written in ASCII digits.
        if value is not None and not (value.isascii() and value.isdigit()):
            raise HttpError(422, "bad_request", f"{name}: expected a whole number", field=name)
    try:
        return msgspec.convert(raw, struct, strict=False)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, code="bad_request") from None


async def _body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (413), counted as it arrives."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise HttpError(400, "bad_request", "Content-Length is not a number")
        if int(length) > limit:
            raise HttpError(413, "body_too_large", f"the body is limited to {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, "body_too_large", f"the body is limited to {limit} bytes")
            chunks.append(chunk)
    except OSError:  # starlette.requests.ClientDisconnect
        raise ClientGone() from None
    return b"".join(chunks)


def _decode(body: bytes, kind):
    """A JSON body as ``kind``: 400 when it is not JSON, 422 naming the field when it is not ``kind``."""
    if not body:
        raise HttpError(400, "bad_json", "expected a JSON object in the body, got nothing")
    try:  # JSON first, then its shape: a malformed body is a 400 whatever its first character
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise HttpError(400, "bad_json", f"the body is not JSON: {exc}") from None
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise _invalid(exc) from None


def _json(status: int, value, headers: dict | None = None) -> Response:
    """``value`` (a Struct or plain data) as a JSON answer."""
    body = msgspec.json.encode(value) if isinstance(value, msgspec.Struct) else encode_json(value)
    return Response(body, status, headers=headers, media_type=_JSON)


def _no_content() -> Response:
    return Response(b"", 204, media_type=_JSON)


# -- the handlers -----------------------------------------------------------------------------------

class _AdminApi:
    """One method per admin operation, named by its operationId (hence camelCase)."""

    def __init__(self, service) -> None:
        self.s = service
        #: every plan write goes through the portal's editor too: one lock, one version check, one apply
        self.editor = PlanEditor(service)

    def _auth(self, request: Request):
        authorization = None
        for key, value in request.scope["headers"]:
            if key == b"authorization":
                authorization = value
                break
        return self.s.tokens.check(authorization)

    def _number(self, request: Request, token) -> str:
        raw = request.path_params["number"]
        try:
            number = tel400.normalize(raw)
        except tel400.NumberError:
            raise HttpError(404, "not_found", f"{raw!r} is not a telephone number") from None
        if not token.may(number):
            raise HttpError(403, "forbidden", f"this token may not manage {number}")
        return number

    async def openapi(self, request: Request) -> Response:
        return Response(schemas.document(), 200, media_type=_JSON)

    async def listNumbers(self, request: Request) -> Response:
        """The routed numbers a token may manage: its own, or (operator) one page of all.

        A tenant's answer costs O(its numbers) on the loop.  The operator's
        is paged and selected in a thread: O(numbers × log limit) there,
        never a sort of every number on the loop.
        """
        token = self._auth(request)
        q = _query(request, schemas.ListQuery)
        quarantined = self.s._quarantined()
        if ALL in token.numbers:
            numbers = await asyncio.to_thread(self.s.router.routed_numbers_after, q.after, q.limit + 1)
            mine = quarantined if not q.after else {}  # listed once, with the first page
        else:
            numbers = sorted(n for n in token.numbers if n > q.after and self.s.router._routes(n))[:q.limit + 1]
            mine = {n: quarantined[n] for n in token.numbers if n in quarantined} if not q.after else {}
        answer = schemas.NumberList(numbers=numbers[:q.limit])
        if len(numbers) > q.limit:
            answer.next = numbers[q.limit - 1]
        if mine:  # stored but refused: the token's owner should fix them
            answer.quarantined = mine
        return _json(200, answer)

    async def getNumber(self, request: Request) -> Response:
        number = self._number(request, self._auth(request))
        tree = await asyncio.to_thread(self.s._plan_tree, number)
        if tree is None:
            raise HttpError(404, "unknown_number", f"{number} has no plan")
        return _json(200, _redacted(tree), {"etag": f'"{etag(tree)}"'})

    async def putNumber(self, request: Request) -> Response:
        token = self._auth(request)
        number = self._number(request, token)
        expect = _if_match(request)
        plan = _decode(await _body(request, self.s.max_body), schemas.Plan)
        if "number" in plan:
            try:
                given = tel400.normalize(str(plan["number"]))
            except tel400.NumberError:
                given = None
            if given != number:
                raise HttpError(422, "invalid_plan", f"number: the body is for {str(plan['number'])[:40]!r}, "
                                f"the path for {number}", field="number")
        self._writable()
        created = False

        def build(before):
            nonlocal created
            created = before is None
            if expect == "*" and before is None:
                raise HttpError(412, "stale_plan", f"If-Match: *, but {number} has no plan", field="If-Match")
            body = {k: v for k, v in plan.items() if k != "has_pin"}
            if not any(k in body for k in _PLAN_SECRETS) and before is not None:
                for key in _PLAN_SECRETS:  # the PIN is managed at …/pin; a plan without one keeps it
                    if key in before:
                        body[key] = before[key]
            if isinstance(body.get("pin"), str) and pins.PIN_RE.match(body["pin"]):
                body["pin_hash"] = pins.make_hash(body.pop("pin"))  # never kept in clear
            return body

        def write():
            stored = self.editor.change(number, build, actor=token.name, expect=None if expect == "*" else expect)
            return created, stored

        created, stored = await asyncio.to_thread(_plan_errors(write))
        _log.info("plan_changed", number=number, actor=token.name, created=created)
        return _json(201 if created else 200, _redacted(stored), {"etag": f'"{etag(stored)}"'})

    async def deleteNumber(self, request: Request) -> Response:
        token = self._auth(request)
        number = self._number(request, token)
        self._writable()
        if not await asyncio.to_thread(_plan_errors(lambda: self.editor.delete(number, actor=token.name))):
            raise HttpError(404, "unknown_number", f"{number} has no plan")
        _log.info("plan_deleted", number=number, actor=token.name)
        return _no_content()

    def _writable(self) -> WritableStore:
        return self.s._writable()

    async def _edit(self, token, number: str, change) -> dict:
        """Read one number's stored plan, change it, write it back; 404 without a plan."""
        self._writable()

        def changed(tree):
            if tree is None:
                raise HttpError(404, "unknown_number", f"{number} has no plan")
            return change(tree)

        return await asyncio.to_thread(_plan_errors(lambda: self.editor.change(number, changed, actor=token.name)))

    async def getBlacklist(self, request: Request) -> Response:
        number = self._number(request, self._auth(request))
        tree = await asyncio.to_thread(self.s._plan_tree, number)
        if tree is None:
            raise HttpError(404, "unknown_number", f"{number} has no plan")
        return _json(200, schemas.Blacklist(number, list(tree.get("blacklist", []))))

    async def blacklistAdd(self, request: Request) -> Response:
        token = self._auth(request)
        number = self._number(request, token)
        entry = request.path_params["entry"]

        def add(tree):
            entries = list(tree.get("blacklist", []))
            if not any(_same_entry(entry, e) for e in entries):
                entries.append(entry)
            tree["blacklist"] = entries
            return tree

        stored = await self._edit(token, number, add)
        return _json(200, schemas.Blacklist(number, list(stored.get("blacklist", []))))

    async def blacklistRemove(self, request: Request) -> Response:
        token = self._auth(request)
        number = self._number(request, token)
        entry = request.path_params["entry"]

        def remove(tree):
            entries = list(tree.get("blacklist", []))
            kept = [e for e in entries if not _same_entry(entry, e)]
            if len(kept) == len(entries):
                raise HttpError(404, "not_blacklisted", f"{entry[:40]!r} is not on {number}'s blacklist")
            tree["blacklist"] = kept
            return tree

        stored = await self._edit(token, number, remove)
        return _json(200, schemas.Blacklist(number, list(stored.get("blacklist", []))))

    async def putPin(self, request: Request) -> Response:
        token = self._auth(request)
        number = self._number(request, token)
        pin = _decode(await _body(request, PIN_BODY), schemas.PinRequest).pin

        def set_pin(tree):
            tree.pop("pin", None)
            tree["pin_hash"] = pins.make_hash(pin)
            return tree

        await self._edit(token, number, set_pin)
        _log.info("pin_changed", number=number, actor=token.name)
        return _no_content()

    async def deletePin(self, request: Request) -> Response:
        token = self._auth(request)
        number = self._number(request, token)

        def clear(tree):
            if not any(k in tree for k in _PLAN_SECRETS):
                raise HttpError(404, "no_pin", f"{number} has no PIN")
            for key in _PLAN_SECRETS:
                tree.pop(key, None)
            return tree

        await self._edit(token, number, clear)
        _log.info("pin_removed", number=number, actor=token.name)
        return _no_content()

    async def audit(self, request: Request) -> Response:
        number = self._number(request, self._auth(request))
        q = _query(request, schemas.AuditQuery)
        store = self.s.store
        entries = [] if not isinstance(store, WritableStore) else await asyncio.to_thread(store.audit, number, q.limit)
        out = [{**e, "at": _iso(e["at"]), "before": _redacted(e["before"]), "after": _redacted(e["after"])}
               for e in entries]
        return _json(200, {"number": number, "entries": out})

    def _records(self):
        if self.s.records is None:
            raise HttpError(409, "records_off", "this service keeps no call records (--records none)")
        return self.s.records

    async def report(self, request: Request) -> Response:
        number = self._number(request, self._auth(request))
        records = self._records()
        month = _query(request, schemas.ReportQuery).month
        if month is None:
            month = dt.datetime.now(self.s._zone_of(number)).strftime("%Y-%m")
        try:
            check_month(month)
        except ValueError as exc:
            raise HttpError(422, "bad_request", str(exc), field="month") from None

        def report():
            records.flush()
            # SMS apart from calls: the SMS store's counts over the same month (null: no store)
            return {**records.report(number, month),
                    "sms": smsreport.sms_month(self.s.sms_store, number, month, self.s._zone_of(number))}

        return _json(200, await asyncio.to_thread(report))

    async def calls(self, request: Request) -> Response:
        number = self._number(request, self._auth(request))
        records = self._records()
        q = _query(request, schemas.CallsQuery)

        def listing():
            records.flush()
            return records.calls(number, limit=q.limit, before_id=q.before)

        return _json(200, {"number": number, "calls": await asyncio.to_thread(listing)})


# -- helpers ----------------------------------------------------------------------------------------

def _if_match(request: Request) -> str | None:
    """The ETag a change was made from (``If-Match``), unquoted; ``None`` without the header."""
    value = request.headers.get("if-match")
    if value is None:
        return None
    value = value.strip()
    return value.removeprefix("W/").strip('"')


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _redacted(tree):
    """A plan tree for an answer: never the PIN or its hash, only whether there is one."""
    if not isinstance(tree, dict) or "number" not in tree:
        return tree
    out = {k: v for k, v in tree.items() if k not in _PLAN_SECRETS}
    out["has_pin"] = any(k in tree for k in _PLAN_SECRETS)
    return out


def _same_entry(given: str, stored: str) -> bool:
    if given == stored:
        return True
    try:
        return tel400.normalize(given) == stored
    except tel400.NumberError:
        return False


def _plan_errors(fn):
    """``fn`` with a refused plan answered 422, naming the field (the running plans stay)."""

    def run():
        try:
            return fn()
        except tel400.PlanError as exc:
            raise HttpError(422, "invalid_plan", str(exc), field=exc.field, rule=exc.rule) from None
        except tel400.BackendError as exc:
            raise HttpError(503, "store_unavailable", str(exc)) from None
        except StaleEdit as exc:
            raise HttpError(412, "stale_plan", f"{exc.number}'s plan changed since it was read (If-Match is not its "
                                               "ETag); read it again and redo the change", field="If-Match") from None

    return run
