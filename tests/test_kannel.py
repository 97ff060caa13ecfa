"""Kannel, the SMS gateway: tel400_http.kannel against real bearerbox, smsbox and fakesmsc.

The tests start Kannel themselves on loopback (tests/kannel_harness.py) and
stand in for tel400-http's endpoints with a small stdlib HTTP handler that
uses the adapter's own parse_incoming, reply_headers and parse_dlr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import http.server
import threading
import time
import urllib.parse

import pytest

import httpx

from tel400.smsjobs import GatewayError, GatewayInDoubt
from tel400.smstext import OutgoingSms, encoding_of
from tel400_http.kannel import (MAX_INCOMING_CHARS, Dlr, IncomingSms, KannelGateway, dlr_url_for, parse_dlr,
                                parse_incoming_query,
                                parse_incoming, reply_headers)

from .conftest import ROOT
from .kannel_harness import FakeSms, KannelServers, free_port, parse_fakesmsc_lines

SAMPLE = ROOT / "adapters" / "kannel" / "kannel.conf"

NUMBER = "4001234567"
PHONE = "13800138000"
GET_URL_QUERY = "from=%p&to=%P&text=%b&coding=%c&charset=%C&at=%T"


class Handler:
    """tel400-http's two Kannel endpoints, in miniature: ``/mo`` answers ``reply_for(sms)``, ``/dlr`` records."""

    def __init__(self, reply_for=lambda sms: None, port: int | None = None) -> None:
        self.reply_for = reply_for
        self.incoming: list[IncomingSms] = []
        self.dlrs: list[Dlr] = []
        self.refused: list[str] = []
        self.port = port or free_port()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Handler:
        owner = self

        class Request(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path, _, query = self.path.partition("?")
                params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
                body, headers = b"", [(b"content-type", b"text/plain")]
                try:
                    if path == "/mo":
                        sms = parse_incoming(params)
                        owner.incoming.append(sms)
                        reply = owner.reply_for(sms)
                        if reply is not None:
                            body, headers = reply.encode("utf-8"), reply_headers(reply)
                    elif path == "/dlr":
                        owner.dlrs.append(parse_dlr(params))
                    status = 200
                except ValueError as exc:
                    owner.refused.append(str(exc))
                    status = 400
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name.decode(), value.decode())
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Request)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def kannel_with(tmp_path, handler: Handler, **options):
    handler.start()
    try:
        with KannelServers(tmp_path, get_url=f"{handler.url}/mo?{GET_URL_QUERY}",
                           dlr_base=f"{handler.url}/dlr", **options) as kannel:
            yield kannel
    finally:
        handler.stop()


def wait_for(predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def sms(message_id: str, text: str, to: str = PHONE) -> OutgoingSms:
    # The parts smsbox will make of it: 70/67 UCS-2 characters, 160/153 GSM ones.
    per_part = 67 if encoding_of(text) == "ucs2" else 153
    parts = 1 if len(text) <= (70 if per_part == 67 else 160) else -(-len(text) // per_part)
    return OutgoingSms(message_id=message_id, number=NUMBER, sender="10657" + NUMBER, to=to, text=text,
                       parts=parts, kind="job")


# -- real Kannel ---------------------------------------------------------


@pytest.mark.slow
def test_a_chinese_message_reaches_get_url_intact_and_the_chinese_reply_reaches_the_phone(tmp_path):
    # Characters that mean something in a query (+ & = % #) and one outside the BMP (a surrogate pair).
    ascii_text = "hello+1 & a=b%20#x?"
    replies = {"你好，请问营业时间？": "您好！营业时间：周一至周五 9:00-18:00。😀", ascii_text: "Hi, we open at 9"}
    handler = Handler(lambda sms: replies.get(sms.text))
    with kannel_with(tmp_path, handler) as kannel:
        kannel.inject(PHONE, NUMBER, "你好，请问营业时间？")
        kannel.inject("13900139000", NUMBER, ascii_text)
        got = kannel.wait_received(2)
        pids = kannel.pids
    assert len(pids) == 3  # bearerbox, smsbox, fakesmsc; the injecting fakesmsc is gone already
    for pid in pids:  # stopped and reaped, with anything they forked (their process groups)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert [(m.sender, m.to, m.text) for m in handler.incoming] == [
        (PHONE, NUMBER, "你好，请问营业时间？"), ("13900139000", NUMBER, ascii_text)]
    assert all(m.at is not None and abs(m.at - time.time()) < 600 for m in handler.incoming)
    assert got == [FakeSms(NUMBER, PHONE, "您好！营业时间：周一至周五 9:00-18:00。😀"),
                   FakeSms(NUMBER, "13900139000", "Hi, we open at 9")]
    assert handler.refused == []


@pytest.mark.slow
def test_a_long_chinese_reply_goes_out_in_parts(tmp_path):
    reply = "感谢您的来电，" * 20  # 140 UCS-2 characters: 3 parts of at most 67
    handler = Handler(lambda sms: reply)
    with kannel_with(tmp_path, handler) as kannel:
        kannel.inject(PHONE, NUMBER, "营业时间")
        got = kannel.wait_received(1)
    assert got == [FakeSms(NUMBER, PHONE, reply, parts=3)]


@pytest.mark.slow
def test_no_reply_sends_nothing(tmp_path):
    handler = Handler(lambda sms: None)
    with kannel_with(tmp_path, handler) as kannel:
        kannel.inject(PHONE, NUMBER, "退订")
        wait_for(lambda: handler.incoming, what="the message at get-url")
        kannel.inject(PHONE, NUMBER, "second")  # the first reply, were there one, is ahead of this one
        wait_for(lambda: len(handler.incoming) == 2, what="the second message")
        assert re.search(r"SMS: received 2 \(\d+ queued\), sent 0 ", kannel.status())
    assert kannel.received() == []


@pytest.mark.slow
def test_a_refused_or_unanswered_message_texts_nothing_back(tmp_path):
    """smsbox retries a 400 like an outage, then would send "Could not fetch content, sorry.": the
    configuration's empty reply-* texts keep the phone from getting it."""
    def refuse_some(sms):
        if sms.text == "bad":
            raise ValueError("refused")
        return "ok"

    handler = Handler(refuse_some)
    with kannel_with(tmp_path, handler, http_retries=1, queue_delay=1) as kannel:
        kannel.inject(PHONE, NUMBER, "bad")
        wait_for(lambda: len(handler.refused) == 2, what="the request and its retry")
        handler.stop()
        kannel.inject(PHONE, NUMBER, "unanswered")
        log = kannel.dir / "smsbox.log"
        wait_for(lambda: log.read_text().partition("<unanswered>")[2].count("Couldn't fetch") == 2,
                 what="smsbox giving up (the request and its retry)")
        handler.start()
        kannel.inject("13900139000", NUMBER, "good")  # behind any reply to the two above
        got = kannel.wait_received(1)
    assert got == [FakeSms(NUMBER, "13900139000", "ok")]


@pytest.mark.slow
def test_gateway_submits_ascii_chinese_and_long_texts_and_every_one_gets_delivery_reports(tmp_path):
    texts = ["Your code is 4821", "您的验证码是 4821，五分钟内有效。🎉", "预约成功" * 40, "a" * 300, "Tel 400 ok"]
    messages = [sms(f"job-7.{i}", texts[i % len(texts)] + ("" if i < 5 else f" #{i}"), to=f"1380013{i:04d}")
                for i in range(20)]
    handler = Handler()
    with kannel_with(tmp_path, handler) as kannel:
        async def send_all():
            async with KannelGateway(kannel.sendsms_url, username=kannel.username, password=kannel.password,
                                     dlr_url=kannel.dlr_base) as gateway:
                for message in messages:
                    await gateway.submit(message)

        asyncio.run(send_all())
        got = kannel.wait_received(20)
        wait_for(lambda: len(handler.dlrs) >= 40, what="two reports a message")
    assert sorted((m.sender, m.to, m.text, m.parts) for m in got) == sorted(
        (m.sender, m.to, m.text, m.parts) for m in messages)
    assert {m.parts for m in got} == {1, 2, 3}
    # The fake SMSC reports "accepted" (8) and "delivered" (1) for each message, long ones included.
    states = {}
    for dlr in handler.dlrs:
        states.setdefault(dlr.message_id, []).append(dlr.state)
    assert {k: sorted(v) for k, v in states.items()} == {m.message_id: ["delivered", "submitted"]
                                                        for m in messages}
    assert handler.refused == []


@pytest.mark.slow
def test_delivery_reports_survive_a_short_outage_of_the_handler(tmp_path):
    handler = Handler()
    with kannel_with(tmp_path, handler, http_retries=10, queue_delay=1) as kannel:
        handler.stop()  # tel400-http restarting

        async def send():
            async with KannelGateway(kannel.sendsms_url, username=kannel.username, password=kannel.password,
                                     dlr_url=kannel.dlr_base) as gateway:
                await gateway.submit(sms("outage-1", "重启期间的短信"))

        asyncio.run(send())
        kannel.wait_received(1)
        time.sleep(3)  # smsbox retries the dlr-url once a second meanwhile
        assert handler.dlrs == []
        handler.start()  # back on the same port
        wait_for(lambda: len(handler.dlrs) >= 2, what="the retried reports")
    assert sorted(d.state for d in handler.dlrs) == ["delivered", "submitted"]
    assert {d.message_id for d in handler.dlrs} == {"outage-1"}


@pytest.mark.slow
def test_the_sample_kannel_conf_runs_both_ways(tmp_path):
    """adapters/kannel/kannel.conf itself (ports, paths and passwords rewritten): its get-url is the one
    documented, a Chinese message in gets its reply out, a sendsms gets its reports."""
    get_urls = re.findall(r'^get-url = "(.*)"$', SAMPLE.read_text(), flags=re.M)
    assert get_urls == [f"http://127.0.0.1:8400/v1/sms/kannel?{GET_URL_QUERY}"]
    handler = Handler(lambda sms: "已收到：" + sms.text).start()
    try:
        get_url = get_urls[0].replace("http://127.0.0.1:8400/v1/sms/kannel", f"{handler.url}/mo")
        with KannelServers(tmp_path, get_url=get_url, sample=SAMPLE) as kannel:
            kannel.inject(PHONE, NUMBER, "预订 2 人")

            async def send():
                async with KannelGateway(kannel.sendsms_url, username=kannel.username,
                                         password=kannel.password, dlr_url=f"{handler.url}/dlr") as gateway:
                    await gateway.submit(sms("sample-1", "您的预订已确认"))

            asyncio.run(send())
            got = kannel.wait_received(2)
            wait_for(lambda: len(handler.dlrs) >= 2, what="the reports")
    finally:
        handler.stop()
    assert sorted(got, key=lambda m: m.sender) == [FakeSms("10657" + NUMBER, PHONE, "您的预订已确认"),
                                                   FakeSms(NUMBER, PHONE, "已收到：预订 2 人")]
    assert {d.message_id for d in handler.dlrs} == {"sample-1"}


@pytest.mark.slow
def test_gateway_errors_wrong_password_and_unreachable(tmp_path):
    handler = Handler()
    with kannel_with(tmp_path, handler) as kannel:
        async def attempts():
            async with KannelGateway(kannel.sendsms_url, username=kannel.username, password="wrong",
                                     dlr_url=kannel.dlr_base) as gateway:
                with pytest.raises(GatewayError, match="403"):
                    await gateway.submit(sms("x-1", "hi"))

        asyncio.run(attempts())
        assert kannel.received() == []

    async def unreachable():
        async with KannelGateway(f"http://127.0.0.1:{free_port()}/cgi-bin/sendsms", username="u",
                                 password="p", dlr_url="http://127.0.0.1:1/dlr", timeout=2) as gateway:
            with pytest.raises(GatewayError, match="unreachable"):
                await gateway.submit(sms("x-2", "hi"))

    asyncio.run(unreachable())


# -- the adapter alone -----------------------------------------------------

@pytest.mark.parametrize("error, in_doubt", [
    (httpx.ConnectError("refused"), False),
    (httpx.ConnectTimeout("no answer to SYN"), False),
    (httpx.PoolTimeout("no free connection"), False),
    (httpx.ReadTimeout("smsbox slow"), True),
    (httpx.ReadError("reset after the request"), True),
    (httpx.WriteError("reset while writing"), True),
    (httpx.RemoteProtocolError("answer cut"), True),
])
def test_an_answer_lost_after_the_request_left_is_in_doubt_not_a_refusal(error, in_doubt):
    """H1: a read timeout may come after smsbox queued the message; resending at once sends it twice."""
    def handler(request):
        raise error

    async def submit():
        gateway = KannelGateway("http://127.0.0.1:1/cgi-bin/sendsms", username="u", password="p",
                                dlr_url="http://127.0.0.1:1/dlr")
        await gateway.aclose()
        gateway._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with gateway:
            await gateway.submit(sms("x-3", "hi"))

    with pytest.raises(GatewayError) as caught:
        asyncio.run(submit())
    assert isinstance(caught.value, GatewayInDoubt) is in_doubt

GOOD = {"from": PHONE, "to": NUMBER, "text": "你好", "coding": "0", "charset": "UTF-8", "at": "1796108509"}


def test_parse_incoming_reads_a_message():
    assert parse_incoming(GOOD) == IncomingSms(sender=PHONE, to=NUMBER, text="你好", at=1796108509.0)
    assert parse_incoming({"from": "+8613800138000", "to": "106574001234567", "text": ""}).at is None


@pytest.mark.parametrize("change, error", [
    ({"from": None}, "missing 'from'"),
    ({"to": None}, "missing 'to'"),
    ({"text": None}, "missing 'text'"),
    ({"from": "13800138000\r\nX-Evil: 1"}, "'from' is not a phone number"),
    ({"from": "abc"}, "'from' is not a phone number"),
    ({"to": ""}, "'to' is not a phone number"),
    ({"from": "1" * 33}, "'from' is not a phone number"),
    ({"text": "x" * (MAX_INCOMING_CHARS + 1)}, "longer than"),
    ({"text": "a\x00b"}, "NUL"),
    ({"text": "\ufffd\ufffd"}, "not UTF-8"),  # raw UTF-16 bytes percent-decoded as UTF-8
    ({"charset": "UTF-16BE", "coding": "2"}, "mo-recode"),
    ({"coding": "7"}, "'coding'"),
    ({"at": "yesterday"}, "'at'"),
    ({"at": "99999999999"}, "'at'"),
    ({"at": "١٢٣"}, "'at'"),  # Arabic-Indic digits are digits to str.isdigit
])
def test_parse_incoming_refuses_garbage(change, error):
    params = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=error):
        parse_incoming(params)


def test_a_real_replacement_character_from_a_phone_is_kept_mangled_bytes_refused():
    """U+FFFD is a valid UCS-2 character a phone can send; only bytes that are not UTF-8 are refused."""
    query = urllib.parse.urlencode({**GOOD, "text": "ok \ufffd 你好"}).encode()
    assert parse_incoming_query(query).text == "ok \ufffd 你好"
    with pytest.raises(ValueError, match="not UTF-8"):
        parse_incoming_query(b"from=13800138000&to=4001012345&text=%FE%FF%00A")  # raw UTF-16, mo-recode off
    with pytest.raises(ValueError, match="ASCII"):
        parse_incoming_query("from=1&to=2&text=\xff".encode("latin-1"))
    with pytest.raises(ValueError, match="missing 'text'"):
        parse_incoming_query(b"from=13800138000&to=4001012345")


def test_the_incoming_length_limit_is_tunable():
    assert parse_incoming({**GOOD, "text": "x" * 3000}, max_chars=3000).text == "x" * 3000
    with pytest.raises(ValueError, match="longer than 10 characters"):
        parse_incoming({**GOOD, "text": "x" * 11}, max_chars=10)


def test_parse_incoming_takes_ascii_in_a_legacy_charset_only():
    assert parse_incoming({**GOOD, "text": "STOP", "charset": "ISO-8859-1"}).text == "STOP"
    with pytest.raises(ValueError, match="mo-recode"):
        parse_incoming({**GOOD, "text": "café", "charset": "ISO-8859-1"})


def test_parse_dlr_maps_every_report_type():
    states = {t: parse_dlr({"id": "job-1.2", "type": str(t), "at": "1796108509"}).state for t in (1, 2, 4, 8, 16)}
    assert states == {1: "delivered", 2: "failed", 4: "submitted", 8: "submitted", 16: "rejected"}
    assert parse_dlr({"id": "m", "type": "1"}) == Dlr(message_id="m", state="delivered", at=None)


@pytest.mark.parametrize("params, error", [
    ({}, "missing 'id'"),
    ({"id": "m"}, "missing 'type'"),
    ({"id": "m", "type": "3"}, "not a delivery report type"),
    ({"id": "m", "type": "32"}, "not a delivery report type"),
    ({"id": "m", "type": "-1"}, "not a delivery report type"),
    ({"id": "m", "type": "%d"}, "not a delivery report type"),  # a dlr-url smsbox did not fill
    ({"id": "m\r\nx", "type": "1"}, "not a message id"),
    ({"id": "x" * 65, "type": "1"}, "not a message id"),
    ({"id": "m", "type": "1", "at": "-5"}, "'at'"),
])
def test_parse_dlr_refuses_garbage(params, error):
    with pytest.raises(ValueError, match=error):
        parse_dlr(params)


def test_reply_headers_ask_for_ucs2_only_when_the_text_needs_it():
    assert dict(reply_headers("您好")) == {b"content-type": b"text/plain; charset=UTF-8", b"x-kannel-coding": b"2"}
    assert dict(reply_headers("Hello"))[b"x-kannel-coding"] == b"0"


def test_the_sendsms_query_carries_the_id_in_the_dlr_url_and_refuses_injection():
    gateway = KannelGateway("http://127.0.0.1:13013/cgi-bin/sendsms", username="u", password="p",
                            dlr_url="http://127.0.0.1:8400/v1/sms/dlr", smsc="carrier")
    params = gateway.params_for(sms("job-9.1", "您好"))
    assert params["dlr-url"] == "http://127.0.0.1:8400/v1/sms/dlr?id=job-9.1&type=%d&at=%T"
    assert (params["coding"], params["charset"], params["dlr-mask"], params["smsc"]) == ("2", "UTF-8", "31",
                                                                                         "carrier")
    assert gateway.params_for(sms("j", "plain"))["coding"] == "0"
    with pytest.raises(ValueError, match="not a phone number"):
        gateway.params_for(sms("j", "hi", to="138\r\n"))
    with pytest.raises(ValueError, match="cannot travel"):
        dlr_url_for("http://h/dlr", "a&type=1")
    assert dlr_url_for("http://h/dlr?k=1", "a") == "http://h/dlr?k=1&id=a&type=%d&at=%T"
    asyncio.run(gateway.aclose())


def test_fakesmsc_lines_are_read_and_parts_joined():
    raw = (b"x DEBUG: Got message 1: <400 138 ucs-2 %60%A8Y%7D>\n"
           b"x DEBUG: Got message 2: <400 138 udh %05%00%03%07%02%02 data %00b>\n"
           b"x DEBUG: Got message 3: <400 138 text plain words>\n"
           b"x DEBUG: Got message 4: <400 138 udh %05%00%03%07%02%01 data %00a>\n"
           b"unrelated line\n")
    assert parse_fakesmsc_lines(raw) == [FakeSms("400", "138", "您好"), FakeSms("400", "138", "plain words"),
                                         FakeSms("400", "138", "ab", parts=2)]


def test_a_port_taken_between_choosing_and_binding_starts_kannel_again_on_other_ports(tmp_path, monkeypatch):
    import socket

    from . import kannel_harness

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]] * 5)  # the first start's ports: all taken by this socket
        real = kannel_harness.free_port
        monkeypatch.setattr(kannel_harness, "free_port", lambda: next(ports, None) or real())
        with kannel_harness.KannelServers(tmp_path, get_url="http://127.0.0.1:9/mo") as kannel:
            assert taken.getsockname()[1] not in kannel.ports.values()
            assert kannel.status() is not None
