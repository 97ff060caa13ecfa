"""SMS end to end: a phone (fakesmsc) ↔ real Kannel (bearerbox + smsbox) ↔ a real tel400-http process.

One Kannel and one tel400-http serve the module (each test uses its own
senders and recipients, so their allowances and messages never mix); the
kill -9 test runs a second tel400-http of its own.  What a phone receives
is what fakesmsc logs.
"""

from __future__ import annotations

import collections
import re
import signal
import time
import urllib.request

import pytest

from tel400.smsstore import SmsStore

from .http_harness import ServerProcess
from .kannel_harness import KannelServers
from .test_sms_replies import HOTEL

pytestmark = pytest.mark.slow

NUMBER = "4001012345"
SMS_NUMBER = "10657" + NUMBER
WHERE = "北京的朋友您好：酒店在北京路1号。"
REPLY_LIMIT = 5  # the plan's default


def get_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/sms/kannel?from=%p&to=%P&text=%b&coding=%c&charset=%C&at=%T"


def tel400_http(directory, kannel: KannelServers, port: int | None = None, *extra: str) -> ServerProcess:
    """tel400-http on the hotel plan, sending through ``kannel``, its data in ``directory``."""
    directory.mkdir(exist_ok=True)
    (directory / "hotel.toml").write_text(HOTEL)
    (directory / "kannel-password").write_text(kannel.password + "\n")
    server = ServerProcess(directory)
    if port is not None:
        server.port = port
    server.args = ("--plans", "hotel.toml", "--no-portal", "--records", "none", "--sms-db", "sms.db",
                   "--kannel-sendsms", kannel.sendsms_url, "--kannel-password-file", "kannel-password",
                   "--sms-rate-per-number", "50", "--grace", "5", *extra)
    return server.start()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Kannel and tel400-http, started for the module: (kannel, server, store)."""
    tmp = tmp_path_factory.mktemp("sms-site")
    server_port = ServerProcess(tmp).port
    with KannelServers(tmp, get_url=get_url(server_port), http_retries=3) as kannel:
        server = tel400_http(tmp / "tel400", kannel, server_port)
        try:
            yield kannel, server, SmsStore(tmp / "tel400" / "sms.db")
        finally:
            server.stop()


def to(kannel: KannelServers, phone: str) -> list:
    return [m for m in kannel.received() if m.to == phone]


def wait_for(what, timeout: float = 15.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s")
        time.sleep(step)


def metric(server: ServerProcess, name: str, **labels) -> float:
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_the_hotel_question_comes_back_as_the_configured_reply(site):
    kannel, _, store = site
    phone = "13901010001"
    kannel.inject(phone, SMS_NUMBER, "你的酒店在哪?")
    (reply,) = wait_for(lambda: to(kannel, phone))
    assert reply.sender == SMS_NUMBER and reply.text.startswith(WHERE)
    kinds = sorted((m["direction"], m["kind"]) for m in store.messages(NUMBER) if m["peer"] == phone)
    assert kinds == [("in", "reply"), ("out", "reply")]


@pytest.mark.parametrize("text", ["ＨＯＴＥＬ", "Hotel!", "  hotel。", "【地址】", "请问你的酒店在哪？谢谢"])
def test_keyword_variants_get_the_reply(site, text):
    kannel, _, _ = site
    phone = f"1390102{abs(hash(text)) % 10000:04d}"
    kannel.inject(phone, SMS_NUMBER, text)
    (reply,) = wait_for(lambda: to(kannel, phone))
    assert reply.text.startswith(WHERE)


def test_a_flood_of_100_messages_gets_exactly_reply_limit_replies_and_the_rest_are_counted(site):
    kannel, server, _ = site
    phone = "13901010002"
    kannel.inject(phone, SMS_NUMBER, "hotel", timeout=30, count=100)
    wait_for(lambda: metric(server, "tel400_sms_incoming_total", endpoint="kannel", result="flood_limited") >= 95,
             timeout=30)
    time.sleep(0.5)  # any reply still on its way through smsbox and bearerbox
    assert len(to(kannel, phone)) == REPLY_LIMIT
    assert metric(server, "tel400_sms_incoming_total", endpoint="kannel", result="flood_limited") == 95


def test_opt_out_confirms_once_and_a_group_send_skips_the_number(site):
    kannel, _, store = site
    phone, other = "13901010003", "13901010004"
    kannel.inject(phone, SMS_NUMBER, "TD")
    (confirmation,) = wait_for(lambda: to(kannel, phone))
    assert "退订" in confirmation.text
    kannel.inject(phone, SMS_NUMBER, "TD")
    wait_for(lambda: [m for m in store.messages(NUMBER) if m["peer"] == phone and m["direction"] == "in"][1:])
    job = store.create_job(NUMBER, "周末八折 {phone}", phones=[phone, other], rate=20, actor="test")
    wait_for(lambda: store.progress(NUMBER, job.job_id).skipped_opted_out == 1
             and store.progress(NUMBER, job.job_id).sent == 1)
    (sale,) = wait_for(lambda: to(kannel, other))
    assert sale.text == f"周末八折 {other}" and sale.sender == SMS_NUMBER
    time.sleep(0.5)
    assert len(to(kannel, phone)) == 1  # the confirmation, nothing else


def test_a_bot_that_answers_every_message_gets_no_more_than_reply_limit_replies(site):
    kannel, _, _ = site
    bot = "13901010005"
    kannel.inject(bot, SMS_NUMBER, "hotel")
    answered = 0
    while True:
        try:
            got = wait_for(lambda: to(kannel, bot)[answered:], timeout=2.0)
        except TimeoutError:
            break
        answered += len(got)
        assert answered <= REPLY_LIMIT
        # the bot answers every message with its own auto-reply, which holds a keyword
        kannel.inject(bot, SMS_NUMBER, "Thanks for your message! Hotel Bot will answer soon.")
    assert answered == REPLY_LIMIT


def test_a_group_send_of_1000_at_50_per_second_arrives_whole_at_its_rate_with_every_report(site):
    kannel, _, store = site
    phones = [f"1380000{i:04d}" for i in range(1000)]
    job = store.create_job(NUMBER, "会员日 {phone}", phones=phones, rate=50, actor="test")
    wait_for(lambda: store.progress(NUMBER, job.job_id).sent == 1000, timeout=60, step=0.5)
    got = wait_for(lambda: (lambda r: r if len(r) >= 1000 else None)(
        [m for m in kannel.received() if m.to.startswith("1380000")]), timeout=30, step=0.5)
    assert sorted(m.to for m in got) == phones
    assert all(m.text == f"会员日 {m.to}" for m in got)
    wait_for(lambda: store.progress(NUMBER, job.job_id).delivered == 1000, timeout=30, step=0.5)
    sent = sorted(m["at"] for m in store.messages(NUMBER, limit=5000) if m["kind"] == "job"
                  and m["peer"].startswith("1380000"))
    rate = (len(sent) - 1) / (sent[-1] - sent[0])
    assert 45 <= rate <= 55  # the rate asked for, within the 10 % issue #14 allows, over a 20 s run


def test_kill_9_in_the_middle_of_a_job_and_a_restart_sends_each_recipient_exactly_one_message(site, tmp_path):
    kannel, _, _ = site
    directory = tmp_path / "killed"
    server = tel400_http(directory, kannel, None, "--sms-indoubt-wait", "3")
    port = server.port
    store = SmsStore(directory / "sms.db")
    phones = [f"1370000{i:04d}" for i in range(150)]
    job = store.create_job(NUMBER, "通知 {phone}", phones=phones, rate=50, actor="test")
    mine = lambda: [m for m in kannel.received() if m.to.startswith("1370000")]  # noqa: E731
    wait_for(lambda: len(mine()) >= 40, timeout=30)
    server.proc.send_signal(signal.SIGKILL)
    server.stop()
    restarted = tel400_http(directory, kannel, port, "--sms-indoubt-wait", "3")
    try:
        wait_for(lambda: store.job(NUMBER, job.job_id).state == "done", timeout=60, step=0.2)
        time.sleep(1.0)  # anything resent still on its way through Kannel
        counts = collections.Counter(m.to for m in mine())
        assert sorted(counts) == phones
        assert set(counts.values()) == {1}
    finally:
        restarted.stop()


def test_smsbox_passes_a_secret_written_in_its_get_url_and_dlr_url(tmp_path):
    # smsbox cannot add headers, but sends the user:password of a URL as basic auth:
    # with --switch-secrets the SMS endpoints need it, from smsbox as from a switch.
    from tel400_http.auth import hash_token

    (tmp_path / "secrets").write_text(hash_token("kannel-s3cret") + "\n")
    port = ServerProcess(tmp_path).port
    url = get_url(port).replace("http://", "http://kannel:kannel-s3cret@")
    with KannelServers(tmp_path, get_url=url, http_retries=1) as kannel:
        server = tel400_http(tmp_path / "tel400", kannel, port, "--switch-secrets", str(tmp_path / "secrets"),
                             "--sms-dlr-url", f"http://kannel:kannel-s3cret@127.0.0.1:{port}/v1/sms/dlr")
        try:
            assert server.request("GET", "/v1/sms/dlr?id=x&type=1")[0] == 401  # no secret: refused
            kannel.inject("13901010009", SMS_NUMBER, "hotel")
            (reply,) = wait_for(lambda: to(kannel, "13901010009"))
            assert reply.text.startswith(WHERE)
            store = SmsStore(tmp_path / "tel400" / "sms.db")
            job = store.create_job(NUMBER, "hi", phones=["13901010008"], rate=10, actor="test")
            wait_for(lambda: store.progress(NUMBER, job.job_id).delivered == 1)  # the report got in
        finally:
            server.stop()
