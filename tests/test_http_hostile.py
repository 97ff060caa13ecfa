"""Every class of hostile value, in every place of every endpoint: never a 500.

docs/http.md promises a clear 4xx for anything a client can send.
schemathesis (test_http_schema.py) generates requests from the OpenAPI
document; this sweep adds what a schema does not suggest: values at and past
the limits of Python's types (times in the year 10000, digits that
``str.isdigit`` accepts and ``int`` refuses, numbers past a C long), control
characters, markup, deep nesting, bytes that are not UTF-8, each put into
every field, query parameter and path segment, one at a time.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import httpx
import pytest

from .http_harness import ADMIN, make_service

N = "4001012345"

# Values a JSON body may carry.
JSON_VALUES = [
    None, True, False, 0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, -(10**30), 0.5, -0.0, 1e300, -1e300, 5e-324,
    253402272000, 253402300799, 253402300800, 253370764800, -2177452801, 9.3e18,
    "", " ", "0", "²", "٣", "１２３", "1e30", "-1", "NaN", "Infinity", "9999-12-31T23:59:59+00:00",
    "0001-01-01T00:00:00-05:00", "America", "Asia", "Etc", "../../etc/passwd", "x" * 300, "x" * 20_000,
    "\x00", "a\r\nb: c", "<x>&\"'", "%00%0d%0a", "😀", "\ud800", "scrypt:16384:8:120$s$" + "00" * 32,
    [], {}, [1, "2", None], {"a": {"b": {"c": []}}}, [[[[[[[[[[[]]]]]]]]]]],
]

# Values a query parameter or a path segment may carry (sent URL-encoded).
TEXT_VALUES = [
    "", "0", "-1", "²", "٣", "１", "1e3", "9" * 400, "0x10", " 1", "1 ", "+1", "%FF", "%00", "..", "a/b", "\x00",
    "\r\n", "<script>", "😀", "NaN", "2026-13", "2026-00", "9999-12", "0000-01", "*", "anonymous",
]

# Raw bodies that are not what any endpoint expects.
RAW_BODIES = [
    b"", b"{", b"[]", b"null", b"1", b'"x"', b"\xff\xfe\x00", b'{"a": NaN}', b'{"dialed": 1' + b"0" * 5000 + b"}",
    b"[" * 100_000, b'{"dialed": "4001012345", "dialed": 1}', b"\x00" * 64, b"a=%FF%FE&b=%00",
    "Caller-Destination-Number=４００１０１２３４５".encode(),
]

PLAN = {
    "number": N, "timezone": "Asia/Shanghai",
    "tariff": {"local": 0.1, "long_distance": 0.3, "increment_s": 60},
    "caps": [{"metric": "cost", "per": "month", "limit": 100}],
    "default": {"action": "reject", "prompt": "closed"},
    "rules": [{"name": "office", "provinces": ["CN-BJ"], "days": "workday", "time": "08:00-18:00",
               "dates": "2026-01-01..2026-12-31", "targets": [{"to": "13901010001", "weight": 1}]}],
    "calendar": {"holidays": ["2026-10-01..2026-10-07"]},
}

# Where in a plan a value goes: a path of keys and indexes.
PLAN_PLACES = [
    ("number",), ("timezone",), ("pin",), ("pin_hash",), ("blacklist",), ("reject_unknown_callers",),
    ("on_backend_error",), ("prompts",), ("tariff", "local"), ("tariff", "long_distance"),
    ("tariff", "increment_s"), ("caps", 0, "limit"), ("caps", 0, "per"), ("caps", 0, "metric"),
    ("rules", 0, "name"), ("rules", 0, "provinces"), ("rules", 0, "days"), ("rules", 0, "time"),
    ("rules", 0, "dates"), ("rules", 0, "strategy"), ("rules", 0, "targets", 0, "to"),
    ("rules", 0, "targets", 0, "weight"), ("calendar", "holidays"), ("calendar", "years"), ("default",),
]

# (method, path, the body fields with a valid value each)
JSON_ENDPOINTS = [
    ("POST", "/v1/route", {"dialed": N, "caller": "13901012345", "at": "2026-11-24T09:00", "channel": "voice",
                           "pin": "1234", "call_id": "h-1", "explain": True}),
    ("POST", "/kamailio/rtjson", {"dialed": N, "caller": "13901012345", "call_id": "h-2", "method": "INVITE",
                                  "at": "2026-11-24T09:00"}),
    ("POST", "/v1/calls/h-1/end", {"duration": 60, "target": "13901010001"}),
    ("PUT", f"/v1/numbers/{N}/pin", {"pin": "8642"}),
]

FORM = {"section": "dialplan", "Caller-Destination-Number": N, "Caller-Caller-ID-Number": "13901012345",
        "Caller-Context": "public", "Unique-ID": "0f2e5b3c-1111-2222-3333-444455556666",
        "variable_tel400_pin": "1234", "variable_tel400_pin_round": "1"}

GETS = [f"/v1/numbers/{N}", f"/v1/numbers/{N}/blacklist", f"/v1/numbers/{N}/audit", f"/v1/numbers/{N}/report",
        f"/v1/numbers/{N}/calls", "/v1/numbers", "/v1/ping", "/healthz", "/readyz", "/metrics", "/openapi.json"]
QUERIES = {f"/v1/numbers/{N}/report": ("month",), f"/v1/numbers/{N}/calls": ("limit", "before")}
PATHS = ["/v1/numbers/{}", "/v1/numbers/{}/blacklist", "/v1/numbers/{}/blacklist/{}", "/v1/numbers/{}/pin",
         "/v1/numbers/{}/audit", "/v1/numbers/{}/report", "/v1/numbers/{}/calls", "/v1/calls/{}/end"]


def _placed(tree, place, value):
    out = json.loads(json.dumps(tree))
    node = out
    for key in place[:-1]:
        node = node[key]
    node[place[-1]] = value
    return out


def _q(text: str) -> str:
    """URL-encoded, lone surrogates included (as the bytes a careless client would send)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _json(value) -> bytes:
    # json, not httpx: lone surrogates and huge integers go out as a client would write them
    return json.dumps(value, ensure_ascii=True).encode()


def _requests():
    """(method, path, headers, body) for the whole sweep."""
    auth = {"authorization": f"Bearer {ADMIN}"}
    js = {**auth, "content-type": "application/json"}
    form = {**auth, "content-type": "application/x-www-form-urlencoded"}
    for method, path, valid in JSON_ENDPOINTS:
        for name in valid:
            for value in JSON_VALUES:
                yield method, path, js, _json({**valid, name: value})
        for raw in RAW_BODIES:
            yield method, path, js, raw
            yield method, path, form, raw
    for place in PLAN_PLACES:
        for value in JSON_VALUES:
            yield "PUT", f"/v1/numbers/{N}", js, _json(_placed(PLAN, place, value))
    for name in FORM:
        for value in TEXT_VALUES + [v for v in JSON_VALUES if isinstance(v, str)]:
            body = "&".join(f"{k}={_q(value if k == name else FORM[k])}" for k in FORM)
            yield "POST", "/freeswitch/dialplan", form, body.encode()
    for raw in RAW_BODIES:
        yield "POST", "/freeswitch/dialplan", form, raw
    for path, names in QUERIES.items():
        for name in names:
            for value in TEXT_VALUES:
                yield "GET", f"{path}?{name}={_q(value)}", auth, b""
    for template in PATHS:
        for value in TEXT_VALUES:
            segment = _q(value) or "%20"
            path = template.format(*([segment] * template.count("{}")))
            for method in ("GET", "PUT", "POST", "DELETE"):
                yield method, path, js, b"{}"
    for path in GETS:
        for headers in ({}, {"authorization": "Bearer \u00ff".encode()}, {"authorization": "Basic ²".encode()},
                        {"authorization": "Bearer " + "x" * 10_000}, {"content-length": "²"}):
            yield "GET", path, headers, b""


@pytest.fixture
def service(tmp_path, impl):
    service = make_service(tmp_path, impl.name)
    yield service
    service.stop()


def test_no_value_anywhere_gets_a_500(service):
    failures = []

    async def sweep():
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://tel400.test") as client:
            count = 0
            for method, path, headers, body in _requests():
                headers = {k: v.encode() if isinstance(v, str) else v for k, v in headers.items()}
                r = await client.request(method, path, headers=headers, content=body)
                count += 1
                if r.status_code >= 500:
                    failures.append((r.status_code, method, path, body[:120], r.text[:200]))
            # and the service still routes
            r = await client.post("/v1/route", json={"dialed": N, "caller": "13901012345"})
            assert r.status_code == 200, r.text
            return count

    count = asyncio.run(sweep())
    assert count > 3000  # the sweep really ran
    assert not failures, "\n".join(map(repr, failures[:40])) + f"\n({len(failures)} in all)"


@pytest.mark.parametrize("at", [253402272000, 253402300799, "9999-12-31T23:00:00+00:00", "0001-01-01T00:00-05:00"])
@pytest.mark.parametrize("path", ["/v1/route", "/kamailio/rtjson"])
def test_times_past_what_a_calendar_holds_are_a_422_naming_at(service, path, at):
    async def go():
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://tel400.test") as client:
            return await client.post(path, json={"dialed": N, "caller": "13901012345", "at": at})

    r = asyncio.run(go())
    assert r.status_code == 422, r.text
    assert "at:" in r.json()["message"]


@pytest.mark.parametrize("value", ["²", "٣", "１", "-1", "0", "1001", "1e3", " 1"])
def test_query_numbers_are_ascii_digits_in_range(service, value):
    async def go():
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://tel400.test") as client:
            return await client.get(f"/v1/numbers/{N}/calls?limit={quote(value)}",
                                    headers={"authorization": f"Bearer {ADMIN}"})

    r = asyncio.run(go())
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "limit"
