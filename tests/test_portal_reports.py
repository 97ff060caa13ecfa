"""The call records and reports pages: filters reach ``find``, bad filters are shown beside their fields,
the CSV export, the charts' data, escaping of what callers send, who may see what, and queries off the
event loop."""

from __future__ import annotations

import calendar
import csv
import io
import re
import threading
import urllib.parse

import pytest
from tel400_http.portal.pages import records as records_page
from tel400_http.records import CSV_COLUMNS

from .portal_harness import ACME_NUMBER, OTHER_NUMBER, PortalClient, make_portal
from .test_records import Decision

RECORDS = f"/portal/n/{ACME_NUMBER}/records"
CSV = f"/portal/n/{ACME_NUMBER}/records.csv"
REPORTS = f"/portal/n/{ACME_NUMBER}/reports"
MON_NOV_2_0930 = 1_793_583_000.0  # Monday 2026-11-02 09:30 in Shanghai
DAY = 86400
SCRIPT = "<script>alert(1)</script>"


def _insert(service, decisions):
    """Write ``(decision, started)`` pairs now (the writer's own step, as tests/test_records.py does)."""
    service.records._write([("d", d, at) for d, at in decisions])


def _calls(service):
    """Eight calls in November 2026 and one in October: three callers, two provinces, one rejected."""
    d = [
        (Decision("a1", caller="13901010001", province="CN-BJ", target="t1", number=ACME_NUMBER), MON_NOV_2_0930),
        (Decision("a2", caller="13901010001", province="CN-BJ", target="t1", number=ACME_NUMBER), MON_NOV_2_0930 + 60),
        (Decision("a3", caller="13901010002", province="CN-SH", target="t2", number=ACME_NUMBER),
         MON_NOV_2_0930 + DAY),
        (Decision("a4", caller="13901010003", province="CN-SH", target="t2", number=ACME_NUMBER),
         MON_NOV_2_0930 + 2 * DAY),
        (Decision("a5", caller="13901010003", province="CN-SH", action="reject", reason="closed", target=None,
                  number=ACME_NUMBER), MON_NOV_2_0930 + 3 * DAY),
        (Decision("a6", caller="13901010001", province="CN-BJ", target="t1", number=ACME_NUMBER),
         MON_NOV_2_0930 + 4 * DAY),
        (Decision("a7", caller="13901010002", province="CN-SH", target="t1", number=ACME_NUMBER),
         MON_NOV_2_0930 + 5 * DAY),
        (Decision("a8", caller="13901010002", province="CN-SH", target="t1", number=ACME_NUMBER),
         MON_NOV_2_0930 + 6 * DAY),
        (Decision("o1", caller="13901010001", province="CN-BJ", target="t1", number=ACME_NUMBER),
         MON_NOV_2_0930 - 20 * DAY),
        (Decision("x1", caller="13901010009", province="CN-BJ", target="t9", number=OTHER_NUMBER), MON_NOV_2_0930),
    ]
    _insert(service, d)


@pytest.fixture
def portal(tmp_path):
    service, _accounts = make_portal(tmp_path)
    _calls(service)
    with PortalClient(service) as client:
        yield client, service
    service.stop()


def _callers_listed(html: str) -> list[str]:
    return re.findall(r'<td class="caller">([^<]*)</td>', html)


# -- the filters --------------------------------------------------------------------------------------


def test_form_fields_become_find_arguments():
    values, kwargs, errors = records_page.read_filters(
        {"since": "2026-11-01", "until": "2026-11-30", "caller": " 13901010001 ", "province": "北京",
         "outcome": "connected", "target": "t1", "other": "x"}, "en")
    assert errors == {}
    assert kwargs == {"since_day": "2026-11-01", "until_day": "2026-11-30", "caller": "13901010001",
                      "province": "北京", "outcome": "connected", "target": "t1"}
    assert values["caller"] == "13901010001"
    assert records_page.read_filters({"since": "", "caller": "  "}, "en")[1] == {}


def test_every_bad_filter_gets_its_own_message():
    _values, kwargs, errors = records_page.read_filters(
        {"since": "2026-13-01", "until": "yesterday", "caller": SCRIPT, "province": "Atlantis", "outcome": "maybe",
         "target": "x" * 250}, "en")
    assert kwargs == {"target": "x" * records_page.MAX_PARAM}  # cut to MAX_PARAM, which the data layer takes
    assert set(errors) == {"since", "until", "caller", "province", "outcome"}
    assert errors["province"].startswith("No province has this name")
    _values, _kwargs, errors = records_page.read_filters({"since": "2026-11-05", "until": "2026-11-01"}, "zh_CN")
    assert errors == {"since": "起始日期晚于截止日期。"}


def test_the_page_lists_the_numbers_records_filtered(portal):
    client, _service = portal
    client.login_company()
    page = client.get(RECORDS)
    assert page.status_code == 200
    assert len(_callers_listed(page.text)) == 9  # ACME's nine, not the other number's
    assert "13901010009" not in page.text
    by_caller = client.get(RECORDS, params={"caller": "13901010002"})
    assert _callers_listed(by_caller.text) == ["13901010002"] * 3
    by_province = client.get(RECORDS, params={"province": "北京", "since": "2026-11-01"})
    assert _callers_listed(by_province.text) == ["13901010001"] * 3
    rejected = client.get(RECORDS, params={"outcome": "not_connected"})
    assert _callers_listed(rejected.text) == ["13901010003"]
    by_target = client.get(RECORDS, params={"target": "t2", "until": "2026-11-03"})
    assert _callers_listed(by_target.text) == ["13901010002"]
    none = client.get(RECORDS, params={"caller": "13800000000"})
    assert 'id="no-records"' in none.text


def test_bad_filters_are_shown_beside_their_fields(portal):
    client, _service = portal
    client.login_company()
    page = client.get(RECORDS, params={"since": "2026-02-30", "province": "Atlantis", "caller": "1" * 65},
                      headers={"accept-language": "en"})
    assert page.status_code == 422
    assert 'id="since-error"' in page.text and 'id="province-error"' in page.text and 'id="caller-error"' in page.text
    assert 'id="outcome-error"' not in page.text
    assert _callers_listed(page.text) == []
    stale = client.get(RECORDS, params={"after": "garbage!"})
    assert stale.status_code == 422 and 'id="after-error"' in stale.text


def test_paging_older_and_newer_by_the_cursor(portal, monkeypatch):
    client, _service = portal
    monkeypatch.setattr(records_page, "PAGE_SIZE", 2)
    client.login_company()
    page = client.get(RECORDS, params={"caller": "13901010001"})
    second = client.get(_link(page.text, "older"))
    assert _callers_listed(page.text) == _callers_listed(second.text) == ["13901010001"] * 2  # the filter kept
    assert _link(second.text, "older") is None
    first = client.get(RECORDS)
    firsts = [_callers_listed(first.text)]
    page = first
    hrefs = []
    while (href := _link(page.text, "older")) is not None:
        hrefs.append(href)
        page = client.get(href)
        firsts.append(_callers_listed(page.text))
    assert [len(p) for p in firsts] == [2, 2, 2, 2, 1]
    # newer from the last page goes back page by page to the first
    back = page
    for expected in reversed(firsts[:-1]):
        back = client.get(_link(back.text, "newer"))
        assert _callers_listed(back.text) == expected
    assert _link(back.text, "newer") is None and _link(back.text, "newest") is None


def _unescape(href: str) -> str:
    return href.replace("&amp;", "&")


def _link(html: str, name: str) -> str | None:
    m = re.search(rf'<a href="([^"]+)" id="{name}">', html)
    return _unescape(m.group(1)) if m else None


# -- the CSV export -----------------------------------------------------------------------------------


def test_csv_export_has_the_bom_header_rows_and_an_attachment_name(portal):
    client, _service = portal
    client.login_company()
    r = client.get(CSV, params={"province": "上海"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="tel400-4001012345-records.csv"; ')
    assert "filename*=UTF-8''" + urllib.parse.quote("话单-4001012345.csv") in disposition
    assert disposition.isascii()
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sorted(row[CSV_COLUMNS.index("call_id")] for row in rows[1:]) == ["a3", "a4", "a5", "a7", "a8"]
    assert {row[CSV_COLUMNS.index("province_name")] for row in rows[1:]} == {"上海"}
    english = client.get(CSV, headers={"accept-language": "en"})
    assert "filename*=UTF-8''call-records-4001012345.csv" in english.headers["content-disposition"]
    assert len(list(csv.reader(io.StringIO(english.content.decode("utf-8-sig"))))) == 10


def test_csv_export_with_a_bad_filter_is_a_400_page(portal):
    client, _service = portal
    client.login_company()
    r = client.get(CSV, params={"outcome": "maybe"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")


def test_the_records_page_links_its_csv_with_the_same_filters(portal):
    client, _service = portal
    client.login_company()
    page = client.get(RECORDS, params={"caller": "13901010002", "province": "上海"})
    href = _link(page.text, "csv") or re.search(r'href="([^"]+)" id="csv"', page.text).group(1)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(_unescape(href)).query)
    assert query == {"caller": ["13901010002"], "province": ["上海"]}


# -- reports ------------------------------------------------------------------------------------------


def _datums(html: str, chart_id: str) -> int:
    figure = re.search(rf'<figure class="card" id="{chart_id}">(.*?)</figure>', html, re.S).group(1)
    assert 'class="chart' in figure
    return figure.count('class="datum"')


def test_reports_draw_each_chart_from_the_months_data(portal):
    client, _service = portal
    client.login_company()
    page = client.get(REPORTS, params={"month": "2026-11"}, headers={"accept-language": "en"})
    assert page.status_code == 200
    html = page.text
    assert _datums(html, "chart-by-day") == calendar.monthrange(2026, 11)[1]
    assert _datums(html, "chart-heatmap") == 7 * 24
    assert _datums(html, "chart-by-province") == 2  # Beijing, Shanghai
    assert _datums(html, "chart-by-target") == 2  # t1, t2 (the rejected call had none)
    assert _datums(html, "chart-by-outcome") == 2  # connected, closed
    assert _datums(html, "chart-new-returning") == 2
    assert _datums(html, "chart-top-callers") == 3
    assert _datums(html, "chart-callers-by-province") == 2
    assert re.search(r'id="total-calls">8<', html) and re.search(r'id="total-connected">7<', html)
    assert 'id="answer-rate">87.5%<' in html
    assert re.search(r'id="new-callers">2<', html) and re.search(r'id="returning-callers">1<', html)
    assert re.search(r'id="repeat-callers">1<', html)  # 13901010001 twice on 2 November
    assert "Beijing" in html and "Closed" in html


def test_a_month_without_calls_says_so_and_a_bad_month_is_shown_beside_its_field(portal):
    client, _service = portal
    client.login_company()
    empty = client.get(REPORTS, params={"month": "2025-01"})
    assert empty.status_code == 200 and "本月没有呼叫" in empty.text and 'class="datum"' not in empty.text
    for bad in ("2026-13", "November", "2026-1"):
        page = client.get(REPORTS, params={"month": bad})
        assert page.status_code == 422 and 'id="month-error"' in page.text and "<svg" not in page.text
    end = client.get(REPORTS, params={"month": "9999-12"})
    assert end.status_code == 200  # its "next month" link is refused in turn, with the same message


def test_what_callers_send_is_shown_as_text(portal):
    client, service = portal
    _insert(service, [(Decision("s1", caller=SCRIPT, province=SCRIPT, target=SCRIPT, number=ACME_NUMBER),
                       MON_NOV_2_0930 + 7 * DAY)])
    client.login_company()
    for page in (client.get(RECORDS), client.get(REPORTS, params={"month": "2026-11"})):
        assert page.status_code == 200
        assert "<script>" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


# -- who may see what ---------------------------------------------------------------------------------


@pytest.mark.parametrize("page", ["records", "records.csv", "reports"])
def test_a_company_sees_only_its_number(portal, page):
    client, _service = portal
    assert client.get(f"/portal/n/{ACME_NUMBER}/{page}").status_code == 303  # no session: to the login
    client.login_company()
    other = client.get(f"/portal/n/{OTHER_NUMBER}/{page}")
    assert other.status_code == 403 and "13901010009" not in other.text
    assert client.get(f"/portal/n/{ACME_NUMBER}/{page}").status_code == 200


def test_the_operator_sees_any_number(portal):
    client, _service = portal
    client.login_operator()
    page = client.get(f"/portal/n/{OTHER_NUMBER}/records")
    assert page.status_code == 200 and _callers_listed(page.text) == ["13901010009"]
    assert client.get(f"/portal/n/{OTHER_NUMBER}/reports", params={"month": "2026-11"}).status_code == 200


# -- off the event loop -------------------------------------------------------------------------------


def test_queries_run_off_the_event_loop(portal, monkeypatch):
    client, service = portal
    threads = {}
    records = service.records
    for name in ("find", "report", "callers", "_page"):
        original = getattr(records, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            threads.setdefault(_name, set()).add(threading.current_thread() is threading.main_thread())
            return _original(*args, **kwargs)

        monkeypatch.setattr(records, name, spy)
    client.login_company()
    client.get(RECORDS)
    client.get(REPORTS, params={"month": "2026-11"})
    threads.pop("_page")  # the listing's own reads (find's), checked below through the CSV
    assert threads == {"find": {False}, "report": {False}, "callers": {False}}
    threads.clear()
    assert client.get(CSV).status_code == 200
    assert threads == {"_page": {False}}  # the export's reads, as the response streams


def test_the_outcome_donut_keeps_six_slices_and_sums_the_rest_as_other():
    from tel400_http.portal.pages.reports import DONUT_SLICES, outcome_items

    reasons = ["closed", "blacklisted", "cap_exceeded", "bad_pin", "pin_locked", "rule_reject", "bad_caller"]
    report = {"by_reason": [{"action": "bridge", "reason": "ok", "calls": 50},
                            {"action": "queue", "reason": "ok", "calls": 5}]
              + [{"action": "reject", "reason": r, "calls": 10 - i} for i, r in enumerate(reasons)]}
    items = outcome_items(report, "en")
    assert len(items) == DONUT_SLICES + 1
    assert items[0] == ("Connected calls", 55)
    assert items[1] == ("Closed", 10)
    assert items[-1] == ("Other", 5 + 4)  # the two smallest: rule_reject and bad_caller
    assert sum(n for _, n in items) == 55 + sum(range(4, 11))  # nothing lost


def test_the_reports_page_links_the_months_records(portal):
    client, _service = portal
    client.login_company()
    page = client.get(REPORTS, params={"month": "2026-11"})
    href = _link(page.text, "month-records")
    assert href == f"{RECORDS}?since=2026-11-01&until=2026-11-30"
    assert len(_callers_listed(client.get(href).text)) == 8


def test_the_listing_shows_the_numbers_local_time(portal):
    client, _service = portal
    client.login_company()
    page = client.get(RECORDS, params={"caller": "13901010003"})
    assert re.findall(r'<td class="time">([^<]*)</td>', page.text) == ["09:30:00", "09:30:00"]  # Shanghai, not UTC
