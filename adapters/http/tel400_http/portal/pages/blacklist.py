"""A number's blacklist: list it, add and remove entries (numbers, prefixes like ``1710*``, ``anonymous``),
import a pasted or uploaded list, one entry per line.

Each entry is checked by the library (:func:`tel400.plans.blacklist_entry`,
what a plan's ``blacklist`` accepts); an import keeps the good lines and
reports each bad one with its line number.  Adding and removing change one
entry under the write lock, so they compose with concurrent edits and need
no version check.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route

import tel400
from tel400.plans import blacklist_entry

from .. import i18n
from ..web import (
    change_plan,
    check_csrf,
    flash,
    number_url,
    page_error,
    plan_of,
    read_form,
    read_list,
    redirect,
    render,
    require,
)

#: Bad lines an import lists at most (the rest are counted).
BAD_LINES_SHOWN = 100
#: The longest line an import reads (longer: reported as bad, cut for display).
MAX_LINE = 80


def parse_lines(text: str) -> tuple[list[str], list[tuple[int, str, str]]]:
    """The entries of an imported list, and its bad lines as (line number, text, why).

    Blank lines and lines starting with ``#`` are skipped.  Entries keep
    their first place; repeats are dropped.
    """
    good: dict[str, None] = {}
    bad = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_LINE:
            bad.append((number, line[:MAX_LINE] + "…", f"longer than {MAX_LINE} characters"))
            continue
        try:
            good[blacklist_entry(line)] = None
        except tel400.PlanError as exc:
            bad.append((number, line, exc.message))
    return list(good), bad



def _page(request: Request, number: str, tree: dict, **extra):
    context = {"number": number, "entries": tree.get("blacklist", []), "error": None, "entry": "", "bad": [],
               "bad_more": 0, **extra}
    return render(request, "blacklist.html", context, status=422 if context["error"] or context["bad"] else 200)


async def show(request: Request):
    number = request.path_params["number"]
    require(request, number)
    return _page(request, number, await plan_of(request, number))


async def add(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    form = await read_form(request)
    check_csrf(request, form)
    text = str(form.get("entry", "")).strip()[:MAX_LINE]
    lang = i18n.request_language(request)
    try:
        entry = blacklist_entry(text)
    except tel400.PlanError as exc:
        return _page(request, number, await plan_of(request, number), error=exc.message, entry=text)

    def added(tree):
        entries = list(tree.get("blacklist", []))
        if entry not in entries:
            entries.append(entry)
        tree["blacklist"] = entries
        return tree

    try:
        await change_plan(request, session, number, added)
    except tel400.PlanError as exc:  # e.g. the list is full
        return _page(request, number, await plan_of(request, number), error=exc.message, entry=text)
    flash(request, i18n.gettext(lang, "Added %(entry)s to the blacklist.", entry=entry))
    return redirect(number_url(request, number, "blacklist"))


async def remove(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    form = await read_form(request)
    check_csrf(request, form)
    entry = str(form.get("entry", ""))[:MAX_LINE]

    def removed(tree):
        entries = list(tree.get("blacklist", []))
        if entry not in entries:
            raise HTTPException(404, detail="This entry is not on the blacklist.")
        tree["blacklist"] = [e for e in entries if e != entry]
        return tree

    await change_plan(request, session, number, removed)
    flash(request, i18n.gettext(i18n.request_language(request), "Removed %(entry)s from the blacklist.",
                                entry=entry))
    return redirect(number_url(request, number, "blacklist"))


async def import_list(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    text = await read_list(request)
    entries, bad = await asyncio.to_thread(parse_lines, text)  # ~60 ms for a full upload: off the event loop
    lang = i18n.request_language(request)

    def merged(tree):
        current = list(tree.get("blacklist", []))
        tree["blacklist"] = current + [e for e in entries if e not in current]
        return tree

    try:
        stored = await change_plan(request, session, number, merged) if entries else await plan_of(request, number)
    except tel400.PlanError as exc:  # e.g. more entries than a plan may have: nothing is added
        return _page(request, number, await plan_of(request, number), error=exc.message)
    message = i18n.gettext(lang, "Imported %(good)s entries; %(bad)s lines were refused.", good=len(entries),
                           bad=len(bad))
    if bad:
        return _page(request, number, stored, bad=bad[:BAD_LINES_SHOWN], bad_more=max(0, len(bad) - BAD_LINES_SHOWN),
                     imported=message)
    flash(request, message)
    return redirect(number_url(request, number, "blacklist"))


routes = [
    Route("/n/{number}/blacklist", show, methods=["GET"]),
    Route("/n/{number}/blacklist/add", add, methods=["POST"]),
    Route("/n/{number}/blacklist/remove", remove, methods=["POST"]),
    Route("/n/{number}/blacklist/import", import_list, methods=["POST"]),
]
