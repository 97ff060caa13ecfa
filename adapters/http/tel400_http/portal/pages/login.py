"""Logging in and out (companies with their 400 number, the operator's staff with a name), and the
language switch.

Every form here carries a CSRF token too: the anonymous one kept in the
cookie, so another site cannot log a visitor into an account of its choice.
"""

from __future__ import annotations

import asyncio
import math

from starlette.requests import Request
from starlette.routing import Route

from .. import i18n
from ..accounts import LockedOut
from ..web import (
    check_csrf,
    client_address,
    flash,
    hashing,
    portal_url,
    read_form,
    redirect,
    render,
    session_of,
)

#: The language cookie's life: a year.
LANG_COOKIE_MAX_AGE_S = 365 * 86400


def _home(request: Request, session) -> str:
    if session.role == "company":
        return portal_url(request, f"n/{session.number}/")
    return portal_url(request, "operator/")


async def index(request: Request):
    session = session_of(request)
    if session is None:
        return redirect(portal_url(request, "login"))
    return redirect(_home(request, session))


def _login_page(kind: str):
    async def page(request: Request):
        if request.method == "GET":
            return render(request, "login.html", {"kind": kind, "login": "", "error": None})
        form = await read_form(request)
        check_csrf(request, form)
        login, password = str(form.get("login", "")).strip(), str(form.get("password", ""))
        lang = i18n.request_language(request)
        accounts = request.app.state.accounts
        error = None
        try:
            session = await hashing(request, accounts.check_login, kind, login, password, client_address(request))
        except LockedOut as exc:
            session = None
            error = i18n.gettext(lang, "Too many failed logins: try again in %(minutes)s minutes.",
                                 minutes=max(1, math.ceil(exc.retry_after_s / 60)))
        if session is None:
            error = error or i18n.gettext(lang, "Wrong login or password.")
            return render(request, "login.html", {"kind": kind, "login": login[:80], "error": error}, status=401)
        request.session.clear()  # a new session id and CSRF token at login (no fixation)
        request.session["sid"] = session.id
        return redirect(_home(request, session))

    return page


async def logout(request: Request):
    form = await read_form(request)
    check_csrf(request, form)
    session = session_of(request)
    if session is not None:
        accounts = request.app.state.accounts
        await asyncio.to_thread(accounts.end_session, session.id)
        await asyncio.to_thread(accounts.audit, session.actor, "logout", client_address(request))
    request.session.clear()
    flash(request, i18n.gettext(i18n.request_language(request), "You are logged out."))
    return redirect(portal_url(request, "login"))


async def language(request: Request):
    """The language switch: a POST that sets the ``lang`` cookie, then back to the page it came from."""
    form = await read_form(request)
    check_csrf(request, form)
    lang = form.get("lang")
    back = str(form.get("next", ""))
    root = portal_url(request)
    if not back.startswith(root) or "//" in back[len(root) - 1:] or "\\" in back:  # only back into the portal
        back = root
    response = redirect(back)
    if lang in i18n.LANGUAGES:
        response.set_cookie("lang", lang, max_age=LANG_COOKIE_MAX_AGE_S, path="/portal", httponly=True,
                            samesite="strict", secure=request.app.state.https)
    return response


routes = [
    Route("/", index, methods=["GET"]),
    Route("/login", _login_page("company"), methods=["GET", "POST"]),
    Route("/login/operator", _login_page("operator"), methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/lang", language, methods=["POST"]),
]
