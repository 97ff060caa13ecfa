"""The week view: what a number's plan does at each hour of a week, and "try a call".

The grid is :func:`tel400.simulate.week_grid` (the function behind ``tel400
simulate --week``) over the plan the service routes by; trying a call is
:meth:`tel400.Router.explain` on the service's router.  Both are dry runs:
nothing is counted against caps, no PIN failure is recorded, round robin
does not advance.  Read-only pages, so plain GET forms (no CSRF token).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo

import attrs
from starlette.requests import Request
from starlette.routing import Route

import tel400
from tel400 import provinces
from tel400.simulate import week_grid

from .. import i18n
from ..web import hashing, plan_state, render, require

#: Colours of rules in the grid: rule i gets class ``rule-(i % PALETTE)`` (weekview.css defines them).
PALETTE = 8
#: The province shown when none is picked.
DEFAULT_PROVINCE = "CN-BJ"
#: Dates the pages take (a typo like 20260 is an error, not a very long computation).
FIRST_YEAR, LAST_YEAR = 2000, 2099
#: The longest text taken from any field (longer is an error).
MAX_FIELD = 40

#: (code, "北京 Beijing") for the province picker, in the fixed order of tel400.provinces.
PROVINCE_CHOICES = [(code, f"{provinces.CHINESE_NAMES[code]} {provinces.ENGLISH_NAMES[code]}")
                    for code in provinces.CODES if code]


def _monday_of(day: dt.date) -> dt.date:
    return day - dt.timedelta(days=day.weekday())


def _field(request: Request, name: str) -> str:
    return request.query_params.get(name, "").strip()


def _parse_day(text: str) -> dt.date | None:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None
    return day if FIRST_YEAR <= day.year <= LAST_YEAR else None


def _parse_local_time(text: str) -> dt.datetime | None:
    """A ``datetime-local`` value (``2026-11-23T09:30``), naive: the router reads it in the plan's zone."""
    if len(text) > MAX_FIELD:
        return None
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if at.tzinfo is not None or not FIRST_YEAR <= at.year <= LAST_YEAR:
        return None
    return at


def cell_class(grid, cell) -> str:
    """The CSS class of a cell: the rule's colour, or ``rule-none`` for the default and refusals."""
    index = grid.rule_index(cell.rule)
    if index is None or cell.action == "reject":
        return "rule-none" if index is None else f"rule-{index % PALETTE} refused"
    return f"rule-{index % PALETTE}"


def _grid_of(service, plan, province: str, start: dt.date):
    """The grid over the one plan the service routes ``number`` by, with the service's global settings."""
    plans = attrs.evolve(service.router.settings, numbers=(plan,))
    return week_grid(plans, plan.number, province, start=start)


async def week(request: Request):
    number = request.path_params["number"]
    require(request, number)
    lang = i18n.request_language(request)
    plan, refused = await plan_state(request, number)
    if plan is None:  # a refused plan is shown with why (the number exists); none stored is a 404
        return render(request, "weekview.html", {"number": number, "plan": None, "refused": refused},
                      status=200 if refused else 404)
    zone = zoneinfo.ZoneInfo(plan.timezone)
    errors: dict[str, str] = {}

    province_text = _field(request, "province") or DEFAULT_PROVINCE
    province = provinces.resolve(province_text[:MAX_FIELD])
    if province is None:
        errors["province"] = i18n.gettext(lang, "Pick a province from the list.")
    start_text = _field(request, "start")
    start = _monday_of(dt.datetime.now(zone).date()) if not start_text else _parse_day(start_text[:MAX_FIELD])
    if start is None:
        errors["start"] = i18n.gettext(lang, "A date like 2026-09-28.")
    grid = None
    if not errors:
        try:
            grid = await asyncio.to_thread(_grid_of, request.app.state.service, plan, province, start)
        except ValueError:  # a province the prefix table has no number for (an operator's segment table)
            errors["province"] = i18n.gettext(lang, "No caller number is known for this province.")

    trial = await _try_call(request, plan, lang, errors) if "caller" in request.query_params else None
    return render(request, "weekview.html", {
        "number": number, "plan": plan, "grid": grid, "errors": errors, "trial": trial,
        "province": province or province_text[:MAX_FIELD], "start": start.isoformat() if start else start_text,
        "province_choices": PROVINCE_CHOICES, "cell_class": cell_class,
        "tried": {key: _field(request, key)[:MAX_FIELD] for key in ("caller", "at", "channel", "pin")},
    }, status=422 if errors else 200)


async def _try_call(request: Request, plan, lang: str, errors: dict) -> dict | None:
    """The service router's :meth:`~tel400.Router.explain` for the try-a-call fields (errors go into ``errors``)."""
    caller_text = _field(request, "caller")
    caller = None
    if len(caller_text) > MAX_FIELD or not caller_text:
        errors["caller"] = i18n.gettext(lang, "A caller number like 13901010001 or 010-6123-4567, or anonymous.")
    elif caller_text.lower() == "anonymous":
        caller = "anonymous"
    else:
        try:
            caller = tel400.normalize(caller_text)
        except tel400.NumberError:
            errors["caller"] = i18n.gettext(lang, "A caller number like 13901010001 or 010-6123-4567, or anonymous.")
    at = _parse_local_time(_field(request, "at"))
    if at is None:
        errors["at"] = i18n.gettext(lang, "A local date and time like 2026-11-23T09:30.")
    channel = _field(request, "channel") or "voice"
    if channel not in ("voice", "sms"):
        errors["channel"] = i18n.gettext(lang, "Voice or SMS.")
    pin = _field(request, "pin") or None
    if pin is not None and not (pin.isascii() and pin.isdigit() and len(pin) <= 8):
        errors["pin"] = i18n.gettext(lang, "A PIN is 4 to 8 digits.")
    if {"caller", "at", "channel", "pin"} & errors.keys():
        return None
    dialed = ("10657" + plan.number) if channel == "sms" else plan.number
    router = request.app.state.service.router
    # with a PIN, explain checks its scrypt hash: on the portal's hashing threads, like every PIN hash
    run = (lambda fn, *a, **kw: hashing(request, fn, *a, **kw)) if pin is not None else asyncio.to_thread
    decision = await run(router.explain, dialed, caller, at=at, channel=channel, pin=pin)
    return {"decision": decision, "steps": [str(step) for step in decision.explain or ()]}


routes = [
    Route("/n/{number}/week", week, methods=["GET"]),
]
