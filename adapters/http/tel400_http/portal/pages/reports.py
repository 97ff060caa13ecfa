"""A number's month in charts: calls by day, weekday × hour, province, target and outcome, the month's
totals, and who called (new and returning callers, the most frequent, by province, repeats in a day).

Everything is read from the data layer's rollups
(:meth:`~tel400_http.records.CallRecords.report` and
:meth:`~tel400_http.records.CallRecords.callers`) in a thread, and drawn by
:mod:`tel400_http.charts` (server-side SVG, every label escaped there, no
script: the portal's CSP holds).  Labels are in the page's language; the
month is the number's own (its plan's time zone), the current one by default.
"""

from __future__ import annotations

import asyncio
import calendar
import datetime as dt

from starlette.requests import Request
from starlette.routing import Route

from ... import charts
from ... import records as data
from ... import smsreport
from .. import i18n
from ..web import number_url, page_error, render, require
from .records import FLUSH_S, outcome_labels, province_name

#: Outcome slices the donut shows; the rest are summed as "Other".
DONUT_SLICES = 6


def _weekdays(lang: str) -> list[str]:
    return [i18n.gettext(lang, "Mon"), i18n.gettext(lang, "Tue"), i18n.gettext(lang, "Wed"),
            i18n.gettext(lang, "Thu"), i18n.gettext(lang, "Fri"), i18n.gettext(lang, "Sat"),
            i18n.gettext(lang, "Sun")]


def _shift(month: str, by: int) -> str:
    year, mon = int(month[:4]), int(month[5:7]) - 1 + by
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


def outcome_items(report: dict, lang: str) -> list[tuple[str, int]]:
    """The donut's slices: connected calls as one, each other reason as its own, the smallest as "Other"."""
    labels = outcome_labels(lang)
    connected = sum(r["calls"] for r in report["by_reason"] if r["action"] in data.CONNECTS)
    others: dict[str, int] = {}
    for r in report["by_reason"]:
        if r["action"] not in data.CONNECTS:
            label = labels.get(r["reason"], r["reason"]) if r["reason"] != "ok" else labels.get(r["action"], r["action"])
            others[label] = others.get(label, 0) + r["calls"]
    items = [(labels["connected"], connected)] if connected else []
    ranked = sorted(others.items(), key=lambda kv: (-kv[1], kv[0]))
    items += ranked[:DONUT_SLICES - len(items)]
    rest = sum(n for _, n in ranked[DONUT_SLICES - (1 if connected else 0):])
    if rest:
        items.append((i18n.gettext(lang, "Other"), rest))
    return items


def draw(report: dict, callers: dict, lang: str) -> dict[str, str]:
    """Every chart of the page, as SVG markup, by name."""
    empty = i18n.gettext(lang, "No calls this month")
    year, mon = int(report["month"][:4]), int(report["month"][5:7])
    days = {d["day"]: d for d in report["by_day"]}
    month_days = [f"{report['month']}-{d:02d}" for d in range(1, calendar.monthrange(year, mon)[1] + 1)]
    by_day = [(day[8:], days.get(day, {}).get("calls", 0)) for day in month_days]
    return {
        "by_day": charts.columns(by_day, title=i18n.gettext(lang, "Calls and connected calls by day"),
                                 overlay=[days.get(day, {}).get("connected", 0) for day in month_days],
                                 unit=i18n.gettext(lang, "call(s)"), empty=empty),
        "heatmap": charts.heatmap(report["heatmap"], rows=_weekdays(lang), cols=[str(h) for h in range(24)],
                                  title=i18n.gettext(lang, "Calls by weekday and hour"),
                                  unit=i18n.gettext(lang, "call(s)"), empty=empty),
        "by_province": charts.bars([(province_name(p["province"], lang), p["calls"]) for p in report["by_province"]],
                                   title=i18n.gettext(lang, "Calls by province"),
                                   unit=i18n.gettext(lang, "call(s)"), empty=empty),
        "by_target": charts.bars([(t["target"] or i18n.gettext(lang, "No target"), t["calls"])
                                  for t in report["by_target"]],
                                 title=i18n.gettext(lang, "Calls by target"), unit=i18n.gettext(lang, "call(s)"),
                                 empty=empty),
        "by_outcome": charts.donut(outcome_items(report, lang), title=i18n.gettext(lang, "Calls by outcome"),
                                   unit=i18n.gettext(lang, "call(s)"), empty=empty),
        "new_returning": charts.donut([(i18n.gettext(lang, "New callers"), callers["new_callers"]),
                                       (i18n.gettext(lang, "Returning callers"), callers["returning_callers"])],
                                      title=i18n.gettext(lang, "New and returning callers"),
                                      unit=i18n.gettext(lang, "callers"), empty=empty),
        "top_callers": charts.bars([(caller, calls) for caller, calls in callers["top_callers"]],
                                   title=i18n.gettext(lang, "Most frequent callers"),
                                   unit=i18n.gettext(lang, "call(s)"), empty=empty),
        "callers_by_province": charts.bars(
            [(province_name(p["province"], lang), p["callers"]) for p in callers["by_province"]],
            title=i18n.gettext(lang, "Callers by province"), unit=i18n.gettext(lang, "callers"), empty=empty),
    }


def draw_sms(sms: dict, lang: str) -> str:
    """The month's SMS as bars: messages in, out, their parts, delivered and failed."""
    items = [(i18n.gettext(lang, "Messages in"), sms["in"]), (i18n.gettext(lang, "Messages out"), sms["out"]),
             (i18n.gettext(lang, "Parts sent"), sms["parts_out"]), (i18n.gettext(lang, "Delivered"), sms["delivered"]),
             (i18n.gettext(lang, "Failed"), sms["failed"])]
    return charts.bars(items, title=i18n.gettext(lang, "SMS this month"),
                       unit=i18n.gettext(lang, "message(s)"), empty=i18n.gettext(lang, "No SMS this month"))


async def show(request: Request):
    number = request.path_params["number"]
    require(request, number)
    service = request.app.state.service
    records = service.records
    if records is None:
        raise page_error(404, "This service keeps no call records.")
    lang = i18n.request_language(request)
    month = str(request.query_params.get("month", ""))[:20].strip()
    if not month:
        # the number's zone may be a store read: in a thread, not on the event loop
        month = await asyncio.to_thread(lambda: dt.datetime.now(service._zone_of(number)).strftime("%Y-%m"))
    try:
        data.check_month(month)
    except ValueError:
        context = {"number": number, "month": month, "error": i18n.gettext(lang, "Enter a month as YYYY-MM.")}
        return render(request, "reports.html", context, status=422)

    def read():
        records.flush(FLUSH_S)
        # the zone may be a store read: here in the thread too
        sms = smsreport.sms_month(service.sms_store, number, month, service._zone_of(number))
        return records.report(number, month), records.callers(number, month), sms

    report, callers, sms = await asyncio.to_thread(read)
    answer_rate = None if not report["calls"] else round(100 * report["connected"] / report["calls"], 1)
    base = number_url(request, number, "reports")
    context = {
        "number": number, "month": month, "error": None, "report": report, "callers": callers,
        "answer_rate": answer_rate, "charts": draw(report, callers, lang),
        "sms": sms, "sms_chart": draw_sms(sms, lang) if sms is not None else None,
        "previous": f"{base}?month={_shift(month, -1)}", "next": f"{base}?month={_shift(month, 1)}",
        "month_records": f"{number_url(request, number, 'records')}?since={month}-01&until="
                         f"{month}-{calendar.monthrange(int(month[:4]), int(month[5:]))[1]:02d}",
    }
    return render(request, "reports.html", context)


routes = [Route("/n/{number}/reports", show, methods=["GET"])]
