"""tel400-http's SMS endpoints in-process: smsbox's get-url and dlr-url, the JSON webhook, the runner's lifespan."""

from __future__ import annotations

import asyncio
import urllib.parse

import httpx
import pytest

import tel400
from tel400.smsstore import SmsStore
from tel400.smstext import MAX_PARTS, count_parts
from tel400.testing import FakeSmsGateway
from tel400_http.auth import SwitchAuth, hash_token
from tel400_http.sms import forward_text

from .http_harness import make_service
from .test_sms_replies import HOTEL

NUMBER = "4001012345"
SMS_NUMBER = "10657" + NUMBER
PERSON = "13901012345"
WHERE = "北京的朋友您好：酒店在北京路1号。"


def service_with(tmp_path, *, gateway=None, **options):
    store = SmsStore(tmp_path / "sms.db")
    service = make_service(tmp_path, plans=_plans(tmp_path), records=False, sms_store=store, sms_gateway=gateway,
                           **options)
    return service, store


def _plans(tmp_path):
    path = tmp_path / "hotel.toml"
    path.write_text(HOTEL)
    return tel400.load_plans(path)


async def _requests(service, calls):
    """Run ``calls`` (method, path, kwargs) on one event loop; then let forwards finish (service.sms.stop)."""
    out = []
    transport = httpx.ASGITransport(app=service)
    async with httpx.AsyncClient(transport=transport, base_url="http://tel400.test") as client:
        for method, path, kwargs in calls:
            out.append(await client.request(method, path, **kwargs))
    await service.sms.stop()
    return out


def run(service, *calls):
    return asyncio.run(_requests(service, calls))


def kannel(text, sender=PERSON, to=SMS_NUMBER, **extra):
    query = {"from": sender, "to": to, "text": text, "coding": "0", "charset": "UTF-8", **extra}
    return ("GET", "/v1/sms/kannel?" + urllib.parse.urlencode(query), {})


def test_the_hotel_question_gets_its_reply_in_the_body_with_the_headers_smsbox_needs(tmp_path):
    service, store = service_with(tmp_path)
    (r,) = run(service, kannel("你的酒店在哪？"))
    assert r.status_code == 200
    assert r.text.startswith(WHERE)
    assert r.headers["x-kannel-coding"] == "2"
    assert r.headers["content-type"] == "text/plain; charset=UTF-8"
    rows = store.messages(NUMBER)
    assert {(m["direction"], m["kind"]) for m in rows} == {("in", "reply"), ("out", "reply")}
    metrics = run(service, ("GET", "/metrics", {}))[0].text
    assert 'tel400_sms_incoming_total{endpoint="kannel",result="ok"} 1.0' in metrics
    assert 'tel400_sms_outgoing_total{kind="reply",outcome="answered"} 1.0' in metrics


@pytest.mark.parametrize("query", [
    "", "from=1390101%0d%0a2345&to=106574001012345&text=hi", "from=13901012345&text=hi",
    "from=13901012345&to=106574001012345&text=%FF%FE", "from=13901012345&to=106574001012345&text=" + "a" * 1601,
    "from=13901012345&to=106574001012345&text=hi&at=99999999999",
    "from=13901012345&to=106574001012345&text=O%60Y%7D&coding=2&charset=UTF-16BE",
])
def test_garbage_from_smsbox_is_answered_200_empty_and_counted_so_that_smsbox_does_not_retry_it(tmp_path, query):
    service, store = service_with(tmp_path)
    r, m = run(service, ("GET", "/v1/sms/kannel?" + query, {}), ("GET", "/metrics", {}))
    assert (r.status_code, r.content) == (200, b"")
    assert 'tel400_sms_refused_total{endpoint="kannel",why="bad_request"} 1.0' in m.text
    assert store.messages(NUMBER) == []


def test_an_unknown_number_and_a_message_without_reply_are_answered_with_nothing(tmp_path):
    service, _ = service_with(tmp_path)
    a, b = run(service, kannel("你的酒店在哪", to="106574009999999"), kannel("hotel", sender="10086"))
    assert (a.status_code, a.content, b.status_code, b.content) == (200, b"", 200, b"")


def test_opt_out_confirms_once_and_opt_in_reverses_it(tmp_path):
    service, store = service_with(tmp_path)
    first, second, third, back = run(service, kannel("TD"), kannel("ｔｄ。"), kannel("退订"), kannel("订阅"))
    assert "退订" in first.text and second.content == b"" and third.content == b""
    assert "重新订阅" in back.text
    assert not store.is_opted_out(NUMBER, PERSON)
    run(service, kannel("TD"))
    assert store.is_opted_out(NUMBER, PERSON)
    outs = [m for m in store.messages(NUMBER) if m["direction"] == "out"]
    assert sorted(m["kind"] for m in outs) == ["opt_in", "opt_out", "opt_out"]


def test_a_message_routed_onward_is_forwarded_to_the_first_phone_target_with_the_sender_first(tmp_path):
    gateway = FakeSmsGateway()
    service, store = service_with(tmp_path, gateway=gateway)
    (r,) = run(service, kannel("hello & bye"))
    assert r.content == b""
    (sms,) = gateway.sent
    assert (sms.sender, sms.to, sms.text, sms.kind) == (SMS_NUMBER, "13901010009", f"{PERSON}: hello & bye", "forward")
    fwd = [m for m in store.messages(NUMBER) if m["kind"] == "forward"]
    assert [(f["outcome"], f["message_id"]) for f in fwd] == [("sent", sms.message_id)]


def test_without_a_gateway_a_forward_is_recorded_as_not_sent(tmp_path):
    service, store = service_with(tmp_path)
    run(service, kannel("hello"))
    assert [m["outcome"] for m in store.messages(NUMBER) if m["kind"] == "forward"] == ["no_gateway"]


def test_a_refused_forward_is_recorded_failed(tmp_path):
    gateway = FakeSmsGateway()
    gateway.fail_all()
    service, store = service_with(tmp_path, gateway=gateway)
    run(service, kannel("hello"))
    assert [m["outcome"] for m in store.messages(NUMBER) if m["kind"] == "forward"] == ["failed"]


def test_delivery_reports_any_order_unknown_ids_and_garbage_all_get_200(tmp_path):
    service, store = service_with(tmp_path)
    store.record_message(number=NUMBER, peer=PERSON, text="x", parts=1, kind="reply", outcome="sent",
                         message_id="m1")
    answers = run(service, *[("GET", f"/v1/sms/dlr?{q}", {}) for q in
                             ("id=m1&type=1&at=1764554400", "id=m1&type=8", "id=nope&type=1", "id=m1&type=%d",
                              "id=a%0d%0ab&type=1", "")],
                  ("GET", "/metrics", {}))
    assert [a.status_code for a in answers[:-1]] == [200] * 6
    assert all(a.content == b"" for a in answers[:-1])
    assert store.delivery_of("m1") == "delivered"
    metrics = answers[-1].text
    assert 'tel400_sms_delivery_reports_total{known="false",state="delivered"} 1.0' in metrics
    assert 'tel400_sms_refused_total{endpoint="dlr",why="bad_request"} 3.0' in metrics


def test_the_json_webhook_answers_what_to_reply_and_has_the_same_effects(tmp_path):
    service, store = service_with(tmp_path)
    a, b, c = run(service, ("POST", "/v1/sms/incoming", {"json": {"phone": PERSON, "content": "ＨＯＴＥＬ！",
                                                                    "to": NUMBER}}),
                  ("POST", "/v1/sms/incoming", {"json": {"phone": PERSON, "content": "TD", "to": SMS_NUMBER,
                                                         "time": None}}),
                  ("POST", "/v1/sms/incoming", {"json": {"phone": PERSON, "content": "TD", "to": SMS_NUMBER}}))
    assert a.status_code == 200
    body = a.json()
    assert body["reply"].startswith(WHERE) and body["parts"] == 1
    assert (body["kind"], body["reason"], body["number"]) == ("reply", "ok", NUMBER)
    assert b.json()["kind"] == "opt_out" and "退订" in b.json()["reply"]
    assert c.json()["reply"] is None and c.json()["parts"] == 0
    assert store.is_opted_out(NUMBER, PERSON)


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"", 400, "bad_json"), (b"[1]", 422, "bad_request"), (b"{", 400, "bad_json"),
    (b'{"phone": "139", "content": "x"}', 422, "bad_request"),
    (b'{"phone": "139", "content": "x", "to": "4001012345", "extra": 1}', 422, "bad_request"),
    (b'{"phone": "139\\r\\nX: y", "content": "x", "to": "4001012345"}', 422, "bad_request"),
    (b'{"phone": 139, "content": "x", "to": "4001012345"}', 422, "bad_request"),
    (b'{"phone": "139", "content": "a\\u0000b", "to": "4001012345"}', 422, "bad_request"),
    ('{"phone": "139", "content": "%s", "to": "4001012345"}' % ("字" * 1601), 422, "bad_request"),
    (b'{"phone": "139", "content": "x", "to": "4001012345", "time": "yesterday"}', 422, "bad_request"),
    (b'{"phone": "139", "content": "x", "to": "4001012345", "time": true}', 422, "bad_request"),
    (b"x" * 20000, 413, "body_too_large"),
])
def test_bad_webhook_bodies_get_a_clear_4xx(tmp_path, body, status, code):
    service, _ = service_with(tmp_path)
    body = body.encode() if isinstance(body, str) else body
    (r,) = run(service, ("POST", "/v1/sms/incoming", {"content": body,
                                                      "headers": {"content-type": "application/json"}}))
    assert (r.status_code, r.json()["error"]) == (status, code)


def test_the_sms_endpoints_are_switch_endpoints(tmp_path):
    service, _ = service_with(tmp_path, switch_auth=SwitchAuth([bytes.fromhex(hash_token("s3cret"))]))
    no, yes, dlr = run(service, kannel("hotel"), ("GET", kannel("hotel")[1], {"auth": ("kannel", "s3cret")}),
                       ("GET", "/v1/sms/dlr?id=m&type=1", {}))
    assert (no.status_code, yes.status_code, dlr.status_code) == (401, 200, 401)
    assert yes.text.startswith(WHERE)


def test_without_an_sms_store_the_endpoints_say_so(tmp_path):
    service = make_service(tmp_path, records=False)
    (r,) = run(service, kannel("hotel"))
    assert (r.status_code, r.json()["error"]) == (503, "sms_disabled")


def test_the_runner_sends_jobs_in_the_lifespan_and_a_clean_stop_leaves_nothing_in_doubt(tmp_path):
    gateway = FakeSmsGateway()
    service, store = service_with(tmp_path, gateway=gateway, sms_runner={"poll_s": 0.02, "per_number_rate": 1000})
    phones = [f"139010{i:05d}" for i in range(30)]
    store.opt_out(NUMBER, phones[3])
    job = store.create_job(NUMBER, "hi {phone}", phones=phones, rate=500, actor="test")

    async def go():
        await service.sms.start()
        for _ in range(500):
            await asyncio.sleep(0.01)
            if len(gateway.sent) >= 10:
                break
        await service.sms.stop()

    asyncio.run(go())
    progress = store.progress(NUMBER, job.job_id)
    assert progress.sending == 0
    assert len(gateway.sent) == progress.sent >= 10
    assert len({s.to for s in gateway.sent}) == len(gateway.sent)
    assert phones[3] not in {s.to for s in gateway.sent}
    m = run(service, ("GET", "/metrics", {}))[0].text
    assert f'tel400_sms_outgoing_total{{kind="job",outcome="submitted"}} {float(len(gateway.sent))}' in m


@pytest.mark.parametrize("text", ["短", "字" * 1600, "a" * 1600, "😀" * 800, "{}[]" * 400])
def test_a_forwarded_text_names_the_sender_and_always_fits_in_ten_parts(text):
    out = forward_text(PERSON, text)
    assert out.startswith(f"{PERSON}: ")
    assert count_parts(out) <= MAX_PARTS
    assert (f"{PERSON}: " + text).startswith(out)
