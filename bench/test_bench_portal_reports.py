"""The portal's records and reports pages at a million records: time to the first byte of each answer.

    .venv/bin/pytest bench/test_bench_portal_reports.py --benchmark-enable --benchmark-columns=median,iqr

The same generated database as ``test_bench_reports.py`` (one number with
TEL400_BENCH_RECORDS records in November 2026, kept in TEL400_BENCH_DIR), now
behind the portal as a logged-in company sees it: the month's reports page
(report, caller analysis, eight SVG charts, the template), the first records
page, a filtered records page, and the CSV export.  Each request goes through
the whole ASGI stack in-process (the service, the mount, Starlette, the
session and CSRF middleware, Jinja2); the clock stops at the first
``http.response.body`` message that carries bytes, which for the CSV is its
first chunk (the BOM and header), for a page the whole page.  The target is
300 ms each (issue 13, item 11).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from test_bench_reports import BUSY, MONTH, busy  # noqa: F401  (the module-scoped database fixture)

from tests.portal_harness import ACME_NUMBER, ACME_PASSWORD, PortalClient, make_portal


class _FirstByte(BaseException):
    """Raised from ``send`` to stop an answer at its first body bytes (a BaseException, as a client
    gone is: no error handler takes it for the application's failure and logs it)."""


def first_byte(app, path: str, query: str, cookie: str) -> tuple[float, int, bytes]:
    """Seconds to the first non-empty body message of ``GET path?query``, the status, and those bytes."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(b"host", b"tel400.test"), (b"cookie", cookie.encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8400)}
    seen: dict = {}
    asked = []

    async def receive():
        if not asked:  # the (empty) request body once; then the client stays connected
            asked.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()

    async def send(message):
        if message["type"] == "http.response.start":
            seen["status"] = message["status"]
        elif message["type"] == "http.response.body" and message.get("body"):
            seen["at"] = time.perf_counter()
            seen["body"] = message["body"]
            raise _FirstByte

    async def run():
        t0 = time.perf_counter()
        try:
            await app(scope, receive, send)
        except _FirstByte:
            pass
        return seen.get("at", time.perf_counter()) - t0

    return asyncio.run(run()), seen.get("status", 0), seen.get("body", b"")


@pytest.fixture(scope="module")
def portal(busy, tmp_path_factory):  # noqa: F811
    size, records = busy
    service, accounts = make_portal(tmp_path_factory.mktemp("portal"))
    service.records.close()
    service.records = records  # the million-record database, as the service's own
    assert ACME_NUMBER == BUSY
    with PortalClient(service) as client:
        assert client.login(ACME_NUMBER, ACME_PASSWORD).status_code == 303
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    yield size, service, cookie
    accounts.close()


def _timed(benchmark, portal, path, query, rounds=7):
    size, service, cookie = portal
    benchmark.extra_info.update(records=size, calls=1)
    seconds, status, body = benchmark.pedantic(lambda: first_byte(service, path, query, cookie), rounds=rounds,
                                               iterations=1, warmup_rounds=1)
    assert status == 200, body[:300]
    return body


def test_portal_reports_page(benchmark, portal):
    body = _timed(benchmark, portal, f"/portal/n/{BUSY}/reports", f"month={MONTH}")
    assert body.count(b'class="datum"') > 100  # every chart drawn with its data


def test_portal_records_first_page(benchmark, portal):
    body = _timed(benchmark, portal, f"/portal/n/{BUSY}/records", "")
    assert body.count(b"<tr") > 50


def test_portal_records_filtered_page(benchmark, portal):
    body = _timed(benchmark, portal, f"/portal/n/{BUSY}/records",
                  "since=2026-11-10&until=2026-11-20&province=%E5%B9%BF%E4%B8%9C&outcome=connected")
    assert body.count(b"<tr") > 50


def test_portal_records_csv_first_byte(benchmark, portal):
    body = _timed(benchmark, portal, f"/portal/n/{BUSY}/records.csv", "")
    assert body.startswith(b"\xef\xbb\xbf")
