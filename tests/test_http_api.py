"""The HTTP http_service in-process: the route API, the switch formats, bad input, operations."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import xml.etree.ElementTree as ET

import httpx
import pytest

import tel400
from tel400 import pins

from .conftest import EXAMPLES
from .http_harness import ADMIN, Client, make_service


# -- POST /v1/route ----------------------------------------------------------------------------


def test_route_answers_the_routers_decision(http_client, http_service):
    d = http_client.route(caller="+86 139 0101 2345")
    assert d == {"action": "bridge", "targets": ["13901010001"], "prompt": None, "reason": "ok", "rule": "beijing",
                 "province": "CN-BJ", "number": "4001012345", "caller": "13901012345", "channel": "voice",
                 "call_id": None}
    expected = http_service.router.route("4001012345", "13901012345", http_service._at("2026-11-24T09:00"))
    assert d["targets"] == list(expected.targets) and d["rule"] == expected.rule


def test_route_by_time_and_channel(http_client):
    assert http_client.route(at="2026-11-24T22:00")["reason"] == "closed"
    assert http_client.route(at="2026-11-24T22:00")["prompt"] == "closed"
    sms = http_client.route(dialed="106574001012345", channel="sms")
    assert (sms["action"], sms["targets"], sms["channel"]) == ("bridge", ["13901010009"], "sms")
    # a POSIX time is read as such: 2026-11-24T01:00Z is 09:00 in Shanghai
    assert http_client.route(at=1795482000)["rule"] == "beijing"


def test_route_explain_is_the_trace_on_request(http_client):
    d = http_client.route(caller="02161234567", explain=True)
    assert d["rule"] == "shanghai"
    assert any("beijing" in line and line.startswith("✗") for line in d["explain"])
    assert "explain" not in http_client.route()


def test_route_defined_decisions_for_odd_callers_and_unknown_numbers(http_client):
    assert http_client.route(caller=None)["reason"] == "blacklisted"  # the plan blocks withheld callers
    assert http_client.route(caller="anonymous")["reason"] == "blacklisted"
    assert http_client.route(caller="13800000000")["reason"] == "blacklisted"  # the plan set's blacklist
    unknown = http_client.route(dialed="4009999999")
    assert (unknown["action"], unknown["reason"], unknown["number"]) == ("reject", "unknown_number", "4009999999")
    garbage = http_client.route(dialed="hello")
    assert (garbage["reason"], garbage["number"]) == ("unknown_number", None)


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "bad_json"),
    (b"", 400, "bad_json"),
    (b"\xff\xfe", 400, "bad_json"),
    (b"[1, 2]", 422, "bad_request"),
    (b'{"caller": "13901012345"}', 422, "missing_field"),
    (b'{"dialed": 4001012345}', 422, "wrong_type"),
    (b'{"dialed": "4001012345", "caller": 139}', 422, "wrong_type"),
    (b'{"dialed": "4001012345", "explain": "yes"}', 422, "wrong_type"),
    (b'{"dialed": "4001012345", "at": true}', 422, "wrong_type"),
    (b'{"dialed": "4001012345", "at": "tomorrow"}', 422, "wrong_type"),
    (b'{"dialed": "4001012345", "channel": "fax"}', 422, "bad_request"),
    (b'{"dialed": "4001012345", "call_id": "has space"}', 422, "bad_request"),
    (b'{"dialed": "4001012345", "dialled": "x"}', 422, "unknown_field"),
    (b'{"dialed": "4001012345", "at": 1e999}', 400, "bad_json"),  # not a finite number: not JSON to orjson
    (b'{"dialed": "4001012345", "at": -2.3e16}', 422, "wrong_type"),
])
def test_route_bad_input_is_a_clear_4xx(http_client, body, status, code):
    r = http_client.post("/v1/route", content=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == code and r.json()["message"]
    assert http_client.route()["reason"] == "ok"  # and the http_service goes on


def test_oversized_bodies_are_refused(http_client):
    big = b'{"dialed": "4001012345", "caller": "' + b"1" * 20000 + b'"}'
    r = http_client.post("/v1/route", content=big)
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    async def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * 1000

    r = http_client.post("/v1/route", content=chunks())
    assert r.status_code == 413


def test_unknown_paths_and_methods(http_client):
    r = http_client.get("/v2/route")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = http_client.get("/v1/route")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = http_client.post("/v1/numbers/4001012345")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}


def test_a_failure_inside_is_a_500_and_the_service_goes_on(http_client, http_service, monkeypatch):
    engine_route = http_service.router.route

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(http_service.router, "route", broken)
    r = http_client.post("/v1/route", json={"dialed": "4001012345"})
    assert r.status_code == 500 and r.json()["error"] == "internal_error" and "boom" not in r.text
    monkeypatch.setattr(http_service.router, "route", engine_route)
    assert http_client.route()["reason"] == "ok"


# -- POST /v1/calls/{id}/end ------------------------------------------------------------------------


def test_call_end_charges_and_answers_the_cost(http_client, http_service):
    d = http_client.route(call_id="call-1")
    assert d["call_id"] == "call-1"
    r = http_client.post("/v1/calls/call-1/end", json={"duration": 125})
    assert r.status_code == 200, r.text
    assert r.json() == {"call_id": "call-1", "number": "4001012345", "target": "13901010001", "duration_s": 125,
                        "billed_s": 180, "cost": "0.300000", "long_distance": False}
    again = http_client.post("/v1/calls/call-1/end", json={"duration": 125})
    assert again.status_code == 404 and again.json()["error"] == "unknown_call"


def test_call_end_from_a_form_as_freeswitch_curl_posts_it(http_client):
    http_client.route(call_id="fs-uuid-1", caller="02161234567")
    r = http_client.post("/v1/calls/fs-uuid-1/end", data={"duration": "61"})
    assert r.status_code == 200 and r.json()["billed_s"] == 120 and r.json()["long_distance"] is False


def test_call_end_the_backend_cannot_charge_answers_503_and_the_retry_charges(tmp_path, impl):
    """Item 2: the charge used to be dropped, the call forgotten, and the end answered 200."""
    from .test_router import FailingAddCounters

    counters = FailingAddCounters(":cap:cost:")
    service = make_service(tmp_path, impl.name, counters=counters)
    try:
        client = Client(service)
        client.route(call_id="c-1")
        r = client.post("/v1/calls/c-1/end", json={"duration": 125})
        assert (r.status_code, r.json()["error"]) == (503, "charge_unavailable"), r.text
        assert r.headers["retry-after"] == "1" and "reported again" in r.json()["message"]
        assert service.router.calls_in_progress == 1
        r = client.post("/v1/calls/c-1/end", json={"duration": 125})  # the switch's retry
        assert r.status_code == 200 and r.json()["cost"] == "0.300000"
        assert counters.added == {"cost": 300_000}  # added once, by the retry
        assert client.post("/v1/calls/c-1/end", json={"duration": 125}).status_code == 404
    finally:
        service.stop()


@pytest.mark.parametrize("body", [{"duration": -1}, {"duration": "10"}, {}, {"duration": True},
                                  {"duration": 5, "extra": 1}])
def test_call_end_bad_input(http_client, body):
    http_client.route(call_id="c")
    r = http_client.post("/v1/calls/c/end", json=body)
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("duration", [1e9, 1e18, 9.3e18, 1e300, 43201])
def test_call_end_longer_than_a_call_can_last_is_refused_and_the_call_kept(http_client, duration):
    """Issue #11 item 2: 1e9 spent the month's cost cap; 1e18 answered 500 after forgetting the call."""
    http_client.route(call_id="c")
    r = http_client.post("/v1/calls/c/end", content=b'{"duration": %s}' % str(duration).encode())
    assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "bad_request", "duration"), r.text
    assert "from 0 to 43200" in r.json()["message"]
    form = http_client.post("/v1/calls/c/end", data={"duration": str(duration)})
    assert form.status_code == 422, form.text
    r = http_client.post("/v1/calls/c/end", json={"duration": 125})  # the corrected retry still finds the call
    assert r.status_code == 200 and r.json()["billed_s"] == 180
    assert http_client.route()["reason"] == "ok"  # and the month's cost cap is not spent


# -- who may use the switch endpoints ---------------------------------------------------------------

SWITCH_SECRET = "switch-secret-for-tests"


def switch_requests():
    """One request to each switch endpoint, as (method, path, keyword arguments)."""
    return [("POST", "/v1/route", {"json": {"dialed": "4001012345", "caller": "13901012345"}}),
            ("POST", "/v1/calls/x/end", {"json": {"duration": 1}}),
            ("POST", "/freeswitch/dialplan", {"data": {"section": "dialplan", "Caller-Destination-Number": "4001012345"}}),
            ("POST", "/kamailio/rtjson", {"json": {"dialed": "4001012345", "caller": "13901012345"}})]


def request_from(app, address, method, path, **kwargs):
    import asyncio

    import httpx

    async def go():
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://tel400.test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_switch_endpoints_ask_for_the_shared_secret(tmp_path, impl):
    import base64

    from tel400_http.auth import SwitchAuth

    service = make_service(tmp_path, impl.name, switch_auth=SwitchAuth.single(SWITCH_SECRET))
    client = Client(service)
    basic = base64.b64encode(f"freeswitch:{SWITCH_SECRET}".encode()).decode()
    try:
        for method, path, kwargs in switch_requests():
            r = client.request(method, path, **kwargs)
            assert (r.status_code, r.json()["error"]) == (401, "missing_secret"), path
            assert r.headers["www-authenticate"].startswith("Basic")
            r = client.request(method, path, token="wrong", **kwargs)
            assert (r.status_code, r.json()["error"]) == (401, "bad_secret"), path
            for auth in (f"Bearer {SWITCH_SECRET}", f"Basic {basic}"):
                r = client.request(method, path, headers={"Authorization": auth}, **kwargs)
                assert r.status_code in (200, 404), (path, r.text)  # 404: call x was never routed
        bad_basic = base64.b64encode(b"freeswitch:nope").decode()
        for auth in (f"Basic {bad_basic}", "Basic !!!", f"Basic {base64.b64encode(SWITCH_SECRET.encode()).decode()}"):
            assert client.post("/v1/route", headers={"Authorization": auth},
                               json={"dialed": "4001012345"}).status_code == 401
        assert client.get("/v1/numbers", token=ADMIN).status_code == 200  # admin tokens are another matter
        assert client.get("/v1/numbers", token=SWITCH_SECRET).status_code == 401  # and the secret is not one
        assert client.get("/metrics").status_code == 200
    finally:
        service.stop()


def test_switch_endpoints_answer_only_the_allowed_addresses(tmp_path, impl):
    from tel400_http.auth import LOOPBACK, SwitchAuth

    service = make_service(tmp_path, impl.name, switch_auth=SwitchAuth((), LOOPBACK + ("10.1.0.0/16",)))
    try:
        for method, path, kwargs in switch_requests():
            # ::ffff:a.b.c.d: an IPv4 client of a dual-stack socket (--host ::)
            for address in ("127.0.0.1", "::1", "10.1.2.3", "::ffff:127.0.0.1", "::ffff:10.1.2.3"):
                assert request_from(service, address, method, path, **kwargs).status_code in (200, 404), path
            for address in ("10.2.0.1", "192.0.2.7", "::ffff:10.2.0.1", "not-an-address"):
                r = request_from(service, address, method, path, **kwargs)
                assert (r.status_code, r.json()["error"]) == (403, "forbidden_address"), (path, address)
        assert request_from(service, "192.0.2.7", "GET", "/v1/numbers",
                            headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    finally:
        service.stop()


def test_switch_secret_and_allow_list_together(tmp_path, impl):
    from tel400_http.auth import SwitchAuth

    service = make_service(tmp_path, impl.name, switch_auth=SwitchAuth.single(SWITCH_SECRET, ["10.0.0.0/8"]))
    body = {"json": {"dialed": "4001012345", "caller": "13901012345"}}
    auth = {"Authorization": f"Bearer {SWITCH_SECRET}"}
    try:
        assert request_from(service, "10.0.0.5", "POST", "/v1/route", headers=auth, **body).status_code == 200
        assert request_from(service, "10.0.0.5", "POST", "/v1/route", **body).status_code == 401
        assert request_from(service, "192.0.2.1", "POST", "/v1/route", headers=auth, **body).status_code == 403
    finally:
        service.stop()


def test_switch_secrets_file_keeps_digests_only(tmp_path):
    from tel400_http.auth import SwitchAuth, hash_token

    good = tmp_path / "switch-secrets"
    good.write_text(f"# rotated on 2026-11-30\n{hash_token('old')}\n\n{hash_token('new')}  # FreeSWITCH\n")
    auth = SwitchAuth.from_file(str(good))
    for secret in (b"old", b"new"):
        auth.check({"client": ("192.0.2.1", 1), "headers": [(b"authorization", b"Bearer " + secret)]})
    clear = tmp_path / "clear"
    clear.write_text("my-secret\n")
    with pytest.raises(ValueError, match="line 1: expected the 64 hex digits of a SHA-256"):
        SwitchAuth.from_file(str(clear))
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no secret digests"):
        SwitchAuth.from_file(str(tmp_path / "empty"))


# -- a switch's `at` is now ---------------------------------------------------------------------------


def test_switch_at_far_from_the_clock_is_refused(tmp_path, impl):
    """Issue #11 item 6: one day per request dodged a daily cap and filled the call registry."""
    import datetime as dt
    import time

    service = make_service(tmp_path, impl.name, at_tolerance_s=300)
    client = Client(service)
    now = time.time()
    shanghai_now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).replace(tzinfo=None)
    try:
        for at in (now, now - 299, now + 299, shanghai_now.isoformat(timespec="seconds"),
                   dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat()):
            r = client.post("/v1/route", json={"dialed": "4001012345", "caller": "13901012345", "at": at})
            assert r.status_code == 200, (at, r.text)
        for at in (now - 86400, now + 301, now - 301, "2026-11-24T09:00", 0, 253402300799, "0001-01-01T00:00",
                   "9999-12-31T23:59-14:00"):
            for path in ("/v1/route", "/kamailio/rtjson"):
                r = client.post(path, json={"dialed": "4001012345", "caller": "13901012345", "at": at,
                                            "call_id": "c-far"})
                assert (r.status_code, r.json()["field"]) == (422, "at"), at
                if isinstance(at, str) and at[:4] in ("0001", "9999") or at == 253402300799:
                    # past the years any calendar holds: refused before the clock is asked
                    assert r.json()["error"] == "wrong_type" and "1901 to 9998" in r.json()["message"]
                else:
                    assert r.json()["error"] == "at_out_of_range" and "--at-tolerance" in r.json()["message"]
        assert service.router.calls_in_progress == 0  # nothing was remembered
    finally:
        service.stop()


# -- FreeSWITCH mod_xml_curl ----------------------------------------------------------------------


def fs_form(dest="4001012345", caller="13901012345", **extra):
    form = {"hostname": "fs1", "section": "dialplan", "tag_name": "", "key_name": "", "key_value": "",
            "Event-Name": "REQUEST_PARAMS", "Caller-Caller-ID-Number": caller, "Caller-Destination-Number": dest,
            "Caller-Context": "public", "Caller-ANI": caller, "Unique-ID": "7f4de4a4-0c5b-4bd4-9a0c-1d6f2f1c2a10",
            "Hunt-Destination-Number": dest, "Hunt-Context": "public"}
    form.update(extra)
    return form


def actions(xml_text: str) -> list[tuple[str, str | None]]:
    root = ET.fromstring(xml_text)
    assert root.tag == "document" and root.get("type") == "freeswitch/xml"
    return [(a.get("application"), a.get("data")) for a in root.iter("action")]


def test_freeswitch_xml_for_each_decision(http_client, http_service, monkeypatch):
    real = http_service.router.route

    def at(hour):  # FreeSWITCH asks "now": pin the router's clock through route's at
        def route(dialed, caller, at=None, *args):
            return real(dialed, caller, tel400_time(hour), *args)

        return route

    def tel400_time(hour):
        return http_service._at(f"2026-11-24T{hour:02d}:00")

    monkeypatch.setattr(http_service.router, "route", at(15))
    acts = actions(http_client.post("/freeswitch/dialplan", data=fs_form(caller="057188888888")).text)
    apps = [a for a, _ in acts]
    assert apps == ["set", "set", "bridge", "answer", "playback", "hangup"]
    assert ("set", "continue_on_fail=true") in acts and ("set", "hangup_after_bridge=true") in acts
    bridge = dict(acts)["bridge"]
    assert bridge == ("{origination_caller_id_number=057188888888}"
                      "[leg_timeout=20]sofia/gateway/gw1/13901010003|"
                      "[leg_timeout=20]sofia/gateway/gw1/13901010001")
    assert acts[-2] == ("playback", "/usr/share/freeswitch/sounds/tel400/unavailable.wav")

    monkeypatch.setattr(http_service.router, "route", at(22))
    assert actions(http_client.post("/freeswitch/dialplan", data=fs_form()).text) == [
        ("answer", None), ("playback", "/usr/share/freeswitch/sounds/tel400/closed.wav"),
        ("hangup", "NORMAL_CLEARING")]

    monkeypatch.setattr(http_service.router, "route", at(10))
    acts = actions(http_client.post("/freeswitch/dialplan", data=fs_form(dest="4001100868")).text)
    assert acts == [("answer", None), ("callcenter", "support@default"), ("hangup", "NORMAL_CLEARING")]
    blocked = actions(http_client.post("/freeswitch/dialplan", data=fs_form(caller="13800000000")).text)
    assert blocked[-1] == ("hangup", "CALL_REJECTED")


def test_freeswitch_pin_collection_round_trip(http_client):
    first = actions(http_client.post("/freeswitch/dialplan", data=fs_form(dest="4001532532")).text)
    assert [a for a, _ in first] == ["answer", "set", "play_and_get_digits", "transfer"]
    assert ("set", "tel400_pin_round=1") in first
    assert dict(first)["play_and_get_digits"].endswith("tel400_pin \\d{4,8}")
    assert dict(first)["transfer"] == "4001532532 XML public"
    # FreeSWITCH transfers back with the digits in the channel
    wrong = actions(http_client.post("/freeswitch/dialplan", data=fs_form(
        dest="4001532532", variable_tel400_pin="9999", variable_tel400_pin_round="1")).text)
    assert ("playback", "/usr/share/freeswitch/sounds/tel400/bad_pin.wav") in wrong
    assert ("set", "tel400_pin_round=2") in wrong and wrong[-1][0] == "transfer"
    right = actions(http_client.post("/freeswitch/dialplan", data=fs_form(
        dest="4001532532", variable_tel400_pin="1234", variable_tel400_pin_round="2")).text)
    assert right == [("answer", None), ("conference", "4001532532@default"), ("hangup", "NORMAL_CLEARING")]
    # a caller who keys nothing: after the attempts, the notice and a hangup, no endless loop
    done = actions(http_client.post("/freeswitch/dialplan", data=fs_form(
        dest="4001532532", variable_tel400_pin_round="3")).text)
    assert done[-1][0] == "hangup" and not any(a == "transfer" for a, _ in done)


def test_rotating_callers_cannot_brute_force_the_pin(http_client):
    """Observed: a new caller id every 4 guesses found the PIN in 1,239 guesses, on both endpoints."""
    def dialplan(caller, pin):
        form = fs_form(dest="4001532532", caller=caller, variable_tel400_pin=pin, variable_tel400_pin_round="1")
        return actions(http_client.post("/freeswitch/dialplan", data=form).text)

    reasons = [http_client.route(dialed="4001532532", caller=f"139{i // 4:08d}", pin=f"{i:04d}", at=None)["reason"]
               for i in range(10)]  # now, like the switch's requests
    guesses = [dialplan(f"139{i // 4:08d}", f"{i:04d}") for i in range(10, 30)]
    assert reasons == ["bad_pin"] * 10
    assert ("playback", "/usr/share/freeswitch/sounds/tel400/bad_pin.wav") in guesses[8]
    assert ("playback", "/usr/share/freeswitch/sounds/tel400/pin_locked.wav") in guesses[9]  # the 20th
    assert ("playback", "/usr/share/freeswitch/sounds/tel400/pin_locked.wav") in dialplan("13912345678", "1234")
    assert http_client.route(dialed="4001532532", caller="13987654321", pin="1234", at=None)["reason"] == "pin_locked"


def _hashed_manual() -> tel400.PlanSet:
    """The manual's plans, the vanity number's PIN 1234 given as a (cheap) hash."""
    tree = tel400.load_plans(EXAMPLES / "manual.toml").to_dict()
    for plan in tree["numbers"]:
        if plan.pop("pin", None):
            plan["pin_hash"] = pins.make_hash("1234", n=1 << 4)
    return tel400.PlanSet.from_dict(tree)


async def _acquired(semaphore: threading.Semaphore) -> None:
    """Wait (generously, on no thread pool) until ``semaphore`` can be taken."""
    for _ in range(3000):
        if semaphore.acquire(blocking=False):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not acquired in 30 s")


async def _until_done(tasks, count: int) -> None:
    """Wait (generously) until ``count`` of ``tasks`` have finished."""
    pending = set(tasks)
    while len(tasks) - len(pending) < count:
        done, pending = await asyncio.wait(pending, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        assert done, f"{len(tasks) - len(pending)} of {count} requests finished; then none in 30 s"


def test_pin_guesses_hold_neither_admin_requests_nor_the_right_pin(tmp_path, impl, monkeypatch):
    """64 clients guessing distinct PINs held every thread for ~4.3 s: an admin GET and
    the right PIN waited behind their key derivations.  Derivations now have their own
    threads and a bound; a guess beyond it is answered at once."""
    release, started = threading.Event(), threading.Semaphore(0)
    real = pins._derive

    def slow(pin_hash, candidate):  # a derivation that lasts until the test says so
        started.release()
        assert release.wait(60)
        return real(pin_hash, candidate)

    monkeypatch.setattr(pins, "_derive", slow)
    service = make_service(tmp_path, impl.name, plans=_hashed_manual(),
                           pin_policy=pins.PinPolicy(derivations=3))
    route = {"dialed": "4001532532", "at": "2026-11-24T09:00"}

    async def attack():
        # a small default pool: the one admin requests (and, before, PIN checks) ran on
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(2))
        try:
            return await requests()
        finally:
            release.set()  # whatever failed: let the derivations end, so the loop can close

    async def requests():
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            release.set()
            right = await client.post("/v1/route", json={**route, "caller": "13901012345", "pin": "1234"})
            assert right.json()["action"] == "conference"  # verified once, then cached
            assert started.acquire(blocking=False)
            release.clear()
            guesses = [asyncio.ensure_future(client.post("/v1/route", json={
                **route, "caller": f"1390200{i:04d}", "pin": f"{5000 + i}"})) for i in range(12)]
            for _ in range(3):
                await _acquired(started)  # every slot derives and waits
            await _until_done(guesses, 9)  # the others were answered at once
            admin = await asyncio.wait_for(client.get("/v1/numbers/4001532532",
                                                      headers={"Authorization": f"Bearer {ADMIN}"}), 30)
            assert admin.status_code == 200
            right = await asyncio.wait_for(client.post("/v1/route", json={
                **route, "caller": "13901012345", "pin": "1234"}), 30)
            assert right.json()["action"] == "conference"
            form = fs_form(dest="4001532532", variable_tel400_pin="1234", variable_tel400_pin_round="1")
            xml = await asyncio.wait_for(client.post("/freeswitch/dialplan", data=form), 30)
            assert ("conference", "4001532532@default") in actions(xml.text)
            busy = await client.post("/v1/route", json={**route, "caller": "13903000000", "pin": "7777"})
            busy = busy.json()
            assert (busy["action"], busy["reason"]) == ("reject", "backend_error")
            release.set()
            return [(await g).json()["reason"] for g in guesses]

    try:
        reasons = asyncio.run(attack())
        assert sorted(reasons) == ["backend_error"] * 9 + ["bad_pin"] * 3
        metrics = Client(service).get("/metrics").text
        assert "tel400_pin_checks_busy_total 10.0" in metrics
    finally:
        release.set()
        service.stop()


def test_freeswitch_not_found_for_other_sections_and_numbers(http_client):
    not_found = ('<section name="result"><result status="not found"/></section>')
    assert not_found in http_client.post("/freeswitch/dialplan", data=fs_form(section="directory")).text
    assert not_found in http_client.post("/freeswitch/dialplan", data=fs_form(dest="4009999999")).text
    assert not_found in http_client.post("/freeswitch/dialplan", data={"section": "dialplan"}).text


def test_freeswitch_reports_the_end_when_told_where(tmp_path, impl):
    http_service = make_service(tmp_path, impl.name, end_url="http://10.0.0.9:8400/")
    try:
        http_service.router.route = _at_nine(http_service)
        acts = actions(Client(http_service).post("/freeswitch/dialplan", data=fs_form()).text)
        assert ("set", "api_reporting_hook=curl http://10.0.0.9:8400/v1/calls/7f4de4a4-0c5b-4bd4-9a0c-1d6f2f1c2a10"
                       "/end post duration=${billsec}") in acts
        assert "7f4de4a4-0c5b-4bd4-9a0c-1d6f2f1c2a10" in http_service.router._shared.calls
    finally:
        http_service.stop()


def _at_nine(http_service):
    real = http_service.router.route
    nine = http_service._at("2026-11-24T09:00")
    return lambda dialed, caller, at=None, *args: real(dialed, caller, nine, *args)


@pytest.mark.parametrize("caller", [
    '13901012345"/><action application="system" data="rm -rf /"/><x a="',
    "${system(rm -rf /)}",
    "13901012345</condition></extension>",
    "139\r\n01012345",
])
def test_freeswitch_xml_cannot_be_injected_by_callers(http_client, http_service, caller):
    http_service.router.route = _at_nine(http_service)
    for dest in ("4001012345", '4001012345"/><action application="system"/>'):
        text = http_client.post("/freeswitch/dialplan", data=fs_form(dest=dest, caller=caller,
                                                                **{"Caller-Context": 'public"><x'})).text
        root = ET.fromstring(text)  # well-formed whatever came in
        apps = [a.get("application") for a in root.iter("action")]
        assert "system" not in apps
        assert "${system" not in text and "rm -rf" not in "".join(a.get("data") or "" for a in root.iter("action"))
        for ctx in root.iter("context"):
            assert ctx.get("name") == "public"


# -- Kamailio rtjson ------------------------------------------------------------------------------------


def test_kamailio_rtjson_serial_routes_in_failover_order(http_client):
    r = http_client.post("/kamailio/rtjson", json={"dialed": "4001012345", "caller": "057188888888",
                                              "at": "2026-11-24T15:00", "call_id": "abc@host"})
    doc = r.json()
    assert (doc["version"], doc["routing"]) == ("1.0", "serial")
    assert [route["uri"] for route in doc["routes"]] == ["sip:13901010003@gw.example:5060",
                                                         "sip:13901010001@gw.example:5060"]
    assert all(route["fr_inv_timer"] == 30000 for route in doc["routes"])
    assert doc["tel400"]["rule"] == "afternoon" and "reply" not in doc["tel400"]


def test_kamailio_refusals_carry_the_reply(http_client):
    doc = http_client.post("/kamailio/rtjson", json={"dialed": "4001012345", "caller": "13800000000"}).json()
    assert doc["routes"] == [] and doc["tel400"]["reply"] == {"code": 403, "reason": "Forbidden"}
    doc = http_client.post("/kamailio/rtjson", json={"dialed": "4009999999", "caller": "13800000001"}).json()
    assert doc["tel400"]["reply"] == {"code": 404, "reason": "Not Found"}


def test_kamailio_message_is_sms_and_media_server_gets_refusals(tmp_path, impl):
    http_service = make_service(tmp_path, impl.name, media_server="sip:media@10.0.0.7:5080")
    http_client = Client(http_service)
    try:
        sms = http_client.post("/kamailio/rtjson", json={"dialed": "106574001012345", "caller": "13901012345",
                                                    "method": "MESSAGE"}).json()
        assert sms["routes"][0]["uri"] == "sip:13901010009@gw.example:5060" and sms["tel400"]["channel"] == "sms"
        closed = http_client.post("/kamailio/rtjson", json={"dialed": "4001012345", "caller": "13901012345",
                                                       "at": "2026-11-24T23:00"}).json()
        route = closed["routes"][0]
        assert route["uri"] == "sip:media@10.0.0.7:5080"
        assert "X-Tel400-Prompt: closed\r\n" in route["headers"]["extra"]
    finally:
        http_service.stop()


def test_kamailio_injection_through_the_caller_is_impossible(http_client):
    evil = "13901012345\r\nX-Evil: 1\r\nContact: <sip:attacker@evil>"
    r = http_client.post("/kamailio/rtjson", json={"dialed": "4001012345", "caller": evil, "at": "2026-11-24T23:00"})
    doc = json.loads(r.text)
    assert "X-Evil" not in r.text and "attacker" not in r.text
    assert doc["tel400"]["caller"] is None


@pytest.mark.parametrize("body", [{"caller": "1"}, {"dialed": "4001012345", "method": "BYE"},
                                  {"dialed": ["4001012345"]}])
def test_kamailio_bad_input(http_client, body):
    assert http_client.post("/kamailio/rtjson", json=body).status_code == 422


# -- operations ------------------------------------------------------------------------------------------


def test_metrics_show_decisions_latency_and_requests(http_client):
    http_client.route()
    http_client.post("/v1/route", content=b"nope")
    text = http_client.get("/metrics").text
    assert 'tel400_decisions_total{action="bridge",number="4001012345",reason="ok"} 1.0' in text
    assert 'tel400_http_route_seconds_count{endpoint="route"} 1.0' in text
    assert 'tel400_http_requests_total{endpoint="route",status="200"} 1.0' in text
    assert 'tel400_http_requests_total{endpoint="route",status="400"} 1.0' in text
    assert "tel400_reloads_total" in text and "tel400_backend_errors_total" in text


def test_health_and_readiness(http_client, http_service):
    assert http_client.get("/healthz").json() == {"status": "ok"}
    ready = http_client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["numbers"] == 3
    http_service.draining = True
    assert http_client.get("/readyz").status_code == 503
    assert http_client.get("/v1/ping").json() == {"pong": True}


def test_openapi_describes_every_endpoint(http_client, http_service):
    doc = http_client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert ("POST", "/v1/route") in described and ("GET", "/v1/numbers/{number}/report") in described
    served = {key for key in http_service._static} | {
        (meth, pattern.pattern) for pattern, methods in http_service._patterns for meth in methods}
    admin = {(meth, route.path) for route in http_service.admin.routes
             for meth in route.endpoint.allowed}
    assert doc["openapi"] == "3.1.0"  # generated from the msgspec Structs of schemas.py
    assert len(described) == len(served) + len(admin)
    assert {(m, p) for m, p in described if not p.startswith("/v1/calls/")} >= set(http_service._static) | admin


# -- a counter backend that dies ------------------------------------------------------------------------


def test_a_shared_call_registry_is_used_off_the_event_loop(tmp_path, impl):
    # tel400-http --workers N keeps calls in SQLite by default: each route() with a call id writes there,
    # waiting up to the busy timeout for another worker's lock; the event loop must not wait with it
    service = make_service(tmp_path, impl.name, calls=f"sqlite://{tmp_path}/calls.db")
    client = Client(service)
    try:
        assert service.offload
        assert client.route(call_id="shared-1")["action"] == "bridge"
        assert client.post("/v1/calls/shared-1/end", json={"duration": 61}).json()["billed_s"] == 120
    finally:
        service.stop()


def test_redis_counters_over_http_count_and_survive_redis_dying(tmp_path, impl):
    from tel400.testing import RedisServer

    redis = RedisServer().start()
    service = make_service(tmp_path, impl.name, counters=redis.url + "?timeout_ms=20&backoff_ms=200")
    client = Client(service)
    try:
        assert service.offload  # Redis calls wait on the network: decided in a worker thread
        plan = client.get("/v1/numbers/4001012345", token=ADMIN).json()
        plan["caps"] = [{"metric": "calls", "per": "day", "limit": 3}]
        assert client.put("/v1/numbers/4001012345", token=ADMIN, json=plan).status_code == 200
        reasons = [client.route()["reason"] for _ in range(4)]
        assert reasons == ["ok", "ok", "ok", "cap_exceeded"]  # counted in Redis
        redis.stop()
        answers = [client.route(caller=f"1390101{i:04d}") for i in range(5)]
        # the manual's plan fails open (on_backend_error defaults to allow): bridged, and counted as errors
        assert {(d["action"], d["reason"]) for d in answers} == {("bridge", "ok")}
        metrics = client.get("/metrics").text
        assert 'tel400_backend_errors_total{policy="allow"} 5.0' in metrics
        assert client.get("/readyz").status_code == 200
    finally:
        service.stop()
        redis.stop()
