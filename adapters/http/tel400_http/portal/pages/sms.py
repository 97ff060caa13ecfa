"""A number's SMS pages: its address book, its group sends with their progress, its opt-out list.

The data is the service's :class:`tel400.smsstore.SmsStore` (``Service.sms_store``,
``tel400-http --sms-db``); without one these pages answer 404 and the
navigation hides them.  The store checks every value (phones, names, tags,
templates, rates, windows) and its refusals are shown next to the form, in
the store's words; its calls run in a thread (SQLite).

The CSV import reads its text with :func:`web.read_list` (pasted and/or
uploaded, bounded by the portal's upload limit) and lists each refused line
with :file:`_bad_lines.html`, as the blacklist does; the store reads the CSV
itself (header, quoting, UTF-8 or GB18030 bytes already decoded here).

The opt-out list is read-only: only the subscriber opts in again, by texting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import structlog
from starlette.requests import Request
from starlette.routing import Route

from .. import i18n
from ..web import (
    UPLOAD_BYTES,
    check_csrf,
    flash,
    number_url,
    page_error,
    read_form,
    read_list,
    redirect,
    render,
    require,
)

_log = structlog.get_logger("tel400.portal")

#: Contacts (and opt-outs) one page lists.
PAGE_SIZE = 100
#: Bad lines an import lists at most (the rest are counted), as the blacklist's.
BAD_LINES_SHOWN = 100
#: Jobs the group-send page lists (newest first).
JOBS_SHOWN = 50
_JOB_ID = re.compile(r"j[0-9a-f]{16}\Z")
_SPLIT_PHONES = re.compile(r"[\s,，;；、]+")
_SPLIT_TAGS = re.compile(r"[,，;；|]+")
_ACTIONS = ("pause", "resume", "cancel")


def _store(request: Request):
    store = request.app.state.service.sms_store
    if store is None:
        raise page_error(404, "This service does not keep SMS data.")
    return store


async def _call(fn, *args, **kwargs):
    """A store call in a thread (a BackendError becomes the portal's 503 page)."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _field(form, name: str, limit: int) -> str:
    return str(form.get(name, "")).strip()[:limit]


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# -- the address book -----------------------------------------------------------------------------

async def _contacts_page(request: Request, number: str, *, status: int = 200, **extra):
    store = _store(request)
    tag = request.query_params.get("tag", "").strip()[:64] or None
    after = request.query_params.get("after", "")[:40] or None

    def read():
        page = store.contacts(number, tag=tag, after=after, limit=PAGE_SIZE + 1)
        return page, store.count_contacts(number, tag=tag)

    page, count = await _call(read)
    context = {"number": number, "contacts": page[:PAGE_SIZE], "count": count, "tag": tag or "",
               "next": page[PAGE_SIZE - 1].phone if len(page) > PAGE_SIZE else None, "error": None,
               "form": {"phone": "", "name": "", "tags": ""}, "bad": [], "bad_more": 0, **extra}
    return render(request, "sms_contacts.html", context, status=status)


async def contacts(request: Request):
    number = request.path_params["number"]
    require(request, number)
    return await _contacts_page(request, number)


async def add_contact(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    store = _store(request)
    form = await read_form(request)
    check_csrf(request, form)
    values = {"phone": _field(form, "phone", 40), "name": _field(form, "name", 200), "tags": _field(form, "tags", 800)}
    try:
        contact = await _call(store.put_contact, number, values["phone"], name=values["name"],
                              tags=_SPLIT_TAGS.split(values["tags"]))
    except ValueError as exc:
        return await _contacts_page(request, number, status=422, error=str(exc), form=values)
    _log.info("contact_changed", number=number, phone=contact.phone, actor=session.actor)
    flash(request, i18n.gettext(i18n.request_language(request), "Saved %(phone)s.", phone=contact.phone))
    return redirect(number_url(request, number, "contacts"))


async def delete_contact(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    store = _store(request)
    form = await read_form(request)
    check_csrf(request, form)
    phone = _field(form, "phone", 40)
    if not await _call(store.delete_contact, number, phone):
        raise page_error(404, "This contact is not in the address book.")
    _log.info("contact_deleted", number=number, phone=phone, actor=session.actor)
    flash(request, i18n.gettext(i18n.request_language(request), "Deleted %(phone)s.", phone=phone))
    return redirect(number_url(request, number, "contacts"))


async def import_contacts(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    store = _store(request)
    text = await read_list(request)
    lang = i18n.request_language(request)
    try:
        result = await _call(store.import_contacts, number, text)
    except ValueError as exc:  # an unusable header: nothing was written
        return await _contacts_page(request, number, status=422, import_error=str(exc))
    _log.info("contacts_imported", number=number, actor=session.actor, added=result.added, updated=result.updated,
              refused=len(result.errors))
    message = i18n.gettext(lang, "Imported: %(added)s added, %(updated)s updated; %(bad)s lines were refused.",
                           added=result.added, updated=result.updated, bad=len(result.errors))
    if result.errors:
        return await _contacts_page(request, number, status=422, imported=message,
                                    bad=result.errors[:BAD_LINES_SHOWN],
                                    bad_more=max(0, len(result.errors) - BAD_LINES_SHOWN))
    flash(request, message)
    return redirect(number_url(request, number, "contacts"))


# -- group sends --------------------------------------------------------------------------------------

async def _jobs_page(request: Request, number: str, *, status: int = 200, **extra):
    store = _store(request)

    def read():
        return [(job, store.progress(number, job.job_id)) for job in store.jobs(number, limit=JOBS_SHOWN)]

    context = {"number": number, "jobs": await _call(read), "error": None, "when": _when,
               "form": {"template": "", "tags": "", "phones": "", "rate": "10", "not_before": "", "not_after": ""},
               **extra}
    return render(request, "sms_jobs.html", context, status=status)


async def jobs(request: Request):
    number = request.path_params["number"]
    require(request, number)
    return await _jobs_page(request, number)


async def create_job(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    store = _store(request)
    form = await read_form(request, max_bytes=getattr(request.app.state, "max_upload", UPLOAD_BYTES))
    check_csrf(request, form)
    values = {"template": str(form.get("template", ""))[:store.max_template_chars + 1],
              "tags": _field(form, "tags", 2000), "phones": str(form.get("phones", "")),
              "rate": _field(form, "rate", 20), "not_before": _field(form, "not_before", 5),
              "not_after": _field(form, "not_after", 5)}
    lang = i18n.request_language(request)
    try:
        rate = float(values["rate"])
    except ValueError:
        return await _jobs_page(request, number, status=422, form=values,
                                error=i18n.gettext(lang, "The rate is a number of messages per second."))
    tags = [t for t in (t.strip() for t in _SPLIT_TAGS.split(values["tags"])) if t]
    phones = [p for p in _SPLIT_PHONES.split(values["phones"]) if p]
    try:
        job = await _call(store.create_job, number, values["template"], tags=tags, phones=phones, rate=rate,
                          not_before=values["not_before"] or None, not_after=values["not_after"] or None,
                          actor=session.actor)
    except ValueError as exc:
        return await _jobs_page(request, number, status=422, form=values, error=str(exc))
    _log.info("sms_job_created", number=number, job_id=job.job_id, actor=session.actor, recipients=job.total)
    flash(request, i18n.gettext(lang, "The group send to %(count)s recipients is created.", count=job.total))
    return redirect(number_url(request, number, f"sends/{job.job_id}"))


async def _job_of(request: Request, number: str):
    store = _store(request)
    job_id = request.path_params["job_id"]
    if not _JOB_ID.match(job_id):
        raise page_error(404, "No such group send.")

    def read():
        job = store.job(number, job_id)
        if job is None:  # also another number's job: it is no job of this number
            return None, None, None
        first = store.recipient(job_id, 0)
        return job, store.progress(number, job_id), first

    job, progress, first = await _call(read)
    if job is None:
        raise page_error(404, "No such group send.")
    return job, progress, first


async def job_page(request: Request):
    number = request.path_params["number"]
    require(request, number)
    job, progress, first = await _job_of(request, number)
    return render(request, "sms_job.html", {"number": number, "job": job, "progress": progress, "when": _when,
                                            "sample": first})


async def job_action(request: Request):
    number = request.path_params["number"]
    session = require(request, number)
    action = request.path_params["action"]
    if action not in _ACTIONS:
        raise page_error(404, "No such group send.")
    form = await read_form(request)
    check_csrf(request, form)
    job, _progress, _first = await _job_of(request, number)
    try:
        await _call(getattr(_store(request), action), number, job.job_id, actor=session.actor)
    except LookupError:
        raise page_error(404, "No such group send.") from None
    except ValueError:
        raise page_error(409, "This group send cannot be changed so in its present state.") from None
    _log.info("sms_job_changed", number=number, job_id=job.job_id, action=action, actor=session.actor)
    return redirect(number_url(request, number, f"sends/{job.job_id}"))


# -- the opt-out list ----------------------------------------------------------------------------------

async def opt_outs(request: Request):
    number = request.path_params["number"]
    require(request, number)
    store = _store(request)
    after = request.query_params.get("after", "")[:40] or None

    def read():
        return store.opt_outs(number, after=after, limit=PAGE_SIZE + 1), store.count_opt_outs(number)

    page, count = await _call(read)
    return render(request, "sms_optouts.html", {
        "number": number, "opt_outs": [(phone, _when(at)) for phone, at in page[:PAGE_SIZE]], "count": count,
        "next": page[PAGE_SIZE - 1][0] if len(page) > PAGE_SIZE else None})


routes = [
    Route("/n/{number}/contacts", contacts, methods=["GET"]),
    Route("/n/{number}/contacts/add", add_contact, methods=["POST"]),
    Route("/n/{number}/contacts/delete", delete_contact, methods=["POST"]),
    Route("/n/{number}/contacts/import", import_contacts, methods=["POST"]),
    Route("/n/{number}/sends", jobs, methods=["GET"]),
    Route("/n/{number}/sends", create_job, methods=["POST"]),
    Route("/n/{number}/sends/{job_id}", job_page, methods=["GET"]),
    Route("/n/{number}/sends/{job_id}/{action}", job_action, methods=["POST"]),
    Route("/n/{number}/opt-outs", opt_outs, methods=["GET"]),
]
