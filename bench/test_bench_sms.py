"""SMS in tel400-http: the CPU an incoming message costs, and a group send's rate against its setting.

    .venv/bin/pytest bench/test_bench_sms.py --benchmark-enable

* ``test_sms_incoming_per_message[impl]``: what ``GET /v1/sms/kannel`` does
  for one message, in-process, per BATCH messages: ``parse_incoming`` of
  smsbox's query → ``Router.answer_sms`` (keyword match, flood guard and caps
  counted) → the reply's bytes and headers; on each engine.
* ``test_sms_incoming_with_store``: the same through ``Sms.handle``, which
  also records the message and its reply in the SMS store (two SQLite
  transactions, fsynced): the whole endpoint's work but HTTP.
  ``extra_info["cpu_us_per_message"]`` is the process CPU, the timing the wall.
* ``test_sms_group_send_rate_kannel``: a job of ``RATE_MESSAGES`` at
  ``RATE`` messages a second through a :class:`JobRunner` and a
  :class:`KannelGateway` into real Kannel; each round's achieved rate is
  (messages − 1) / (last submit − first submit); ``extra_info`` has the
  median of the rounds' ``achieved_over_asked``.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

import tel400
from tel400 import _impl
from tel400.smsjobs import JobRunner
from tel400.smsstore import SmsStore
from tel400_http import Service
from tel400_http.kannel import KannelGateway, parse_incoming, reply_headers
from tests.kannel_harness import KannelServers
from tests.test_sms_replies import HOTEL

from _inputs import BATCH, callers

NUMBER = "4001012345"
RATE, RATE_MESSAGES, RATE_ROUNDS = 50.0, 150, 3


def hotel_plans(tmp_path) -> tel400.PlanSet:
    """The hotel plan, its flood guard at its highest (100): each sender texts once a round, 21 rounds."""
    text = HOTEL.replace('[[numbers.rules]]', '[numbers.sms]\n  reply_limit = 100\n\n  [[numbers.rules]]', 1)
    path = tmp_path / "hotel.toml"
    path.write_text(text)
    return tel400.load_plans(path)


def queries() -> list[dict[str, str]]:
    return [{"from": c, "to": "10657" + NUMBER, "text": "你的酒店在哪？", "coding": "0", "charset": "UTF-8",
             "at": "1764554400"} for c in callers()]


@pytest.mark.parametrize("impl", list(_impl.ENGINES))
def test_sms_incoming_per_message(benchmark, impl, tmp_path):
    router = tel400.Router(hotel_plans(tmp_path), implementation=impl)
    sample = queries()

    def batch():
        for q in sample:
            sms = parse_incoming(q)
            answer = router.answer_sms(sms.to, sms.sender, sms.text)
            answer.reply.encode("utf-8"), reply_headers(answer.reply)

    benchmark.extra_info.update(impl=impl, calls=BATCH)
    benchmark.pedantic(batch, rounds=20, iterations=1, warmup_rounds=1)
    assert router.sms_answer_counts()["ok"] >= BATCH


def test_sms_incoming_with_store(benchmark, tmp_path):
    router = tel400.Router(hotel_plans(tmp_path))
    service = Service(router, sms_store=SmsStore(tmp_path / "sms.db"))
    sample = [parse_incoming(q) for q in queries()][:200]
    cpu = []

    def batch():
        t0 = time.process_time()
        for sms in sample:
            service.sms.handle("kannel", sms.to, sms.sender, sms.text, None)
        cpu.append(time.process_time() - t0)

    benchmark.extra_info.update(impl=router.implementation, calls=len(sample))
    benchmark.pedantic(batch, rounds=3, iterations=1)
    benchmark.extra_info["cpu_us_per_message"] = round(statistics.median(cpu) / len(sample) * 1e6, 1)


def test_sms_group_send_rate_kannel(benchmark, tmp_path):
    store = SmsStore(tmp_path / "sms.db")
    ratios = []
    with KannelServers(tmp_path, get_url="http://127.0.0.1:9/v1/sms/kannel?from=%p") as kannel:
        def one_round():
            phones = [f"1360000{i:04d}" for i in range(RATE_MESSAGES)]
            job = store.create_job(NUMBER, "bench {phone}", phones=phones, rate=RATE, actor="bench")
            times = []

            class Timed(KannelGateway):
                async def submit(self, sms):
                    await super().submit(sms)
                    times.append(time.monotonic())

            async def main():
                gateway = Timed(kannel.sendsms_url, username=kannel.username, password=kannel.password,
                                dlr_url="http://127.0.0.1:9/v1/sms/dlr")
                runner = JobRunner(store, gateway, per_number_rate=RATE, poll_s=0.05)
                task = asyncio.create_task(runner.run())
                while store.job_state(job.job_id) != "done":
                    await asyncio.sleep(0.05)
                runner.stop()
                await task
                await gateway.aclose()

            asyncio.run(main())
            assert len(times) == RATE_MESSAGES
            ratios.append((len(times) - 1) / (times[-1] - times[0]) / RATE)

        benchmark.pedantic(one_round, rounds=RATE_ROUNDS, iterations=1)
    benchmark.extra_info.update(calls=RATE_MESSAGES, asked_per_s=RATE,
                                achieved_over_asked=round(statistics.median(ratios), 3),
                                rounds_achieved_over_asked=[round(r, 3) for r in ratios])
