"""What every portal page uses: who is logged in, access checks, CSRF, rendering, bounded forms.

Pages are Starlette endpoints.  A page that needs a login starts with
``session = require(request, number)``; a form handler reads its form with
:func:`read_form` and calls :func:`check_csrf` before changing anything; the
answer is :func:`render` (a template extending ``base.html``) or
:func:`redirect` (303, after a change, with a :func:`flash` message).
"""

from __future__ import annotations

import asyncio
import collections
import math
import secrets
import threading
import time
import urllib.parse

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response

import tel400

from ..editing import PlanEditor, ReadOnlyPlans
from . import i18n
from .accounts import PortalSession

__all__ = [
    "FORM_BYTES",
    "FORM_FIELDS",
    "PortalSession",
    "anonymous_csrf",
    "change_plan",
    "check_csrf",
    "client_address",
    "flash",
    "hashing",
    "number_url",
    "page_error",
    "plan_of",
    "plan_state",
    "portal_url",
    "read_form",
    "redirect",
    "render",
    "require",
    "require_operator",
    "routed_plan",
    "session_of",
]

#: The default bounds of a form (bytes of body, fields); pages with uploads give their own.
FORM_BYTES = 64 * 1024
FORM_FIELDS = 200
#: Flash messages kept in the cookie at most (older ones are dropped).
MAX_FLASHES = 5
#: Plan changes one number takes from the portal per minute (tel400-http --portal-plan-writes): each is
#: audited, so a company saving in a loop would fill the audit with its own noise.
PLAN_WRITES_PER_MINUTE = 60


class WriteLimiter:
    """At most ``per_minute`` writes per key (a number) in any 60 seconds; kept in memory, per process."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int = PLAN_WRITES_PER_MINUTE, *, clock=time.monotonic) -> None:
        if not (isinstance(per_minute, int) and per_minute >= 1):
            raise ValueError(f"plan writes per minute: expected a whole number >= 1, got {per_minute!r}")
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._times: dict[str, collections.deque] = {}

    def take(self, key: str) -> float:
        """Count a write for ``key``: 0 when it may go ahead, else the seconds until one may."""
        now = self._clock()
        with self._lock:
            times = self._times.setdefault(key, collections.deque())
            while times and times[0] <= now - self.WINDOW_S:
                times.popleft()
            if len(times) >= self.per_minute:
                return times[0] + self.WINDOW_S - now
            times.append(now)
            if len(self._times) > 100_000:  # numbers idle for a minute hold nothing
                self._times = {k: v for k, v in self._times.items() if v and v[-1] > now - self.WINDOW_S}
            return 0.0


def session_of(request: Request) -> PortalSession | None:
    """The logged-in session of ``request`` (checked against the server's sessions), or ``None``."""
    return request.scope.get("state", {}).get("portal_session")


def require(request: Request, number: str | None = None) -> PortalSession:
    """The session, or a 303 to the login page; a company asking for another number gets a 403 page.

    ``number``: the number the page is about (as the URL gave it).  The
    operator may ask for any; a company only for its own.
    """
    session = session_of(request)
    if session is None:
        raise HTTPException(303, headers={"Location": portal_url(request, "login")})
    if number is not None:
        try:
            canonical = tel400.normalize(number)
        except tel400.NumberError:
            canonical = None
        if canonical != number:  # pages are addressed by the canonical number only: one URL per number
            raise page_error(404, "No such number.")
        if session.role == "company" and number != session.number:
            raise page_error(403, "This page is about another number than yours.")
    return session


def require_operator(request: Request) -> PortalSession:
    """The operator's session; a company's gets a 403 page."""
    session = require(request)
    if session.role != "operator":
        raise HTTPException(403, detail="This page is for the operator.")
    return session


def anonymous_csrf(request: Request) -> str:
    """The CSRF token of a visitor not logged in (the login form, the language switch), kept in the cookie."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = request.session["csrf"] = secrets.token_urlsafe(24)
    return token


def _csrf_of(request: Request) -> str:
    session = session_of(request)
    return session.csrf if session is not None else anonymous_csrf(request)


def check_csrf(request: Request, form: FormData) -> None:
    """403 unless ``form`` carries this session's CSRF token (field ``csrf``), compared in constant time."""
    given = form.get("csrf")
    expected = _csrf_of(request)
    if not isinstance(given, str) or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, detail="This form has expired or did not come from this site; reload the page "
                                        "and try again.")


def portal_url(request: Request, path: str = "") -> str:
    """The URL of a portal path (``"login"``, ``"n/4001012345/"``) under the mount point."""
    return f"{request.scope.get('root_path', '')}/{path}"


def number_url(request: Request, number: str, page: str = "") -> str:
    """The URL of one number's page: ``/portal/n/<number>/<page>``."""
    return portal_url(request, f"n/{urllib.parse.quote(number, safe='')}/{page}")


def client_address(request: Request) -> str:
    """The client's address as the server saw it (lockout per address)."""
    return request.client.host if request.client else "unknown"


def flash(request: Request, message: str, kind: str = "ok") -> None:
    """Show ``message`` (already translated) on the next page rendered; ``kind`` ok or error."""
    kept = list(request.session.get("flash", []))[-(MAX_FLASHES - 1):]
    kept.append([kind, message])
    request.session["flash"] = kept


def redirect(url: str) -> RedirectResponse:
    """303 See Other: the browser GETs ``url`` (after a form POST)."""
    return RedirectResponse(url, status_code=303)


def render(request: Request, template: str, context: dict | None = None, status: int = 200) -> Response:
    """``template`` in the request's language.

    The template gets ``context`` and: ``session`` (or None), ``csrf``,
    ``lang``, ``_`` (gettext), ``number_url(number, page)``, ``url(path)``,
    ``flashes`` (taken from the cookie) and ``languages``.
    """
    lang = i18n.request_language(request)
    env = i18n.ENVIRONMENTS[lang]
    flashes = request.session.pop("flash", []) if "flash" in request.session else []
    ctx = {
        "request": request,
        "session": session_of(request),
        "csrf": _csrf_of(request),
        "lang": lang,
        "html_lang": i18n.html_lang(lang),
        "languages": i18n.NAMES,
        "_": env.globals["gettext"],
        "number_url": lambda number, page="": number_url(request, number, page),
        "url": lambda path="": portal_url(request, path),
        "flashes": flashes,
        **(context or {}),
    }
    body = env.get_template(template).render(ctx)
    return Response(body, status_code=status, media_type="text/html; charset=utf-8")


def page_error(status: int, message: str, **variables) -> HTTPException:
    """An error page: ``message`` is an English msgid, translated with its ``%(name)s`` ``variables``."""
    exc = HTTPException(status, detail=message)
    exc.variables = variables
    return exc


def _too_large(limit: int) -> HTTPException:
    return page_error(413, "The form is larger than %(kib)s KiB.", kib=limit // 1024)


class _Counted:
    """``receive`` that answers 413 once more than ``limit`` body bytes have arrived."""

    def __init__(self, receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._seen = 0

    async def __call__(self):
        message = await self._receive()
        if message["type"] == "http.request":
            self._seen += len(message.get("body", b""))
            if self._seen > self._limit:
                raise _too_large(self._limit)
        return message


#: The charsets a form may declare: the pages are UTF-8 and browsers send UTF-8 forms.  Another (Starlette
#: would decode multipart with any codec named, unicode_escape and utf-7 included) is refused.
FORM_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_MULTIPART = "multipart/form-data"


def _check_content_type(request: Request, max_files: int) -> None:
    media, params = parse_options_header(request.headers.get("content-type", ""))
    charset = params.get(b"charset")
    if charset is not None and charset.decode("latin-1").strip().lower() not in FORM_CHARSETS:
        raise page_error(400, "A form is sent in UTF-8.")
    if media == _MULTIPART.encode() and max_files == 0:  # only an upload page parses multipart
        raise page_error(415, "This form takes no files.")


def _check_text(form: FormData) -> None:
    """400 unless every name and value is text UTF-8 can carry (no lone surrogates)."""
    for name, value in form.multi_items():
        texts = (name, value.filename or "") if isinstance(value, UploadFile) else (name, value)
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise page_error(400, "A form is sent in UTF-8.") from None


async def read_form(request: Request, *, max_bytes: int = FORM_BYTES, max_fields: int = FORM_FIELDS,
                    max_files: int = 0) -> FormData:
    """The request's form, at most ``max_bytes`` of body (413 past it, counted as it arrives),
    ``max_fields`` fields and ``max_files`` files (400 past them).

    A charset other than UTF-8 (or ASCII), or a value UTF-8 cannot encode,
    is a 400; a multipart form where no file is asked for (``max_files=0``)
    a 415; a client gone before its form arrived a 400 (nobody reads it).
    Close the files of a multipart form (``await form.close()``) when done.
    """
    _check_content_type(request, max_files)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise _too_large(max_bytes)
    request._receive = _Counted(request.receive, max_bytes)
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields, max_part_size=max_bytes)
    except MultiPartException as exc:
        raise HTTPException(400, detail=str(exc)) from None
    except ClientDisconnect:
        raise page_error(400, "The form did not arrive whole.") from None
    try:
        _check_text(form)
    except HTTPException:
        await form.close()
        raise
    return form


async def change_plan(request: Request, session: PortalSession, number: str, fn, *, expect: str | None = None) -> dict:
    """:meth:`PlanEditor.change` of ``number`` by ``session`` (its actor in the audit), in a thread.

    ``fn`` gets the stored tree (a copy; a number without a plan is a 404
    page).  Raises what the editor raises (:class:`tel400.PlanError`,
    :class:`~tel400_http.editing.StaleEdit`); a service whose plans come from
    a file answers a 409 page.
    """
    wait = request.app.state.plan_writes.take(number)
    if wait:
        exc = page_error(429, "Too many changes to this number: try again in %(seconds)s seconds.",
                         seconds=math.ceil(wait))
        exc.headers = {"Retry-After": str(math.ceil(wait))}
        raise exc

    def guarded(tree):
        if tree is None:
            raise HTTPException(404, detail="This number has no plan.")
        return fn(tree)

    editor = PlanEditor(request.app.state.service)
    try:
        return await asyncio.to_thread(editor.change, number, guarded, actor=session.actor, expect=expect)
    except ReadOnlyPlans:
        raise HTTPException(409, detail="The plans come from a file this service does not write.") from None


async def plan_of(request: Request, number: str) -> dict:
    """The stored tree of ``number`` (a 404 page without a plan; a 409 page on a read-only service)."""
    editor = PlanEditor(request.app.state.service)
    try:
        tree, _version = await asyncio.to_thread(editor.get, number)
    except ReadOnlyPlans:
        raise HTTPException(409, detail="The plans come from a file this service does not write.") from None
    if tree is None:
        raise HTTPException(404, detail="This number has no plan.")
    return tree


async def hashing(request: Request, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the portal's hashing threads (password checks, PIN hashes: scrypt)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app.state.hashing, lambda: fn(*args, **kwargs))


async def routed_plan(request: Request, number: str):
    """The :class:`tel400.NumberPlan` ``number`` is routed by, or ``None`` (read in a thread: it may be a
    store read); a stored plan the router refuses shows as ``None`` (:func:`plan_state` says why)."""
    plan, _refused = await plan_state(request, number)
    return plan


async def plan_state(request: Request, number: str):
    """``(plan, refused)``: the :class:`tel400.NumberPlan` ``number`` is routed by (or ``None``), and why
    routing refuses its stored plan (the :class:`tel400.PlanError` text; ``None`` when the plan is good or
    there is none).  A page shows a refused plan with that reason, not as "no plan" (read in a thread).
    """
    router = request.app.state.service.router

    def read():
        try:
            return router.plan_of(number), None
        except tel400.PlanError as exc:  # stored, but invalid under this service's limits: quarantined
            return None, str(exc)

    return await asyncio.to_thread(read)


#: The largest list a page imports (pasted text and uploaded file together), bytes;
#: ``tel400-http --portal-max-upload``.
UPLOAD_BYTES = 256 * 1024


def decoded_upload(data: bytes) -> str:
    """An uploaded list as text: UTF-8 (with or without a BOM), else GB18030 (Chinese Excel's CSV)."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise HTTPException(400, detail="The file is not text in UTF-8 or GB18030.")


async def read_list(request: Request) -> str:
    """The list a form imports, one entry per line: its pasted ``lines`` and its uploaded ``file``, after the CSRF check.

    At most the portal's ``max_upload`` bytes of list (413 past it, before
    any line is read); the form itself may carry a little more (its other
    fields).  The blacklist and the operator's pool import both read lists
    this way.
    """
    limit = getattr(request.app.state, "max_upload", UPLOAD_BYTES)
    form = await read_form(request, max_bytes=limit + 16 * 1024, max_fields=5, max_files=1)
    try:
        check_csrf(request, form)
        text = str(form.get("lines", ""))
        upload = form.get("file")
        if upload is not None and not isinstance(upload, str) and upload.filename:
            data = await upload.read(limit + 1)
            if len(data) > limit:
                raise page_error(413, "The form is larger than %(kib)s KiB.", kib=limit // 1024)
            text = text + "\n" + decoded_upload(data) if text.strip() else decoded_upload(data)
    finally:
        await form.close()
    if len(text.encode()) > limit:
        raise page_error(413, "The form is larger than %(kib)s KiB.", kib=limit // 1024)
    return text
