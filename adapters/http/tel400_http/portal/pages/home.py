"""A company's home page: its number at a glance (the operator's list of numbers is pages/operator.py)."""

from __future__ import annotations

import asyncio
import datetime as dt

from starlette.requests import Request
from starlette.routing import Route

from ..web import plan_state, render, require


def _this_month(service, number: str) -> dict | None:
    """This month's calls, minutes and cost of ``number`` (``None`` without call records)."""
    records = service.records
    if records is None:
        return None
    month = dt.datetime.now(service._zone_of(number)).strftime("%Y-%m")
    records.flush()
    report = records.report(number, month)
    return {key: report[key] for key in ("month", "calls", "connected", "minutes", "cost")}


async def company_home(request: Request):
    number = request.path_params["number"]
    require(request, number)
    service = request.app.state.service
    plan, refused = await plan_state(request, number)
    month = await asyncio.to_thread(_this_month, service, number) if plan is not None else None
    # a refused (quarantined) plan is shown with why: the number exists; none stored is a 404
    return render(request, "company_home.html",
                  {"number": number, "plan": plan, "month": month, "refused": refused},
                  status=200 if plan is not None or refused else 404)


routes = [
    Route("/n/{number}/", company_home, methods=["GET"]),
]
