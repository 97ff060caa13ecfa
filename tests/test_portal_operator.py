"""The operator's portal pages: numbers, pool, vanity, new numbers, audit (portal/pages/operator.py)."""

from __future__ import annotations

import re

import pytest
import tel400
from tel400_http.portal import web
from tel400_http.portal.pages import operator as operator_pages

from .http_harness import Client
from .portal_harness import ACME_NUMBER, OTHER_NUMBER, PortalClient, make_portal

PAGES = ["/portal/operator/", "/portal/operator/pool", "/portal/operator/vanity", "/portal/operator/create",
         "/portal/operator/audit"]
FORMS = {"/portal/operator/pool/import": {"lines": "4006532532"},
         "/portal/operator/create": {"number": "4006532532", "company": "KFC", "target": "13901010001"}}


@pytest.fixture
def portal(tmp_path):
    service, accounts = make_portal(tmp_path)
    with PortalClient(service) as client:
        yield client, service, accounts
    service.stop()


def free_numbers(client) -> list[str]:
    return re.findall(r'<td class="number">(\d+)</td>', client.get("/portal/operator/pool").text)


def test_every_operator_page_is_for_the_operator_only(portal):
    client, service, _ = portal
    for path in PAGES:
        assert client.get(path).status_code == 303, path  # no session: to the login page
    client.login_company()
    token = client.csrf(f"/portal/n/{ACME_NUMBER}/")
    for path in PAGES:
        assert client.get(path).status_code == 403, path
    for path, data in FORMS.items():
        assert client.post(path, data={"csrf": token, **data}).status_code == 403, path
    assert service.store.get_number("4006532532") is None
    with PortalClient(service) as operator:
        operator.login_operator()
        for path in PAGES:
            r = operator.get(path)
            assert r.status_code == 200, (path, r.text)
            assert "<script" not in r.text


def test_forms_need_the_csrf_token(portal):
    client, _, _ = portal
    client.login_operator()
    for path, data in FORMS.items():
        assert client.post(path, data=data).status_code == 403
        assert client.post(path, data={"csrf": "forged", **data}).status_code == 403
    assert free_numbers(client) == []


def test_pool_import_reports_each_bad_line_and_keeps_the_good(portal):
    client, _, accounts = portal
    client.login_operator()
    text = "4006532532\nnot a number\n\n# a comment\n4008888888\n13901010001\n<script>x</script>\n400 123 4567\n"
    r = client.form("/portal/operator/pool/import", {"lines": text}, page="/portal/operator/pool")
    assert r.status_code == 422
    bad = re.findall(r'<tr class="bad-line"><td>(\d+)</td><td><code>(.*?)</code>', r.text)
    assert bad == [("2", "not a number"), ("6", "13901010001"), ("7", "&lt;script&gt;x&lt;/script&gt;")]
    assert free_numbers(client) == ["4001234567", "4006532532", "4008888888"]
    assert accounts.audit_entries("pool", 1)[0]["detail"] == {"added": 3, "refused": 3}
    # an uploaded file counts too; numbers already there are not added twice
    r = client.post("/portal/operator/pool/import", data={"csrf": client.csrf("/portal/operator/pool")},
                    files={"file": ("pool.txt", "4006532532\n4006666666\n".encode("gb18030"), "text/plain")})
    assert r.status_code == 200 and free_numbers(client) == ["4001234567", "4006532532", "4006666666", "4008888888"]


def test_pool_upload_past_the_limit_is_413(tmp_path):
    service = make_portal(tmp_path)[0]
    with PortalClient(service) as client:
        client.login_operator()
        token = client.csrf("/portal/operator/pool")
        limit = web.UPLOAD_BYTES
        r = client.post("/portal/operator/pool/import", data={"csrf": token},
                        files={"file": ("big.txt", b"4006532532\n" * (limit // 11 + 10), "text/plain")})
        assert r.status_code == 413
        assert free_numbers(client) == []
    service.stop()


def test_vanity_search_ranks_by_grade_and_shows_the_patterns(portal):
    client, _, _ = portal
    client.login_operator()
    client.form("/portal/operator/pool/import", {"lines": "4006532532\n4009532532\n4001230000\n4008888888\n"},
                page="/portal/operator/pool")
    r = client.get("/portal/operator/vanity", params={"q": "KFC"})
    assert r.status_code == 200
    rows = re.findall(r'<td class="number">(\d+)</td><td class="score">(\d+)</td>\s*<td class="patterns">([^<]*)</td>',
                      r.text)
    assert [n for n, _, _ in rows] == [f.number for f in tel400.vanity.search(
        ["4006532532", "4009532532", "4001230000", "4008888888"], "KFC")]
    assert {n for n, _, _ in rows} == {"4006532532", "4009532532"}
    for number, score, patterns in rows:
        g = tel400.vanity.grade(number)
        assert (int(score), patterns) == (g.score, ", ".join(g.patterns))
    assert "532" in r.text.split('id="dialled"')[1]
    r = client.get("/portal/operator/vanity", params={"q": "AAAA"})
    rows = re.findall(r'<td class="number">(\d+)</td><td class="score">(\d+)</td>', r.text)
    assert [n for n, _ in rows] == ["4008888888", "4001230000"]  # 8888888 ranks above 0000
    assert int(rows[0][1]) > int(rows[1][1])
    assert client.get("/portal/operator/vanity", params={"q": "---"}).status_code == 400


def test_create_a_number_end_to_end(portal):
    client, service, accounts = portal
    client.login_operator()
    client.form("/portal/operator/pool/import", {"lines": "4006532532\n"}, page="/portal/operator/pool")
    r = client.form("/portal/operator/create", {"number": "4006532532", "company": "肯德基 <KFC>",
                                                "target": "13901010001"})
    assert r.status_code == 201, r.text
    password = re.search(r'<code id="created-password">([^<]+)</code>', r.text).group(1)
    assert "肯德基 &lt;KFC&gt;" in r.text
    assert free_numbers(client) == []
    # the number routes now
    routed = Client(service).route("4006532532")
    assert (routed["action"], routed["targets"], routed["rule"]) == ("bridge", ["13901010001"], "all-calls")
    # the company logs in with the password shown and sees its number
    with PortalClient(service) as company:
        company.login_company("4006532532", password)
        assert "4006532532" in company.get("/portal/n/4006532532/").text
    # who did it is audited: the plan (the store) and the account (the portal)
    page = client.get("/portal/operator/audit", params={"number": "400-653-2532"}).text
    rows = re.findall(r'<td class="actor">([^<]+)</td><td class="action">([^<]+)</td>', page)
    assert sorted(rows) == [("operator:operator", "number_created"), ("operator:operator", "password"),
                            ("operator:operator", "put")], rows
    assert any(e["actor"] == "operator:operator" for e in service.store.audit("4006532532", 5))
    # taken: a second create is refused and changes nothing
    r = client.form("/portal/operator/create", {"number": "4006532532", "company": "x", "target": "13901010002"})
    assert r.status_code == 409
    assert [t["to"] for t in service.store.get_number("4006532532")["rules"][0]["targets"]] == ["13901010001"]


def test_a_refused_plan_puts_the_number_back_in_the_pool(portal):
    client, service, accounts = portal
    client.login_operator()
    client.form("/portal/operator/pool/import", {"lines": "4006532532\n"}, page="/portal/operator/pool")
    r = client.form("/portal/operator/create", {"number": "4006532532", "company": "KFC", "target": "not a phone"})
    assert r.status_code == 422 and 'id="target-error"' in r.text
    assert service.store.get_number("4006532532") is None
    assert not accounts.has_account("company", "4006532532")
    # (a number already routed: tests/test_portal_seams.py)
    assert free_numbers(client) == ["4006532532"]
    for data in ({"number": "12345", "company": "a", "target": "13901010001"},
                 {"number": "4006532532", "company": "", "target": "13901010001"}):
        assert client.form("/portal/operator/create", data).status_code == 422


def test_number_search_by_prefix_and_digits_anywhere_paged(portal, monkeypatch):
    client, service, _ = portal
    client.login_operator()
    everything = service.router.routed_numbers_after("", 1000)
    assert OTHER_NUMBER in everything

    def no_plan_read(number):
        raise AssertionError(f"the numbers list read the plan of {number}")

    monkeypatch.setattr(service.router, "plan_of", no_plan_read)
    listing = client.get("/portal/operator/", params={"q": "4001", "mode": "prefix"}).text
    assert set(re.findall(r"/portal/n/(\d+)/", listing)) == {n for n in everything if n.startswith("4001")}
    anywhere = client.get("/portal/operator/", params={"q": "0868", "mode": "anywhere"}).text
    assert set(re.findall(r"/portal/n/(\d+)/", anywhere)) == {n for n in everything if "0868" in n}
    assert client.get("/portal/operator/", params={"q": "---"}).status_code == 400
    # paging: one number a page, every number once, in order
    monkeypatch.setattr(operator_pages, "NUMBERS_PAGE", 1)
    seen, after = [], ""
    for _ in range(len(everything) + 1):
        found, after = operator_pages.find_numbers(service.router, "", anywhere=False, after=after, limit=1)
        seen += found
        if after is None:
            break
    assert seen == everything
    # digits anywhere looks at a bounded number of numbers at a time, and goes on from there
    seen, after = [], ""
    for _ in range(len(everything) + 1):
        found, after = operator_pages.find_numbers(service.router, "0", anywhere=True, after=after, limit=50, scan=1)
        seen += found
        if after is None:
            break
    assert seen == [n for n in everything if "0" in n[0:]]


def test_audit_is_filtered_by_number_and_paged(portal, monkeypatch):
    client, service, accounts = portal
    client.login_operator()
    for i in range(5):
        accounts.audit("operator:operator", "note", ACME_NUMBER, {"i": i})
    accounts.audit("operator:operator", "note", OTHER_NUMBER, {"i": 99})
    monkeypatch.setattr(operator_pages, "AUDIT_PAGE", 2)
    first = client.get("/portal/operator/audit", params={"number": ACME_NUMBER}).text
    assert set(re.findall(r'<td class="subject">(\d+)</td>', first)) == {ACME_NUMBER}
    assert 'id="older"' in first
    details = []
    for page in range(10):
        text = client.get("/portal/operator/audit", params={"number": ACME_NUMBER, "page": page}).text
        details += re.findall(r'<td class="detail">i=(\d+)</td>', text)
        if 'id="older"' not in text:
            break
    assert details == ["4", "3", "2", "1", "0"]
    assert client.get("/portal/operator/audit", params={"number": "abc"}).status_code == 400
    assert client.get("/portal/operator/audit", params={"page": "99999999999"}).status_code == 200


def test_operator_pages_render_in_both_languages(portal):
    client, _, _ = portal
    client.login_operator()
    zh = client.get("/portal/operator/pool", headers={"accept-language": "zh-CN"}).text
    en = client.get("/portal/operator/pool", headers={"accept-language": "en"}).text
    assert "号码池" in zh and "Number pool" in en
