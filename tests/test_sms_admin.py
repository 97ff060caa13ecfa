"""The admin API's SMS operations: address book, opt-out list, group sends (tel400_http.sms_admin)."""

from __future__ import annotations

import json

import pytest
import structlog

from tel400.smsstore import SmsStore
from tel400_http import schemas
from tel400_http.sms_admin import job_error_field

from .http_harness import ACME, ADMIN, OTHER

BASE = "/v1/numbers/4001012345"
CSV = "phone,name,tags,city\n13901012345,张三,vip;beijing,北京\n+86 139 0101 2346,李四,vip,上海\n"


@pytest.fixture
def store(http_service, tmp_path):
    http_service.sms_store = SmsStore(tmp_path / "sms.db")
    yield http_service.sms_store
    http_service.sms_store.close()


@pytest.fixture
def client(http_client, store):
    return http_client


def _import(client, text=CSV, token=ACME, number="4001012345"):
    return client.post(f"/v1/numbers/{number}/contacts/import", token=token, content=text.encode(),
                       headers={"Content-Type": "text/csv"})


def _job(client, token=ACME, **body):
    body = {"template": "{name}您好，{city}店开业", "tags": ["vip"], "rate": 5, **body}
    return client.post(f"{BASE}/sms-jobs", token=token, json=body)


# -- the address book --------------------------------------------------------------------------------

def test_import_lists_contacts_and_reports_each_bad_line(client):
    r = _import(client, CSV + "12,太短,vip,x\n13901012347,王五,a,b,extra\n")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["added"], answer["updated"]) == (2, 0)
    assert [(e["line"], e["text"]) for e in answer["errors"]] == [(4, "12,太短,vip,x"), (5, "13901012347,王五,a,b,extra")]
    assert all(e["message"] for e in answer["errors"])
    listed = client.get(f"{BASE}/contacts", token=ACME).json()
    assert [c["phone"] for c in listed["contacts"]] == ["13901012345", "13901012346"]
    assert listed["contacts"][0] == {"phone": "13901012345", "name": "张三", "tags": ["beijing", "vip"],
                                     "fields": {"city": "北京"}}
    assert [c["name"] for c in client.get(f"{BASE}/contacts?tag=beijing", token=ACME).json()["contacts"]] == ["张三"]


def test_contacts_are_paged_by_phone(client):
    _import(client, "phone\n" + "".join(f"1390101{i:04d}\n" for i in range(5)))
    first = client.get(f"{BASE}/contacts?limit=2", token=ACME).json()
    assert [c["phone"] for c in first["contacts"]] == ["13901010000", "13901010001"]
    second = client.get(f"{BASE}/contacts?limit=2&after={first['next']}", token=ACME).json()
    assert [c["phone"] for c in second["contacts"]] == ["13901010002", "13901010003"]
    last = client.get(f"{BASE}/contacts?limit=2&after={second['next']}", token=ACME).json()
    assert [c["phone"] for c in last["contacts"]] == ["13901010004"] and "next" not in last


def test_one_contact_by_phone_in_any_written_form(client):
    r = client.put(f"{BASE}/contacts/+86 139-0101-2345", token=ACME, json={"name": "张三", "tags": ["vip"],
                                                                          "fields": {"city": "北京"}})
    assert r.status_code == 200, r.text
    assert r.json()["phone"] == "13901012345"
    assert client.get(f"{BASE}/contacts/139 0101 2345", token=ACME).json()["name"] == "张三"
    assert client.delete(f"{BASE}/contacts/+8613901012345", token=ACME).status_code == 204
    r = client.get(f"{BASE}/contacts/13901012345", token=ACME)
    assert r.status_code == 404 and r.json()["error"] == "unknown_contact"
    assert client.delete(f"{BASE}/contacts/13901012345", token=ACME).status_code == 404


@pytest.mark.parametrize("path, body, field", [
    ("12", {"name": "x"}, "phone"),
    ("13901012345", {"name": "x" * 65}, "name"),
    ("13901012345", {"tags": ["t" * 33]}, "tags"),
    ("13901012345", {"fields": {"tags": "x"}}, "fields"),
    ("13901012345", {"nmae": "x"}, "nmae"),
    ("13901012345", {"tags": "vip"}, "tags"),
])
def test_a_bad_contact_is_a_422_naming_the_field(client, path, body, field):
    r = client.put(f"{BASE}/contacts/{path}", token=ACME, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_contact_writes_are_logged_with_the_token_name(client):
    with structlog.testing.capture_logs() as logs:
        client.put(f"{BASE}/contacts/13901012345", token=ACME, json={"name": "x"})
        _import(client)
    assert {(e["event"], e["actor"]) for e in logs} >= {("contact_changed", "acme"), ("contacts_imported", "acme")}


def test_a_huge_csv_is_413_and_nothing_is_written(client, store):
    store.max_import_bytes = 1000
    r = _import(client, "phone\n" + "13901012345\n" * 200)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    assert store.count_contacts("4001012345") == 0


@pytest.mark.parametrize("data", [b"", b"name\nx\n", b"\xff\xfe\x00\x00garbage", b"phone,phone\n1\n"])
def test_an_unusable_csv_is_a_422(client, data):
    r = client.post(f"{BASE}/contacts/import", token=ACME, content=data)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "bad_csv" and r.json()["field"] == "body"


# -- the opt-out list ----------------------------------------------------------------------------------

def test_opt_outs_are_listed_read_only(client, store):
    store.opt_out("4001012345", "+86 13901012345", at=1_800_000_000)
    store.opt_out("4001012345", "13901012346", at=1_800_000_100)
    store.opt_out("4001100868", "13901019999")
    r = client.get("/v1/numbers/400-101-2345/opt-outs?limit=1", token=ACME).json()
    assert r["opt_outs"] == [{"phone": "13901012345", "at": "2027-01-15T08:00:00+00:00"}]
    rest = client.get(f"{BASE}/opt-outs?after={r['next']}", token=ACME).json()
    assert [o["phone"] for o in rest["opt_outs"]] == ["13901012346"] and "next" not in rest
    # no write: only the subscriber opts in again, by texting
    for method in ("PUT", "POST", "DELETE"):
        assert client.request(method, f"{BASE}/opt-outs", token=ACME).status_code == 405


# -- group sends --------------------------------------------------------------------------------------

def test_a_job_answers_its_recipients_and_the_sample_parts(client):
    _import(client)
    r = _job(client, phones=["13901019999"], not_before="09:00", not_after="20:00")
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["total"], job["sample_parts"], job["state"], job["created_by"]) == (3, 1, "scheduled", "acme")
    assert (job["not_before"], job["not_after"], job["rate"]) == ("09:00", "20:00", 5.0)
    long = _job(client, template="{name}" + "长" * 80).json()
    assert long["sample_parts"] == 2
    listed = client.get(f"{BASE}/sms-jobs", token=ACME).json()["jobs"]
    assert [j["job_id"] for j in listed] == [long["job_id"], job["job_id"]]
    got = client.get(f"{BASE}/sms-jobs/{job['job_id']}", token=ACME).json()
    assert got["progress"] == {"total": 3, "pending": 3, "sending": 0, "sent": 0, "delivered": 0, "undelivered": 0,
                               "failed": 0, "skipped_opted_out": 0, "skipped_cap": 0}


def test_pause_resume_cancel_and_wrong_states(client, store):
    _import(client)
    job_id = _job(client).json()["job_id"]
    url = f"{BASE}/sms-jobs/{job_id}"
    assert client.post(f"{url}/resume", token=ACME).status_code == 409
    r = client.post(f"{url}/pause", token=ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "paused" and r.json()["updated_by"] == "operator"
    assert client.post(f"{url}/pause", token=ACME).json()["error"] == "wrong_state"
    assert client.post(f"{url}/resume", token=ACME).json()["state"] == "scheduled"
    assert client.post(f"{url}/cancel", token=ACME).json()["state"] == "cancelled"
    for action in ("pause", "resume", "cancel"):
        r = client.post(f"{url}/{action}", token=ACME)
        assert r.status_code == 409, action
    assert store.job("4001012345", job_id).updated_by == "acme"


def test_another_numbers_job_is_not_found_and_other_tokens_are_refused(client, store):
    _import(client)
    job_id = _job(client).json()["job_id"]
    _import(client, token=OTHER, number="4001100868")
    # the other company's token on its own number, naming acme's job: not found (no existence leak)
    for method, tail in [("GET", ""), ("POST", "/pause"), ("POST", "/cancel")]:
        r = client.request(method, f"/v1/numbers/4001100868/sms-jobs/{job_id}{tail}", token=OTHER)
        assert r.status_code == 404 and r.json()["error"] == "unknown_job", (method, tail)
    for method, path in [("GET", "/contacts"), ("GET", "/contacts/13901012345"), ("PUT", "/contacts/13901012345"),
                         ("DELETE", "/contacts/13901012345"), ("POST", "/contacts/import"), ("GET", "/opt-outs"),
                         ("GET", "/sms-jobs"), ("POST", "/sms-jobs"), ("GET", f"/sms-jobs/{job_id}"),
                         ("POST", f"/sms-jobs/{job_id}/pause")]:
        r = client.request(method, BASE + path, token=OTHER, json={})
        assert r.status_code == 403, (method, path)
    assert client.get(f"{BASE}/sms-jobs/../../x", token=ACME).status_code == 404
    assert client.get(f"{BASE}/sms-jobs/jnothex", token=ACME).json()["error"] == "unknown_job"
    assert store.job("4001012345", job_id).state == "scheduled"
    assert store.count_contacts("4001012345") == 2


@pytest.mark.parametrize("body, field", [
    ({"template": "{nmae}"}, "template"),
    ({"template": "{0.__class__}"}, "template"),
    ({"template": "{name.__class__.__mro__}"}, "template"),
    ({"template": "{name!r:>10}"}, "template"),
    ({"template": "unbalanced {"}, "template"),
    ({"template": ""}, "template"),
    ({"template": "x" * 1001}, "template"),
    ({"template": "长" * 700}, "template"),
    ({"rate": 0}, "rate"),
    ({"rate": -1}, "rate"),
    ({"rate": 1e9}, "rate"),
    ({"rate": "fast"}, "rate"),
    ({"not_before": "25:00"}, "not_before"),
    ({"not_after": "8:00pm"}, "not_after"),
    ({"tags": ["nobody"]}, "tags"),
    ({"tags": [], "phones": []}, "tags"),
    ({"tags": [], "phones": ["12"]}, "phones"),
    ({"tags": "vip"}, "tags"),
    ({"extra": 1}, "extra"),
])
def test_a_bad_job_is_a_422_naming_the_field(client, store, body, field):
    _import(client)
    r = _job(client, **body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field, r.json()
    assert store.jobs("4001012345") == []


def test_too_many_unfinished_jobs_is_a_409(client, store):
    store.max_open_jobs = 1
    _import(client)
    assert _job(client).status_code == 201
    r = _job(client)
    assert r.status_code == 409 and r.json()["error"] == "too_many_jobs"


def test_job_refusals_name_their_field():
    assert job_error_field("unknown placeholder {x}; expected one of {name}, {rate}") == "template"
    assert job_error_field("bad phone '12': too short") == "phones"
    assert job_error_field("more than 5 recipients in one job") == "tags"
    assert job_error_field("rate must be above 0") == "rate"


# -- without a store, and the document ---------------------------------------------------------------

def test_without_an_sms_store_every_operation_says_so(http_client):
    for method, path in [("GET", "/contacts"), ("GET", "/contacts/13901012345"), ("POST", "/contacts/import"),
                         ("GET", "/opt-outs"), ("GET", "/sms-jobs"), ("POST", "/sms-jobs"),
                         ("POST", "/sms-jobs/j0000000000000000/pause")]:
        r = http_client.request(method, BASE + path, token=ACME, json={})
        assert r.status_code == 404, (method, path)
        assert r.json()["error"] == "sms_off" and "--sms-db" in r.json()["message"]
    # the token is checked first: another company learns nothing
    assert http_client.get(f"{BASE}/contacts", token=OTHER).status_code == 403


def test_the_sms_operations_and_bodies_are_in_the_openapi_document(http_client):
    doc = http_client.get("/openapi.json").json()
    ops = {item["operationId"]: item for path in doc["paths"].values() for item in path.values()}
    for op_id in ("listContacts", "getContact", "putContact", "deleteContact", "importContacts", "listOptOuts",
                  "createJob", "listJobs", "getJob", "pauseJob", "resumeJob", "cancelJob"):
        assert op_id in ops
    assert "text/csv" in ops["importContacts"]["requestBody"]["content"]
    job_request = doc["components"]["schemas"]["JobRequest"]
    assert job_request["properties"]["rate"]["exclusiveMinimum"] == 0
    assert job_request["properties"]["rate"]["maximum"] == 500
    assert set(job_request["required"]) == {"template", "rate"}
    assert {"ImportAnswer", "BadLine", "Job", "JobProgress", "OptOutList", "ContactList"} <= set(
        doc["components"]["schemas"])
    assert [p["name"] for p in ops["listContacts"]["parameters"]] == ["number", "tag", "after", "limit"]
    assert json.dumps(doc)  # serialisable as it is served


def test_every_sms_operation_is_routed_to_a_handler():
    from tel400_http.admin import METRIC_NAMES
    from tel400_http.sms_admin import SmsAdminApi

    sms_ops = [op for op in schemas.OPERATIONS if "/contacts" in op.path or "/sms-jobs" in op.path
               or "/opt-outs" in op.path]
    assert len(sms_ops) == 12
    for op in sms_ops:
        assert callable(getattr(SmsAdminApi, op.op_id)) and op.op_id in METRIC_NAMES

