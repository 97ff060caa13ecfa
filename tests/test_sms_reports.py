"""SMS in the month report (API), the portal's reports and usage pages, and the SMS records page.

In-process: the service on the manual's plan with an SmsStore holding
messages; runs on the engine the tests run (TEL400_NO_EXTENSIONS).
"""

from __future__ import annotations

import re
import time

import pytest

import tel400
from tel400.smsstore import SmsStore
from tel400_http import smsreport

from .conftest import EXAMPLES
from .http_harness import ACME, Client, make_service
from .portal_harness import ACME_NUMBER, OTHER_NUMBER, PortalClient, make_portal

NOV_2_0930 = 1_793_583_000.0  # Monday 2026-11-02 09:30 in Shanghai
NOV_30_2330 = 1_796_052_600.0  # 2026-11-30 23:30 in Shanghai (15:30 UTC): still November there
DEC_1_0030 = NOV_30_2330 + 3600  # 2026-12-01 00:30 in Shanghai (16:30 UTC on 30 November): December there
SCRIPT = "<script>alert(1)</script>"
SMS_CAP = '''  [[numbers.caps]]
  metric  = "calls"
  per     = "month"
  limit   = 10
  channel = "sms"

  [[numbers.sms_replies]]
  name     = "where"
  keywords = ["hotel"]
  reply    = "Beijing Road 1"

  [[numbers.rules]]                  # 互动短彩信'''


def _fill(store: SmsStore) -> None:
    """November for ACME: 3 in, 3 out (5 parts; 1 delivered, 1 failed at the gateway); around it, others."""
    store.record_message(direction="in", number=ACME_NUMBER, peer="13901010001", text="hotel", parts=1,
                         kind="reply", outcome="ok", at=NOV_2_0930)
    store.record_message(direction="out", number=ACME_NUMBER, peer="13901010001", text="Beijing Road 1", parts=1,
                         kind="reply", outcome="sent", message_id="m1", at=NOV_2_0930 + 1)
    store.set_delivery("m1", "delivered", at=NOV_2_0930 + 5)
    store.record_message(direction="in", number=ACME_NUMBER, peer="13901010002", text="TD", parts=1,
                         kind="opt_out", outcome="ok", at=NOV_2_0930 + 60)
    store.record_message(direction="out", number=ACME_NUMBER, peer="13901010002", text="字" * 100, parts=2,
                         kind="opt_out", outcome="sent", message_id="m2", at=NOV_2_0930 + 61)
    store.record_message(direction="out", number=ACME_NUMBER, peer="13901010003", text="字" * 140, parts=3,
                         kind="job", outcome="sent", message_id="m3", at=NOV_30_2330)
    store.record_message(direction="out", number=ACME_NUMBER, peer="13901010004", text="x", parts=1,
                         kind="job", outcome="failed", message_id="m4", at=NOV_30_2330)
    store.record_message(direction="in", number=ACME_NUMBER, peer="13901010005", text=SCRIPT, parts=1,
                         kind="none", outcome="no_match", at=NOV_30_2330)
    store.record_message(direction="in", number=ACME_NUMBER, peer="13901010006", text="december", parts=1,
                         kind="none", outcome="no_match", at=DEC_1_0030)
    store.record_message(direction="in", number=OTHER_NUMBER, peer="13901019999", text="secret of another",
                         parts=1, kind="none", outcome="no_match", at=NOV_2_0930)


NOVEMBER = {"in": 3, "out": 3, "parts_out": 6, "delivered": 1, "failed": 1}


def test_month_span_is_the_numbers_own_month():
    import zoneinfo

    since, until = smsreport.month_span("2026-11", zoneinfo.ZoneInfo("Asia/Shanghai"))
    assert since <= NOV_30_2330 < until <= DEC_1_0030
    ny_since, _ = smsreport.month_span("2026-11", zoneinfo.ZoneInfo("America/New_York"))
    assert ny_since - since == 12 * 3600  # New York (still EDT at midnight on 1 November) is 12 hours behind
    with pytest.raises(ValueError):
        smsreport.month_span("2026-13", None)


def test_the_month_report_counts_sms_apart_from_calls(tmp_path, impl):
    service = make_service(tmp_path, impl.name)
    try:
        client = Client(service)
        assert client.get(f"/v1/numbers/{ACME_NUMBER}/report?month=2026-11", token=ACME).json()["sms"] is None
        service.sms_store = SmsStore(tmp_path / "sms.db")
        _fill(service.sms_store)
        report = client.get(f"/v1/numbers/{ACME_NUMBER}/report?month=2026-11", token=ACME).json()
        assert report["sms"] == NOVEMBER
        assert report["calls"] == 0  # messages are not calls
        december = client.get(f"/v1/numbers/{ACME_NUMBER}/report?month=2026-12", token=ACME).json()
        assert december["sms"] == {"in": 1, "out": 0, "parts_out": 0, "delivered": 0, "failed": 0}
        assert client.get(f"/v1/numbers/{OTHER_NUMBER}/report?month=2026-11", token=ACME).status_code == 403
    finally:
        service.stop()


@pytest.fixture
def portal(tmp_path):
    plan_file = tmp_path / "plans.toml"
    plan_file.write_text((EXAMPLES / "manual.toml").read_text().replace(
        "  [[numbers.rules]]                  # 互动短彩信", SMS_CAP, 1))
    service, _accounts = make_portal(tmp_path, plans=tel400.load_plans(plan_file))
    service.sms_store = SmsStore(tmp_path / "sms.db")
    _fill(service.sms_store)
    with PortalClient(service) as client:
        client.login_company()
        yield client, service
    service.stop()


def test_the_reports_page_shows_the_months_sms(portal):
    client, _service = portal
    page = client.get(f"/portal/n/{ACME_NUMBER}/reports?month=2026-11")
    assert page.status_code == 200
    shown = dict(re.findall(r'<dd id="sms-([a-z]+)">(\d+)</dd>', page.text))
    assert shown == {"in": "3", "out": "3", "parts": "6", "delivered": "1", "failed": "1"}
    assert '<figure class="card" id="chart-sms"><svg' in page.text
    empty = client.get(f"/portal/n/{ACME_NUMBER}/reports?month=2026-10")
    assert dict(re.findall(r'<dd id="sms-([a-z]+)">(\d+)</dd>', empty.text))["in"] == "0"


def test_the_usage_page_shows_sms_parts_against_the_sms_cap(portal):
    client, service = portal
    now = time.time()
    answer = service.router.answer_sms(ACME_NUMBER, "13901012345", "hotel")
    assert (answer.reason, answer.parts) == ("ok", 1)  # the reply's part counted against the sms cap
    service.sms_store.record_message(direction="out", number=ACME_NUMBER, peer="13901012345", text=answer.reply,
                                     parts=answer.parts, kind="reply", outcome="sent", at=now)
    page = client.get(f"/portal/n/{ACME_NUMBER}/usage")
    assert page.status_code == 200
    row = re.search(r'<tr class="cap" data-cap="([^"]*sms[^"]*)">\s*<td>[^<]*</td>\s*<td class="used">(\d+)</td>'
                    r'<td class="limit">(\d+)</td>', page.text)
    assert row is not None and row.group(2, 3) == ("1", "10"), page.text
    recorded = re.search(r'<p class="recorded sms" data-cap="[^"]*">[^:]*: (\d+) / (\d+)', page.text)
    assert recorded is not None and recorded.group(1, 2) == ("1", "10")
    assert re.search(r'<dd id="sms-parts">1</dd>', page.text)


def test_sms_records_list_newest_first_escaped_and_only_the_numbers_own(portal):
    client, _service = portal
    page = client.get(f"/portal/n/{ACME_NUMBER}/sms-records")
    assert page.status_code == 200
    peers = re.findall(r'<td class="peer">([^<]*)</td>', page.text)
    assert peers[0] == "13901010006" and peers[-1] == "13901010001" and len(peers) == 8
    assert SCRIPT not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "secret of another" not in page.text
    assert '<td class="delivery">delivered</td>' in page.text
    other = client.get(f"/portal/n/{OTHER_NUMBER}/sms-records")
    assert other.status_code == 403 and "secret of another" not in other.text


def test_sms_records_are_paged(portal):
    client, service = portal
    for i in range(smsreport.PAGE_SIZE + 5):
        service.sms_store.record_message(direction="in", number=ACME_NUMBER, peer=f"1390202{i:04d}", text="hi",
                                         parts=1, kind="none", outcome="no_match", at=DEC_1_0030 + i)
    first = client.get(f"/portal/n/{ACME_NUMBER}/sms-records")
    peers = re.findall(r'<td class="peer">([^<]*)</td>', first.text)
    assert len(peers) == smsreport.PAGE_SIZE and peers[0] == f"1390202{smsreport.PAGE_SIZE + 4:04d}"
    older = re.search(r'<a href="([^"]+)" id="older">', first.text).group(1).replace("&amp;", "&")
    second = client.get(older)
    rest = re.findall(r'<td class="peer">([^<]*)</td>', second.text)
    assert len(rest) == 5 + 8 and not set(rest) & set(peers) and 'id="older"' not in second.text
    for garbage in ("x", "-1", "9" * 40, "1e9", SCRIPT):
        page = client.get(f"/portal/n/{ACME_NUMBER}/sms-records", params={"before": garbage})
        assert page.status_code == 200  # the newest page
        assert re.findall(r'<td class="peer">([^<]*)</td>', page.text)[0] == peers[0]


def test_without_an_sms_store_the_pages_say_so(portal):
    client, service = portal
    service.sms_store = None
    assert client.get(f"/portal/n/{ACME_NUMBER}/sms-records").status_code == 404
    page = client.get(f"/portal/n/{ACME_NUMBER}/reports?month=2026-11")
    assert page.status_code == 200 and 'id="sms"' not in page.text
    assert 'id="sms-month"' not in client.get(f"/portal/n/{ACME_NUMBER}/usage").text
