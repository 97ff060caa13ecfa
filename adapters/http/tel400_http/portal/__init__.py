"""The self-service web portal: companies manage their 400 number, the operator every number.

``tel400-http`` mounts it at ``/portal`` (:meth:`tel400_http.Service.mount`);
docs/portal.md walks through it.  Built on Starlette and Jinja2:

- :mod:`.accounts`: passwords, sessions, lockout, the account audit;
- :mod:`.web`: what every page uses (access checks, CSRF, rendering, forms);
- :mod:`.i18n`: Chinese by default, English, from gettext catalogues;
- ``pages/<feature>.py``: the pages, each exposing ``routes``.

Security: the session cookie is signed (itsdangerous), HttpOnly,
SameSite=Strict, path ``/portal``, Secure under https, and holds only a
random session id (checked against the server's sessions on every request)
and the anonymous CSRF token and flash messages; every answer carries a
Content-Security-Policy that allows no inline script or style.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import importlib

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

import tel400

from . import i18n
from .accounts import Accounts, PortalSession

_log = structlog.get_logger("tel400.portal")

__all__ = ["CSP", "PAGES", "SESSION_COOKIE", "Accounts", "PortalSession", "create_portal"]

#: The page modules (portal/pages/<name>.py), each with ``routes``; their order is the routing order.
PAGES = ["login", "home", "account", "blacklist", "pin", "editor", "weekview", "usage", "records", "reports",
         "sms", "sms_records", "operator"]

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")
SESSION_COOKIE = "tel400_portal"
#: Threads deriving password and PIN hashes (each derivation takes one core for ~0.1 s).
HASHING_THREADS = 2


class SecurityHeaders:
    """Adds the Content-Security-Policy and its companions to every answer."""

    HEADERS = ((b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
               (b"cache-control", b"no-store"))

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.HEADERS if n not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SessionLoader:
    """Looks the cookie's session id up in :class:`Accounts` (in a thread): ``scope["state"]["portal_session"]``."""

    def __init__(self, app, accounts: Accounts) -> None:
        self.app = app
        self.accounts = accounts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            sid = scope.get("session", {}).get("sid")
            found = await asyncio.to_thread(self.accounts.session, sid) if sid else None
            scope.setdefault("state", {})["portal_session"] = found
        await self.app(scope, receive, send)


async def _http_error(request, exc: HTTPException):
    from .web import render

    if 300 <= exc.status_code < 400:
        from starlette.responses import Response

        return Response(status_code=exc.status_code, headers=exc.headers)
    lang = i18n.request_language(request)
    message = i18n.gettext(lang, exc.detail, **getattr(exc, "variables", {})) if exc.detail else ""
    response = render(request, "error.html", {"status": exc.status_code, "message": message}, status=exc.status_code)
    response.headers.update(exc.headers or {})  # Retry-After of a 429
    return response


async def _backend_error(request, exc: Exception):
    _log.warning("portal_store_unavailable", path=request.url.path, error=str(exc))
    from .web import page_error

    return await _http_error(request, page_error(503, "The plan store cannot be reached now; try again shortly."))


async def _plan_refused(request, exc: tel400.PlanError):
    # A page whose change the stored plan refuses (its own error, or a plan the limits quarantine): a
    # 422 page naming the reason (the library's texts are English), nothing stored.
    from .web import page_error

    refused = page_error(422, "The plan was not changed: %(reason)s", reason=str(exc))
    return await _http_error(request, refused)


async def _server_error(request, exc: Exception):
    # Runs outside every middleware (Starlette's ServerErrorMiddleware): no session here, so a
    # page of its own, with the security headers added by hand.
    from starlette.responses import HTMLResponse

    _log.exception("portal_failed", path=request.url.path, exc_info=exc)
    lang = i18n.request_language(request)
    message = i18n.gettext(lang, "The portal failed on this request; the service's log says why.")
    body = f'<!doctype html><html lang="{i18n.html_lang(lang)}"><title>500</title><p>{html.escape(message)}</p></html>'
    return HTMLResponse(body, status_code=500,
                        headers={n.decode(): v.decode() for n, v in SecurityHeaders.HEADERS})


def create_portal(service, *, accounts: Accounts, secret_key: bytes, https: bool,
                  max_upload: int | None = None, pool=None, plan_writes_per_minute: int | None = None) -> Starlette:
    """The portal for ``service`` (mount it at ``/portal``).

    Args:
        service: the :class:`tel400_http.Service` whose plans and records the pages show.
        accounts: the logins, sessions and lockout.
        secret_key: signs the session cookie (32 random bytes; keep it secret, keep it across restarts).
        https: the portal is reached over https (the cookie is then Secure).
        max_upload: the largest list a page imports, bytes (default: web.UPLOAD_BYTES).
        pool: the free numbers (:class:`tel400_http.pool.NumberPool`; default: one in the accounts' file).
        plan_writes_per_minute: plan changes one number takes per minute (default:
            web.PLAN_WRITES_PER_MINUTE); past it a 429 page.
    """
    from .web import PLAN_WRITES_PER_MINUTE, WriteLimiter

    if len(secret_key) < 16:
        raise ValueError("secret_key: expected at least 16 bytes")
    routes = []
    for name in PAGES:
        routes.extend(importlib.import_module(f"{__name__}.pages.{name}").routes)
    routes.append(Mount("/static", StaticFiles(directory=i18n.HERE / "static"), name="static"))
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(SessionMiddleware, secret_key=secret_key.hex(), session_cookie=SESSION_COOKIE,
                       max_age=int(accounts.session_ttl_s), path="/portal", same_site="strict", https_only=https),
            Middleware(SessionLoader, accounts=accounts),
        ],
        exception_handlers={HTTPException: _http_error, tel400.BackendError: _backend_error,
                            tel400.PlanError: _plan_refused,
                            Exception: _server_error},
    )
    app.state.service = service
    app.state.accounts = accounts
    # A number deleted, or created where there was none, loses its company login: whoever gets the
    # number next starts with a password the operator sets (after the plan is stored).
    service.on_number(lambda number, event, actor: accounts.forget_company(number, actor=actor, event=event))
    app.state.https = https
    if pool is None:
        from ..pool import NumberPool

        pool = NumberPool(accounts.path)
    app.state.pool = pool
    # A deleted number the pool gave out is free again (one the pool never held stays out of it).
    service.on_number(lambda number, event, actor: pool.returned(number) if event == "deleted" else None)
    app.state.plan_writes = WriteLimiter(PLAN_WRITES_PER_MINUTE if plan_writes_per_minute is None
                                         else plan_writes_per_minute)
    # Password and PIN derivations (scrypt, ~0.1 s each) run here, never on the threads the rest of
    # the service shares: a flood of logins waits its turn without holding anything else.
    app.state.hashing = concurrent.futures.ThreadPoolExecutor(HASHING_THREADS, thread_name_prefix="tel400-portal-hash")
    if max_upload is not None:
        if not max_upload >= 1:
            raise ValueError(f"max_upload: expected a positive number of bytes, got {max_upload!r}")
        app.state.max_upload = max_upload
    return app
