"""SIP MESSAGEs answered by tel400 in Kamailio: real Kamailio 5.6, a sipp sender, a listening phone.

A sipp caller sends the MESSAGE; its From URI names the port of a small
stdlib UDP listener (the sender's phone), which answers 200 to every request
and keeps it, so the reply MESSAGE Kamailio sends (uac_req_send) can be read
whole.  Runs the engine the tests run (TEL400_NO_EXTENSIONS is passed on).
"""

from __future__ import annotations

import json
import os
import socket
import sysconfig
import threading
import time
import uuid

import pytest

import tel400
from tel400.smsstore import SmsStore

from .kamailio_harness import Kamailio, sipp_uac

NUMBER = "4001000021"
REPLY = "酒店在北京路1号。"
OPT_OUT_REPLY = "您已退订{number}的短信。"
REPLY_LIMIT = 3
LONGEST_REPLY = "字" * 670  # 10 UCS-2 parts: the longest reply a plan may hold (2,010 bytes of UTF-8)


class Phone:
    """A UDP SIP listener: answers 200 OK to each request and keeps (headers, body)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[str, dict[str, str], str]] = []
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                continue
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("utf-8").split("\r\n")
            headers: dict[str, str] = {}
            vias = []
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "via":
                    vias.append(line)
                headers.setdefault(name.strip().lower(), value.strip())
            answer = ("SIP/2.0 200 OK\r\n" + "\r\n".join(vias) + "\r\n"
                      f"From: {headers['from']}\r\nTo: {headers['to']};tag=phone\r\n"
                      f"Call-ID: {headers['call-id']}\r\nCSeq: {headers['cseq']}\r\nContent-Length: 0\r\n\r\n")
            self.sock.sendto(answer.encode(), peer)
            if headers["call-id"] not in self._seen:  # a retransmission is kept once
                self._seen.add(headers["call-id"])
                self.requests.append((lines[0], headers, body.decode("utf-8")))

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, dict[str, str], str]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.requests)

    def settle(self, seconds: float = 1.5) -> list[tuple[str, dict[str, str], str]]:
        """What arrived once nothing more is on its way (for counting: at most so many)."""
        time.sleep(seconds)
        return list(self.requests)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def phone():
    p = Phone()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def sms_kamailio(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("kamailio-sms")
    plans = {"numbers": [{
        "number": NUMBER,
        "default": {"action": "reject", "prompt": "closed"},
        "sms_replies": [{"name": "where", "keywords": ["你的酒店在哪", "hotel"], "match": "contains",
                         "reply": REPLY}],
        "sms": {"reply_limit": REPLY_LIMIT, "reply_window_s": 3600, "opt_out_reply": OPT_OUT_REPLY},
    }, {
        "number": "4001000022",
        "default": {"action": "reject", "prompt": "closed"},
        "sms_replies": [{"name": "long", "keywords": "long", "reply": LONGEST_REPLY}],
    }]}
    plan_file = workdir / "plans.json"
    plan_file.write_text(json.dumps(plans, ensure_ascii=False))
    env = {
        "TEL400_PLANS": str(plan_file),
        "TEL400_COUNTERS": f"shm://{workdir}/counters?slots=4096",
        "TEL400_SMS_STORE": str(workdir / "sms.db"),
        "TEL400_SITE_PACKAGES": sysconfig.get_paths()["purelib"],
    }
    if os.environ.get("TEL400_NO_EXTENSIONS"):
        env["TEL400_NO_EXTENSIONS"] = os.environ["TEL400_NO_EXTENSIONS"]
    server = Kamailio(workdir, env, children=2)
    server.start()
    server.store_path = workdir / "sms.db"
    yield server
    server.stop()
    assert "Traceback" not in server.log()


def send(kamailio, tmp_path, sender: str, phone: Phone, text: str, *, calls: int = 1) -> dict[str, int]:
    return sipp_uac(tmp_path, "uac_message_reply", kamailio.port, "106574001000021",
                    [f"{sender};{phone.port};{text}"] * calls, calls=calls, rate=50)


def test_the_engine_inside_kamailio_is_the_one_under_test(sms_kamailio):
    assert f"({tel400.IMPLEMENTATION})" in sms_kamailio.log()


def test_a_keyword_is_answered_200_and_the_reply_is_a_new_message_from_the_number(sms_kamailio, phone, tmp_path):
    counts = send(sms_kamailio, tmp_path, "13901010001", phone, "你的酒店在哪?")
    assert counts.get("4_200_Recv") == 1, counts
    (line, headers, body), = phone.wait(1)
    assert line == f"MESSAGE sip:13901010001@127.0.0.1:{phone.port} SIP/2.0"
    assert headers["from"].startswith(f"<sip:{NUMBER}@127.0.0.1>")
    assert headers["to"] == f"<sip:13901010001@127.0.0.1:{phone.port}>"
    assert headers["content-type"] == "text/plain;charset=UTF-8"
    assert body == REPLY
    rows = SmsStore(sms_kamailio.store_path).messages(NUMBER)
    received = [r for r in rows if r["peer"] == "13901010001"]
    assert [(r["direction"], r["kind"], r["outcome"]) for r in received] == [
        ("out", "reply", "sent"), ("in", "reply", "ok")]


def test_td_opts_out_once_and_is_confirmed_once(sms_kamailio, phone, tmp_path):
    counts = send(sms_kamailio, tmp_path, "13901010002", phone, "TD", calls=3)
    assert counts.get("4_200_Recv") == 3, counts
    confirmations = phone.settle()
    assert [body for _, _, body in confirmations] == [OPT_OUT_REPLY.format(number=NUMBER)]
    assert SmsStore(sms_kamailio.store_path).is_opted_out(NUMBER, "13901010002")
    # opted out: a keyword gets no auto-reply any more
    send(sms_kamailio, tmp_path, "13901010002", phone, "hotel")
    assert len(phone.settle()) == 1


def test_a_flood_from_one_sender_gets_at_most_reply_limit_replies(sms_kamailio, phone, tmp_path):
    counts = send(sms_kamailio, tmp_path, "13901010003", phone, "hotel", calls=20)
    assert counts.get("4_200_Recv") == 20, counts  # every message is answered 200: no notice of the limit
    replies = phone.settle()
    assert len(replies) == REPLY_LIMIT
    assert {body for _, _, body in replies} == {REPLY}


def test_the_longest_reply_arrives_whole(sms_kamailio, phone, tmp_path):
    sipp_uac(tmp_path, "uac_message_reply", sms_kamailio.port, "4001000022",
             [f"13901010005;{phone.port};long"], calls=1)
    (_, headers, body), = phone.wait(1)
    assert body == LONGEST_REPLY and headers["content-length"] == str(len(LONGEST_REPLY.encode()))


def test_a_from_that_is_not_a_phone_number_gets_no_reply_message(sms_kamailio, phone, tmp_path):
    # a user part with SIP syntax in it: the router reads no number, so no reply is built
    counts = send(sms_kamailio, tmp_path, "1390101%3Bx", phone, "hotel")
    assert counts.get("4_200_Recv") == 1, counts
    assert phone.settle() == []


def raw_message(port: int, body: bytes, content_type: str = "text/plain", *, sender: str = "13901010007",
                reply_port: int | None = None, sends: int = 1, from_host: str = "127.0.0.1") -> str:
    """One MESSAGE with ``body`` as given, over UDP, sent ``sends`` times (a retransmission is the
    same datagram); the status line of the last final answer.  ``reply_port``: the port in its From URI."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        me = f"127.0.0.1:{s.getsockname()[1]}"
        call_id = uuid.uuid4().hex
        head = (f"MESSAGE sip:{NUMBER}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id[:12]}\r\n"
                f"From: <sip:{sender}@{from_host}:{reply_port or s.getsockname()[1]}>;tag=1\r\n"
                f"To: <sip:{NUMBER}@127.0.0.1>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        for _ in range(sends):
            s.sendto(head.encode() + body, ("127.0.0.1", port))
            while True:
                status = s.recv(65535).decode(errors="replace").split("\r\n", 1)[0]
                if status.startswith("SIP/2.0 ") and int(status.split()[1]) >= 200:
                    break
        return status


def test_a_retransmitted_message_is_answered_again_but_replied_once(sms_kamailio, phone):
    # our 200 lost: the sender retransmits; tm absorbs it (the transaction answers again), nothing is redone
    assert raw_message(sms_kamailio.port, b"hotel", sender="13901010008", reply_port=phone.port,
                       sends=3) == "SIP/2.0 200 OK"
    assert [body for _, _, body in phone.settle()] == [REPLY]
    rows = [r for r in SmsStore(sms_kamailio.store_path).messages(NUMBER) if r["peer"] == "13901010008"]
    assert [r["direction"] for r in rows] == ["out", "in"]


def test_a_from_host_that_is_not_a_plain_host_gets_no_reply_and_the_reply_is_recorded_failed(sms_kamailio):
    # an IPv6 literal parses as SIP, but the reply target takes only [A-Za-z0-9._-] hosts
    assert raw_message(sms_kamailio.port, b"hotel", sender="13901010009", from_host="[::1]") == "SIP/2.0 200 OK"
    rows = [r for r in SmsStore(sms_kamailio.store_path).messages(NUMBER) if r["peer"] == "13901010009"]
    assert [(r["direction"], r["outcome"]) for r in rows] == [("out", "failed"), ("in", "ok")]


@pytest.mark.parametrize(("body", "content_type"), [
    (b"\xff\xfe\xfa hotel", "text/plain"),  # not UTF-8
    ("hotel".encode("utf-16-le"), "text/plain;charset=UTF-16"),
    (b"<isComposing/>", "application/im-iscomposing+xml"),  # not a text for people
])
def test_a_body_that_is_not_utf8_text_is_refused_415_and_nothing_is_recorded(sms_kamailio, body, content_type):
    before = len(SmsStore(sms_kamailio.store_path).messages(NUMBER, limit=1000))
    assert raw_message(sms_kamailio.port, body, content_type) == "SIP/2.0 415 Unsupported Media Type"
    assert len(SmsStore(sms_kamailio.store_path).messages(NUMBER, limit=1000)) == before


def test_a_huge_text_is_answered_by_its_first_characters(sms_kamailio):
    # 60,000 bytes in one UDP datagram: compared by its first 2,000 characters, routed onward (closed: 480)
    assert raw_message(sms_kamailio.port, b"x" * 60000) == "SIP/2.0 480 Temporarily Unavailable"
    record = SmsStore(sms_kamailio.store_path).messages(NUMBER, limit=1)[0]
    assert (record["direction"], record["outcome"], len(record["text"])) == ("in", "no_match", 1600)


def test_unknown_number_is_refused_as_before(sms_kamailio, phone, tmp_path):
    counts = sipp_uac(tmp_path, "uac_message_reply", sms_kamailio.port, "4009999999",
                      [f"13901010004;{phone.port};hotel"], calls=1)
    assert counts.get("2_404_Recv") == 1, counts
    assert phone.settle(0.5) == []
