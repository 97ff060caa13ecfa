"""The operator's pages: every number, the pool of free numbers, vanity search, new numbers, the audit.

All of them are for the operator only (:func:`~..web.require_operator`: a
company's session gets a 403 page).

- ``/operator/``: the routed numbers, searched by prefix or by digits
  anywhere, a page at a time (:func:`find_numbers`; no plan is read);
- ``/operator/pool``: the free numbers (:class:`tel400_http.pool.NumberPool`),
  searched, and a pasted or uploaded list imported into it;
- ``/operator/vanity``: the free numbers matching letters, digits or a
  pattern, ranked by :func:`tel400.vanity.grade` with the patterns shown;
- ``/operator/create``: a number from the pool for a company: a one-rule plan
  to one target, the company's first password (shown once);
- ``/operator/audit``: every change (plans: the store's ``audit()``; logins and
  passwords: :meth:`Accounts.audit_entries`), by whom, per number, paged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import secrets

from starlette.requests import Request
from starlette.routing import Route

import structlog

import tel400
from tel400 import vanity
from tel400.stores import WritableStore

from ... import pool as pool_module
from ...editing import PlanEditor, ReadOnlyPlans, StaleEdit
from .. import i18n
from ..web import check_csrf, hashing, page_error, portal_url, read_form, read_list, render, require_operator

#: Numbers on one page of the numbers list.
NUMBERS_PAGE = 100
#: Routed numbers one "digits anywhere" request looks through; the page links on from where it stopped.
SCAN_NUMBERS = 50_000
#: The longest search text taken (tel400.vanity.QUERY_MAX); a longer one is a 400 with a message by the field.
MAX_QUERY = vanity.QUERY_MAX
#: Free numbers the pool page and the vanity page show at most.
FREE_SHOWN = 200
#: Bad lines an import lists at most (the rest are counted).
BAD_LINES_SHOWN = 100
#: Audit entries on one page; pages go back at most AUDIT_PAGES.
AUDIT_PAGE = 50
AUDIT_PAGES = 20
#: The longest company name taken.
MAX_NAME = 80
#: Characters of a generated first password (letters and digits, ~60 bits).
PASSWORD_CHARS = 10
_PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/l/I


_log = structlog.get_logger("tel400.portal")


def _pool(request: Request) -> pool_module.NumberPool:
    return request.app.state.pool


def _query(request: Request, name: str = "q") -> str:
    """The parameter ``name``, stripped; read to one character past MAX_QUERY (a longer one is refused)."""
    return request.query_params.get(name, "")[:MAX_QUERY + 1].strip()


def _query_error(query: str, lang: str) -> str | None:
    """Why the search text ``query`` is refused (translated), or ``None``."""
    if len(query) > MAX_QUERY:
        return i18n.gettext(lang, "At most %(count)s characters.", count=MAX_QUERY)
    if query and not vanity.to_digits(query):  # a pattern word is letters too: it dials
        return i18n.gettext(lang, "Type digits (or letters of a keypad).")
    return None


# -- numbers -------------------------------------------------------------------------------------


def _just_before(prefix: str) -> str:
    """A string sorting after every digit string below ``prefix`` and before every one starting with it."""
    return prefix[:-1] + chr(ord(prefix[-1]) - 1) + "\uffff"


def find_numbers(router, digits: str, *, anywhere: bool, after: str = "",
                 limit: int = NUMBERS_PAGE, scan: int = SCAN_NUMBERS) -> tuple[list[str], str | None]:
    """One page of the routed numbers: ``(numbers, cursor)``; ``cursor`` continues after the page (``None``: done).

    ``digits`` empty: every number.  Otherwise the numbers starting with
    ``digits``, or (``anywhere``) containing them.  Uses only
    :meth:`tel400.Router.routed_numbers_after` (no plan is read): a prefix
    page is one call; a digits-anywhere page looks at no more than ``scan``
    numbers and, when it found fewer than ``limit`` there, its cursor is where
    it stopped.  Run it in a thread.  O(numbers × log(limit or scan)).
    """
    if not digits:
        found = router.routed_numbers_after(after, limit + 1)
        return found[:limit], (found[limit - 1] if len(found) > limit else None)
    if not anywhere:
        start = max(after, _just_before(digits))
        found = [n for n in router.routed_numbers_after(start, limit + 1) if n.startswith(digits)]
        return found[:limit], (found[limit - 1] if len(found) > limit else None)
    looked = router.routed_numbers_after(after, scan)
    found = [n for n in looked if digits in n]
    if len(found) > limit:
        return found[:limit], found[limit - 1]
    return found, (looked[-1] if len(looked) == scan else None)


async def numbers(request: Request):
    """``/operator/``: the routed numbers, searched, paged."""
    require_operator(request)
    query = _query(request)
    after = request.query_params.get("after", "")[:MAX_QUERY]
    anywhere = request.query_params.get("mode") != "prefix"  # digits anywhere unless asked: what people expect
    error = _query_error(query, i18n.request_language(request))
    digits = vanity.to_digits(query) if query and not error else ""
    context = {"query": query, "anywhere": anywhere, "numbers": [], "more": None, "error": error}
    if error:
        return render(request, "operator_home.html", context, status=400)
    router = request.app.state.service.router
    found, more = await asyncio.to_thread(find_numbers, router, digits, anywhere=anywhere, after=after)
    context.update(numbers=found, more=more)
    return render(request, "operator_home.html", context)


# -- the pool ------------------------------------------------------------------------------------


async def _free(request: Request, query: str) -> tuple[list[vanity.Found], str | None]:
    """The free numbers matching ``query`` with their grades, and the query's error (translated) if it has one."""
    pool = _pool(request)
    error = _query_error(query, i18n.request_language(request))
    if error:
        return [], error
    try:
        found = await asyncio.to_thread(pool.free, query or None, FREE_SHOWN)
    except ValueError as exc:  # what vanity.search refuses beyond the checks above (English)
        return [], str(exc)
    return [vanity.Found(n, vanity.grade(n)) for n in found], None


async def pool_page(request: Request):
    """``/operator/pool``: the free numbers (searched) and the import form."""
    require_operator(request)
    query = _query(request)
    found, error = await _free(request, query)
    return render(request, "operator_pool.html", {"query": query, "free": found, "error": error, "bad": [],
                                                  "bad_more": 0, "imported": None},
                  status=400 if error else 200)


async def pool_import(request: Request):
    """POST ``/operator/pool/import``: a pasted list and/or an uploaded file, one number per line."""
    session = require_operator(request)
    text = await read_list(request)
    router = request.app.state.service.router
    lang = i18n.request_language(request)
    in_service = i18n.gettext(lang, "already in service")

    def refuse(number: str) -> str | None:  # a routed number is nobody's to give out
        return in_service if router._routes(number) else None

    added, bad = await asyncio.to_thread(_pool(request).import_lines, text.splitlines(), refuse=refuse)
    accounts = request.app.state.accounts
    await asyncio.to_thread(accounts.audit, session.actor, "pool_import", "pool",
                            {"added": added, "refused": len(bad)})
    found, _ = await _free(request, "")
    return render(request, "operator_pool.html", {
        "query": "", "free": found, "error": None, "bad": bad[:BAD_LINES_SHOWN],
        "bad_more": max(0, len(bad) - BAD_LINES_SHOWN),
        "imported": i18n.gettext(lang, "Added %(good)s numbers to the pool; %(bad)s lines were refused.",
                                 good=added, bad=len(bad)),
    }, status=422 if bad else 200)


async def vanity_page(request: Request):
    """``/operator/vanity?q=``: free numbers for letters, digits or a pattern, best first."""
    require_operator(request)
    query = _query(request)
    found, error = await _free(request, query) if query else ([], None)
    return render(request, "operator_vanity.html", {
        "query": query, "found": found, "error": error, "patterns": sorted(vanity.PATTERN_WORDS),
        "digits": vanity.to_digits(query) if query and not error else "",
    }, status=400 if error else 200)


# -- a new number --------------------------------------------------------------------------------


def starting_plan(number: str, target: str) -> dict:
    """The plan a new number starts with: every call to ``target`` (the store checks it)."""
    return {"number": number, "rules": [{"name": "all-calls", "targets": [target]}]}


def new_password() -> str:
    """A company's first password: PASSWORD_CHARS letters and digits, easy to read out."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(PASSWORD_CHARS))


def _create_form(request: Request, status: int = 200, **values):
    # the form's number is "chosen": "number" in a context makes base.html show that number's pages
    context = {"chosen": values.pop("number", ""), "company": "", "target": "", "errors": {}, "created": None,
               **values}
    return render(request, "operator_create.html", context, status=status)


async def create_page(request: Request):
    """``/operator/create?number=``: the form (the number picked on the vanity or pool page)."""
    require_operator(request)
    return _create_form(request, number=_query(request, "number"))


async def create(request: Request):
    """POST ``/operator/create``: take the number from the pool, store its plan, give the company a password.

    If the plan is refused (a bad target, a plan already there, the store
    down), the number goes back to the pool and the form says why.
    """
    session = require_operator(request)
    form = await read_form(request, max_fields=10)
    check_csrf(request, form)
    lang = i18n.request_language(request)
    _ = lambda msgid, **kw: i18n.gettext(lang, msgid, **kw)  # noqa: E731
    values = {key: str(form.get(key, ""))[:MAX_NAME].strip() for key in ("number", "company", "target")}
    errors = {}
    try:
        number = pool_module.pool_number(values["number"])
    except ValueError:
        errors["number"] = _("A 400 or 800 number, ten digits.")
    if not values["company"]:
        errors["company"] = _("Give the company's name.")
    if not values["target"]:
        errors["target"] = _("Give the phone the calls go to.")
    if errors:
        return _create_form(request, 422, errors=errors, **values)
    pool = _pool(request)
    if not await asyncio.to_thread(pool.take, number):
        errors["number"] = _("%(number)s is not free in the pool.", number=number)
        return _create_form(request, 409, errors=errors, **values)
    editor = PlanEditor(request.app.state.service)
    try:
        # expect="": only a number without a plan; a number already routed is left alone
        await asyncio.to_thread(editor.put, number, starting_plan(number, values["target"]), actor=session.actor,
                                expect="")
    except (tel400.PlanError, StaleEdit, ReadOnlyPlans, tel400.BackendError) as exc:
        if not isinstance(exc, StaleEdit):
            await asyncio.to_thread(pool.release, number)
        # else the number is in service already: it stays taken (deleting its plan frees it)
        if isinstance(exc, tel400.PlanError):
            errors["target"] = exc.message
        elif isinstance(exc, StaleEdit):
            errors["number"] = _("%(number)s has a plan already.", number=number)
        else:
            errors["number"] = _("The plans cannot be written now; the number is back in the pool.")
        return _create_form(request, 409 if isinstance(exc, StaleEdit) else 422, errors=errors, **values)
    except Exception:  # noqa: BLE001 - after the store: a number listener (the login reset) failed
        _log.exception("portal_create_unfinished", number=number)
        stored, _version = await asyncio.to_thread(editor.get, number)
        if stored is None:
            await asyncio.to_thread(pool.release, number)
            errors["number"] = _("Creating %(number)s failed; nothing was stored and the number is back in "
                                 "the pool.", number=number)
        else:
            errors["number"] = _(
                "%(number)s is stored and in service, but finishing failed (the service's log says why): "
                "it has no company password; set one on its account page.", number=number)
        return _create_form(request, 500, errors=errors, **values)
    password = new_password()
    accounts = request.app.state.accounts
    await hashing(request, accounts.set_company_password, number, password, actor=session.actor)
    await asyncio.to_thread(accounts.audit, session.actor, "number_created", number,
                            {"company": values["company"], "target": values["target"]})
    created = {"number": number, "company": values["company"], "password": password,
               "login": str(request.url.replace(path=portal_url(request, "login"), query=""))}
    return _create_form(request, 201, created=created)


# -- the audit -----------------------------------------------------------------------------------


def _changed_fields(before: dict | None, after: dict | None) -> list[str]:
    """The top-level fields of a plan that a change touched (values are not shown: a plan holds PIN hashes)."""
    before, after = before or {}, after or {}
    return sorted(k for k in before.keys() | after.keys() if k != "number" and before.get(k) != after.get(k))


def audit_entries(service, accounts, number: str | None, page: int) -> tuple[list[dict], bool]:
    """Page ``page`` (from 0) of every change, newest first, and whether there is another page.

    Merges the plan store's ``audit()`` with the portal accounts' events
    (for a number: those whose subject is the number or its company account;
    the company's logins are under the address they came from, so only the
    unfiltered log shows them).
    Reads ``(page + 1) × AUDIT_PAGE + 1`` entries of each.  Run it in a thread.
    """
    wanted = (page + 1) * AUDIT_PAGE + 1
    store = service.store
    plans = store.audit(number, wanted) if isinstance(store, WritableStore) else []
    rows = [{"at": e["at"], "actor": e["actor"], "action": e["action"], "number": e["number"],
             "detail": ", ".join(_changed_fields(e["before"], e["after"]))} for e in plans]
    # the account events about a number: its own (number_created) and its company account's (password)
    subjects = [None] if number is None else [number, f"company:{number}"]
    for e in (e for subject in subjects for e in accounts.audit_entries(subject, wanted)):
        detail = e["detail"] if isinstance(e["detail"], dict) else {}
        rows.append({"at": e["at"], "actor": e["actor"], "action": e["action"], "number": e["subject"],
                     "detail": ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))})
    newest = heapq.nlargest(wanted, rows, key=lambda r: r["at"])
    return newest[page * AUDIT_PAGE:(page + 1) * AUDIT_PAGE], len(newest) > (page + 1) * AUDIT_PAGE


async def audit_page(request: Request):
    """``/operator/audit?number=&page=``: every change, by whom."""
    require_operator(request)
    text = _query(request, "number")
    raw_page = request.query_params.get("page", "0")
    page = int(raw_page) if raw_page.isascii() and raw_page.isdigit() and len(raw_page) < 4 else 0
    page = min(page, AUDIT_PAGES - 1)
    number = None
    if text:
        try:
            number = tel400.normalize(text)
        except tel400.NumberError as exc:
            context = {"entries": [], "filter_number": text, "page": 0, "more": False, "error": str(exc)}
            return render(request, "operator_audit.html", context, status=400)
    service, accounts = request.app.state.service, request.app.state.accounts
    entries, more = await asyncio.to_thread(audit_entries, service, accounts, number, page)
    for e in entries:
        e["when"] = dt.datetime.fromtimestamp(e["at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return render(request, "operator_audit.html", {"entries": entries, "filter_number": number or "", "page": page,
                                                   "more": more and page + 1 < AUDIT_PAGES, "error": None})


routes = [
    Route("/operator/", numbers, methods=["GET"]),
    Route("/operator/pool", pool_page, methods=["GET"]),
    Route("/operator/pool/import", pool_import, methods=["POST"]),
    Route("/operator/vanity", vanity_page, methods=["GET"]),
    Route("/operator/create", create_page, methods=["GET"]),
    Route("/operator/create", create, methods=["POST"]),
    Route("/operator/audit", audit_page, methods=["GET"]),
]
