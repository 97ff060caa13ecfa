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
