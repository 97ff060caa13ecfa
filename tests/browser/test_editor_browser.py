"""The routing editor in Chromium against a real tel400-http of its own (edits here change routing)."""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.by import By

from ..portal_harness import ACME_NUMBER, OPERATOR, OPERATOR_PASSWORD, PortalServer
from .conftest import click_and_wait, login, new_driver, shot

CALLER = "13901012345"  # Beijing: the embedded plan's rule "beijing" answers it at 09:00


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = PortalServer(tmp_path_factory.mktemp("editor-browser"), "--at-tolerance", "inf").start()
    yield s
    s.stop()


@pytest.fixture
def editor(browser, server):
    """The company's browser on its routing editor."""
    base = server.url + "/portal"
    login(browser, base, ACME_NUMBER, server.company_password)
    browser.get(f"{base}/n/{ACME_NUMBER}/editor")
    return browser


def route(server) -> dict:
    body = json.dumps({"dialed": ACME_NUMBER, "caller": CALLER, "at": "2026-11-24T09:00"}).encode()
    status, answer = server.request("POST", "/v1/route", body, {"content-type": "application/json"})
    assert status == 200, answer
    return json.loads(answer)


def rule_names(driver) -> list[str]:
    return [e.get_attribute("value") for e in driver.find_elements(By.CSS_SELECTOR, "li.rule input[name$='.name']")]


def rule_index(driver, name: str) -> int:
    return rule_names(driver).index(name)


def field(driver, name: str):
    return driver.find_element(By.CSS_SELECTOR, f"[name='{name}']")


def test_company_edits_a_target_and_routing_follows(editor, server):
    assert route(server)["targets"][0] == "13901010001"
    shot(editor, "editor")
    i = rule_index(editor, "beijing")
    target = field(editor, f"rules.{i}.targets.0.to")
    target.clear()
    target.send_keys("13901010066")
    click_and_wait(editor, editor.find_element(By.ID, "save"))
    assert "计划已保存" in editor.find_element(By.CSS_SELECTOR, "p.flash.ok").text
    assert route(server)["targets"][0] == "13901010066"
    assert field(editor, f"rules.{i}.targets.0.to").get_attribute("value") == "13901010066"


def test_a_bad_time_slot_shows_the_error_beside_it_and_nothing_is_stored(editor, server):
    before = route(server)
    i = rule_index(editor, "beijing")
    slot = editor.find_element(By.ID, f"rules-{i}-time-0")
    kept = slot.get_attribute("value")
    slot.clear()
    slot.send_keys("25:00-26:00")
    click_and_wait(editor, editor.find_element(By.ID, "save"))
    error = editor.find_element(By.ID, f"err-rules-{i}-time")
    assert "25:00" in error.text and error.is_displayed()
    slot = editor.find_element(By.ID, f"rules-{i}-time-0")
    assert slot.get_attribute("aria-describedby") == f"err-rules-{i}-time"
    assert slot.get_attribute("value") == "25:00-26:00"  # kept for correcting
    # the error sits inside the time slots' fieldset, beside the input
    assert error.find_element(By.XPATH, "..").get_attribute("id") == f"rules-{i}-time"
    assert editor.find_element(By.ID, "editor-problem").is_displayed()
    editor.execute_script("arguments[0].scrollIntoView({block: 'center'})", error)
    shot(editor, "editor-error")
    assert route(server) == before
    editor.get(editor.current_url)
    assert editor.find_element(By.ID, f"rules-{i}-time-0").get_attribute("value") == kept


def test_rules_move_up_and_down_and_the_order_is_saved(editor, server):
    names = rule_names(editor)
    up = editor.find_elements(By.CSS_SELECTOR, "li.rule button.up")[2]
    up.click()  # editor.js moves the rule in the page, no round trip
    assert rule_names(editor) == [names[0], names[2], names[1], *names[3:]]
    assert editor.find_element(By.CSS_SELECTOR, "li.rule:nth-child(2) input[name$='.name']").get_attribute("name") \
        == "rules.1.name"
    editor.find_elements(By.CSS_SELECTOR, "li.rule button.down")[1].click()
    editor.find_elements(By.CSS_SELECTOR, "li.rule button.up")[3].click()
    expected = [names[0], names[1], names[3], names[2], *names[4:]]
    assert rule_names(editor) == expected
    click_and_wait(editor, editor.find_element(By.ID, "save"))
    assert rule_names(editor) == expected


def test_the_second_of_two_concurrent_saves_is_refused(editor, server):
    base = server.url + "/portal"
    other = new_driver("zh-CN")
    try:
        login(other, base, OPERATOR, OPERATOR_PASSWORD, operator=True)
        other.get(f"{base}/n/{ACME_NUMBER}/editor")
        rate = field(other, "tariff.local")
        rate.clear()
        rate.send_keys("0.2")
        mine = field(editor, "tariff.local")
        mine.clear()
        mine.send_keys("0.7")
        click_and_wait(other, other.find_element(By.ID, "save"))
        assert other.find_elements(By.CSS_SELECTOR, "p.flash.ok")
        click_and_wait(editor, editor.find_element(By.ID, "save"))
        problem = editor.find_element(By.ID, "editor-problem").text
        assert f"operator:{OPERATOR}" in problem and "未保存" in problem
        assert field(editor, "tariff.local").get_attribute("value") == "0.7"
        editor.execute_script("window.scrollTo(0, 0)")
        shot(editor, "editor-stale")
        editor.get(editor.current_url)
        assert field(editor, "tariff.local").get_attribute("value") == "0.2"
    finally:
        other.quit()
