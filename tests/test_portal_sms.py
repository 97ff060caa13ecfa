"""The portal's SMS pages: address book (CSV import), group sends with progress and their controls,
the read-only opt-out list; escaping, CSRF, and a company kept to its own number."""

from __future__ import annotations

import re

import pytest

from tel400.smsstore import SmsStore

from .portal_harness import ACME_NUMBER, OTHER_NUMBER, PortalClient, make_portal

BASE = f"/portal/n/{ACME_NUMBER}"
CONTACTS, SENDS, OPT_OUTS = f"{BASE}/contacts", f"{BASE}/sends", f"{BASE}/opt-outs"
CSV = "phone,name,tags,city\n13901012345,张三,vip,北京\n13901012346,李四,vip;new,上海\n"
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture
def portal(tmp_path, impl):
    service, accounts = make_portal(tmp_path, impl_name=impl.name)
    service.sms_store = SmsStore(tmp_path / "sms.db")
    with PortalClient(service) as client:
        yield client, service
    service.sms_store.close()
    service.stop()


def _import(client, text=CSV, **files):
    data = {"lines": text} if not files else {}
    return client.post(CONTACTS + "/import", data={"csrf": client.csrf(CONTACTS), **data}, files=files or None)


def _job(client, **fields):
    body = {"template": "{name}您好，{city}店开业", "tags": "vip", "phones": "", "rate": "5", "not_before": "",
            "not_after": "", **fields}
    return client.form(SENDS, body)


def test_import_by_paste_and_by_upload_lists_each_bad_line(portal):
    client, service = portal
    client.login_company()
    r = _import(client, CSV + "12,太短,vip,x\n")
    assert r.status_code == 422
    rows = re.findall(r'<tr class="bad-line"><td>(\d+)</td><td><code>([^<]*)</code>', r.text)
    assert rows == [("4", "12,太短,vip,x")]
    assert "2 added" in r.text or "新增 2" in r.text
    assert service.sms_store.count_contacts(ACME_NUMBER) == 2
    # an uploaded file in GB18030 (what Chinese Excel saves)
    r = _import(client, file=("book.csv", "phone,name\n13901019999,王五\n".encode("gb18030"), "text/csv"))
    assert r.status_code == 303, r.text
    assert service.sms_store.contact(ACME_NUMBER, "13901019999").name == "王五"
    page = client.get(CONTACTS + "?tag=new")
    assert re.findall(r'<td class="phone">(\d+)</td>', page.text) == ["13901012346"]


def test_an_unusable_csv_is_shown_and_nothing_written(portal):
    client, service = portal
    client.login_company()
    r = _import(client, "name\nx\n")
    assert r.status_code == 422 and 'id="import-error"' in r.text
    assert service.sms_store.count_contacts(ACME_NUMBER) == 0


def test_add_delete_and_escaping(portal):
    client, service = portal
    client.login_company()
    r = client.form(CONTACTS + "/add", {"phone": "+86 139 0101 2345", "name": SCRIPT, "tags": f"{SCRIPT};vip"},
                    page=CONTACTS)
    assert r.status_code == 303
    page = client.get(CONTACTS).text
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    r = client.form(CONTACTS + "/add", {"phone": "12", "name": "x"}, page=CONTACTS)
    assert r.status_code == 422 and 'id="contact-error"' in r.text
    assert client.form(CONTACTS + "/delete", {"phone": "13901012345"}, page=CONTACTS).status_code == 303
    assert service.sms_store.contact(ACME_NUMBER, "13901012345") is None
    assert client.form(CONTACTS + "/delete", {"phone": "13901012345"}, page=CONTACTS).status_code == 404


def test_a_group_send_shows_its_progress_and_controls(portal):
    client, service = portal
    client.login_company()
    _import(client)
    r = _job(client, template=f"{SCRIPT}{{name}}", phones="13901019999\n13901019998")
    assert r.status_code == 303
    job = service.sms_store.jobs(ACME_NUMBER)[0]
    assert r.headers["location"].endswith(f"/sends/{job.job_id}") and job.total == 4
    assert job.created_by == f"company:{ACME_NUMBER}"
    page = client.get(r.headers["location"]).text
    assert SCRIPT not in page and "&lt;script&gt;" in page
    assert re.search(r'<progress id="progress" value="0" max="4">', page)
    assert "style=" not in page
    assert 'id="pause"' in page and 'id="resume"' not in page
    url = r.headers["location"]
    assert client.form(url + "/pause", {}, page=url).status_code == 303
    assert service.sms_store.job(ACME_NUMBER, job.job_id).state == "paused"
    page = client.get(url).text
    assert 'id="resume"' in page and 'id="pause"' not in page
    # a wrong state is a 409 page; no CSRF token a 403
    assert client.form(url + "/pause", {}, page=url).status_code == 409
    assert client.post(url + "/cancel", data={}).status_code == 403
    assert client.form(url + "/cancel", {}, page=url).status_code == 303
    assert service.sms_store.job(ACME_NUMBER, job.job_id).state == "cancelled"
    listing = client.get(SENDS).text
    assert '<progress value="0" max="4">' in listing and "style=" not in listing


@pytest.mark.parametrize("fields, shown", [
    ({"template": "{0.__class__}"}, "placeholder"),
    ({"template": "{nmae}"}, "unknown placeholder"),
    ({"rate": "0"}, "rate"),
    ({"rate": "1e9"}, "rate"),
    ({"rate": "fast"}, ""),
    ({"tags": "nobody"}, "no recipients"),
    ({"not_before": "25:00"}, ""),
])
def test_a_bad_group_send_is_shown_with_the_form_kept(portal, fields, shown):
    client, service = portal
    client.login_company()
    _import(client)
    r = _job(client, **fields)
    assert r.status_code == 422
    error = re.search(r'<p class="field-error" id="job-error">([^<]*)</p>', r.text)
    assert error and shown in error.group(1)
    assert service.sms_store.jobs(ACME_NUMBER) == []


def test_opt_outs_are_listed_read_only(portal):
    client, service = portal
    service.sms_store.opt_out(ACME_NUMBER, "13901012345")
    service.sms_store.opt_out(OTHER_NUMBER, "13901019999")
    client.login_company()
    page = client.get(OPT_OUTS).text
    assert re.findall(r'<td class="phone">(\d+)</td>', page) == ["13901012345"]
    assert "<form method=\"post\"" not in page.split("<main>")[1]
    assert client.post(OPT_OUTS, data={}).status_code == 405


def test_a_company_cannot_reach_another_numbers_pages_or_jobs(portal):
    client, service = portal
    store = service.sms_store
    store.put_contact(OTHER_NUMBER, "13901010000", name="other")
    other_job = store.create_job(OTHER_NUMBER, "hi", phones=["13901010000"], rate=1, actor="test")
    client.login_company()
    other = f"/portal/n/{OTHER_NUMBER}"
    for path in ("/contacts", "/sends", "/opt-outs", f"/sends/{other_job.job_id}"):
        assert client.get(other + path).status_code == 403, path
    token = client.csrf(CONTACTS)
    for path in ("/contacts/add", "/contacts/delete", "/contacts/import", "/sends", f"/sends/{other_job.job_id}/pause"):
        assert client.post(other + path, data={"csrf": token, "phone": "13901010000"}).status_code == 403, path
    # the other number's job under its own number's URL: no such job
    assert client.get(f"{SENDS}/{other_job.job_id}").status_code == 404
    assert client.form(f"{SENDS}/{other_job.job_id}/cancel", {}, page=SENDS).status_code == 404
    assert client.get(f"{SENDS}/nonsense").status_code == 404
    assert store.job(OTHER_NUMBER, other_job.job_id).state == "scheduled"
    assert store.contact(OTHER_NUMBER, "13901010000") is not None


def test_the_operator_sees_any_numbers_pages(portal):
    client, service = portal
    service.sms_store.put_contact(OTHER_NUMBER, "13901010000", name="乙方")
    client.login_operator()
    page = client.get(f"/portal/n/{OTHER_NUMBER}/contacts")
    assert page.status_code == 200 and "乙方" in page.text


def test_without_an_sms_store_the_pages_are_hidden_and_answer_404(portal):
    client, service = portal
    client.login_company()
    assert 'href="/portal/n/4001012345/sends"' in client.get(f"{BASE}/").text
    service.sms_store.close()
    service.sms_store = None
    assert 'href="/portal/n/4001012345/sends"' not in client.get(f"{BASE}/").text
    for path in (CONTACTS, SENDS, OPT_OUTS):
        assert client.get(path).status_code == 404
    service.sms_store = SmsStore(":memory:")  # the fixture closes it


def test_pages_speak_english_too(portal):
    client, _ = portal
    client.login_company()
    zh = client.get(SENDS).text
    en = client.get(SENDS, headers={"Accept-Language": "en"}).text
    assert "群发" in zh and "Group sends" in en


def test_a_csv_over_the_upload_limit_is_refused_whole(portal):
    client, service = portal
    client.login_company()
    big = ("phone\n" + "13901012345\n" * 30_000).encode()  # 360 KB > 256 KiB (--portal-max-upload)
    r = client.post(CONTACTS + "/import", data={"csrf": client.csrf(CONTACTS)}, files={"file": ("big.csv", big)})
    assert r.status_code == 413
    assert service.sms_store.count_contacts(ACME_NUMBER) == 0
