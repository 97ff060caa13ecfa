"""This month against the caps: a number's call records and cap counters beside each cap's limit.

Two sources, each shown for what it is: the caps' counters
(:meth:`tel400.Router.cap_usage`, what routing decides by, in the cap's
current period) and the month's records: calls
(:meth:`~tel400_http.records.CallRecords.month_totals`, what the switch
reported) and SMS (:func:`~tel400_http.smsreport.sms_month`, what the SMS
store recorded).  A monthly number-wide cap is drawn against both: a cap on
channel ``sms`` counts the SMS parts sent, so it is compared with those.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from decimal import Decimal

from starlette.requests import Request
from starlette.routing import Route

import tel400

from ... import smsreport
from ..web import plan_state, render, require

#: Which month total a cap's metric is compared with (caps count connected calls).
TOTAL_OF_METRIC = {"calls": "connected", "minutes": "minutes", "cost": "cost"}


def amount_text(metric: str, value) -> str:
    """A cap amount as people read it: whole calls, minutes to 0.1, money to 0.01."""
    if value is None:
        return ""
    places = {"calls": 0, "minutes": 1}.get(metric, 2)
    return f"{Decimal(value):.{places}f}"


def _share(used, limit) -> float:
    """used / limit for a <meter>, 0 when there is no limit to speak of."""
    return float(used) / float(limit) if limit and used is not None else 0.0


def _usage(service, plan) -> dict:
    """The page's numbers, read in a thread (store and counter reads)."""
    number = plan.number
    now = dt.datetime.now(zoneinfo.ZoneInfo(plan.timezone))
    month = now.strftime("%Y-%m")
    try:
        caps = service.router.cap_usage(number, at=now)
        counters_ok = True
    except tel400.BackendError:
        caps, counters_ok = [], False
    totals = None
    if service.records is not None:
        service.records.flush()
        totals = service.records.month_totals(number, month)
    sms = smsreport.sms_month(service.sms_store, number, month, now.tzinfo)
    rows = []
    for usage in caps:
        metric = usage.cap.metric
        row = {"label": usage.label, "counted": usage.used is not None,
               "used": amount_text(metric, usage.used), "limit": amount_text(metric, usage.limit),
               "share": _share(usage.used, usage.limit), "recorded": None, "recorded_share": None,
               "sms": False}
        monthly = usage.cap.per == "month" and usage.cap.scope == "number"
        if usage.cap.channel == "sms":
            # an sms cap counts the parts sent (a calls cap each part as one), not calls
            row["sms"] = True
            if sms is not None and monthly and metric == "calls":
                row["recorded"] = amount_text(metric, sms["parts_out"])
                row["recorded_share"] = _share(sms["parts_out"], usage.limit)
        elif totals is not None and monthly:
            recorded = Decimal(str(totals[TOTAL_OF_METRIC[usage.cap.metric]]))
            row["recorded"] = amount_text(metric, recorded)
            row["recorded_share"] = _share(recorded, usage.limit)
        rows.append(row)
    return {"month": month, "caps": rows, "totals": totals, "sms": sms, "counters_ok": counters_ok}


async def usage(request: Request):
    number = request.path_params["number"]
    require(request, number)
    plan, refused = await plan_state(request, number)
    if plan is None:  # a refused plan is shown with why (the number exists); none stored is a 404
        return render(request, "usage.html", {"number": number, "plan": None, "refused": refused},
                      status=200 if refused else 404)
    found = await asyncio.to_thread(_usage, request.app.state.service, plan)
    return render(request, "usage.html", {"number": number, "plan": plan, **found})


routes = [
    Route("/n/{number}/usage", usage, methods=["GET"]),
]
