"""A number's SMS for reports: the month's counts and the message records, read from the SMS store.

The counts (:meth:`tel400.smsstore.SmsStore.sms_totals`) are taken over the
month in the number's own time zone, as call reports are, so a message at
23:30 on the last day in Shanghai belongs to that month, not the next.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from .records import check_month

#: The zone of a number whose plan names none (as call records assume).
DEFAULT_ZONE = zoneinfo.ZoneInfo("Asia/Shanghai")
#: The keys of a month's SMS counts, in the order reports show them.
SMS_TOTALS = ("in", "out", "parts_out", "delivered", "failed")
#: Message records on one page of the portal's SMS records.
PAGE_SIZE = 50


def month_span(month: str, zone: dt.tzinfo | None) -> tuple[float, float]:
    """``"2026-11"`` → (the month's first instant, the next month's first) as Unix times in ``zone``.

    Raises:
        ValueError: ``month`` is not ``YYYY-MM``.
    """
    first, after = check_month(month)
    zone = zone or DEFAULT_ZONE
    start = dt.datetime.fromisoformat(first).replace(tzinfo=zone)
    end = dt.datetime.fromisoformat(after).replace(tzinfo=zone)
    return start.timestamp(), end.timestamp()


def sms_month(sms_store, number: str, month: str, zone: dt.tzinfo | None) -> dict | None:
    """``{"in", "out", "parts_out", "delivered", "failed"}`` of ``number`` in ``month``; None without a store.

    Cost: one store read, O(the month's messages of the number).
    """
    if sms_store is None:
        return None
    since, until = month_span(month, zone)
    totals = sms_store.sms_totals(number, since, until)
    return {key: int(totals.get(key, 0)) for key in SMS_TOTALS}


def sms_page(sms_store, number: str, *, before: int | None = None, limit: int = PAGE_SIZE) -> tuple[list[dict], int | None]:
    """One page of ``number``'s message records, newest first, and the ``before`` of the next page (or None).

    Reads one row more than it shows to know whether a next page exists.
    """
    rows = sms_store.messages(number, before_id=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["id"] if more and rows else None)
