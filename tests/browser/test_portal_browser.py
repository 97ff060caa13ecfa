"""The portal in Chromium against a real tel400-http (see conftest.py)."""

from __future__ import annotations

from selenium.webdriver.common.by import By

from ..portal_harness import ACME_NUMBER, OPERATOR, OPERATOR_PASSWORD, OTHER_NUMBER
from .conftest import click_and_wait, login, shot


def test_company_logs_in_sees_its_home_and_logs_out(browser, base_url, portal_server):
    shot(browser, "login-zh")
    assert browser.find_element(By.TAG_NAME, "h1").text == "企业登录"
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    assert browser.find_element(By.ID, "number").text == ACME_NUMBER
    assert browser.find_element(By.ID, "this-month").is_displayed()
    shot(browser, "company-home")
    click_and_wait(browser, browser.find_element(By.ID, "logout"))
    assert browser.current_url == base_url + "/login"


def test_wrong_password_shows_the_error(browser, base_url):
    login(browser, base_url, OTHER_NUMBER, "not-the-password")
    assert browser.find_element(By.ID, "login-error").text == "账号或密码错误。"
    shot(browser, "login-wrong-password")


def test_operator_lists_the_numbers(browser, base_url):
    login(browser, base_url, OPERATOR, OPERATOR_PASSWORD, operator=True)
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#numbers a")]
    assert ACME_NUMBER in links and OTHER_NUMBER in links
    shot(browser, "operator-home")


def test_the_language_switch(browser, base_url):
    browser.get(base_url + "/login")
    click_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "form.lang button[value=en]"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Company login"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    shot(browser, "login-en")


def _route(portal_server, **fields) -> dict:
    import json

    body = json.dumps({"dialed": ACME_NUMBER, "caller": "13901012345", "at": "2026-11-24T09:00", **fields}).encode()
    status, answer = portal_server.request("POST", "/v1/route", body, {"content-type": "application/json"})
    assert status == 200, answer
    return json.loads(answer)


def test_blacklist_import_reports_bad_lines_and_script_shows_as_text(browser, base_url, portal_server):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/blacklist")
    shot(browser, "blacklist")
    browser.find_element(By.ID, "lines").send_keys("13900000011\nnot a number\n0571*\n<script>alert(1)</script>\n")
    click_and_wait(browser, browser.find_element(By.ID, "import"))
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in
            browser.find_elements(By.CSS_SELECTOR, "#bad-lines tr.bad-line")]
    assert [(r[0], r[1]) for r in rows] == [("2", "not a number"), ("4", "<script>alert(1)</script>")]
    entries = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#entries td.entry")]
    assert "13900000011" in entries and "0571*" in entries
    shot(browser, "blacklist-import-bad-lines")
    browser.find_element(By.ID, "entry").send_keys("<script>alert(2)</script>")
    click_and_wait(browser, browser.find_element(By.ID, "add"))
    assert "<script>alert(2)</script>" in browser.find_element(By.ID, "entry").get_attribute("value")
    assert browser.find_element(By.ID, "entry-error").is_displayed()
    assert _route(portal_server, caller="13900000011")["reason"] == "blacklisted"


def test_a_form_with_a_forged_csrf_token_is_refused_and_changes_nothing(browser, base_url, portal_server):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/blacklist")
    browser.find_element(By.ID, "entry").send_keys("13900000012")
    browser.execute_script("document.querySelector('#add-form input[name=csrf]').value = 'forged'")
    click_and_wait(browser, browser.find_element(By.ID, "add"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "403"
    shot(browser, "csrf-refused")
    browser.get(f"{base_url}/n/{ACME_NUMBER}/blacklist")
    assert "13900000012" not in [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#entries td.entry")]


def test_another_number_is_refused_by_crafted_url(browser, base_url, portal_server):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    for page in ("", "blacklist", "pin", "account"):
        browser.get(f"{base_url}/n/{OTHER_NUMBER}/{page}")
        assert browser.find_element(By.TAG_NAME, "h1").text == "403"
        assert browser.find_element(By.ID, "error-message").text == "此页面属于其他号码，您无权访问。"
    shot(browser, "other-number-refused")


def test_pin_set_then_routing_asks_for_it(browser, base_url, portal_server):
    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    browser.get(f"{base_url}/n/{ACME_NUMBER}/pin")
    browser.find_element(By.ID, "pin").send_keys("8642")
    browser.find_element(By.ID, "confirm").send_keys("8642")
    click_and_wait(browser, browser.find_element(By.ID, "set-pin"))
    assert browser.find_element(By.ID, "pin-state").text == "来电需输入 PIN 后才会接通。"
    shot(browser, "pin-set")
    try:
        assert _route(portal_server)["action"] == "collect_pin"
        assert _route(portal_server, pin="8642")["action"] == "bridge"
    finally:
        click_and_wait(browser, browser.find_element(By.ID, "clear-pin"))
    assert _route(portal_server)["action"] == "bridge"


def test_logout_invalidates_the_session_on_the_server(browser, base_url, portal_server):
    import urllib.request

    login(browser, base_url, ACME_NUMBER, portal_server.company_password)
    cookie = browser.get_cookie("tel400_portal")["value"]

    def replay() -> int:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kw):
                return None

        req = urllib.request.Request(f"{base_url}/n/{ACME_NUMBER}/", headers={"Cookie": f"tel400_portal={cookie}"})
        try:
            with urllib.request.build_opener(NoRedirect).open(req) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert replay() == 200
    click_and_wait(browser, browser.find_element(By.ID, "logout"))
    assert replay() == 303


def test_lockout_after_failed_logins(browser, base_url):
    for _ in range(5):
        login(browser, base_url, "4001532532", "wrong-password")
        assert browser.find_element(By.ID, "login-error").text == "账号或密码错误。"
    login(browser, base_url, "4001532532", "wrong-password")
    assert "登录失败次数过多" in browser.find_element(By.ID, "login-error").text
    shot(browser, "login-locked-out")


def test_english_by_accept_language(base_url, portal_server):
    from .conftest import new_driver

    d = new_driver("en")
    try:
        d.get(base_url + "/login")
        assert d.find_element(By.TAG_NAME, "h1").text == "Company login"
        login(d, base_url, ACME_NUMBER, portal_server.company_password)
        assert d.find_element(By.CSS_SELECTOR, "#this-month h2").text == "This month"
        shot(d, "company-home-en")
    finally:
        d.quit()


def test_passwords_the_operator_resets_and_the_company_changes(browser, base_url):
    browser.get(base_url + "/login/operator")
    assert browser.find_element(By.ID, "login").is_displayed()
    shot(browser, "operator-login")
    login(browser, base_url, OPERATOR, OPERATOR_PASSWORD, operator=True)

    # the operator's own password: a mistyped confirmation is refused beside the form, nothing changes
    browser.get(base_url + "/operator/account")
    browser.find_element(By.ID, "current").send_keys(OPERATOR_PASSWORD)
    browser.find_element(By.ID, "new").send_keys("operator-pass-2")
    browser.find_element(By.ID, "confirm").send_keys("operator-pass-3")
    click_and_wait(browser, browser.find_element(By.ID, "save-password"))
    assert browser.find_element(By.ID, "password-error").text == "两次输入的密码不一致。"
    shot(browser, "operator-account")

    # the operator resets the other company's password; that company then logs in with it
    browser.get(f"{base_url}/n/{OTHER_NUMBER}/account")
    shot(browser, "operator-reset-password")
    browser.find_element(By.ID, "new").send_keys("reset-by-op-1")
    browser.find_element(By.ID, "confirm").send_keys("reset-by-op-1")
    click_and_wait(browser, browser.find_element(By.ID, "save-password"))
    browser.delete_all_cookies()
    login(browser, base_url, OTHER_NUMBER, "reset-by-op-1")
    assert browser.find_element(By.ID, "number").text == OTHER_NUMBER

    # the company changes it again from its own page, and logs in with the new one
    browser.get(f"{base_url}/n/{OTHER_NUMBER}/account")
    shot(browser, "company-account")
    browser.find_element(By.ID, "current").send_keys("reset-by-op-1")
    browser.find_element(By.ID, "new").send_keys("changed-by-co-2")
    browser.find_element(By.ID, "confirm").send_keys("changed-by-co-2")
    click_and_wait(browser, browser.find_element(By.ID, "save-password"))
    browser.delete_all_cookies()
    login(browser, base_url, OTHER_NUMBER, "changed-by-co-2")
    assert browser.find_element(By.ID, "number").text == OTHER_NUMBER
