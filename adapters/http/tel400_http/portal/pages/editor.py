"""The routing editor: every field of a number's plan as a form (rules in order, conditions, actions,
caps, tariff, prompts, calendar), saved through :class:`tel400_http.editing.PlanEditor`.

One page, one form.  Its buttons (``name="op"``) move, add and remove rules,
targets, time slots and the like on the server, so the page works without
JavaScript; ``static/editor.js`` only moves rules without a round trip.
``op=save`` stores the plan: the library validates it, and a
:class:`tel400.PlanError` is shown next to the input its field names
(``aria-describedby``) with nothing stored and the entries kept.  The form
carries the plan's version (``etag``): when another administrator saved
meanwhile, the save is refused and says who and when.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route

import tel400

from ... import editing
from .. import i18n
from ..web import change_plan, check_csrf, flash, number_url, read_form, redirect, render, require
from . import editor_form as ef

#: The editor's form bounds: a plan of 1,000 rules posts ~30 fields a rule (docs/limits.md).
FORM_BYTES = 2 * 1024 * 1024
FORM_FIELDS = 40_000


def _page(request: Request, number: str, model: dict, version: str, *, errors: dict | None = None,
          problem: str | None = None, status: int = 200):
    return render(request, "editor.html", {
        "number": number, "model": model, "version": version, "errors": errors or {}, "problem": problem,
        "actions": ef.ACTIONS, "strategies": ef.STRATEGIES, "channels": ef.CHANNELS, "metrics": ef.METRICS,
        "periods": ef.PERIODS, "scopes": ef.SCOPES, "backend_error": ef.BACKEND_ERROR, "day_tokens": ef.DAY_TOKENS,
        "provinces": ef.PROVINCES, "prompt_keys": ef.PROMPT_KEYS, "match_modes": ef.MATCH_MODES,
    }, status=status)


async def _stored(request: Request, number: str) -> tuple[dict, str]:
    editor = editing.PlanEditor(request.app.state.service)
    try:
        tree, version = await asyncio.to_thread(editor.get, number)
    except editing.ReadOnlyPlans:
        raise HTTPException(409, detail="The plans come from a file this service does not write.") from None
    if tree is None:
        raise HTTPException(404, detail="This number has no plan.")
    return tree, version


async def show(request: Request):
    number = request.path_params["number"]
    require(request, number)
    tree, version = await _stored(request, number)
    return _page(request, number, ef.tree_to_model(tree), version)


def _fields(form) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if isinstance(value, str) and name not in ("csrf", "op", "etag"):
            out.setdefault(name, []).append(value)
    return out


async def _last_change(request: Request, number: str) -> tuple[str, str]:
    """Who changed ``number``'s plan last, and when (UTC, to the second), from the store's audit."""
    store = request.app.state.service.store
    entries = await asyncio.to_thread(store.audit, number, 1)
    if not entries:
        return "?", "?"
    at = entries[0]["at"]
    when = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") \
        if isinstance(at, (int, float)) else str(at)
    return str(entries[0]["actor"]), when


async def post(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    form = await read_form(request, max_bytes=FORM_BYTES, max_fields=FORM_FIELDS)
    check_csrf(request, form)
    lang = i18n.request_language(request)
    version = str(form.get("etag", ""))
    model = ef.fields_to_model(_fields(form))
    op = str(form.get("op", "save"))
    if op != "save":
        if not ef.apply_op(model, op):
            return _page(request, number, model, version, status=400,
                         problem=i18n.gettext(lang, "That button is not one of this form's."))
        return _page(request, number, model, version)

    submitted = {}

    def build(before):
        tree = ef.model_to_tree(model, kept=before)
        submitted.update(tree)
        return tree

    try:
        await change_plan(request, session, number, build, expect=version)
    except tel400.PlanError as exc:
        key = ef.error_key(submitted, exc.rule, exc.field)
        message = exc.message
        if key:
            return _page(request, number, model, version, errors={_group(key, model): message}, status=422,
                         problem=i18n.gettext(lang, "Nothing was saved: correct the field marked below."))
        # the message without its source (the store's URL is the server's business)
        where = " ".join(part for part in (exc.rule and f"rule {exc.rule!r}", exc.field and f"field {exc.field!r}")
                         if part)
        return _page(request, number, model, version, status=422, problem=i18n.gettext(
            lang, "Nothing was saved: %(message)s", message=f"{where}: {exc.message}" if where else exc.message))
    except editing.StaleEdit:
        actor, when = await _last_change(request, number)
        return _page(request, number, model, version, status=409, problem=i18n.gettext(
            lang, "Nothing was saved: this plan was changed by %(actor)s at %(when)s after you opened it. "
                  "Reload the page to see that change, then make yours again.", actor=actor, when=when))
    flash(request, i18n.gettext(lang, "The plan is saved; calls are routed by it now."))
    return redirect(number_url(request, number, "editor"))


def _group(key: str, model: dict) -> str:
    """The input group an error key belongs to, as the template marks them.

    ``rules.0.time`` is one group (all its slots); a target's ``to`` and
    ``weight``, a cap's fields and the like are inputs of their own; an
    error about a whole list item (``caps.0``, ``targets[1]``) goes to its
    first input.
    """
    parts = key.split(".")
    if parts[-1].isdigit() and len(parts) >= 2 and parts[-2] == "targets":
        return key + ".to"
    if parts[-1].isdigit() and len(parts) >= 2 and parts[-2] in ("time", "dates", "holidays", "workdays", "years",
                                                                 "keywords", "opt_out_words", "opt_in_words"):
        return ".".join(parts[:-1])
    if parts[0] == "sms_replies" and len(parts) == 2:
        return key + ".name"
    if parts[0] == "caps" and len(parts) == 2:
        return key + ".metric"
    if key.startswith("default") and key in ("default", "default.action"):
        return "default.action"
    if key == "sms":  # both word lists together
        return "sms.opt_out_words"
    if parts[0] in ("tariff", "calendar", "prompts") and len(parts) == 1:
        return {"tariff": "tariff.local", "calendar": "calendar.holidays", "prompts": "prompts.closed"}[parts[0]]
    return key


routes = [
    Route("/n/{number}/editor", show, methods=["GET"]),
    Route("/n/{number}/editor", post, methods=["POST"]),
]
