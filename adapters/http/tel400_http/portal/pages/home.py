"""Home pages: a company's number at a glance, and the operator's list of numbers."""

from __future__ import annotations

import asyncio
import datetime as dt

from starlette.requests import Request
from starlette.routing import Route

import tel400

from ..web import render, require, require_operator, routed_plan

#: Numbers on one page of the operator's list.
NUMBERS_PAGE = 100
#: The longest search text taken (longer is cut).
MAX_QUERY = 40


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
    plan = await routed_plan(request, number)
    month = await asyncio.to_thread(_this_month, service, number) if plan is not None else None
    return render(request, "company_home.html", {"number": number, "plan": plan, "month": month},
                  status=200 if plan is not None else 404)


async def operator_home(request: Request):
    require_operator(request)
    service = request.app.state.service
    query = request.query_params.get("q", "")[:MAX_QUERY].strip()
    after = request.query_params.get("after", "")[:MAX_QUERY]
    digits = "".join(ch for ch in query if ch.isascii() and ch.isdigit())

    def page():
        if not query:
            return service.router.routed_numbers_after(after, NUMBERS_PAGE + 1)
        try:  # a whole number: that one; else every number containing the digits
            exact = tel400.normalize(query)
            return [exact] if service.router.plan_of(exact) is not None else []  # in a thread: a store read
        except tel400.NumberError:
            # O(numbers): a scan for the digits; the operator's numbers page (its own module) may index it
            found = sorted(n for n in service.router.routed_numbers_after("", 10**9) if digits in n and n > after)
            return found[:NUMBERS_PAGE + 1]

    numbers = await asyncio.to_thread(page)
    more = numbers[NUMBERS_PAGE - 1] if len(numbers) > NUMBERS_PAGE else None
    return render(request, "operator_home.html", {"numbers": numbers[:NUMBERS_PAGE], "query": query, "more": more})


routes = [
    Route("/n/{number}/", company_home, methods=["GET"]),
    Route("/operator/", operator_home, methods=["GET"]),
]
