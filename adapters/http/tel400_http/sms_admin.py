"""The admin API's SMS operations: a number's address book, its opt-out list and its group sends.

Every operation is under ``/v1/numbers/{number}/…`` and needs a token that
owns the number, as the plan operations do (:class:`tel400_http.admin._AdminApi`
checks both).  The data lives in the service's :class:`tel400.smsstore.SmsStore`
(``Service.sms_store``, ``tel400-http --sms-db``); without one every operation
answers 404 ``sms_off``.  Store calls run in a thread (SQLite).

Who did what: a job keeps the token's name as its creator and as the last
actor of a pause, resume or cancel (the store's ``actor``).  The store keeps
no actor for contacts, so contact writes are logged (``contact_changed``,
``contacts_imported``) with the token's name instead.

The opt-out list is read-only here on purpose: a subscriber opts out by
texting, and only the subscriber opts in again (by texting); a company
cannot put a phone back on its sending list.
"""

from __future__ import annotations

import asyncio
import re

import structlog
from starlette.requests import Request
from starlette.responses import Response

import tel400
from tel400.smsstore import SmsStore

from . import schemas
from .admin import _body, _decode, _iso, _json, _no_content, _query
from .asgi import HttpError

_log = structlog.get_logger("tel400.http")

_JOB_ID = re.compile(r"j[0-9a-f]{16}\Z")


def job_error_field(message: str) -> str | None:
    """The request field a refusal of :meth:`SmsStore.create_job` is about (its message names it)."""
    if message.startswith("bad phone"):
        return "phones"
    if any(word in message for word in ("placeholder", "brace", "template", "parts")):
        return "template"  # checked first: an unknown placeholder's message lists the fields, which may say "rate"
    if "recipient" in message:
        return "tags"
    if message.startswith("rate"):
        return "rate"
    return "template"  # what is left (text that is not Unicode) is the template's


def job_body(job, progress=None, sample_parts: int | None = None) -> schemas.Job:
    """A store :class:`~tel400.smsstore.Job` as the API's body."""
    answer = schemas.Job(
        job_id=job.job_id, number=job.number, template=job.template, rate=job.rate, not_before=job.not_before,
        not_after=job.not_after, state=job.state, total=job.total, created_at=_iso(job.created_at),
        created_by=job.created_by, updated_at=_iso(job.updated_at), updated_by=job.updated_by)
    if progress is not None:
        answer.progress = schemas.JobProgress(**{f: getattr(progress, f) for f in schemas.JobProgress.__struct_fields__})
    if sample_parts is not None:
        answer.sample_parts = sample_parts
    return answer


def contact_body(contact) -> schemas.Contact:
    return schemas.Contact(contact.phone, contact.name, list(contact.tags), dict(contact.fields))


def sample_parts(store: SmsStore, job) -> int | None:
    """The SMS parts of a job's first recipient's message (texts are rendered when the job is made)."""
    first = store.recipient(job.job_id, 0)
    return first.parts if first is not None else None


async def _in_thread(fn, *args, **kwargs):
    """``fn`` in a thread; the store's BackendError as a 503."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except tel400.BackendError as exc:
        raise HttpError(503, "sms_store_unavailable", str(exc)) from None


class SmsAdminApi:
    """One method per SMS operation, named by its operationId; ``api`` is the admin API (auth, number)."""

    def __init__(self, service, api) -> None:
        self.s = service
        self.api = api

    def _owned(self, request: Request) -> tuple:
        """(token, number, store) after the token's check; 404 ``sms_off`` without a store."""
        token = self.api._auth(request)
        number = self.api._number(request, token)
        store = self.s.sms_store
        if store is None:
            raise HttpError(404, "sms_off", "this service keeps no SMS store (start tel400-http with --sms-db)")
        return token, number, store

    def _job_id(self, request: Request, number: str) -> str:
        job_id = request.path_params["job_id"]
        if not _JOB_ID.match(job_id):
            raise HttpError(404, "unknown_job", f"{number} has no job {job_id[:40]!r}")
        return job_id

    # -- the address book --------------------------------------------------------------------------

    async def listContacts(self, request: Request) -> Response:
        _token, number, store = self._owned(request)
        q = _query(request, schemas.ContactsQuery)
        page = await _in_thread(store.contacts, number, tag=q.tag, after=q.after or None, limit=q.limit + 1)
        answer = schemas.ContactList(number, [contact_body(c) for c in page[:q.limit]])
        if len(page) > q.limit:
            answer.next = page[q.limit - 1].phone
        return _json(200, answer)

    async def getContact(self, request: Request) -> Response:
        _token, number, store = self._owned(request)
        phone = request.path_params["phone"]
        contact = await _in_thread(store.contact, number, phone)
        if contact is None:
            raise HttpError(404, "unknown_contact", f"{phone[:40]!r} is not in {number}'s address book")
        return _json(200, contact_body(contact))

    async def putContact(self, request: Request) -> Response:
        token, number, store = self._owned(request)
        phone = request.path_params["phone"]
        body = _decode(await _body(request, self.s.max_body), schemas.ContactBody)
        try:
            contact = await _in_thread(store.put_contact, number, phone, name=body.name, tags=body.tags,
                                       fields=body.fields)
        except ValueError as exc:
            message = str(exc)
            field = "phone" if message.startswith("bad phone") else \
                "fields" if "field" in message else "tags" if "tag" in message else "name"
            raise HttpError(422, "invalid_contact", message, field=field) from None
        _log.info("contact_changed", number=number, phone=contact.phone, actor=token.name)
        return _json(200, contact_body(contact))

    async def deleteContact(self, request: Request) -> Response:
        token, number, store = self._owned(request)
        phone = request.path_params["phone"]
        if not await _in_thread(store.delete_contact, number, phone):
            raise HttpError(404, "unknown_contact", f"{phone[:40]!r} is not in {number}'s address book")
        _log.info("contact_deleted", number=number, phone=phone[:40], actor=token.name)
        return _no_content()

    async def importContacts(self, request: Request) -> Response:
        token, number, store = self._owned(request)
        data = await _body(request, store.max_import_bytes)  # 413 past the store's bound, counted as it arrives
        try:
            result = await _in_thread(store.import_contacts, number, data)
        except ValueError as exc:  # nothing written: an unusable header, not UTF-8 nor GB18030…
            raise HttpError(422, "bad_csv", str(exc), field="body") from None
        _log.info("contacts_imported", number=number, actor=token.name, added=result.added, updated=result.updated,
                  refused=len(result.errors))
        errors = [schemas.BadLine(line, text, message) for line, text, message in result.errors]
        return _json(200, schemas.ImportAnswer(number, result.added, result.updated, errors))

    # -- the opt-out list ----------------------------------------------------------------------------

    async def listOptOuts(self, request: Request) -> Response:
        _token, number, store = self._owned(request)
        q = _query(request, schemas.OptOutsQuery)
        page = await _in_thread(store.opt_outs, number, after=q.after or None, limit=q.limit + 1)
        answer = schemas.OptOutList(number, [schemas.OptOut(phone, _iso(at)) for phone, at in page[:q.limit]])
        if len(page) > q.limit:
            answer.next = page[q.limit - 1][0]
        return _json(200, answer)

    # -- group sends -----------------------------------------------------------------------------------

    async def createJob(self, request: Request) -> Response:
        token, number, store = self._owned(request)
        body = _decode(await _body(request, self.s.max_body), schemas.JobRequest)

        def create():
            job = store.create_job(number, body.template, tags=body.tags, phones=body.phones, rate=body.rate,
                                   not_before=body.not_before, not_after=body.not_after, actor=token.name)
            return job, sample_parts(store, job)

        try:
            job, parts = await _in_thread(create)
        except ValueError as exc:
            message = str(exc)
            if "unfinished jobs" in message:
                raise HttpError(409, "too_many_jobs", message) from None
            raise HttpError(422, "invalid_job", message, field=job_error_field(message)) from None
        _log.info("sms_job_created", number=number, job_id=job.job_id, actor=token.name, recipients=job.total)
        return _json(201, job_body(job, sample_parts=parts))

    async def listJobs(self, request: Request) -> Response:
        _token, number, store = self._owned(request)
        q = _query(request, schemas.JobsQuery)
        jobs = await _in_thread(store.jobs, number, limit=q.limit)
        return _json(200, schemas.JobList(number, [job_body(j) for j in jobs]))

    async def getJob(self, request: Request) -> Response:
        _token, number, store = self._owned(request)
        job_id = self._job_id(request, number)

        def read():
            return store.job(number, job_id), store.progress(number, job_id)

        job, progress = await _in_thread(read)
        if job is None or progress is None:  # another number's job is no job of this one
            raise HttpError(404, "unknown_job", f"{number} has no job {job_id}")
        return _json(200, job_body(job, progress))

    async def _change(self, request: Request, action: str) -> Response:
        token, number, store = self._owned(request)
        job_id = self._job_id(request, number)
        try:
            job = await _in_thread(getattr(store, action), number, job_id, actor=token.name)
        except LookupError:
            raise HttpError(404, "unknown_job", f"{number} has no job {job_id}") from None
        except ValueError as exc:
            raise HttpError(409, "wrong_state", str(exc)) from None
        _log.info("sms_job_changed", number=number, job_id=job_id, action=action, actor=token.name)
        return _json(200, job_body(job))

    async def pauseJob(self, request: Request) -> Response:
        return await self._change(request, "pause")

    async def resumeJob(self, request: Request) -> Response:
        return await self._change(request, "resume")

    async def cancelJob(self, request: Request) -> Response:
        return await self._change(request, "cancel")
