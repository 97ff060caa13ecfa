"""A number's call records (话单): a filtered listing, paged newest first, and its CSV export.

The filters are a GET form (so a filtered page is a link one can keep):
``since``/``until`` (local days), ``caller``, ``province`` (a name such as
北京 or Beijing, or a code), ``outcome`` (:data:`~tel400_http.records.OUTCOMES`)
and ``target``.  Each is checked by the data layer
(:func:`~tel400_http.records.check_filters`, what ``find`` checks) one at a
time, so every bad one gets its message beside its field.

Paging is the data layer's keyset cursor: "older" carries the next page's
cursor in ``after``, and the cursors of the pages passed through in
``trail`` (at most :data:`MAX_TRAIL`), which is what "newer" goes back by.
The CSV export (``records.csv``, same filters) streams
:meth:`~tel400_http.records.CallRecords.csv_lines`; its queries run on
Starlette's thread pool, as do the page's (``asyncio.to_thread``), never on
the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from tel400 import provinces

from ... import records as data
from .. import i18n
from ..web import number_url, page_error, render, require

#: Records on one page of the listing.
PAGE_SIZE = 50
#: Cursors of earlier pages kept in the "newer" link (past it, "newer" from the oldest kept goes to the newest page).
MAX_TRAIL = 20
#: The longest value read from one query parameter (longer: cut; the data layer then says what is wrong).
MAX_PARAM = 200
#: How long a page waits for records still queued to be written, seconds.
FLUSH_S = 2.0

#: Form field → the data layer's filter name.
FIELDS = {"since": "since_day", "until": "until_day", "caller": "caller", "province": "province",
          "outcome": "outcome", "target": "target"}


def _messages(lang: str) -> dict[str, str]:
    """The message shown beside each field when its value is refused (the data layer's are English)."""
    return {
        "since": i18n.gettext(lang, "Enter a day as YYYY-MM-DD."),
        "until": i18n.gettext(lang, "Enter a day as YYYY-MM-DD."),
        "range": i18n.gettext(lang, "The first day is after the last."),
        "caller": i18n.gettext(lang, "Enter a calling number: digits, up to 64 characters."),
        "province": i18n.gettext(lang, "No province has this name: try 北京, Beijing or CN-BJ."),
        "outcome": i18n.gettext(lang, "Choose an outcome from the list."),
        "target": i18n.gettext(lang, "A target is at most 200 characters."),
        "after": i18n.gettext(lang, "This page link is out of date: start again from the newest calls."),
    }


def read_filters(params, lang: str) -> tuple[dict, dict, dict[str, str]]:
    """The query's filters: (form values as given, ``find`` keyword arguments, errors by form field).

    Each field is checked alone, so each bad one is reported; a field with
    an error is left out of the arguments (the page then lists nothing).
    """
    messages = _messages(lang)
    values = {field: str(params.get(field, ""))[:MAX_PARAM].strip() for field in FIELDS}
    kwargs, errors = {}, {}
    for field, name in FIELDS.items():
        if not values[field]:
            continue
        try:
            data.check_filters(**{name: values[field]})
        except ValueError:
            errors[field] = messages[field]
            continue
        kwargs[name] = values[field]
    if "since_day" in kwargs and "until_day" in kwargs:
        try:
            data.check_filters(since_day=kwargs["since_day"], until_day=kwargs["until_day"])
        except ValueError:
            errors["since"] = messages["range"]
    return values, kwargs, errors


def _trail(params) -> list[str]:
    text = str(params.get("trail", ""))[:MAX_TRAIL * 64]
    return [c for c in text.split(".") if c][-MAX_TRAIL:]


def _records_of(request: Request):
    records = request.app.state.service.records
    if records is None:
        raise page_error(404, "This service keeps no call records.")
    return records


def _query(values: dict, **extra) -> str:
    pairs = {k: v for k, v in values.items() if v}
    pairs.update({k: v for k, v in extra.items() if v})
    return urllib.parse.urlencode(pairs)


def outcome_labels(lang: str) -> dict[str, str]:
    """Each outcome the filter takes, as the page names it."""
    named = {
        "connected": i18n.gettext(lang, "Connected calls"),
        "not_connected": i18n.gettext(lang, "Not connected"),
        "bridge": i18n.gettext(lang, "Bridged"),
        "reject": i18n.gettext(lang, "Rejected"),
        "collect_pin": i18n.gettext(lang, "Asked for a PIN"),
        "queue": i18n.gettext(lang, "Queued"),
        "conference": i18n.gettext(lang, "Conference"),
        "ok": i18n.gettext(lang, "Routed"),
        "unknown_number": i18n.gettext(lang, "Unknown number"),
        "blacklisted": i18n.gettext(lang, "Blacklisted"),
        "pin_required": i18n.gettext(lang, "PIN required"),
        "bad_pin": i18n.gettext(lang, "Wrong PIN"),
        "pin_locked": i18n.gettext(lang, "PIN locked"),
        "closed": i18n.gettext(lang, "Closed"),
        "cap_exceeded": i18n.gettext(lang, "Over the cap"),
        "bad_caller": i18n.gettext(lang, "Bad caller number"),
        "rule_reject": i18n.gettext(lang, "Refused by a rule"),
        "backend_error": i18n.gettext(lang, "Store unavailable"),
    }
    return {name: named.get(name, name) for name in data.OUTCOMES}


def local_time(started: str | None, zone) -> str:
    """A record's start (UTC, ISO 8601) as the number's local time of day, ``HH:MM:SS``."""
    if not started:
        return ""
    return dt.datetime.fromisoformat(started).astimezone(zone).strftime("%H:%M:%S")


def province_name(code: str | None, lang: str) -> str:
    """A province's name in the page's language (``unknown``: none known)."""
    if not code or code == "unknown":
        return i18n.gettext(lang, "Unknown")
    names = provinces.CHINESE_NAMES if lang == "zh_CN" else provinces.ENGLISH_NAMES
    return names.get(code, code)


async def show(request: Request):
    number = request.path_params["number"]
    require(request, number)
    records = _records_of(request)
    lang = i18n.request_language(request)
    values, kwargs, errors = read_filters(request.query_params, lang)
    after = str(request.query_params.get("after", ""))[:MAX_PARAM]
    trail = _trail(request.query_params)
    rows, next_cursor, zone = [], None, None
    service = request.app.state.service
    if not errors:
        def page():
            records.flush(FLUSH_S)
            found, cursor = records.find(number, limit=PAGE_SIZE, after=after or None, **kwargs)
            return found, cursor, service._zone_of(number)  # may read the store: here, not on the loop

        try:
            rows, next_cursor, zone = await asyncio.to_thread(page)
        except ValueError:  # the only one left to refuse: a cursor not from this listing
            errors["after"] = _messages(lang)["after"]
    base = number_url(request, number, "records")
    older = f"{base}?{_query(values, after=next_cursor, trail='.'.join([*trail, after][-MAX_TRAIL:]))}" \
        if next_cursor else None
    newer = None
    if after:
        newer = f"{base}?{_query(values, after=trail[-1] if trail else '', trail='.'.join(trail[:-1]))}"
    for row in rows:  # rows only come with their zone
        row["time"] = local_time(row["started"], zone)
    context = {
        "number": number, "values": values, "errors": errors, "rows": rows, "older": older, "newer": newer,
        "newest": f"{base}?{_query(values)}" if after else None,
        "csv_url": f"{number_url(request, number, 'records.csv')}?{_query(values)}",
        "outcomes": outcome_labels(lang), "province_name": lambda code: province_name(code, lang),
    }
    return render(request, "records.html", context, status=422 if errors else 200)


def content_disposition(number: str, lang: str) -> str:
    """An attachment named in ASCII (old clients) and in UTF-8 (RFC 6266 ``filename*``, the page's language)."""
    ascii_name = f"tel400-{number}-records.csv"
    name = i18n.gettext(lang, "call-records-%(number)s.csv", number=number)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


async def export(request: Request):
    number = request.path_params["number"]
    require(request, number)
    records = _records_of(request)
    lang = i18n.request_language(request)
    _values, kwargs, errors = read_filters(request.query_params, lang)
    if errors:
        raise page_error(400, "A filter is not valid: correct it on the call records page.")
    await asyncio.to_thread(records.flush, FLUSH_S)
    # csv_lines checks the filters now and queries only as the response is sent: StreamingResponse
    # iterates a plain iterator on its thread pool, one chunk (records.CHUNK rows) at a time.
    lines = records.csv_lines(number, **kwargs)
    return StreamingResponse(lines, media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": content_disposition(number, lang)})


routes = [
    Route("/n/{number}/records", show, methods=["GET"]),
    Route("/n/{number}/records.csv", export, methods=["GET"]),
]
