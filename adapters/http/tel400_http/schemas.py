"""Every request and response body of the HTTP API, declared once as msgspec Structs,
and the OpenAPI 3.1 document generated from them and one small route table.

The admin API (:mod:`tel400_http.admin`) decodes its bodies and query strings
with these Structs, so what the document promises is what the service checks.
The switch endpoints keep their hand-written checks on the raw fast path
(:mod:`tel400_http.app`); their Structs here describe them, and schemathesis
(tests/test_http_schema.py) holds both to the document.

A plan is not a Struct: its validity (times, provinces, weights…) is the
library's (:class:`tel400.PlanSet`), which names the field at fault; the
document calls it an object and points at docs/plans.md.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

import tel400
from tel400.calls import DEFAULT_MAX_AGE_S
from tel400.smsstore import MAX_JOB_RATE

# -- shared pieces -------------------------------------------------------------------------------

#: The longest number (or ``after``, or blacklist entry) the API names.
NUMBER_MAX = 40
#: Times a calendar holds in every zone: POSIX seconds below 9998-12-31 (see tel400.check_at).
_AT_MAX = 253370764800
def _whole(body: str) -> str:
    """A pattern matching all of a text and nothing more, read alike by Python's re and ECMA-262.

    msgspec checks patterns with Python's ``re.search``, whose ``$`` also
    matches before a final newline ("1234\\n" would pass ``^[0-9]{4}$``);
    ``\\Z`` would fix that but is not ECMA (the OpenAPI document's dialect).
    ``(?!\\n)`` after ``$`` refuses that newline and is a no-op in ECMA.
    """
    return f"^{body}$(?!\\n)"


_CALL_ID = _whole(r"[\x21-\x7e]{1,128}")

Plan = Annotated[dict[str, Any], Meta(
    description="one number's plan, as in a plan file (docs/plans.md); answers carry has_pin, never the PIN")]
At = Annotated[
    # msgspec drops a datetime's format inside a union: said again, so that clients (and schemathesis) see it
    Annotated[dt.datetime, Meta(extra_json_schema={"format": "date-time"})]
    | Annotated[float, Meta(ge=0, lt=_AT_MAX)],
    Meta(description="ISO 8601 (naive: the plan's zone) or POSIX time, in the years 1901 to 9998; default now. "
                     "Refused (422 at_out_of_range) beyond --at-tolerance (300 s) of the server's clock")]


class Error(Struct, omit_defaults=True):
    """Every 4xx and 5xx answer: ``error`` is stable for programs, ``message`` is for people."""

    error: str
    message: str
    field: str | None | UnsetType = UNSET
    rule: str | None | UnsetType = UNSET


# -- switch endpoints (decoded by hand on the raw fast path; described here) ----------------------

class RouteRequest(Struct, forbid_unknown_fields=True):
    """``POST /v1/route``."""

    dialed: Annotated[str, Meta(description="the number called, any written form", examples=["4001012345"])]
    caller: Annotated[str, Meta(description="the caller; absent or null when withheld")] | None = None
    at: At | None = None
    channel: Literal["voice", "sms"] | None = "voice"
    pin: str | None = None
    call_id: Annotated[str, Meta(pattern=_CALL_ID, description="the switch's id for the call, to report its end")] \
        | None = None
    explain: bool | None = False


class Decision(Struct):
    """A routing decision (:meth:`tel400.Decision.as_dict`)."""

    action: Literal["bridge", "reject", "collect_pin", "queue", "conference"]
    targets: list[str]
    prompt: str | None
    reason: Literal[tuple(tel400.REASONS)]  # type: ignore[valid-type]
    rule: str | None
    province: Annotated[str, Meta(description="ISO 3166-2:CN")] | None
    number: str | None
    caller: str | None
    channel: Literal["voice", "sms"]
    call_id: str | None
    explain: list[str] | UnsetType = UNSET


class CallEnd(Struct, forbid_unknown_fields=True):
    """``POST /v1/calls/{call_id}/end`` (JSON or a form)."""

    duration: Annotated[float, Meta(ge=0, le=DEFAULT_MAX_AGE_S, description=(
        "talk time in seconds, at most the longest call (--max-call-duration, 43200 by default; beyond: 422, "
        "the call keeps waiting for a corrected end)"))]
    target: Annotated[str, Meta(description="the target that answered")] | None = None


class Charge(Struct):
    """What a call's end charged."""

    call_id: str
    number: str
    target: str | None
    duration_s: float
    billed_s: int
    cost: str | None
    long_distance: bool


class KamailioRequest(Struct, forbid_unknown_fields=True):
    """``POST /kamailio/rtjson``."""

    dialed: Annotated[str, Meta(description="$rU")]
    caller: Annotated[str, Meta(description="$fU")] | None = None
    call_id: Annotated[str, Meta(pattern=_CALL_ID)] | None = None
    method: Literal["INVITE", "MESSAGE"] | None = "INVITE"
    at: At | None = None


class RtRoute(Struct):
    uri: str


class RtJson(Struct):
    """An rtjson routing document for Kamailio's rtjson module."""

    version: str
    routing: Literal["serial", "parallel"]
    routes: list[RtRoute]
    tel400: Annotated[dict[str, Any], Meta(description="the decision, and the reply for a refusal without routes")]


class FreeSwitchForm(Struct):
    """mod_xml_curl's form (only the fields tel400 reads)."""

    section: str | UnsetType = UNSET
    destination: str | UnsetType = msgspec.field(default=UNSET, name="Caller-Destination-Number")
    caller: str | UnsetType = msgspec.field(default=UNSET, name="Caller-Caller-ID-Number")
    context: str | UnsetType = msgspec.field(default=UNSET, name="Caller-Context")
    uuid: str | UnsetType = msgspec.field(default=UNSET, name="Unique-ID")


# -- operations -----------------------------------------------------------------------------------

class Pong(Struct):
    pong: bool


class Health(Struct):
    status: str


class Ready(Struct):
    status: str
    problems: list[str]
    numbers: int
    implementation: str
    quarantined: Annotated[list[str], Meta(description="numbers whose stored plan is invalid")]


# -- the admin API ---------------------------------------------------------------------------------

class NumberList(Struct, omit_defaults=True):
    numbers: list[str]
    next: Annotated[str, Meta(description="the after of the next page")] | UnsetType = UNSET
    quarantined: Annotated[dict[str, str], Meta(
        description="numbers whose stored plan is invalid, with the reason; not routed by it (docs/limits.md)")] \
        | UnsetType = UNSET


class Blacklist(Struct):
    number: str
    blacklist: list[str]


class AuditEntry(Struct):
    at: Annotated[str, Meta(description="ISO 8601, UTC")]
    actor: str
    action: str
    number: str
    before: Plan | None
    after: Plan | None


class Audit(Struct):
    number: str
    entries: list[AuditEntry]


class Report(Struct):
    """A month's report (:meth:`tel400_http.records.CallRecords.report`; it may carry more fields)."""

    number: str
    month: str
    calls: int
    connected: int
    minutes: float
    cost: str
    by_day: list[dict[str, Any]]
    by_province: list[dict[str, Any]]
    by_target: list[dict[str, Any]]
    by_reason: list[dict[str, Any]]
    talk_minutes: float | UnsetType = UNSET
    sms: dict[str, int] | None | UnsetType = UNSET  # in, out, parts_out, delivered, failed; null: no SMS store


class Calls(Struct):
    number: str
    calls: list[dict[str, Any]]


class PinRequest(Struct, forbid_unknown_fields=True):
    pin: Annotated[str, Meta(pattern=_whole("[0-9]{4,8}"), description="4 to 8 digits")]


# Query strings: decoded with msgspec.convert(strict=False) after the digits check in admin.py.
# ``forbid_unknown_fields``: a mistyped ``limt=5`` is a 422 naming it, never a silent default.

#: Numbers in one page of the operator's ``GET /v1/numbers`` (``?limit=``), and the most a page may ask.
LIST_PAGE = 1000
LIST_PAGE_MAX = 10000


class ListQuery(Struct, forbid_unknown_fields=True):
    after: Annotated[str, Meta(max_length=NUMBER_MAX,
                               description="list the numbers after this one (a page's next)")] = ""
    limit: Annotated[int, Meta(ge=1, le=LIST_PAGE_MAX)] = LIST_PAGE


class AuditQuery(Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100


class ReportQuery(Struct, forbid_unknown_fields=True):
    month: Annotated[str, Meta(pattern=_whole("[1-9][0-9]{3}-(0[1-9]|1[0-2])"),
                               description="YYYY-MM; default: this month in the number's zone")] | None = None


class CallsQuery(Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    before: Annotated[int, Meta(ge=1, le=2**62, description="records older than this id (paging)")] | None = None


# -- SMS: the address book, the opt-out list, group sends (tel400_http.sms_admin; docs/sms.md) ----

#: The most contacts, opt-outs or jobs one page lists (``?limit=``).
SMS_PAGE_MAX = 1000
_HHMM = _whole("([01][0-9]|2[0-3]):[0-5][0-9]")


class Contact(Struct):
    """One entry of a number's address book (:class:`tel400.smsstore.Contact`)."""

    phone: Annotated[str, Meta(description="normalized (tel400.normalize)")]
    name: str
    tags: list[str]
    fields: Annotated[dict[str, str], Meta(description="the extra CSV columns, template fields")]


class ContactBody(Struct, forbid_unknown_fields=True):
    """``PUT …/contacts/{phone}``: the contact's new content (the phone is the path's)."""

    name: str = ""
    tags: list[str] = []
    fields: Annotated[dict[str, str], Meta(description="extra fields a template names as {field}")] = {}


class ContactList(Struct, omit_defaults=True):
    number: str
    contacts: list[Contact]
    next: Annotated[str, Meta(description="the after of the next page")] | UnsetType = UNSET


class ContactsQuery(Struct, forbid_unknown_fields=True):
    tag: Annotated[str, Meta(min_length=1, max_length=64, description="only contacts carrying this tag")] | None = None
    after: Annotated[str, Meta(max_length=NUMBER_MAX, description="list the phones after this one (a page's next)")] \
        = ""
    limit: Annotated[int, Meta(ge=1, le=SMS_PAGE_MAX)] = 100


class BadLine(Struct):
    line: Annotated[int, Meta(description="the file's line number (the header is line 1)")]
    text: Annotated[str, Meta(description="the line as read (cut at 200 characters)")]
    message: str


class ImportAnswer(Struct):
    """What a CSV import did: every good line is kept, every bad one reported."""

    number: str
    added: int
    updated: int
    errors: list[BadLine]


class OptOut(Struct):
    phone: str
    at: Annotated[str, Meta(description="when it opted out, ISO 8601, UTC")]


class OptOutList(Struct, omit_defaults=True):
    number: str
    opt_outs: list[OptOut]
    next: Annotated[str, Meta(description="the after of the next page")] | UnsetType = UNSET


class OptOutsQuery(Struct, forbid_unknown_fields=True):
    after: Annotated[str, Meta(max_length=NUMBER_MAX, description="list the phones after this one")] = ""
    limit: Annotated[int, Meta(ge=1, le=SMS_PAGE_MAX)] = 100


class JobRequest(Struct, forbid_unknown_fields=True):
    """``POST …/sms-jobs``: a group send to the contacts carrying any of ``tags`` and/or ``phones``."""

    template: Annotated[str, Meta(min_length=1, description=(
        "the text; {name}, {phone}, {number} and the contacts' extra columns as {field}; {{ and }} for braces"))]
    rate: Annotated[float, Meta(gt=0, le=MAX_JOB_RATE, description="messages per second")]
    tags: Annotated[list[Annotated[str, Meta(min_length=1, max_length=64)]], Meta(max_length=100)] = []
    phones: Annotated[list[Annotated[str, Meta(max_length=NUMBER_MAX)]], Meta(
        description="recipients by phone (in the book or not)")] = []
    not_before: Annotated[str, Meta(pattern=_HHMM, description="HH:MM, the number's zone")] | None = None
    not_after: Annotated[str, Meta(pattern=_HHMM, description="HH:MM; a window may wrap midnight")] | None = None


class JobProgress(Struct):
    """A job's recipients by state (total = pending + sending + sent + failed + skipped_*)."""

    total: int
    pending: int
    sending: int
    sent: int
    delivered: int
    undelivered: int
    failed: int
    skipped_opted_out: int
    skipped_cap: int


class Job(Struct, omit_defaults=True):
    """A group send (:class:`tel400.smsstore.Job`)."""

    job_id: str
    number: str
    template: str
    rate: float
    not_before: str | None
    not_after: str | None
    state: Literal["scheduled", "running", "paused", "done", "cancelled"]
    total: Annotated[int, Meta(description="its recipients")]
    created_at: Annotated[str, Meta(description="ISO 8601, UTC")]
    created_by: str
    updated_at: str
    updated_by: str
    progress: JobProgress | UnsetType = UNSET
    sample_parts: Annotated[int, Meta(description="SMS parts of the first recipient's message (on creation)")] \
        | UnsetType = UNSET


class JobList(Struct):
    number: str
    jobs: list[Job]


class JobsQuery(Struct, forbid_unknown_fields=True):
    limit: Annotated[int, Meta(ge=1, le=SMS_PAGE_MAX)] = 100
# -- SMS (tel400_http.sms; docs/sms.md "Running it with tel400-http") ------------------------------

_ADDRESS = _whole(r"\+?[0-9]{1,32}")
#: The longest incoming text read (ten parts of 160), as tel400_http.kannel.MAX_INCOMING_CHARS.
SMS_TEXT_MAX = 1600


class SmsIncoming(Struct, forbid_unknown_fields=True):
    """``POST /v1/sms/incoming``: an SMS platform pushes a message a phone sent."""

    phone: Annotated[str, Meta(pattern=_ADDRESS, description="the sender", examples=["13901012345"])]
    content: Annotated[str, Meta(max_length=SMS_TEXT_MAX, pattern=_whole("[^\\x00]*"), description="the text (no NUL)")]
    to: Annotated[str, Meta(pattern=_ADDRESS, description="the number written to: 10657 + the 400 number, or it",
                            examples=["106574001012345"])]
    time: At | None = None


class SmsAnswerBody(Struct):
    """What to send back: ``reply`` (``null``: nothing) and why (tel400.SmsAnswer)."""

    reply: str | None
    parts: int
    kind: Literal["reply", "opt_out", "opt_in", "none"]
    reason: str
    number: str | None


class KannelQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/sms/kannel``: smsbox's get-url (``from=%p&to=%P&text=%b&coding=%c&charset=%C&at=%T``)."""

    from_: Annotated[str, Meta(pattern=_ADDRESS, description="the phone (%p)")] = msgspec.field(name="from")
    to: Annotated[str, Meta(pattern=_ADDRESS, description="the number written to (%P)")]
    text: Annotated[str, Meta(max_length=SMS_TEXT_MAX, description="the text, UTF-8 (%b, mo-recode = true)")]
    coding: Literal["0", "1", "2"] | None = None
    charset: Annotated[str, Meta(description="%C: UTF-8 (mo-recode = true)")] | None = None
    at: Annotated[int, Meta(ge=946684800, lt=4102444800, description="Unix time (%T)")] | None = None


class DlrQuery(Struct, forbid_unknown_fields=True):
    """``GET /v1/sms/dlr``: a delivery report (``id=<message id>&type=%d&at=%T``)."""

    id: Annotated[str, Meta(pattern=_whole("[A-Za-z0-9._:-]{1,64}"), description="our message id")]
    type: Annotated[Literal["1", "2", "4", "8", "16"], Meta(description="1 delivered, 2 failed, 4 buffered, "
                                                                        "8 accepted by the SMSC, 16 rejected")]
    at: Annotated[int, Meta(ge=946684800, lt=4102444800)] | None = None


# -- the route table ------------------------------------------------------------------------------

class Op(NamedTuple):
    """One operation: the route the service serves and what the document says of it."""

    method: str
    path: str
    op_id: str
    summary: str
    responses: dict  # status -> (Struct, type, media type or None; description[; headers])
    auth: str | None = "admin"  # "admin" (bearer token), "switch" (switch secret), None
    body: Any = None
    body_media: tuple[str, ...] = ("application/json",)
    body_required: bool = True
    query: type | None = None
    raw: bool = False  # on the raw fast path in app.py, not the admin Starlette app


_NUMBER = {"name": "number", "in": "path", "required": True,
           "schema": {"type": "string", "maxLength": NUMBER_MAX}, "description": "the 400 number, in any written form"}
_PATH_PARAMS = {
    "number": _NUMBER,
    "entry": {"name": "entry", "in": "path", "required": True, "schema": {"type": "string", "maxLength": NUMBER_MAX},
              "description": "a number, a prefix ending in *, or anonymous"},
    "phone": {"name": "phone", "in": "path", "required": True, "schema": {"type": "string", "maxLength": NUMBER_MAX},
              "description": "a contact's phone, in any written form"},
    "job_id": {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 40}},
    "call_id": {"name": "call_id", "in": "path", "required": True,
                "schema": {"type": "string", "pattern": _whole("[\\x21-\\x2e\\x30-\\x7e]{1,128}")}},
}
_ERRORS = {400: "malformed body", 401: "no or a bad token (switch endpoints: secret)",
           403: "the token may not manage this number (switch endpoints: address not allowed)",
           404: "not found", 409: "not possible with this configuration", 412: "If-Match is not the plan's ETag",
           413: "body too large", 422: "invalid request or plan", 503: "plan store unavailable"}
_SMS_OFF = (Error, "not found, or this service keeps no SMS store (error sms_off: start it with --sms-db)")


def _e(*codes: int) -> dict:
    return {c: (Error, _ERRORS[c]) for c in codes}


OPERATIONS: tuple[Op, ...] = (
    Op("POST", "/v1/route", "route", "Decide a call or message", {200: (Decision, "OK"), **_e(400, 401, 403, 413, 422)},
       auth="switch", body=RouteRequest, raw=True),
    Op("POST", "/v1/calls/{call_id}/end", "callEnded", "Report a call's end (charges minutes and cost caps)",
       {200: (Charge, "OK"), **_e(400, 401, 403, 404, 413, 422),
        503: (Error, "the counter backend refused the charge: the call waits, report its end again",
              {"Retry-After": {"schema": {"type": "integer"}}})},
       auth="switch", body=CallEnd, body_media=("application/json", "application/x-www-form-urlencoded"), raw=True),
    Op("POST", "/freeswitch/dialplan", "freeswitchDialplan", "FreeSWITCH mod_xml_curl dialplan lookup",
       {200: ("text/xml", "the extension, or 'not found'"), **_e(400, 401, 403, 413)}, auth="switch",
       body=FreeSwitchForm, body_media=("application/x-www-form-urlencoded",), body_required=False, raw=True),
    Op("POST", "/kamailio/rtjson", "kamailioRtjson", "Kamailio rtjson routing document",
       {200: (RtJson, "OK"), **_e(400, 401, 403, 409, 413, 422)}, auth="switch", body=KamailioRequest, raw=True),
    Op("GET", "/v1/ping", "ping", "A trivial endpoint (load tests compare /v1/route with it)", {200: (Pong, "OK")},
       auth=None, raw=True),
    Op("GET", "/healthz", "healthz", "The process is alive", {200: (Health, "OK")}, auth=None, raw=True),
    Op("GET", "/readyz", "readyz", "Ready for traffic (503 while shutting down)",
       {200: (Ready, "OK"), 503: (Ready, "not ready")}, auth=None, raw=True),
    Op("GET", "/metrics", "metrics", "Prometheus metrics", {200: ("text/plain", "text exposition format")},
       auth=None, raw=True),
    Op("GET", "/v1/sms/kannel", "smsKannel", "smsbox's get-url: the answer's body is the reply (empty: none)",
       {200: ("text/plain", "the reply; garbage is answered empty too, so that smsbox does not retry it"),
        **_e(401, 403), 503: (Error, "no SMS store (tel400-http --sms-db none)")},
       auth="switch", query=KannelQuery, raw=True),
    Op("GET", "/v1/sms/dlr", "smsDlr", "smsbox's dlr-url: a delivery report (always answered, empty)",
       {200: ("text/plain", "recorded, or unusable (an unknown id, garbage)"), **_e(401, 403),
        503: (Error, "no SMS store (tel400-http --sms-db none)")}, auth="switch", query=DlrQuery, raw=True),
    Op("POST", "/v1/sms/incoming", "smsIncoming", "An SMS platform's incoming message: what to reply",
       {200: (SmsAnswerBody, "OK"), **_e(400, 401, 403, 413, 422),
        503: (Error, "no SMS store (tel400-http --sms-db none)")}, auth="switch", body=SmsIncoming, raw=True),
    Op("GET", "/openapi.json", "openapi", "This document", {200: (dict[str, Any], "OK")}, auth=None),
    Op("GET", "/v1/numbers", "listNumbers", "The numbers this token may manage, one page",
       {200: (NumberList, "OK"), **_e(401, 422)}, query=ListQuery),
    Op("GET", "/v1/numbers/{number}", "getNumber", "A number's plan (its version in ETag)",
       {200: (Plan, "OK"), **_e(401, 403, 404)}),
    Op("PUT", "/v1/numbers/{number}", "putNumber",
       "Add or replace a number's plan (validated; the running plan stays if refused); If-Match: the ETag read",
       {200: (Plan, "OK"), 201: (Plan, "created"), **_e(400, 401, 403, 404, 409, 412, 413, 422, 503)}, body=Plan),
    Op("DELETE", "/v1/numbers/{number}", "deleteNumber", "Remove a number's plan",
       {204: (None, "removed"), **_e(401, 403, 404, 409, 503)}),
    Op("GET", "/v1/numbers/{number}/blacklist", "getBlacklist", "A number's blacklist",
       {200: (Blacklist, "OK"), **_e(401, 403, 404)}),
    Op("PUT", "/v1/numbers/{number}/blacklist/{entry}", "blacklistAdd", "Block a caller",
       {200: (Blacklist, "OK"), **_e(401, 403, 404, 409, 422, 503)}),
    Op("DELETE", "/v1/numbers/{number}/blacklist/{entry}", "blacklistRemove", "Unblock a caller",
       {200: (Blacklist, "OK"), **_e(401, 403, 404, 409, 422, 503)}),
    Op("PUT", "/v1/numbers/{number}/pin", "putPin", "Set the PIN (stored as a salted scrypt hash)",
       {204: (None, "set"), **_e(400, 401, 403, 404, 409, 413, 422, 503)}, body=PinRequest),
    Op("DELETE", "/v1/numbers/{number}/pin", "deletePin", "Remove the PIN",
       {204: (None, "removed"), **_e(401, 403, 404, 409, 422, 503)}),
    Op("GET", "/v1/numbers/{number}/audit", "audit", "Who changed the plan, when, and what",
       {200: (Audit, "OK"), **_e(401, 403, 404, 422)}, query=AuditQuery),
    Op("GET", "/v1/numbers/{number}/report", "report",
       "The month's calls by day, province, target and reason; minutes and cost",
       {200: (Report, "OK"), **_e(401, 403, 404, 409, 422)}, query=ReportQuery),
    Op("GET", "/v1/numbers/{number}/calls", "calls", "The latest call records, newest first",
       {200: (Calls, "OK"), **_e(401, 403, 404, 409, 422)}, query=CallsQuery),
    Op("GET", "/v1/numbers/{number}/contacts", "listContacts", "One page of the address book (by tag), in phone order",
       {200: (ContactList, "OK"), **_e(401, 403, 422), 404: _SMS_OFF}, query=ContactsQuery),
    # before …/contacts/{phone}: routes match in this order
    Op("POST", "/v1/numbers/{number}/contacts/import", "importContacts",
       "Add or update contacts from CSV (header phone,name,tags,…; UTF-8 or GB18030); every bad line reported",
       {200: (ImportAnswer, "OK"), **_e(401, 403, 413, 422, 503), 404: _SMS_OFF}, body=str,
       body_media=("text/csv",)),
    Op("GET", "/v1/numbers/{number}/contacts/{phone}", "getContact", "One contact",
       {200: (Contact, "OK"), **_e(401, 403), 404: _SMS_OFF}),
    Op("PUT", "/v1/numbers/{number}/contacts/{phone}", "putContact", "Add or replace one contact",
       {200: (Contact, "OK"), **_e(400, 401, 403, 413, 422, 503), 404: _SMS_OFF}, body=ContactBody),
    Op("DELETE", "/v1/numbers/{number}/contacts/{phone}", "deleteContact", "Remove one contact",
       {204: (None, "removed"), **_e(401, 403, 503), 404: _SMS_OFF}),
    Op("GET", "/v1/numbers/{number}/opt-outs", "listOptOuts",
       "One page of the opt-out list (read-only: a subscriber opts in again by texting)",
       {200: (OptOutList, "OK"), **_e(401, 403, 422), 404: _SMS_OFF}, query=OptOutsQuery),
    Op("POST", "/v1/numbers/{number}/sms-jobs", "createJob",
       "Create a group send (it starts at once within its window, paced at its rate)",
       {201: (Job, "created"), **_e(400, 401, 403, 413, 422, 503), 404: _SMS_OFF,
        409: (Error, "too many unfinished jobs")}, body=JobRequest),
    Op("GET", "/v1/numbers/{number}/sms-jobs", "listJobs", "The number's group sends, newest first",
       {200: (JobList, "OK"), **_e(401, 403, 422), 404: _SMS_OFF}, query=JobsQuery),
    Op("GET", "/v1/numbers/{number}/sms-jobs/{job_id}", "getJob", "A group send with its progress",
       {200: (Job, "OK"), **_e(401, 403), 404: _SMS_OFF}),
    Op("POST", "/v1/numbers/{number}/sms-jobs/{job_id}/pause", "pauseJob", "Pause a scheduled or running send",
       {200: (Job, "OK"), **_e(401, 403, 503), 404: _SMS_OFF, 409: (Error, "the job is not scheduled or running")}),
    Op("POST", "/v1/numbers/{number}/sms-jobs/{job_id}/resume", "resumeJob", "Resume a paused send",
       {200: (Job, "OK"), **_e(401, 403, 503), 404: _SMS_OFF, 409: (Error, "the job is not paused")}),
    Op("POST", "/v1/numbers/{number}/sms-jobs/{job_id}/cancel", "cancelJob",
       "Cancel a send for good (its pending recipients get nothing)",
       {200: (Job, "OK"), **_e(401, 403, 503), 404: _SMS_OFF, 409: (Error, "the job is done or cancelled")}),
)

_REF = "#/components/schemas/{name}"
_SECURITY = {"admin": [{"bearer": []}],
             # tel400-http --switch-secrets: the secret as a bearer token or a basic-auth password; without, an
             # allow-list
             "switch": [{"switchBearer": []}, {"switchBasic": []}, {}]}


def _parameters(op: Op, components: dict) -> list[dict]:
    out = [_PATH_PARAMS[name] for name in _path_names(op.path)]
    if op.query is not None:
        schema = components.pop(op.query.__name__)  # its fields become parameters, the Struct no component
        for name, prop in schema["properties"].items():
            out.append({"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": prop,
                        **({"description": prop["description"]} if "description" in prop else {})})
    if op.method == "PUT" and op.path == "/v1/numbers/{number}":
        out.append({"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "the ETag of the plan this change was made from: a change made meanwhile is "
                                   "refused (412) rather than overwritten"})
    return out


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


@functools.cache
def document() -> bytes:
    """The OpenAPI 3.1 document, generated once from :data:`OPERATIONS` and the Structs."""
    types: list = []
    for op in OPERATIONS:
        for kind in (op.body, op.query, *(answer[0] for answer in op.responses.values())):
            if kind is not None and not isinstance(kind, str) and kind not in types:
                types.append(kind)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas))
    paths: dict = {}
    for op in OPERATIONS:
        item: dict = {"summary": op.summary, "operationId": op.op_id}
        parameters = _parameters(op, components)
        if parameters:
            item["parameters"] = parameters
        if op.auth is not None:
            item["security"] = _SECURITY[op.auth]
        if op.body is not None:
            item["requestBody"] = {"required": op.body_required,
                                   "content": {media: {"schema": by_type[op.body]} for media in op.body_media}}
        item["responses"] = {str(status): _response(by_type, *answer) for status, answer in op.responses.items()}
        paths.setdefault(op.path, {})[op.method.lower()] = item
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "tel400", "version": tel400.__version__,
                 "description": "Call routing for Chinese 400 numbers: decisions, switch formats, administration."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "switchBearer": {"type": "http", "scheme": "bearer", "description": "the switch secret"},
            "switchBasic": {"type": "http", "scheme": "basic", "description": "any user, the switch secret as password"},
        }},
    }
    return json.dumps(doc, ensure_ascii=False).encode()


def _response(by_type: dict, kind, text: str, headers: dict | None = None) -> dict:
    out: dict = {"description": text}
    if isinstance(kind, str):  # a media type whose body is text
        out["content"] = {kind: {"schema": {"type": "string"}}}
    elif kind is not None:
        out["content"] = {"application/json": {"schema": by_type[kind]}}
    if headers:
        out["headers"] = headers
    return out
