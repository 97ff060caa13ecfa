"""The week view, try a call and the usage page: built from the library, dry runs, one number per session."""

from __future__ import annotations

import datetime as _dt
import html
import re

import attrs
import pytest

from tel400.simulate import week_grid

from .http_harness import Client
from .portal_harness import ACME_NUMBER, OTHER_NUMBER, PortalClient, make_portal

WEEK = f"/portal/n/{ACME_NUMBER}/week"
USAGE = f"/portal/n/{ACME_NUMBER}/usage"
CELL = re.compile(r'<td class="cell ([^"]+)" data-rule="([^"]*)" data-action="([^"]*)" data-target="([^"]*)" '
                  r'data-reason="([^"]*)">')
HEAD = re.compile(r'<th scope="col" class="day [^"]+" data-day="([^"]+)" data-kind="([^"]+)">')


@pytest.fixture
def portal(tmp_path):
    service, accounts = make_portal(tmp_path)
    with PortalClient(service) as client:
        yield client, service
    service.stop()


def _usage_values(service):
    return [u.used for u in service.router.cap_usage(ACME_NUMBER)]


def test_week_view_is_the_library_grid(portal):
    client, service = portal
    client.login_company()
    r = client.get(WEEK, params={"province": "CN-GD", "start": "2026-09-28"})
    assert r.status_code == 200, r.text
    plans = attrs.evolve(service.router.settings, numbers=(service.router.plan_of(ACME_NUMBER),))
    grid = week_grid(plans, ACME_NUMBER, "CN-GD", start=_dt.date(2026, 9, 28))
    cells = CELL.findall(r.text)
    assert len(cells) == 7 * 24
    by_hour = [(day, hour) for hour in range(24) for day in range(7)]  # the table is row (hour) by row
    for (day, hour), (css, rule, action, target, reason) in zip(by_hour, cells):
        cell = grid.days[day].cells[hour]
        assert (rule, action, target, reason) == (cell.rule or "", cell.action, cell.target or "", cell.reason)
        index = grid.rule_index(cell.rule)
        assert css.split()[0] == ("rule-none" if index is None else f"rule-{index % 8}")
    heads = HEAD.findall(r.text)
    assert heads[3] == ("2026-10-01", "holiday")
    assert "style=" not in r.text and "<script" not in r.text


def test_week_view_marks_adjusted_working_days_in_both_languages(portal):
    client, _ = portal
    client.login_company()
    r = client.get(WEEK, params={"province": "北京", "start": "2026-10-05"})
    assert ("2026-10-10", "adjusted_workday") in HEAD.findall(r.text)
    assert "调休上班" in r.text and "法定节假日" in r.text  # Chinese is the default
    r = client.get(WEEK, params={"province": "Beijing", "start": "2026-10-05"}, headers={"Accept-Language": "en"})
    assert "working day (调休)" in r.text and "public holiday" in r.text


@pytest.mark.parametrize("params, field", [
    ({"province": "Atlantis"}, "province"),
    ({"province": "x" * 5000}, "province"),
    ({"start": "2026-02-30"}, "start"),
    ({"start": "99999-01-01"}, "start"),
    ({"caller": "12", "at": "2026-11-24T09:00"}, "caller"),
    ({"caller": "", "at": "2026-11-24T09:00"}, "caller"),
    ({"caller": "13901012345", "at": "tomorrow"}, "at"),
    ({"caller": "13901012345", "at": "2026-11-24T09:00+08:00"}, "at"),
    ({"caller": "13901012345", "at": "2026-11-24T09:00", "channel": "fax"}, "channel"),
    ({"caller": "13901012345", "at": "2026-11-24T09:00", "pin": "12ab"}, "pin"),
])
def test_bad_fields_are_named_beside_them(portal, params, field):
    client, _ = portal
    client.login_company()
    r = client.get(WEEK, params=params)
    assert r.status_code == 422
    assert f'id="{field}-error"' in r.text
    assert 'id="trial"' not in r.text


def test_try_a_call_shows_the_decision_and_trace_and_counts_nothing(portal):
    client, service = portal
    client.login_company()
    before = _usage_values(service)
    for _ in range(3):
        r = client.get(WEEK, params={"caller": "13901012345", "at": "2026-11-24T09:30", "channel": "voice"})
        assert r.status_code == 200, r.text
    decision = service.router.explain(ACME_NUMBER, "13901012345", at=_dt.datetime(2026, 11, 24, 9, 30))
    assert f'<dd id="trial-action">{decision.action}</dd>' in r.text
    assert f'<dd id="trial-rule">{decision.rule}</dd>' in r.text
    trace = re.search(r'<ol id="trial-trace">(.*?)</ol>', r.text, re.S).group(1)
    items = [html.unescape(i).strip() for i in re.findall(r"<li>(.*?)</li>", trace, re.S)]
    assert items == [str(step) for step in decision.explain] and len(items) > 2
    # an SMS, and a wrong PIN: still nothing counted
    client.get(WEEK, params={"caller": "13901012345", "at": "2026-11-24T09:30", "channel": "sms", "pin": "0000"})
    assert _usage_values(service) == before


def test_usage_page_shows_caps_and_the_month(portal):
    client, service = portal
    client.login_company()
    api = Client(service)
    for _ in range(4):  # SMS reach the messaging desk at any hour, counted by the daily calls cap
        assert api.route(f"10657{ACME_NUMBER}", "13901012345", at=None, channel="sms")["action"] == "bridge"
    r = client.get(USAGE)
    assert r.status_code == 200, r.text
    row = re.search(r'<tr class="cap" data-cap="calls/day/number">(.*?)</tr>', r.text, re.S).group(1)
    assert '<td class="used">4</td>' in row and '<td class="limit">1000</td>' in row
    assert '<meter min="0" max="1" low="0.7" high="0.9" optimum="0" value="0.004">' in row
    assert 'data-cap="cost/month/number"' in r.text and 'id="month-calls"' in r.text
    assert "style=" not in r.text
    home = client.get(f"/portal/n/{ACME_NUMBER}/")
    assert f'href="{USAGE}"' in home.text and f'href="{WEEK}"' in home.text


@pytest.mark.parametrize("path", ["week", "usage"])
def test_another_companys_number_is_refused(portal, path):
    client, _ = portal
    client.login_company()
    r = client.get(f"/portal/n/{OTHER_NUMBER}/{path}", params={"caller": "13901012345", "at": "2026-11-24T09:30"})
    assert r.status_code in (403, 404)
    assert OTHER_NUMBER not in r.text or "trial" not in r.text


@pytest.mark.parametrize("path", ["week", "usage"])
def test_without_a_session_the_pages_send_to_login(portal, path):
    client, _ = portal
    r = client.get(f"/portal/n/{ACME_NUMBER}/{path}")
    assert r.status_code == 303 and "/portal/login" in r.headers["location"]


def test_operator_sees_any_numbers_pages_and_a_number_without_plan_is_404(portal):
    client, _ = portal
    client.login_operator()
    assert client.get(f"/portal/n/{OTHER_NUMBER}/week").status_code == 200
    assert client.get(f"/portal/n/{OTHER_NUMBER}/usage").status_code == 200
    assert client.get("/portal/n/4009999999/week").status_code == 404
    assert client.get("/portal/n/4009999999/usage").status_code == 404
