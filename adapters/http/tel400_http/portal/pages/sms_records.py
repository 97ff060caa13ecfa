"""A number's SMS records: the messages in and out (kind, parts, outcome, delivery state), newest first.

Read from the SMS store (:meth:`tel400.smsstore.SmsStore.messages` through
:func:`~tel400_http.smsreport.sms_page`) in a thread, paged by record id
(``before``: the last id of the page before; "newest" starts again).  Times
are the number's own (its plan's zone).  Texts are senders' words: the
template escapes them (autoescape), as every other value.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from starlette.requests import Request
from starlette.routing import Route

from ... import smsreport
from .. import i18n
from ..web import number_url, page_error, render, require

#: The longest text shown in a row (the store keeps more; a row stays one screen wide).
SHOWN_CHARS = 200


def kind_labels(lang: str) -> dict[str, str]:
    """The kinds of message (tel400.smstext.OUTGOING_KINDS, and an incoming message's answer) as people read them."""
    return {"reply": i18n.gettext(lang, "Auto-reply"), "opt_out": i18n.gettext(lang, "Opt-out"),
            "opt_in": i18n.gettext(lang, "Opt-in"), "none": i18n.gettext(lang, "Other"),
            "job": i18n.gettext(lang, "Group send"), "forward": i18n.gettext(lang, "Forwarded")}


def _before(raw: str) -> int | None:
    """The ``before`` cursor: a positive record id, or None (the newest page) for anything else."""
    raw = raw[:20]
    return int(raw) if raw.isdigit() and 0 < int(raw) < 2**63 else None


async def show(request: Request):
    number = request.path_params["number"]
    require(request, number)  # a company sees its own number's messages only
    service = request.app.state.service
    if service.sms_store is None:
        raise page_error(404, "This service keeps no SMS records.")
    lang = i18n.request_language(request)
    before = _before(str(request.query_params.get("before", "")))

    def read():
        zone = service._zone_of(number) or smsreport.DEFAULT_ZONE
        rows, next_before = smsreport.sms_page(service.sms_store, number, before=before)
        for row in rows:
            row["when"] = dt.datetime.fromtimestamp(row["at"], zone).strftime("%Y-%m-%d %H:%M:%S")
            row["shown"] = row["text"][:SHOWN_CHARS] + ("…" if len(row["text"]) > SHOWN_CHARS else "")
        return rows, next_before

    rows, next_before = await asyncio.to_thread(read)
    base = number_url(request, number, "sms-records")
    context = {"number": number, "rows": rows, "kinds": kind_labels(lang),
               "older": f"{base}?before={next_before}" if next_before else None,
               "newest": base if before is not None else None}
    return render(request, "sms_records.html", context)


routes = [Route("/n/{number}/sms-records", show, methods=["GET"])]
