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
