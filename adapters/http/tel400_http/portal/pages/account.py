"""Passwords: a company changes its own, the operator changes theirs and resets a company's.

Changing one's own password asks for the current one (counted like a failed
login when wrong, under the same lockout) and ends every other session of
that account; a reset by the operator ends all the company's sessions.
Every change is in the account audit with its actor.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from .. import i18n
from ..accounts import PASSWORD_MAX, PASSWORD_MIN, BadPassword, LockedOut, check_password_rules
from ..web import (
    check_csrf,
    client_address,
    flash,
    hashing,
    number_url,
    plan_state,
    portal_url,
    read_form,
    redirect,
    render,
    require,
    require_operator,
)


def _new_password(lang: str, form) -> tuple[str, str | None]:
    """The new password of a form and what is wrong with it (or ``None``)."""
    new, again = str(form.get("new", "")), str(form.get("confirm", ""))
    try:
        check_password_rules(new)
    except BadPassword:
        return new, i18n.gettext(lang, "A password is %(low)s to %(high)s characters.", low=PASSWORD_MIN,
                                 high=PASSWORD_MAX)
    if new != again:
        return new, i18n.gettext(lang, "The two passwords differ.")
    return new, None


def _page(request: Request, *, number: str | None, mode: str, error: str | None = None, status: int = 200):
    """``mode``: "own" (change one's own password) or "reset" (the operator resets a company's)."""
    return render(request, "account.html", {"number": number, "mode": mode, "error": error,
                                            "low": PASSWORD_MIN, "high": PASSWORD_MAX},
                  status=422 if error and status == 200 else status)


async def _change_own(request: Request, session, back: str):
    form = await read_form(request)
    check_csrf(request, form)
    lang = i18n.request_language(request)
    accounts = request.app.state.accounts
    new, error = _new_password(lang, form)
    mode_number = session.number
    try:
        right = await hashing(request, accounts.confirm_password, session.role, session.login,
                              str(form.get("current", "")), client_address(request))
    except LockedOut:
        return _page(request, number=mode_number, mode="own", status=429,
                     error=i18n.gettext(lang, "Too many wrong passwords: try again later."))
    if not right:
        return _page(request, number=mode_number, mode="own", error=i18n.gettext(lang, "The current password is wrong."))
    if error:
        return _page(request, number=mode_number, mode="own", error=error)
    setter = accounts.set_company_password if session.role == "company" else accounts.set_operator_password
    await hashing(request, setter, session.login, new, actor=session.actor, keep=session.id)
    flash(request, i18n.gettext(lang, "Your password is changed; your other sessions are logged out."))
    return redirect(back)


async def _has_plan(request: Request, number: str) -> bool:
    """``number`` has a stored plan, routed or refused (a quarantined plan's company may need a password)."""
    plan, refused = await plan_state(request, number)
    return plan is not None or refused is not None


async def number_account(request: Request):
    """``/n/<number>/account``: the company changes its password; the operator resets it."""
    number = request.path_params["number"]
    session = require(request, number)
    mode = "own" if session.role == "company" else "reset"
    if mode == "reset" and not await _has_plan(request, number):  # GET and POST alike: no such number
        lang = i18n.request_language(request)
        return _page(request, number=number, mode=mode, status=404,
                     error=i18n.gettext(lang, "This number has no plan."))
    if request.method == "GET":
        return _page(request, number=number, mode=mode)
    back = number_url(request, number, "account")
    if mode == "own":
        return await _change_own(request, session, back)
    form = await read_form(request)
    check_csrf(request, form)
    lang = i18n.request_language(request)
    new, error = _new_password(lang, form)
    if error:
        return _page(request, number=number, mode=mode, error=error)
    await hashing(request, request.app.state.accounts.set_company_password, number, new, actor=session.actor)
    flash(request, i18n.gettext(lang, "The company's password is reset; its sessions are logged out."))
    return redirect(back)


async def operator_account(request: Request):
    """``/operator/account``: the operator changes their own password."""
    session = require_operator(request)
    if request.method == "GET":
        return _page(request, number=None, mode="own")
    return await _change_own(request, session, portal_url(request, "operator/account"))


routes = [
    Route("/n/{number}/account", number_account, methods=["GET", "POST"]),
    Route("/operator/account", operator_account, methods=["GET", "POST"]),
]
