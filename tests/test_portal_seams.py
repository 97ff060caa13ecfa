"""The seams a review found between the portal's pages and the service: quarantined plans, the pool and
deleted numbers, number events before routing, hashing threads, store reads off the event loop."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest
import tel400
from tel400 import limits
from tel400_http.portal.pages import blacklist as blacklist_pages

from .conftest import EXAMPLES
from .http_harness import ADMIN, Client
from .portal_harness import ACME_NUMBER, PortalClient, make_portal

NEW = "4006532532"


@pytest.fixture
def portal(tmp_path):
    service, accounts = make_portal(tmp_path)
    with PortalClient(service) as client:
        yield client, service, accounts
    service.stop()


def free_numbers(client) -> list[str]:
    return re.findall(r'<td class="number">(\d+)</td>', client.get("/portal/operator/pool").text)


def _off_the_loop(fn):
    """``fn`` that fails when called on a thread running an event loop."""

    def wrapped(*args, **kwargs):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        raise AssertionError(f"{fn.__name__} ran on the event loop")

    return wrapped


# -- a stored plan the limits now refuse ------------------------------------------------------------


@pytest.fixture
def over_long_blacklist(portal, monkeypatch):
    """ACME's stored blacklist holds 60 entries; the limit is then lowered to 5 (as a restart with
    TEL400_MAX_BLACKLIST=5 would)."""
    client, service, accounts = portal
    tree = service.store.get_number(ACME_NUMBER)
    tree["blacklist"] = [f"1380000{i:04d}" for i in range(60)]
    service.store.put_number(tree, actor="test")
    monkeypatch.setattr(limits, "MAX_BLACKLIST", 5)
    client.login_company()
    return client, service


@pytest.mark.parametrize(("path", "data"), [
    ("pin/set", {"pin": "1234", "confirm": "1234"}),
    ("pin/clear", {}),
    ("blacklist/remove", {"entry": "13800000000"}),
])
def test_a_change_the_stored_plan_refuses_is_a_422_page_not_a_500(over_long_blacklist, path, data):
    client, service = over_long_blacklist
    before = service.store.get_number(ACME_NUMBER)
    page = "pin" if path.startswith("pin") else "blacklist"
    r = client.form(f"/portal/n/{ACME_NUMBER}/{path}", data, page=f"/portal/n/{ACME_NUMBER}/{page}")
    assert r.status_code == 422, r.text
    assert "blacklist" in r.text and 'id="error-message"' in r.text
    assert service.store.get_number(ACME_NUMBER) == before  # nothing stored


# -- the pool and numbers in service ----------------------------------------------------------------


def test_a_deleted_number_goes_back_to_the_pool_and_can_be_given_out_again(portal):
    client, service, accounts = portal
    client.login_operator()
    client.form("/portal/operator/pool/import", {"lines": NEW}, page="/portal/operator/pool")
    form = {"number": NEW, "company": "KFC", "target": "13901010001"}
    assert client.form("/portal/operator/create", form).status_code == 201
    assert NEW not in free_numbers(client)
    assert Client(service).delete(f"/v1/numbers/{NEW}", token=ADMIN).status_code == 204
    assert NEW in free_numbers(client)
    assert client.form("/portal/operator/create", {**form, "company": "Another"}).status_code == 201
    # a number the pool never held is not added to it by its deletion
    assert Client(service).delete("/v1/numbers/4001100868", token=ADMIN).status_code == 204
    assert "4001100868" not in free_numbers(client)


def test_the_pool_refuses_numbers_in_service(portal):
    client, service, _ = portal
    client.login_operator()
    r = client.form("/portal/operator/pool/import", {"lines": f"{NEW}\n{ACME_NUMBER}\n"},
                    page="/portal/operator/pool")
    assert r.status_code == 422
    line = rf"<td>2</td><td><code>{ACME_NUMBER}</code></td><td>(already in service|已在使用中)</td>"
    assert re.search(line, r.text), r.text
    assert free_numbers(client) == [NEW]


def test_a_number_in_the_pool_by_mistake_leaves_it_when_create_finds_its_plan(portal):
    client, service, _ = portal
    client.login_operator()
    pool = client_pool(service)
    pool.import_lines([ACME_NUMBER])  # in the pool before it was routed (another process)
    before = service.store.get_number(ACME_NUMBER)
    form = {"number": ACME_NUMBER, "company": "KFC", "target": "13901010001"}
    assert client.form("/portal/operator/create", form).status_code == 409
    assert service.store.get_number(ACME_NUMBER) == before
    assert ACME_NUMBER not in free_numbers(client)


def client_pool(service):
    portal_app = next(app for prefix, app in service._mounts if prefix == "/portal")
    return portal_app.state.pool


# -- number events come before routing catches up ---------------------------------------------------


def test_a_failing_watcher_poll_still_ends_the_deleted_numbers_login(portal, monkeypatch):
    client, service, accounts = portal
    assert accounts.has_account("company", ACME_NUMBER)

    def poll(*args, **kwargs):
        raise tel400.BackendError("the store went away mid-poll")

    monkeypatch.setattr(service.watcher, "poll", poll)
    r = Client(service).delete(f"/v1/numbers/{ACME_NUMBER}", token=ADMIN)
    assert r.status_code in (204, 503)  # the deletion is stored; routing catches up at the next poll
    assert service.store.get_number(ACME_NUMBER) is None
    assert not accounts.has_account("company", ACME_NUMBER)


def test_a_failing_number_listener_on_create_is_a_page_saying_where_the_number_is(portal):
    client, service, _ = portal
    client.login_operator()
    client.form("/portal/operator/pool/import", {"lines": NEW}, page="/portal/operator/pool")

    def broken(number, event, actor):
        raise RuntimeError("listener down")

    service.on_number(broken)
    r = client.form("/portal/operator/create", {"number": NEW, "company": "KFC", "target": "13901010001"})
    assert r.status_code == 500
    assert re.search(r'id="number-error">[^<]*(in service|投入使用)', r.text), r.text
    assert service.store.get_number(NEW) is not None


# -- hashing threads and the event loop -------------------------------------------------------------


def test_try_a_call_with_a_pin_checks_it_on_the_hashing_threads(portal, monkeypatch):
    client, service, _ = portal
    client.login_company()
    threads = []
    explain = service.router.explain

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return explain(*args, **kwargs)

    monkeypatch.setattr(service.router, "explain", recorded)
    week = f"/portal/n/{ACME_NUMBER}/week"
    call = {"caller": "13901012345", "at": "2026-11-24T09:30"}
    assert client.get(week, params={**call, "pin": "0000"}).status_code == 200
    assert client.get(week, params=call).status_code == 200
    hashing = [name.startswith("tel400-portal-hash") for name in threads]
    assert hashing == [True, False], threads


def test_records_reports_and_imports_read_off_the_event_loop(portal, monkeypatch):
    client, service, _ = portal
    client.login_company()
    monkeypatch.setattr(service, "_zone_of", _off_the_loop(service._zone_of))
    monkeypatch.setattr(blacklist_pages, "parse_lines", _off_the_loop(blacklist_pages.parse_lines))
    assert client.get(f"/portal/n/{ACME_NUMBER}/records").status_code == 200
    assert client.get(f"/portal/n/{ACME_NUMBER}/reports").status_code == 200
    r = client.form(f"/portal/n/{ACME_NUMBER}/blacklist/import", {"lines": "13912345678\n"},
                    page=f"/portal/n/{ACME_NUMBER}/blacklist")
    assert r.status_code == 303, r.text


# -- the operator's search text -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/portal/operator/", "/portal/operator/pool", "/portal/operator/vanity"])
def test_a_search_past_40_characters_is_a_400_with_a_message_by_the_field(portal, path):
    client, _, _ = portal
    client.login_operator()
    r = client.get(path, params={"q": "8" * 41})
    assert r.status_code == 400
    assert re.search(r'id="search-error">最多 40 个字符', r.text), r.text
    assert client.get(path, params={"q": "8" * 40}).status_code == 200


def test_pool_and_create_errors_are_in_the_pages_language(portal):
    client, _, _ = portal
    client.login_operator()
    r = client.get("/portal/operator/vanity", params={"q": "---"})
    assert r.status_code == 400 and "query:" not in r.text
    r = client.form("/portal/operator/create", {"number": "12345", "company": "a", "target": "13901010001"})
    assert r.status_code == 422 and re.search(r'id="number-error">请输入 400 或 800 号码', r.text)


# -- a quarantined plan on the pages that show the routed plan --------------------------------------


@pytest.fixture
def quarantined(tmp_path, monkeypatch):
    """ACME's stored plan holds 60 blacklist entries and the service starts with a limit of 5."""
    store = tel400.SqliteStore(tmp_path / "plans.db")
    store.replace_all(tel400.load_plans(EXAMPLES / "manual.toml"), actor="test")
    tree = store.get_number(ACME_NUMBER)
    tree["blacklist"] = [f"1380000{i:04d}" for i in range(60)]
    store.put_number(tree, actor="test")
    monkeypatch.setattr(limits, "MAX_BLACKLIST", 5)
    service, _ = make_portal(tmp_path, store=store)
    with PortalClient(service) as client:
        yield client, service
    service.stop()


@pytest.mark.parametrize("page", ["", "week", "usage"])
def test_a_quarantined_plan_is_shown_with_why_not_as_no_plan(quarantined, page):
    client, _ = quarantined
    client.login_operator()
    r = client.get(f"/portal/n/{ACME_NUMBER}/{page}")
    assert r.status_code == 200, r.text
    assert re.search(r'id="plan-refused">[^<]*blacklist', r.text), r.text
    assert client.get(f"/portal/n/4009999999/{page}").status_code == 404  # nothing stored: still a 404


def test_the_account_page_of_a_number_without_a_plan_is_404_for_get_and_post(quarantined):
    client, _ = quarantined
    client.login_operator()
    missing = "/portal/n/4009999999/account"
    assert client.get(missing).status_code == 404
    assert client.form(missing, {"new": "a-new-pass-1", "confirm": "a-new-pass-1"},
                       page=f"/portal/n/{ACME_NUMBER}/account").status_code == 404
    # a quarantined plan's company can still have its password reset
    assert client.get(f"/portal/n/{ACME_NUMBER}/account").status_code == 200
