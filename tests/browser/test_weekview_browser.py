"""The week view, try a call and the usage page in Chromium, against a real tel400-http."""

from __future__ import annotations

import json
import subprocess
import sys

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from ..portal_harness import ACME_NUMBER
from .conftest import click_and_wait, login, shot

START = "2026-09-28"  # National Day week: 1-7 October are holidays


def _cli_grid(portal_server, province: str) -> dict:
    """``tel400 simulate --week --json`` on the plans the server routes by (its SQLite store)."""
    store = f"sqlite:///{portal_server.cwd / 'tel400-data' / 'plans.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "tel400.cli", "simulate", store, "--week", "--number", ACME_NUMBER,
         "--province", province, "--start", START, "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_week_view_matches_the_cli_cell_by_cell(browser, base_url, portal_server):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/week")
    Select(browser.find_element(By.ID, "province")).select_by_value("CN-GD")
    start = browser.find_element(By.ID, "start")
    browser.execute_script("arguments[0].value = arguments[1]", start, START)  # a date input: set, not typed
    click_and_wait(browser, browser.find_element(By.ID, "show-week"))
    expected = _cli_grid(portal_server, "Guangdong")
    heads = browser.find_elements(By.CSS_SELECTOR, "#week-grid thead th.day")
    assert [(h.get_attribute("data-day"), h.get_attribute("data-kind")) for h in heads] == [
        (d["day"], d["kind"]) for d in expected["days"]]
    assert heads[3].get_attribute("data-kind") == "holiday"
    rows = browser.find_elements(By.CSS_SELECTOR, "#week-grid tbody tr")
    assert len(rows) == 24
    for hour, row in enumerate(rows):
        cells = row.find_elements(By.CSS_SELECTOR, "td.cell")
        for day, cell in enumerate(cells):
            want = expected["days"][day]["cells"][hour]
            got = {key: cell.get_attribute(f"data-{key}") or None for key in ("rule", "action", "target", "reason")}
            assert got == {key: want[key] for key in got}, (day, hour)
    # rules are coloured by class: the Guangdong rule's cells share one colour, the night another
    nine = rows[9].find_elements(By.CSS_SELECTOR, "td.cell")[0]
    three = rows[3].find_elements(By.CSS_SELECTOR, "td.cell")[0]
    assert nine.value_of_css_property("background-color") != three.value_of_css_property("background-color")
    shot(browser, "weekview-guangdong")


def test_try_a_call_shows_the_trace(browser, base_url, portal_server):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/week?province=CN-BJ&start={START}")
    browser.find_element(By.ID, "caller").send_keys("13901012345")
    browser.execute_script("arguments[0].value = arguments[1]", browser.find_element(By.ID, "at"),
                           "2026-10-10T09:30")
    click_and_wait(browser, browser.find_element(By.ID, "try-call"))
    assert browser.find_element(By.ID, "trial-reason").text
    steps = browser.find_elements(By.CSS_SELECTOR, "#trial-trace li")
    assert len(steps) >= 3
    shot(browser, "weekview-try-a-call")
    # a bad caller: the error beside the field, no decision
    browser.find_element(By.ID, "caller").clear()
    browser.find_element(By.ID, "caller").send_keys("12")
    click_and_wait(browser, browser.find_element(By.ID, "try-call"))
    assert browser.find_element(By.ID, "caller-error").text
    assert not browser.find_elements(By.ID, "trial")


def _route_sms(portal_server) -> None:
    body = json.dumps({"dialed": f"10657{ACME_NUMBER}", "caller": "13901012345", "channel": "sms"}).encode()
    status, answer = portal_server.request("POST", "/v1/route", body, {"content-type": "application/json"})
    assert status == 200 and json.loads(answer)["action"] == "bridge", answer


def test_usage_page_shows_a_caps_use_after_routed_calls(browser, base_url, portal_server):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/")
    click_and_wait(browser, browser.find_element(By.ID, "usage-link"))
    row = 'tr.cap[data-cap="calls/day/number"]'
    before = int(browser.find_element(By.CSS_SELECTOR, f"{row} td.used").text)
    for _ in range(3):  # SMS reach the messaging desk at any hour and count against the daily calls cap
        _route_sms(portal_server)
    browser.refresh()
    assert int(browser.find_element(By.CSS_SELECTOR, f"{row} td.used").text) == before + 3
    meter = browser.find_element(By.CSS_SELECTOR, f"{row} meter")
    assert float(meter.get_attribute("value")) == (before + 3) / 1000
    shot(browser, "usage")
