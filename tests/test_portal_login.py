"""The portal's foundation: logging in and out, sessions, lockout, access by number, CSRF, headers, languages."""

from __future__ import annotations

import re

import pytest
from tel400_http.portal import CSP, SESSION_COOKIE
from tel400_http.portal.accounts import Accounts

from .portal_harness import (
    ACME_NUMBER,
    ACME_PASSWORD,
    OPERATOR,
    OPERATOR_PASSWORD,
    OTHER_NUMBER,
    PortalClient,
    make_portal,
)


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def portal(tmp_path):
    service, accounts = make_portal(tmp_path)
    with PortalClient(service) as client:
        yield client, service, accounts
    service.stop()


def test_company_logs_in_and_sees_its_number(portal):
    client, _, _ = portal
    r = client.login_company()
    assert r.headers["location"] == f"/portal/n/{ACME_NUMBER}/"
    page = client.get(r.headers["location"])
    assert page.status_code == 200
    assert f'<h1 id="number">{ACME_NUMBER}</h1>' in page.text
    assert 'id="this-month"' in page.text
    assert client.get("/portal/").headers["location"] == f"/portal/n/{ACME_NUMBER}/"


def test_a_company_may_type_its_number_in_any_written_form(portal):
    client, _, _ = portal
    r = client.login("400-101-2345", ACME_PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == f"/portal/n/{ACME_NUMBER}/"


def test_wrong_password_is_refused_and_opens_nothing(portal):
    client, _, accounts = portal
    r = client.login(ACME_NUMBER, "not-the-password")
    assert r.status_code == 401
    assert 'id="login-error"' in r.text
    assert client.get(f"/portal/n/{ACME_NUMBER}/").status_code == 303
    assert accounts.audit_entries()[0]["action"] == "login_failed"


def test_pages_need_a_login(portal):
    client, _, _ = portal
    for path in (f"/portal/n/{ACME_NUMBER}/", "/portal/operator/", "/portal/"):
        r = client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/portal/login", path


def test_a_company_cannot_open_another_number_by_crafted_url(portal):
    client, _, _ = portal
    client.login_company()
    for path in (f"/portal/n/{OTHER_NUMBER}/", "/portal/operator/", f"/portal/n/{OTHER_NUMBER}/blacklist",
                 f"/portal/n/{OTHER_NUMBER}/pin", f"/portal/n/{OTHER_NUMBER}/account"):
        r = client.get(path)
        assert r.status_code == 403, path
        assert 'id="number"' not in r.text and "id=\"entries\"" not in r.text
    for path in ("/portal/n/4001012345x/", "/portal/n/400-101-2345/", "/portal/n/%2B864001012345/pin"):
        assert client.get(path).status_code == 404, path  # one URL per number: the canonical one


def test_hostile_urls_and_forms_get_a_clear_4xx_never_a_500(portal):
    client, _, _ = portal
    client.login_operator()
    token = client.csrf("/portal/operator/")
    for path in ("/portal/n/abc/", "/portal/n/%00/blacklist", "/portal/n/%3Cscript%3E/pin", "/portal/n/" + "9" * 500 + "/",
                 "/portal/n/4009999999/", "/portal/n/4009999999/blacklist", "/portal/operator/?q=" + "%ff" * 50,
                 "/portal/operator/?after=%00&q=12"):
        r = client.get(path)
        assert 200 <= r.status_code < 500, (path, r.status_code)
        assert "<script>" not in r.text
    for path, data in (("/portal/n/4009999999/blacklist/add", {"entry": "13900000000"}),
                       ("/portal/n/4009999999/pin/clear", {}), ("/portal/lang", {"lang": "xx", "next": 5}),
                       ("/portal/n/4001012345/blacklist/add", {"entry": "1" * 5000})):
        r = client.post(path, data={"csrf": token, **data})
        assert 300 <= r.status_code < 500, (path, r.status_code)
    r = client.post("/portal/login", content=b"\xff" * 100, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403
    r = client.post("/portal/login", content=b"x" * 200_000, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    r = client.post("/portal/login", content=b"--x\r\n", headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= r.status_code < 500


def test_operator_sees_every_number(portal):
    client, service, _ = portal
    r = client.login_operator()
    assert r.headers["location"] == "/portal/operator/"
    listing = client.get("/portal/operator/")
    for number in service.router.routed_numbers_after("", 100):
        assert f"/portal/n/{number}/" in listing.text
    assert client.get(f"/portal/n/{OTHER_NUMBER}/").status_code == 200
    found = client.get("/portal/operator/", params={"q": "0868"})
    assert OTHER_NUMBER in found.text and ACME_NUMBER not in found.text.split('id="numbers"')[1]


def test_login_without_csrf_token_is_refused(portal):
    client, _, _ = portal
    client.get("/portal/login")
    r = client.post("/portal/login", data={"login": ACME_NUMBER, "password": ACME_PASSWORD})
    assert r.status_code == 403
    r = client.post("/portal/login", data={"login": ACME_NUMBER, "password": ACME_PASSWORD, "csrf": "forged"})
    assert r.status_code == 403
    assert client.get(f"/portal/n/{ACME_NUMBER}/").status_code == 303


def test_logout_ends_the_session_on_the_server(portal):
    client, service, accounts = portal
    client.login_company()
    stolen = client.cookies.get(SESSION_COOKIE)
    home = client.get(f"/portal/n/{ACME_NUMBER}/")
    r = client.post("/portal/logout", data={"csrf": re.search(r'name="csrf" value="([^"]+)"', home.text).group(1)})
    assert r.status_code == 303
    actions = [(e["actor"], e["action"]) for e in accounts.audit_entries(limit=2)]
    assert actions == [(f"company:{ACME_NUMBER}", "logout"), (f"company:{ACME_NUMBER}", "login")]
    with PortalClient(service) as replay:
        replay.cookies.set(SESSION_COOKIE, stolen, domain="tel400.test", path="/portal")
        assert replay.get(f"/portal/n/{ACME_NUMBER}/").status_code == 303


def test_a_password_reset_ends_the_sessions(portal):
    client, _, accounts = portal
    client.login_company()
    accounts.set_company_password(ACME_NUMBER, "a-new-password", actor="operator:operator")
    assert client.get(f"/portal/n/{ACME_NUMBER}/").status_code == 303


def test_the_session_cookie_is_httponly_strict_and_scoped(tmp_path):
    service, _ = make_portal(tmp_path, https=True)
    with PortalClient(service) as client:
        cookie = client.get("/portal/login").headers["set-cookie"]
    assert cookie.startswith(SESSION_COOKIE + "=")
    for part in ("path=/portal", "httponly", "samesite=strict", "secure"):
        assert part in cookie.lower(), part


def test_every_page_has_the_csp_and_no_inline_script_or_style(portal):
    client, _, _ = portal
    pages = [client.get("/portal/login"), client.get("/portal/login/operator"), client.get("/portal/nothing")]
    client.login_company()
    pages.append(client.get(f"/portal/n/{ACME_NUMBER}/"))
    pages.append(client.get(f"/portal/n/{OTHER_NUMBER}/"))
    for page in ("blacklist", "pin", "account"):
        pages.append(client.get(f"/portal/n/{ACME_NUMBER}/{page}"))
        assert pages[-1].status_code == 200, page
    pages.append(client.get("/portal/static/portal.css"))
    client.post("/portal/logout", data={"csrf": re.search(r'name="csrf" value="([^"]+)"', pages[-2].text).group(1)})
    client.login_operator()
    pages.append(client.get("/portal/operator/"))
    pages.append(client.get("/portal/operator/account"))
    for r in pages:
        assert r.headers["content-security-policy"] == CSP
        assert "script-src 'self'" in CSP and "style-src 'self'" in CSP and "unsafe-inline" not in CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<script" not in r.text.lower() and "style=" not in r.text.lower() and "<style" not in r.text.lower()


def test_unknown_pages_are_a_404_page(portal):
    client, _, _ = portal
    r = client.get("/portal/nothing/here")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")


def test_the_raw_endpoints_are_unchanged_beside_the_portal(portal):
    client, _, _ = portal
    assert client.get("/v1/ping").status_code == 200
    assert client.get("/portalx").status_code == 404
    assert client.get("/portalx").headers["content-type"] == "application/json"
    r = client.post("/v1/route", json={"dialed": ACME_NUMBER, "caller": "13901012345", "at": "2026-11-24T09:00"})
    assert r.status_code == 200 and r.json()["action"] == "bridge"


def test_a_mounted_app_gets_the_full_path_and_the_prefix_as_root_path(portal):
    _, service, _ = portal
    seen = []

    async def recorder(scope, receive, send):
        seen.append((scope["path"], scope["root_path"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    service.mount("/extra", recorder)
    with PortalClient(service) as client:
        assert client.get("/extra").status_code == 204
        assert client.get("/extra/a/b").status_code == 204
        assert client.get("/extras").status_code == 404  # a prefix of a name is not the mount
        assert client.get("/v1/ping").status_code == 200  # raw endpoints first
    assert seen == [("/extra", "/extra"), ("/extra/a/b", "/extra")]


def test_mount_refuses_a_bad_prefix(portal):
    _, service, _ = portal
    for prefix in ("portal", "/portal/", "//x"):
        with pytest.raises(ValueError):
            service.mount(prefix, None)


# -- lockout ---------------------------------------------------------------------------------------


def test_lockout_per_login_then_it_ends_after_the_window(tmp_path):
    clock = Clock()
    accounts = Accounts(str(tmp_path / "portal.db"), login_failures=3, address_failures=100, window_s=600, clock=clock)
    service, _ = make_portal(tmp_path, accounts=accounts)
    with PortalClient(service) as client:
        for _ in range(3):
            assert client.login(ACME_NUMBER, "wrong-password").status_code == 401
        locked = client.login(ACME_NUMBER, ACME_PASSWORD)
        assert locked.status_code == 401  # the right password is refused too
        assert "登录失败次数过多，请 10 分钟后再试。" in locked.text
        with PortalClient(service, address="10.0.0.9") as elsewhere:  # per login: any address
            assert elsewhere.login(ACME_NUMBER, ACME_PASSWORD).status_code == 401
            assert elsewhere.login(OTHER_NUMBER, "other-pass-123").status_code == 303  # others are not locked
        clock.t += 601
        assert client.login(ACME_NUMBER, ACME_PASSWORD).status_code == 303


def test_lockout_per_address_whatever_the_logins(tmp_path):
    clock = Clock()
    accounts = Accounts(str(tmp_path / "portal.db"), login_failures=100, address_failures=4, window_s=60, clock=clock)
    service, _ = make_portal(tmp_path, accounts=accounts)
    with PortalClient(service, address="192.0.2.7") as attacker, PortalClient(service, address="192.0.2.8") as user:
        for n in range(4):
            assert attacker.login(f"400100{n:04d}", "guess-guess").status_code == 401
        assert attacker.login(ACME_NUMBER, ACME_PASSWORD).status_code == 401
        assert attacker.login(OPERATOR, OPERATOR_PASSWORD, kind="operator").status_code == 401
        assert user.login(ACME_NUMBER, ACME_PASSWORD).status_code == 303  # another address: not locked
        clock.t += 61
        assert attacker.login(ACME_NUMBER, ACME_PASSWORD).status_code == 303


def test_lockout_settings_are_checked(tmp_path):
    for bad in ({"login_failures": 0}, {"address_failures": -1}, {"window_s": 0}, {"session_ttl_s": float("inf")}):
        with pytest.raises(ValueError):
            Accounts(":memory:", **bad)


def test_passwords_are_stored_salted_and_hashed(tmp_path):
    import sqlite3

    accounts = Accounts(str(tmp_path / "a.db"))
    accounts.set_company_password(ACME_NUMBER, ACME_PASSWORD, actor="test")
    accounts.set_company_password(OTHER_NUMBER, ACME_PASSWORD, actor="test")
    hashes = [h for (h,) in sqlite3.connect(tmp_path / "a.db").execute("SELECT hash FROM accounts")]
    assert len(set(hashes)) == 2 and all(h.startswith("scrypt:") and ACME_PASSWORD not in h for h in hashes)
    with pytest.raises(ValueError):
        accounts.set_company_password(ACME_NUMBER, "short", actor="test")


# -- languages -------------------------------------------------------------------------------------


def test_chinese_by_default_english_by_accept_language_and_by_the_switch(portal):
    client, _, _ = portal
    zh = client.get("/portal/login")
    assert '<html lang="zh-CN">' in zh.text and "企业登录" in zh.text
    en = client.get("/portal/login", headers={"Accept-Language": "fr-FR,en;q=0.5"})
    assert '<html lang="en">' in en.text and "Company login" in en.text
    assert "企业登录" in client.get("/portal/login", headers={"Accept-Language": "de"}).text
    r = client.post("/portal/lang", data={"csrf": client.csrf(), "lang": "en", "next": "/portal/login"})
    assert r.status_code == 303 and r.headers["location"] == "/portal/login"
    assert "Company login" in client.get("/portal/login", headers={"Accept-Language": "zh-CN"}).text


def test_the_language_switch_goes_back_only_into_the_portal(portal):
    client, _, _ = portal
    for target in ("https://evil.example/", "//evil.example/portal/", "/v1/route", "/portal//evil.example"):
        r = client.post("/portal/lang", data={"csrf": client.csrf(), "lang": "en", "next": target})
        assert r.headers["location"] == "/portal/", target


def test_the_account_audit_keeps_the_newest_entries_only(tmp_path, monkeypatch):
    from tel400_http.portal import accounts as accounts_module

    monkeypatch.setattr(accounts_module, "AUDIT_KEEP", 10)
    monkeypatch.setattr(accounts_module, "FAILURE_AUDIT_KEEP", 10)  # failed logins are kept apart, bounded alike
    accounts = Accounts(str(tmp_path / "a.db"))
    for i in range(1, 2001):
        accounts.audit("operator:x", "login_failed", f"198.51.100.{i % 250}", {"i": i})
    entries = accounts.audit_entries(limit=5000)
    assert entries[0]["detail"] == {"i": 2000}
    assert len(entries) < 1010  # pruned at every thousandth entry to the newest AUDIT_KEEP
    assert min(e["detail"]["i"] for e in entries) > 1000


def test_a_session_ends_after_its_life(tmp_path):
    clock = Clock()
    accounts = Accounts(str(tmp_path / "portal.db"), session_ttl_s=3600, clock=clock)
    service, _ = make_portal(tmp_path, accounts=accounts)
    with PortalClient(service) as client:
        client.login_company()
        assert client.get(f"/portal/n/{ACME_NUMBER}/").status_code == 200
        clock.t += 3601
        assert client.get(f"/portal/n/{ACME_NUMBER}/").status_code == 303
    service.stop()


def test_a_get_on_a_form_endpoint_is_a_405_page(portal):
    client, _, _ = portal
    for path in ("/portal/logout", "/portal/lang", f"/portal/n/{ACME_NUMBER}/blacklist/add"):
        r = client.get(path)
        assert r.status_code == 405 and r.headers["content-type"].startswith("text/html"), path


def test_the_cookie_holds_only_a_session_id(portal):
    import base64
    import json

    client, _, _ = portal
    client.login_company()
    payload = client.cookies.get(SESSION_COOKIE).split(".")[0]
    data = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(data) == {"sid"}  # signed, not encrypted: no number, role, password or CSRF token in it
    assert ACME_PASSWORD not in json.dumps(data)
