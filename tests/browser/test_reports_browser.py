"""The call records and reports pages in Chromium, with calls routed through the real tel400-http.

The calls are routed in August 2026 (no other browser test routes then), so
the month's figures are this file's own; the expected counts of each chart
are taken from the CSV export, which is itself checked against the calls
routed.
"""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest
from selenium.webdriver.common.by import By

from ..portal_harness import ACME_NUMBER
from .conftest import click_and_wait, login, shot

MONTH = "2026-08"
#: (caller, day of August, hour): more calls than one page of the listing (PAGE_SIZE = 50).
CALLERS = ("01062345678", "02162345678", "02062345678", "13901010077")
CALLS = [(CALLERS[i % len(CALLERS)], 1 + i % 28, 8 + i % 12) for i in range(57)]


@pytest.fixture(scope="module")
def routed(portal_server):
    """Route :data:`CALLS` to ACME in August 2026 once; the module's tests read them."""
    for caller, day, hour in CALLS:
        body = json.dumps({"dialed": ACME_NUMBER, "caller": caller, "at": f"{MONTH}-{day:02d}T{hour:02d}:15"})
        status, answer = portal_server.request("POST", "/v1/route", body.encode(), {"content-type": "application/json"})
        assert status == 200, answer
    return CALLS


def _csv_rows(browser, portal_server, href: str) -> list[dict]:
    """Download ``href`` with the browser session's cookie (what the download link sends)."""
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    r = httpx.get(href, cookies=cookies, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"].startswith("attachment; ")
    assert r.content.startswith(b"\xef\xbb\xbf")
    return list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))


def _listed(browser) -> list[str]:
    return [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#records tr.record td.caller")]


def test_records_are_listed_filtered_paged_and_downloaded(browser, base_url, portal_server, routed):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/records?since={MONTH}-01&until={MONTH}-31")
    first = _listed(browser)
    assert len(first) == 50 and set(first) == set(CALLERS)
    shot(browser, "records")
    click_and_wait(browser, browser.find_element(By.ID, "older"))
    assert len(_listed(browser)) == len(CALLS) - 50
    assert not browser.find_elements(By.ID, "older")
    click_and_wait(browser, browser.find_element(By.ID, "newer"))
    assert _listed(browser) == first

    caller_box = browser.find_element(By.ID, "caller")
    caller_box.send_keys(CALLERS[1])
    click_and_wait(browser, browser.find_element(By.ID, "apply"))
    expected = sum(1 for c in CALLS if c[0] == CALLERS[1])
    assert _listed(browser) == [CALLERS[1]] * expected

    rows = _csv_rows(browser, portal_server, browser.find_element(By.ID, "csv").get_attribute("href"))
    assert [r["caller"] for r in rows] == [CALLERS[1]] * expected
    assert {r["day"][:7] for r in rows} == {MONTH}

    province = browser.find_element(By.ID, "province")
    province.send_keys("Atlantis")
    click_and_wait(browser, browser.find_element(By.ID, "apply"))
    assert browser.find_element(By.ID, "province-error").is_displayed()
    assert browser.find_element(By.ID, "province").get_attribute("value") == "Atlantis"
    shot(browser, "records-bad-filter")


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_each_chart_renders_its_data(browser, base_url, portal_server, routed, lang):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    if lang == "en":
        click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "form.lang button[value=en]"))
    browser.get(f"{base_url}/n/{ACME_NUMBER}/records?since={MONTH}-01&until={MONTH}-31")
    rows = _csv_rows(browser, portal_server, browser.find_element(By.ID, "csv").get_attribute("href"))
    assert len(rows) == len(CALLS)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/reports?month={MONTH}")
    assert browser.find_element(By.TAG_NAME, "h1").text == ("Reports" if lang == "en" else "报表") + f" · {ACME_NUMBER}"
    expected = {
        "chart-by-day": 31, "chart-heatmap": 7 * 24,
        "chart-by-province": len({r["province"] for r in rows}),
        "chart-by-target": len({r["target"] for r in rows if r["target"]}),
        "chart-by-outcome": len({"connected" if r["action"] in ("bridge", "queue", "conference")
                                 else r["reason"] if r["reason"] != "ok" else r["action"] for r in rows}),
        "chart-new-returning": 2,  # new and returning, each drawn even when none
        "chart-top-callers": len(CALLERS),
        "chart-callers-by-province": len({r["province"] for r in rows}),
    }
    for chart in expected:
        svg = browser.find_element(By.CSS_SELECTOR, f"#{chart} svg.chart")
        assert "chart-empty" not in svg.get_attribute("class"), chart
        assert len(browser.find_elements(By.CSS_SELECTOR, f"#{chart} .datum")) == expected[chart], chart
    assert browser.find_element(By.ID, "total-calls").text == str(len(CALLS))
    shot(browser, f"reports-{lang.lower()}")
    browser.execute_script("document.getElementById('calls-charts').scrollIntoView()")
    shot(browser, f"reports-charts-{lang.lower()}")
    browser.execute_script("document.getElementById('caller-charts').scrollIntoView()")
    shot(browser, f"reports-callers-{lang.lower()}")
    browser.get(f"{base_url}/n/{ACME_NUMBER}/records")
    shot(browser, f"records-{lang.lower()}")
