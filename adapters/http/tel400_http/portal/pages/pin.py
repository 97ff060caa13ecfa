"""A number's PIN (密码接入): set it (kept as a salted hash, never in clear) or clear it.

Callers to a number with a PIN are asked for it before routing; the hash is
:func:`tel400.pins.make_hash`'s, the one the router checks.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from tel400 import pins

from .. import i18n
from ..web import (
    change_plan,
    check_csrf,
    flash,
    hashing,
    number_url,
    plan_of,
    read_form,
    redirect,
    render,
    require,
)

_SECRETS = ("pin", "pin_hash")


def _page(request: Request, number: str, tree: dict, error: str | None = None):
    has_pin = any(key in tree for key in _SECRETS)
    return render(request, "pin.html", {"number": number, "has_pin": has_pin, "error": error},
                  status=422 if error else 200)


async def show(request: Request):
    number = request.path_params["number"]
    require(request, number)
    return _page(request, number, await plan_of(request, number))


async def set_pin(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    form = await read_form(request)
    check_csrf(request, form)
    lang = i18n.request_language(request)
    pin, again = str(form.get("pin", "")), str(form.get("confirm", ""))
    error = None
    if not pins.PIN_RE.match(pin):
        error = i18n.gettext(lang, "A PIN is 4 to 8 digits.")
    elif pin != again:
        error = i18n.gettext(lang, "The two PINs differ.")
    if error:
        return _page(request, number, await plan_of(request, number), error)
    pin_hash = await hashing(request, pins.make_hash, pin)  # scrypt: on the hashing threads

    def with_pin(tree):
        tree.pop("pin", None)
        tree["pin_hash"] = pin_hash
        return tree

    await change_plan(request, session, number, with_pin)
    flash(request, i18n.gettext(lang, "The PIN is set: callers are asked for it."))
    return redirect(number_url(request, number, "pin"))


async def clear_pin(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    form = await read_form(request)
    check_csrf(request, form)

    def without_pin(tree):
        for key in _SECRETS:
            tree.pop(key, None)
        return tree

    await change_plan(request, session, number, without_pin)
    flash(request, i18n.gettext(i18n.request_language(request), "The PIN is cleared."))
    return redirect(number_url(request, number, "pin"))


routes = [
    Route("/n/{number}/pin", show, methods=["GET"]),
    Route("/n/{number}/pin/set", set_pin, methods=["POST"]),
    Route("/n/{number}/pin/clear", clear_pin, methods=["POST"]),
]
