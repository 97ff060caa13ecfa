"""The group-send runner's own cost per message, with the fake gateway.

    .venv/bin/pytest bench/test_bench_sms_jobs.py --benchmark-enable

One round sends a job of ``MESSAGES`` recipients through a
:class:`tel400.smsjobs.JobRunner` on the tests' virtual-time loop, so no
round waits for its pace: what is timed is the runner's work (three
committed SQLite transactions and a few indexed reads per message, the
opt-out check, building the message) and nothing else.  ``extra_info``
has the process CPU per message (``cpu_us_per_message``); the wall time
per message includes the store's fsyncs (``synchronous=FULL``: a row
marked ``sending`` is on disk before the gateway sees the message).
The real-time rate against its setting is measured with Kannel.
"""

from __future__ import annotations

import asyncio
import time

from tel400.smsjobs import JobRunner
from tel400.smsstore import SmsStore
from tel400.testing import FakeSmsGateway
from tests.test_sms_jobs import VirtualTimeLoop

MESSAGES = 1_000
N = "4001012345"


def test_sms_job_runner_per_message(benchmark, tmp_path):
    store = SmsStore(tmp_path / "sms.db")
    store.import_contacts(N, "phone,name,tags\n" + "".join(f"1390000{i:04d},n{i},all\n" for i in range(MESSAGES)))
    rounds = []

    def setup():
        job = store.create_job(N, "Hello {name}, from {number}", tags=["all"], rate=500, actor="bench")
        return (job,), {}

    def send(job):
        gw = FakeSmsGateway()
        runner = JobRunner(store, gw, per_number_rate=1e6, poll_s=0.01)
        loop = VirtualTimeLoop()

        async def main():
            task = asyncio.create_task(runner.run())
            while store.job_state(job.job_id) != "done":
                await asyncio.sleep(0.01)
            runner.stop()
            await task

        cpu = time.process_time()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
        rounds.append(time.process_time() - cpu)
        assert len(gw.sent) == MESSAGES

    benchmark.extra_info.update(impl="sqlite", calls=MESSAGES)
    benchmark.pedantic(send, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["cpu_us_per_message"] = round(min(rounds) / MESSAGES * 1e6, 1)
