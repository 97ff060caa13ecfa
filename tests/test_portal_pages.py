"""The blacklist, PIN and password pages: changes reach routing, are audited with their actor, and are
refused without the session's CSRF token or for another number."""

from __future__ import annotations

import re

import pytest

from .http_harness import Client
from .portal_harness import (
    ACME_NUMBER,
    ACME_PASSWORD,
    OPERATOR,
    OTHER_NUMBER,
    OTHER_PASSWORD,
    PortalClient,
    csrf_of,
    make_portal,
)

BLACKLIST = f"/portal/n/{ACME_NUMBER}/blacklist"
PIN = f"/portal/n/{ACME_NUMBER}/pin"
CALLER = "13901012345"


@pytest.fixture
def portal(tmp_path):
    service, accounts = make_portal(tmp_path)
    with PortalClient(service) as client:
        yield client, service, accounts
    service.stop()


def stored(service, number=ACME_NUMBER) -> dict:
    return service.store.get_number(number)


def route(service, caller=CALLER, **fields) -> dict:
    return Client(service).route(ACME_NUMBER, caller, **fields)


# -- blacklist -------------------------------------------------------------------------------------


def test_add_and_remove_an_entry_reaches_routing_and_is_audited(portal):
    client, service, _ = portal
    client.login_company()
    assert route(service)["action"] == "bridge"
    r = client.form(BLACKLIST + "/add", {"entry": "139 0101 2345"}, page=BLACKLIST)
    assert r.status_code == 303
    assert CALLER in stored(service)["blacklist"]
    assert route(service)["reason"] == "blacklisted"
    assert service.store.audit(ACME_NUMBER, 1)[0]["actor"] == f"company:{ACME_NUMBER}"
    page = client.get(BLACKLIST)
    assert f'<td class="entry">{CALLER}</td>' in page.text and "13901012345" in page.text
    r = client.form(BLACKLIST + "/remove", {"entry": CALLER}, page=BLACKLIST)
    assert r.status_code == 303
    assert CALLER not in stored(service)["blacklist"]
    assert route(service)["action"] == "bridge"


def test_a_bad_entry_is_shown_beside_the_field_and_nothing_changes(portal):
    client, service, _ = portal
    client.login_company()
    before = stored(service)
    r = client.form(BLACKLIST + "/add", {"entry": "<script>alert(1)</script>"}, page=BLACKLIST)
    assert r.status_code == 422
    assert 'id="entry-error"' in r.text
    assert "<script>alert(1)</script>" not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert stored(service) == before


def test_removing_an_entry_not_there_is_a_404_page(portal):
    client, service, _ = portal
    client.login_company()
    before = stored(service)
    r = client.form(BLACKLIST + "/remove", {"entry": "13800000001"}, page=BLACKLIST)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert stored(service) == before


def test_import_keeps_good_lines_and_reports_each_bad_one_with_its_line(portal):
    client, service, _ = portal
    client.login_operator()
    pasted = "13900000001\n\n# a comment\nnot-a-number\n0571*\n<b>bold</b>\n13900000001\n"
    r = client.form(BLACKLIST + "/import", {"lines": pasted}, page=BLACKLIST)
    assert r.status_code == 422
    bad = re.findall(r'<tr class="bad-line"><td>(\d+)</td><td><code>(.*?)</code>', r.text)
    assert bad == [("4", "not-a-number"), ("6", "&lt;b&gt;bold&lt;/b&gt;")]
    entries = stored(service)["blacklist"]
    assert "13900000001" in entries and "0571*" in entries and entries.count("13900000001") == 1
    assert service.store.audit(ACME_NUMBER, 1)[0]["actor"] == f"operator:{OPERATOR}"


def test_import_an_uploaded_file_utf8_with_bom_or_gb18030(portal):
    client, service, _ = portal
    client.login_company()
    for body in ("\ufeff13900000002\r\n13900000003\r\n".encode("utf-8"), "13900000004\n# 骚扰电话\n".encode("gb18030")):
        r = client.post(BLACKLIST + "/import", data={"csrf": client.csrf(BLACKLIST)},
                        files={"file": ("list.txt", body, "text/plain")})
        assert r.status_code == 303, r.text
    assert {"13900000002", "13900000003", "13900000004"} <= set(stored(service)["blacklist"])


def test_import_too_large_is_413_and_nothing_changes(tmp_path):
    service, _ = make_portal(tmp_path)
    service._mounts[0][1].state.max_upload = 1024
    with PortalClient(service) as client:
        client.login_company()
        before = stored(service)
        big = "".join(f"1390000{i:04d}\n" for i in range(200)).encode()
        r = client.post(BLACKLIST + "/import", data={"csrf": client.csrf(BLACKLIST)},
                        files={"file": ("list.txt", big, "text/plain")})
        assert r.status_code == 413
        r = client.post(BLACKLIST + "/import", data={"csrf": client.csrf(BLACKLIST), "lines": big.decode() * 20})
        assert r.status_code == 413
        assert stored(service) == before
    service.stop()


def test_import_refuses_two_files_and_a_binary_file(portal):
    client, service, _ = portal
    client.login_company()
    token = client.csrf(BLACKLIST)
    r = client.post(BLACKLIST + "/import", data={"csrf": token},
                    files=[("file", ("a.txt", b"13900000005", "text/plain")), ("file", ("b.txt", b"1", "text/plain"))])
    assert r.status_code == 400
    r = client.post(BLACKLIST + "/import", data={"csrf": token}, files={"file": ("x.bin", b"\xff\xfe\x00\x81\x30", "x")})
    assert r.status_code in (400, 422) and "13900000005" not in stored(service).get("blacklist", [])


def test_a_post_without_csrf_changes_nothing(portal):
    client, service, _ = portal
    client.login_company()
    before = stored(service)
    for path, data in ((BLACKLIST + "/add", {"entry": "13900000009"}), (BLACKLIST + "/remove", {"entry": "1710*"}),
                       (BLACKLIST + "/import", {"lines": "13900000009"}), (PIN + "/set", {"pin": "5678", "confirm": "5678"}),
                       (PIN + "/clear", {}),
                       (f"/portal/n/{ACME_NUMBER}/account", {"current": ACME_PASSWORD, "new": "x" * 10, "confirm": "x" * 10})):
        assert client.post(path, data=data).status_code == 403, path
        assert client.post(path, data={**data, "csrf": "forged"}).status_code == 403, path
    assert stored(service) == before
    client.login_company()  # the password did not change


def test_a_company_cannot_change_another_number(portal):
    client, service, _ = portal
    client.login_company()
    before = stored(service, OTHER_NUMBER)
    token = client.csrf(BLACKLIST)
    for path, data in (("blacklist/add", {"entry": "13900000009"}), ("pin/set", {"pin": "5678", "confirm": "5678"}),
                       ("pin/clear", {}), ("account", {"new": "y" * 10, "confirm": "y" * 10}), ("blacklist", None)):
        url = f"/portal/n/{OTHER_NUMBER}/{path}"
        r = client.get(url) if data is None else client.post(url, data={"csrf": token, **data})
        assert r.status_code == 403, url
    assert stored(service, OTHER_NUMBER) == before
    with PortalClient(service) as other:
        other.login_company(OTHER_NUMBER, OTHER_PASSWORD)


# -- PIN -------------------------------------------------------------------------------------------


def test_set_a_pin_then_routing_asks_for_it_then_clear_it(portal):
    client, service, _ = portal
    client.login_company()
    assert route(service, at="2026-11-24T09:00")["action"] == "bridge"
    r = client.form(PIN + "/set", {"pin": "2468", "confirm": "2468"}, page=PIN)
    assert r.status_code == 303
    tree = stored(service)
    assert "pin" not in tree and tree["pin_hash"].startswith("scrypt:") and "2468" not in tree["pin_hash"]
    asked = route(service, at="2026-11-24T09:00")
    assert asked["action"] == "collect_pin"
    assert route(service, at="2026-11-24T09:00", pin="2468")["action"] == "bridge"
    assert "来电需输入 PIN 后才会接通。" in client.get(PIN).text
    r = client.form(PIN + "/clear", {}, page=PIN)
    assert r.status_code == 303
    assert not {"pin", "pin_hash"} & set(stored(service))
    assert route(service, at="2026-11-24T09:00")["action"] == "bridge"
    assert [e["actor"] for e in service.store.audit(ACME_NUMBER, 2)] == [f"company:{ACME_NUMBER}"] * 2


@pytest.mark.parametrize("pin, confirm", [("12", "12"), ("123456789", "123456789"), ("12a4", "12a4"), ("1234", "1235")])
def test_a_bad_pin_is_shown_and_nothing_changes(portal, pin, confirm):
    client, service, _ = portal
    client.login_company()
    before = stored(service)
    r = client.form(PIN + "/set", {"pin": pin, "confirm": confirm}, page=PIN)
    assert r.status_code == 422 and 'id="pin-error"' in r.text
    assert stored(service) == before


# -- passwords -------------------------------------------------------------------------------------


def test_a_company_changes_its_password(portal):
    client, service, accounts = portal
    client.login_company()
    path = f"/portal/n/{ACME_NUMBER}/account"
    with PortalClient(service) as elsewhere:
        elsewhere.login_company()
        r = client.form(path, {"current": "wrong-password", "new": "new-password-1", "confirm": "new-password-1"})
        assert r.status_code == 422 and 'id="password-error"' in r.text
        r = client.form(path, {"current": ACME_PASSWORD, "new": "new-password-1", "confirm": "new-password-2"})
        assert r.status_code == 422
        r = client.form(path, {"current": ACME_PASSWORD, "new": "short", "confirm": "short"})
        assert r.status_code == 422
        r = client.form(path, {"current": ACME_PASSWORD, "new": "new-password-1", "confirm": "new-password-1"})
        assert r.status_code == 303
        assert client.get(path).status_code == 200  # this session stays
        assert elsewhere.get(path).status_code == 303  # the other one is logged out
    with PortalClient(service) as fresh:
        assert fresh.login(ACME_NUMBER, ACME_PASSWORD).status_code == 401
        assert fresh.login(ACME_NUMBER, "new-password-1").status_code == 303
    actions = [(e["actor"], e["action"]) for e in accounts.audit_entries(f"company:{ACME_NUMBER}")]
    assert (f"company:{ACME_NUMBER}", "password") in actions


def test_the_operator_resets_a_company_password(portal):
    client, service, accounts = portal
    with PortalClient(service) as company:
        company.login_company()
        client.login_operator()
        path = f"/portal/n/{ACME_NUMBER}/account"
        assert "current" not in client.get(path).text.split('id="password-form"')[1].split("</form>")[0].replace(
            'autocomplete="current-password"', "")
        r = client.form(path, {"new": "reset-by-op-1", "confirm": "reset-by-op-1"})
        assert r.status_code == 303
        assert company.get(f"/portal/n/{ACME_NUMBER}/").status_code == 303  # logged out
        assert company.login(ACME_NUMBER, "reset-by-op-1").status_code == 303
    newest = accounts.audit_entries(f"company:{ACME_NUMBER}")[0]
    assert (newest["action"], newest["actor"]) == ("password", f"operator:{OPERATOR}")
    r = client.form("/portal/n/4009999999/account", {"new": "reset-by-op-1", "confirm": "reset-by-op-1"},
                    page=path)
    assert r.status_code == 404


def test_the_operator_changes_their_own_password(portal):
    client, service, _ = portal
    client.login_operator()
    r = client.form("/portal/operator/account", {"current": "operator-pass-1", "new": "operator-pass-2",
                                                 "confirm": "operator-pass-2"})
    assert r.status_code == 303
    with PortalClient(service) as fresh:
        assert fresh.login(OPERATOR, "operator-pass-2", kind="operator").status_code == 303


def test_a_company_cannot_open_operator_pages(portal):
    client, _, _ = portal
    client.login_company()
    assert client.get("/portal/operator/account").status_code == 403
    token = csrf_of(client.get(f"/portal/n/{ACME_NUMBER}/").text)
    assert client.post("/portal/operator/account", data={"csrf": token}).status_code == 403


def test_plans_from_a_file_are_shown_and_changes_answer_409(tmp_path):
    from tel400_http import Service
    from tel400_http.portal import create_portal
    from tel400_http.portal.accounts import Accounts

    import tel400

    from .conftest import EXAMPLES
    from .portal_harness import SECRET

    plans = tel400.load_plans(EXAMPLES / "manual.toml")
    service = Service(tel400.Router(plans), store=None)
    accounts = Accounts(str(tmp_path / "portal.db"))
    accounts.set_company_password(ACME_NUMBER, ACME_PASSWORD, actor="test")
    service.mount("/portal", create_portal(service, accounts=accounts, secret_key=SECRET, https=False))
    with PortalClient(service) as client:
        client.login_company()
        page = client.get(BLACKLIST)
        assert page.status_code == 200 and '<td class="entry">1710*</td>' in page.text
        r = client.form(BLACKLIST + "/add", {"entry": "13900000000"}, page=BLACKLIST)
        assert r.status_code == 409
    service.stop()
