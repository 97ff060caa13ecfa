"""The operator's pages in Chromium against a real tel400-http: pool, vanity, a new number, the audit."""

from __future__ import annotations

import json

from selenium.webdriver.common.by import By

from ..portal_harness import OPERATOR, OPERATOR_PASSWORD
from .conftest import click_and_wait, login, shot

KFC = "4006532532"  # 4006-KFC-KFC


def _route(portal_server, dialed: str) -> dict:
    body = json.dumps({"dialed": dialed, "caller": "13901012345", "at": "2026-11-24T09:00"}).encode()
    status, answer = portal_server.request("POST", "/v1/route", body, {"content-type": "application/json"})
    assert status == 200, answer
    return json.loads(answer)


def test_operator_creates_a_vanity_number_and_the_company_logs_in(browser, base_url, portal_server):
    login(browser, base_url, OPERATOR, OPERATOR_PASSWORD, operator=True)
    shot(browser, "operator-numbers")
    # the pool: a pasted list, one bad line reported with its line number
    browser.get(base_url + "/operator/pool")
    shot(browser, "operator-pool")
    browser.find_element(By.ID, "lines").send_keys(f"{KFC}\nKFC\n4009532532\n4008888888\n")
    click_and_wait(browser, browser.find_element(By.ID, "import"))
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#bad-lines tr.bad-line")]
    assert [r[:2] for r in rows] == [["2", "KFC"]]
    free = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#free td.number")]
    assert {KFC, "4009532532", "4008888888"} <= set(free)
    shot(browser, "operator-pool-imported")
    # vanity: KFC, ranked, the patterns shown
    browser.get(base_url + "/operator/vanity")
    browser.find_element(By.ID, "q").send_keys("KFC")
    click_and_wait(browser, browser.find_element(By.ID, "search"))
    found = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#vanity td.number")]
    assert KFC in found and "4008888888" not in found
    assert browser.find_elements(By.CSS_SELECTOR, "#vanity td.patterns")
    shot(browser, "operator-vanity")
    # create it for a company
    row = browser.find_elements(By.CSS_SELECTOR, "#vanity tr.found")[found.index(KFC)]
    click_and_wait(browser, row.find_element(By.CSS_SELECTOR, "a.create"))
    assert browser.find_element(By.ID, "number").get_attribute("value") == KFC
    browser.find_element(By.ID, "company").send_keys("肯德基")
    browser.find_element(By.ID, "target").send_keys("13901010001")
    shot(browser, "operator-create")
    click_and_wait(browser, browser.find_element(By.ID, "create"))
    assert browser.find_element(By.ID, "created-number").text == KFC
    password = browser.find_element(By.ID, "created-password").text
    shot(browser, "operator-created")
    assert _route(portal_server, KFC)["targets"] == ["13901010001"]
    # the audit shows who created it
    browser.get(f"{base_url}/operator/audit?number={KFC}")
    actions = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#audit td.action")]
    assert "number_created" in actions
    assert f"operator:{OPERATOR}" in [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#audit td.actor")]
    shot(browser, "operator-audit")
    # the company logs in with the password shown once and sees its number
    click_and_wait(browser, browser.find_element(By.ID, "logout"))
    login(browser, base_url, KFC, password)
    assert browser.find_element(By.ID, "number").text == KFC
    shot(browser, "operator-created-company-home")
