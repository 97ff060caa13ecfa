"""The portal's answers to a security review: logins that outlive their number, audit floods, hostile forms,
forged client addresses, lockout races, file modes."""

from __future__ import annotations

import pytest
from tel400_http.portal.accounts import Accounts

from .http_harness import ADMIN, Client
from .portal_harness import (
    OTHER_NUMBER,
    OTHER_PASSWORD,
    PortalClient,
    make_portal,
)


@pytest.fixture
def portal(tmp_path):
    service, accounts = make_portal(tmp_path)
    with PortalClient(service) as client:
        yield client, service, accounts
    service.stop()


# -- a deleted number takes its company login with it ------------------------------------------------


def test_a_deleted_and_recreated_number_does_not_open_to_its_old_company(portal):
    client, service, accounts = portal
    client.login_company(OTHER_NUMBER, OTHER_PASSWORD)
    blacklist = f"/portal/n/{OTHER_NUMBER}/blacklist"
    assert client.get(blacklist).status_code == 200
    admin = Client(service)
    assert admin.delete(f"/v1/numbers/{OTHER_NUMBER}", token=ADMIN).status_code == 204
    assert admin.put(f"/v1/numbers/{OTHER_NUMBER}", token=ADMIN, json={"rules": []}).status_code == 201
    # the old session is over, and the old password opens nothing
    assert client.get(blacklist).status_code == 303
    with PortalClient(service, address="10.0.0.9") as other:
        assert other.login(OTHER_NUMBER, OTHER_PASSWORD).status_code != 303
    assert not accounts.has_account("company", OTHER_NUMBER)
    forgotten = [e for e in accounts.audit_entries(f"company:{OTHER_NUMBER}") if e["action"] == "forgotten"]
    assert [(e["actor"], e["detail"]) for e in forgotten] == [("operator", {"event": "deleted"})]


def test_creating_a_number_forgets_a_login_left_by_another_process(portal):
    """A number deleted elsewhere (the CLI) and created again here starts without the old login."""
    client, service, accounts = portal
    service.store.delete_number(OTHER_NUMBER, actor="cli")  # no event: another process
    service._applied(OTHER_NUMBER)
    assert accounts.has_account("company", OTHER_NUMBER)
    assert Client(service).put(f"/v1/numbers/{OTHER_NUMBER}", token=ADMIN, json={"rules": []}).status_code == 201
    assert not accounts.has_account("company", OTHER_NUMBER)


def test_a_plan_change_of_an_existing_number_keeps_its_login(portal):
    client, service, accounts = portal
    client.login_company(OTHER_NUMBER, OTHER_PASSWORD)
    assert Client(service).put(f"/v1/numbers/{OTHER_NUMBER}", token=ADMIN, json={"rules": []}).status_code == 200
    assert client.get(f"/portal/n/{OTHER_NUMBER}/blacklist").status_code == 200


def test_forget_company_ends_the_sessions_and_keeps_other_companies(tmp_path):
    accounts = Accounts(str(tmp_path / "portal.db"))
    accounts.set_company_password("4001012345", "acme-pass-123", actor="test")
    accounts.set_company_password("4001100868", "other-pass-123", actor="test")
    gone = accounts.check_login("company", "4001100868", "other-pass-123", "1.2.3.4")
    kept = accounts.check_login("company", "4001012345", "acme-pass-123", "1.2.3.4")
    assert accounts.forget_company("4001100868", actor="operator:x", event="deleted") is True
    assert accounts.session(gone.id) is None
    assert accounts.session(kept.id) is not None
    assert accounts.forget_company("4001100868", actor="operator:x", event="deleted") is False


# -- hostile forms -----------------------------------------------------------------------------------


def _multipart(fields: dict[str, bytes], boundary: str = "B") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
             for name, value in fields.items()]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("charset", ["unicode_escape", "utf-7", "latin-1"])
def test_a_form_in_another_charset_than_utf8_is_a_400(portal, charset):
    client, _, _ = portal
    csrf = client.csrf()
    body = _multipart({"csrf": csrf.encode(), "login": b"4001012345", "password": b"\\ud800aaaaaa"})
    r = client.post("/portal/login", content=body,
                    headers={"content-type": f"multipart/form-data; boundary=B; charset={charset}"})
    assert r.status_code == 400, r.text
    r = client.post("/portal/login", content=f"csrf={csrf}&login=4001012345&password=x".encode(),
                    headers={"content-type": f"application/x-www-form-urlencoded; charset={charset}"})
    assert r.status_code == 400, r.text


def test_a_multipart_form_is_refused_where_no_file_is_asked_for(portal):
    client, _, _ = portal
    body = _multipart({"csrf": client.csrf().encode(), "login": b"4001012345", "password": b"acme-pass-123"})
    r = client.post("/portal/login", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 415, r.text
    assert "<!doctype html>" in r.text.lower()


def test_a_form_value_that_is_not_utf8_text_is_a_400(portal, monkeypatch):
    """A lone surrogate (which no UTF-8 decoder makes, but a codec Starlette picks might) is refused."""
    import starlette.formparsers

    monkeypatch.setattr(starlette.formparsers, "unquote_plus", lambda text, **_kw: "\ud800" + text)
    client, _, _ = portal
    r = client.post("/portal/login", data={"csrf": client.csrf(), "login": "4001012345", "password": "x" * 9})
    assert r.status_code == 400, r.text


def test_utf8_and_ascii_charsets_are_accepted(portal):
    client, _, _ = portal
    for charset in ("utf-8", "UTF-8", "us-ascii"):
        csrf = client.csrf()
        r = client.post("/portal/login", content=f"csrf={csrf}&login=4001012345&password=acme-pass-123".encode(),
                        headers={"content-type": f"application/x-www-form-urlencoded; charset={charset}"})
        assert r.status_code == 303, (charset, r.text)
        client.cookies.clear()


def test_a_client_gone_mid_form_is_no_server_error(portal):
    import asyncio

    _client, service, _ = portal
    messages = iter([{"type": "http.request", "body": b"csrf=x&login=4001012345", "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/portal/login", "raw_path": b"/portal/login", "root_path": "", "query_string": b"",
             "headers": [(b"host", b"tel400.test"), (b"content-type", b"application/x-www-form-urlencoded")],
             "client": ("10.0.0.1", 5000), "server": ("tel400.test", 80)}
    asyncio.run(service(scope, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [400]


# -- a real server: forwarded addresses, secrets off the command line, file modes ---------------------

_ROUTE = b'{"dialed": "4001012345", "caller": "13901012345"}'


def _start(tmp_path, *args, env=None):
    import os

    from .http_harness import ServerProcess

    server = ServerProcess(tmp_path, "--switch-allow", "10.9.9.9", *args)
    server.start_options = {"env": {**os.environ, **(env or {})}}
    return server.start()


def test_a_forged_forwarded_address_is_not_believed(tmp_path):
    server = _start(tmp_path, env={"TEL400_OPERATOR_PASSWORD": "from-the-env-1"})
    try:
        status, _ = server.request("POST", "/v1/route", _ROUTE, {"X-Forwarded-For": "10.9.9.9"})
        assert status == 403
        assert "password" not in server.banner.split("operator")[1].split("\n")[0]  # nothing made: it was given
    finally:
        server.stop()
    accounts = Accounts(str(tmp_path / "tel400-data" / "portal.db"))
    assert accounts.check_login("operator", "operator", "from-the-env-1", "10.0.0.1") is not None
    import stat

    for name in ("portal.db", "plans.db"):
        assert stat.S_IMODE((tmp_path / "tel400-data" / name).stat().st_mode) == 0o600, name


def test_forwarded_allow_ips_believes_the_named_proxy(tmp_path):
    (tmp_path / "pw").write_text("from-a-file-12\n")
    server = _start(tmp_path, "--forwarded-allow-ips", "127.0.0.1", "--operator-password-file", str(tmp_path / "pw"))
    try:
        status, _ = server.request("POST", "/v1/route", _ROUTE, {"X-Forwarded-For": "10.9.9.9"})
        assert status == 200
    finally:
        server.stop()
    accounts = Accounts(str(tmp_path / "tel400-data" / "portal.db"))
    assert accounts.check_login("operator", "operator", "from-a-file-12", "10.0.0.1") is not None


# -- lockout: a new password ends it; concurrent guesses do not pass the limit --------------------------


def test_setting_a_password_clears_that_logins_failures(tmp_path):
    accounts = Accounts(str(tmp_path / "portal.db"), login_failures=3)
    accounts.ensure_operator("operator", "right-password-1")
    for n in range(3):
        assert accounts.check_login("operator", "operator", "wrong-password", f"10.0.0.{n}") is None
    with pytest.raises(Exception, match="locked out"):
        accounts.check_login("operator", "operator", "right-password-1", "10.0.1.1")
    accounts.ensure_operator("operator", "right-password-2")  # tel400-http --operator-password …
    assert accounts.check_login("operator", "operator", "right-password-2", "10.0.1.1") is not None
    assert any(e["action"] == "failures_cleared" for e in accounts.audit_entries("operator:operator"))
    # the same for a company reset by the operator
    accounts.set_company_password("4001012345", "acme-pass-123", actor="test")
    for n in range(3):
        accounts.check_login("company", "4001012345", "wrong-password", f"10.0.2.{n}")
    accounts.set_company_password("4001012345", "acme-pass-456", actor="operator:operator")
    assert accounts.check_login("company", "4001012345", "acme-pass-456", "10.0.3.1") is not None


def test_concurrent_guesses_are_held_to_the_limit(tmp_path):
    import concurrent.futures

    from tel400_http.portal.accounts import LockedOut

    accounts = Accounts(str(tmp_path / "portal.db"), login_failures=5, address_failures=1000)
    accounts.ensure_operator("operator", "right-password-1")

    def guess(n):
        try:
            accounts.check_login("operator", "operator", f"wrong-{n}", f"10.0.0.{n}")
            return "checked"
        except LockedOut:
            return "locked"

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(guess, range(16)))
    assert results.count("checked") == 5


def test_sessions_per_account_are_bounded(tmp_path):
    from tel400_http.portal import accounts as module

    accounts = Accounts(str(tmp_path / "portal.db"))
    accounts.set_company_password("4001012345", "acme-pass-123", actor="test")
    sessions = [accounts.check_login("company", "4001012345", "acme-pass-123", "10.0.0.1")
                for _ in range(module.SESSIONS_PER_ACCOUNT + 2)]
    live = [s for s in sessions if accounts.session(s.id) is not None]
    assert live == sessions[2:]


# -- audit floods: plan writes per number are rate limited; failed logins never flush the account audit ----


def test_plan_writes_per_number_are_rate_limited(tmp_path):
    from tel400_http.portal import create_portal

    from .portal_harness import ACME_NUMBER, SECRET

    service, accounts = make_portal(tmp_path)
    service._mounts.clear()
    service.mount("/portal", create_portal(service, accounts=accounts, secret_key=SECRET, https=False,
                                           plan_writes_per_minute=3))
    try:
        with PortalClient(service) as client:
            client.login_company()
            page = f"/portal/n/{ACME_NUMBER}/blacklist"
            for n in range(3):
                r = client.form(page + "/add", {"entry": f"1390101000{n}"}, page=page)
                assert r.status_code == 303, r.text
            r = client.form(page + "/add", {"entry": "13901010009"}, page=page)
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1
            assert "<!doctype html>" in r.text.lower()
            assert "13901010009" not in service.store.get_number(ACME_NUMBER).get("blacklist", [])
        with PortalClient(service, address="10.0.0.2") as other:  # another number is not held back
            other.login_company(OTHER_NUMBER, OTHER_PASSWORD)
            page = f"/portal/n/{OTHER_NUMBER}/blacklist"
            assert other.form(page + "/add", {"entry": "13901010001"}, page=page).status_code == 303
    finally:
        service.stop()


def test_failed_logins_never_flush_the_account_audit(tmp_path, monkeypatch):
    from tel400_http.portal import accounts as module

    monkeypatch.setattr(module, "AUDIT_KEEP", 10)
    monkeypatch.setattr(module, "FAILURE_AUDIT_KEEP", 10)
    monkeypatch.setattr(module, "AUDIT_TRIM_EVERY", 1)
    accounts = Accounts(str(tmp_path / "portal.db"))
    accounts.set_company_password("4001012345", "acme-pass-123", actor="operator:x")
    for n in range(40):
        accounts.audit(f"company:40000000{n:02d}", "login_failed", "10.0.0.1")
    assert [e["action"] for e in accounts.audit_entries("company:4001012345")] == ["password"]
    assert len(accounts.audit_entries(limit=1000)) <= 11
