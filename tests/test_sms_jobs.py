"""The group-send runner: pacing, windows, skips, pause/resume/cancel, retries, exactly once across a kill.

The runner runs on an event loop whose clock is virtual: when every task
waits, time jumps to the next timer.  Rates and windows are then measured
exactly, in simulated seconds, and a test of an hour takes milliseconds.
The real-time rate is measured against Kannel (tests of the gateway).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from zoneinfo import ZoneInfo

import attrs
import pytest

from tel400.smsjobs import GatewayError, GatewayInDoubt, JobRunner
from tel400.smsstore import SmsStore
from tel400.smstext import OutgoingSms
from tel400.testing import FakeSmsGateway

N = "4001012345"
N2 = "4002223333"
SHANGHAI = ZoneInfo("Asia/Shanghai")


class _VirtualSelector:
    """A selector that, instead of sleeping until the next timer, moves the loop's clock to it."""

    def __init__(self, selector, loop):
        self._selector, self._loop = selector, loop

    def select(self, timeout=None):
        events = self._selector.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("the loop would wait forever: nothing is scheduled")
        self._loop.now += timeout
        return []

    def __getattr__(self, name):
        return getattr(self._selector, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        super().__init__()
        self.now = 0.0
        self._selector = _VirtualSelector(self._selector, self)

    def time(self):
        return self.now


def run_virtual(main):
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:  # a failed test leaves the runner's tasks behind
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
        loop.close()


async def drive(runner, until, *, limit=100_000.0):
    """Run ``runner`` until ``until()`` holds (checked every 0.1 simulated s), then stop it."""
    task = asyncio.create_task(runner.run())
    loop = asyncio.get_running_loop()
    while not until():
        assert loop.time() < limit, "the runner did not get there"
        await asyncio.sleep(0.1)
    runner.stop()
    await task


@pytest.fixture
def store(tmp_path):
    return SmsStore(tmp_path / "sms.db")


def phones(n, start=0):
    return [f"1390000{i:04d}" for i in range(start, start + n)]


def done(store, number, job_id):
    return lambda: store.job(number, job_id).state == "done"


def test_message_content_and_records(store):
    store.put_contact(N, "13900000000", name="Li")
    job = store.create_job(N, "Hi {name}", phones=["13900000000", "13900000001"], rate=10, actor="a")
    gw = FakeSmsGateway()
    run_virtual(lambda: drive(JobRunner(store, gw), done(store, N, job.job_id)))
    assert [(m.message_id, m.to, m.text, m.parts, m.kind, m.sender, m.number) for m in gw.sent] == [
        (f"{job.job_id}-0", "13900000000", "Hi Li", 1, "job", "10657" + N, N),
        (f"{job.job_id}-1", "13900000001", "Hi ", 1, "job", "10657" + N, N)]
    assert store.progress(N, job.job_id).sent == 2
    assert store.sms_totals(N, 0, 2e9)["out"] == 2
    assert store.job(N, job.job_id).updated_by == "runner"


def test_job_rate_held(store):
    job = store.create_job(N, "x", phones=phones(30), rate=5, actor="a")
    gw = FakeSmsGateway()
    run_virtual(lambda: drive(JobRunner(store, gw, per_number_rate=100), done(store, N, job.job_id)))
    assert len(gw.sent) == 30
    gaps = [b - a for a, b in zip(gw.times, gw.times[1:])]
    assert min(gaps) == pytest.approx(0.2) and max(gaps) == pytest.approx(0.2)


def test_number_ceiling_shared_by_its_jobs(store):
    a = store.create_job(N, "a", phones=phones(20), rate=10, actor="a")
    b = store.create_job(N, "b", phones=phones(20, 100), rate=10, actor="a")
    c = store.create_job(N2, "c", phones=phones(20), rate=10, actor="a")  # another number: its own ceiling
    gw = FakeSmsGateway()
    all_done = lambda: all(store.job(n, j.job_id).state == "done" for n, j in ((N, a), (N, b), (N2, c)))  # noqa: E731
    run_virtual(lambda: drive(JobRunner(store, gw, per_number_rate=4), all_done))
    times_n = [t for m, t in zip(gw.sent, gw.times) if m.number == N]
    times_n2 = [t for m, t in zip(gw.sent, gw.times) if m.number == N2]
    assert len(times_n) == 40 and len(times_n2) == 20
    assert min(b - a for a, b in zip(times_n, times_n[1:])) == pytest.approx(0.25)
    assert min(b - a for a, b in zip(times_n2, times_n2[1:])) == pytest.approx(0.25)
    # both jobs of N advance together (neither waits for the other to finish)
    first_half = [m.text for m in gw.sent[:20] if m.number == N]
    assert first_half.count("a") >= 5 and first_half.count("b") >= 5


def test_window_of_the_day(store):
    job = store.create_job(N, "x", phones=phones(500), rate=1, not_before="08:00", not_after="08:01", actor="a")
    base = dt.datetime(2026, 12, 1, 7, 59, 0, tzinfo=SHANGHAI).timestamp()
    gw = FakeSmsGateway()

    async def main():
        loop = asyncio.get_running_loop()
        runner = JobRunner(store, gw, wall=lambda: base + loop.time(), per_number_rate=100)
        await drive(runner, lambda: loop.time() > 3600)

    run_virtual(main)
    local = [dt.datetime.fromtimestamp(base + t, SHANGHAI) for t in gw.times]
    assert local[0] >= dt.datetime(2026, 12, 1, 8, 0, tzinfo=SHANGHAI)
    assert local[-1] < dt.datetime(2026, 12, 1, 8, 2, tzinfo=SHANGHAI)
    assert 110 <= len(gw.sent) <= 120
    assert store.job(N, job.job_id).state == "running" and store.progress(N, job.job_id).pending > 300


def test_window_across_midnight_in_the_numbers_zone(store):
    store.create_job(N, "x", phones=phones(3), rate=1, not_before="23:00", not_after="07:00", actor="a")
    base = dt.datetime(2026, 12, 1, 6, 50, tzinfo=SHANGHAI).timestamp()  # 22:50 in London: outside; 06:50 in Shanghai would be inside
    gw = FakeSmsGateway()

    async def main():
        loop = asyncio.get_running_loop()
        runner = JobRunner(store, gw, wall=lambda: base + loop.time(), zone_of=lambda n: ZoneInfo("Europe/London"))
        await drive(runner, lambda: len(gw.sent) == 3)

    run_virtual(main)
    first = dt.datetime.fromtimestamp(base + gw.times[0], ZoneInfo("Europe/London"))
    assert (first.hour, first.minute) == (23, 0)


def test_opted_out_recipients_skipped_at_send_time(store):
    job = store.create_job(N, "x", phones=phones(4), rate=10, actor="a")
    store.opt_out(N, phones(4)[1])  # after the job was made
    store.opt_out(N2, phones(4)[2])  # another number's opt-out does not count
    gw = FakeSmsGateway()
    run_virtual(lambda: drive(JobRunner(store, gw), done(store, N, job.job_id)))
    assert [m.to for m in gw.sent] == [phones(4)[0], phones(4)[2], phones(4)[3]]
    p = store.progress(N, job.job_id)
    assert (p.sent, p.skipped_opted_out, p.pending, p.sending) == (3, 1, 0, 0)


@attrs.frozen
class Admission:
    admitted: bool
    reason: str


def test_admission_refusal_skips_backend_error_retries(store):
    job = store.create_job(N, "{name}", phones=phones(5), rate=10, actor="a")
    calls = []
    hiccup = [True]

    def admit(number, to, parts, at):
        calls.append((number, to, parts))
        if to == phones(5)[3] and hiccup[0]:
            hiccup[0] = False
            return Admission(False, "backend_error")
        if to == phones(5)[1]:
            return Admission(False, "cap_exceeded")
        return Admission(True, "ok")

    gw = FakeSmsGateway()
    run_virtual(lambda: drive(JobRunner(store, gw, admit=admit), done(store, N, job.job_id)))
    assert [m.to for m in gw.sent] == [phones(5)[i] for i in (0, 2, 3, 4)]
    assert calls.count((N, phones(5)[3], 1)) == 2  # asked again after the backend error
    p = store.progress(N, job.job_id)
    assert (p.sent, p.skipped_cap) == (4, 1)


def test_pause_resume_cancel_before_next_message(store):
    job = store.create_job(N, "x", phones=phones(10), rate=1, actor="a")
    other = store.create_job(N, "y", phones=phones(10), rate=1, actor="a")
    gw = FakeSmsGateway()

    async def main():
        loop = asyncio.get_running_loop()
        runner = JobRunner(store, gw, per_number_rate=100, poll_s=0.5)
        task = asyncio.create_task(runner.run())
        while sum(m.text == "x" for m in gw.sent) < 3:
            await asyncio.sleep(0.01)
        store.pause(N, job.job_id, actor="a")
        store.cancel(N, other.job_id, actor="a")
        # a message handed over before the pause still goes; nothing after it
        in_flight = store.progress(N, job.job_id).sending + store.progress(N, other.job_id).sending
        at_pause = len(gw.sent)
        await asyncio.sleep(30)
        assert len(gw.sent) == at_pause + in_flight
        assert store.job(N, job.job_id).state == "paused"
        store.resume(N, job.job_id, actor="a")
        started = loop.time()
        while store.job(N, job.job_id).state != "done":
            await asyncio.sleep(0.1)
        assert loop.time() - started < 10  # 7 messages at 1/s, picked up at the next poll
        runner.stop()
        await task

    run_virtual(main)
    assert sum(m.text == "x" for m in gw.sent) == 10
    assert len({m.message_id for m in gw.sent}) == len(gw.sent)
    p = store.progress(N, other.job_id)
    assert store.job(N, other.job_id).state == "cancelled" and p.pending == 10 - p.sent


def test_gateway_refusals_retried_then_failed(store):
    job = store.create_job(N, "x", phones=phones(3), rate=0.2, actor="a")  # one every 5 s
    gw = FakeSmsGateway()
    gw.fail_next(2)
    run_virtual(lambda: drive(JobRunner(store, gw, max_attempts=3, retry_base_s=1), done(store, N, job.job_id)))
    assert [m.to for m in gw.sent] == phones(3)
    assert store.recipient(job.job_id, 0).attempts == 3
    assert gw.times == pytest.approx([0 + 1 + 2, 5, 10], abs=0.01)  # backoff 1 s then 2 s; the pace goes on

    job2 = store.create_job(N2, "y", phones=phones(2), rate=10, actor="a")
    gw2 = FakeSmsGateway()
    gw2.fail_all()
    run_virtual(lambda: drive(JobRunner(store, gw2, max_attempts=3), done(store, N2, job2.job_id)))
    assert gw2.attempts == 6 and gw2.sent == []
    p = store.progress(N2, job2.job_id)
    assert (p.failed, p.sent) == (2, 0)
    assert store.sms_totals(N2, 0, 2e9)["failed"] == 2


def test_stalled_gateway_in_doubt_then_resent_once(store):
    job = store.create_job(N, "x", phones=phones(1), rate=10, actor="a")
    gw = FakeSmsGateway()
    gw.stall()

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(12, gw.release)
        await drive(JobRunner(store, gw, submit_timeout_s=5, indoubt_wait_s=4), done(store, N, job.job_id))

    run_virtual(main)
    assert len(gw.sent) == 1 and gw.attempts == 2
    assert gw.times[0] == pytest.approx(12)  # timed out at 5, no report by 9, resent, released at 12


def test_stalled_gateway_settled_by_report(store):
    """A submission that timed out but reached the gateway is not resent once its report arrives."""
    job = store.create_job(N, "x", phones=phones(1), rate=10, actor="a")
    gw = FakeSmsGateway()

    async def main():
        loop = asyncio.get_running_loop()
        gw.stall()
        loop.call_later(7, lambda: store.set_delivery(f"{job.job_id}-0", "submitted"))
        await drive(JobRunner(store, gw, submit_timeout_s=5, indoubt_wait_s=30), done(store, N, job.job_id))
        gw.release()

    run_virtual(main)
    assert gw.attempts == 1
    assert store.progress(N, job.job_id).sent == 1


def test_abandoned_runner_each_recipient_exactly_once(store):
    """A runner killed with rows left ``sending``: some reached the gateway (reports come), some did not."""
    job = store.create_job(N, "x", phones=phones(10), rate=100, actor="a")
    old_gateway = []  # what the killed runner's gateway took
    for i in range(6):
        store.set_recipient(job.job_id, i, "sending", expect=("pending",))
    old_gateway += [f"{job.job_id}-{i}" for i in (0, 1, 2)]
    store.set_delivery(f"{job.job_id}-0", "delivered")  # its report came before the restart
    store.set_delivery(f"{job.job_id}-1", "submitted")
    gw = FakeSmsGateway()

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(2, lambda: store.set_delivery(f"{job.job_id}-2", "delivered"))  # during the wait
        await drive(JobRunner(store, gw, per_number_rate=100, indoubt_wait_s=5), done(store, N, job.job_id))

    run_virtual(main)
    got = collections.Counter(old_gateway + [m.message_id for m in gw.sent])
    assert got == collections.Counter(f"{job.job_id}-{i}" for i in range(10))
    resent = {m.message_id: t for m, t in zip(gw.sent, gw.times)}
    assert all(resent[f"{job.job_id}-{i}"] >= 5 for i in (3, 4, 5))  # only after the wait
    assert resent[f"{job.job_id}-6"] < 1  # the pending ones did not wait
    p = store.progress(N, job.job_id)
    assert (p.sent, p.delivered) == (10, 2)


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from tel400.smsjobs import JobRunner
    from tel400.smsstore import SmsStore
    from tel400.testing import FakeSmsGateway

    class SlowGateway(FakeSmsGateway):  # a few messages are always on their way, before and after acceptance
        async def submit(self, sms):
            await asyncio.sleep(0.02)
            await super().submit(sms)
            await asyncio.sleep(0.02)

    store = SmsStore(sys.argv[1])
    runner = JobRunner(store, SlowGateway(path=sys.argv[2]), per_number_rate=500, indoubt_wait_s=2, poll_s=0.1)

    async def main():
        task = asyncio.create_task(runner.run())
        while any(job.state != "done" for job in store.jobs(sys.argv[3])):
            await asyncio.sleep(0.05)
        runner.stop()
        await task

    asyncio.run(main())
""")


def _lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [line.decode() for line in data.split(b"\n")[:-1]]  # the last, unfinished, is not a message yet


@pytest.mark.slow
def test_kill_9_mid_job_then_restart_exactly_once(store, tmp_path):
    total = 300
    job = store.create_job(N, "x{phone}", phones=phones(total), rate=150, actor="a")
    out = tmp_path / "gateway.txt"
    stop = threading.Event()

    def delivery_reports():  # the gateway's reports reach the store whatever happens to the sender
        seen = 0
        while not stop.is_set():
            lines = _lines(out)
            for line in lines[seen:]:
                store.set_delivery(line.split("\t")[0], "delivered")
            seen = len(lines)
            time.sleep(0.02)

    reporter = threading.Thread(target=delivery_reports, daemon=True)
    reporter.start()
    args = [sys.executable, "-c", _CHILD, str(tmp_path / "sms.db"), str(out), N]
    env = dict(os.environ)
    try:
        child = subprocess.Popen(args, env=env)
        deadline = time.monotonic() + 60
        while len(_lines(out)) < total // 3:
            assert child.poll() is None and time.monotonic() < deadline, "the first runner did not get going"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        at_kill = len(_lines(out))
        assert at_kill < total
        assert store.in_doubt(), "the kill left no message in doubt: the test would prove nothing"
        subprocess.run(args, env=env, timeout=120, check=True)
    finally:
        stop.set()
        reporter.join()
    got = collections.Counter(line.split("\t")[0] for line in _lines(out))
    assert got == collections.Counter(f"{job.job_id}-{i}" for i in range(total))
    p = store.progress(N, job.job_id)
    assert (p.sent, p.pending, p.sending) == (total, 0, 0)


def test_gateway_breaking_oddly_is_in_doubt_not_lost(store):
    """An exception that is not a GatewayError (a bug, a reset connection) may hide an accepted message."""
    job = store.create_job(N, "x", phones=phones(2), rate=10, actor="a")

    class Breaking(FakeSmsGateway):
        broke = False

        async def submit(self, sms):
            if not self.broke:
                self.broke = True
                self.attempts += 1
                raise ConnectionResetError("peer reset")
            await super().submit(sms)

    gw = Breaking()
    run_virtual(lambda: drive(JobRunner(store, gw, indoubt_wait_s=3), done(store, N, job.job_id)))
    assert sorted(m.to for m in gw.sent) == phones(2) and gw.attempts == 3
    assert dict(zip((m.to for m in gw.sent), gw.times))[phones(2)[0]] >= 3  # resent after the wait


class AnswerLost(FakeSmsGateway):
    """Takes every message but loses the answer the first ``lose`` times (GatewayInDoubt), then refuses
    the rest when ``refuse_after`` (GatewayError)."""

    def __init__(self, lose=1, refuse_after=False, **kw):
        super().__init__(**kw)
        self.lose, self.refuse_after = lose, refuse_after

    async def submit(self, sms):
        if self.lose > 0:
            self.lose -= 1
            self.attempts += 1
            self.sent.append(sms)  # the phone gets it
            self.times.append(asyncio.get_running_loop().time())
            raise GatewayInDoubt("read timeout")
        if self.refuse_after:
            self.attempts += 1
            raise GatewayError("refused")
        await super().submit(sms)


def test_an_answer_lost_goes_the_in_doubt_way_and_is_settled_by_its_report(store):
    """H1: GatewayInDoubt is not a refusal: no immediate resend; the report settles it."""
    job = store.create_job(N, "x", phones=phones(1), rate=10, actor="a")
    gw = AnswerLost(lose=1)

    async def main():
        asyncio.get_running_loop().call_later(10, lambda: store.set_delivery(f"{job.job_id}-0", "delivered"))
        await drive(JobRunner(store, gw, retry_base_s=0.05, indoubt_wait_s=30), done(store, N, job.job_id))

    run_virtual(main)
    assert gw.attempts == 1 and len(gw.sent) == 1
    assert store.recipient(job.job_id, 0).state == "sent"


def test_a_message_once_in_doubt_is_never_called_failed(store):
    """H1: in doubt, resent, then refused every time: the phone may have the first one."""
    job = store.create_job(N, "x", phones=phones(1), rate=10, actor="a")
    gw = AnswerLost(lose=1, refuse_after=True)

    async def main():
        runner = JobRunner(store, gw, max_attempts=3, retry_base_s=1, indoubt_wait_s=5)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(300)
        runner.stop()
        await task

    run_virtual(main)
    assert gw.attempts == 3
    assert store.recipient(job.job_id, 0).state == "sending"  # left for its report or a cancel
    assert store.sms_totals(N, 0, 2e9)["failed"] == 0


def test_mark_failed_never_overwrites_a_sent_record(store):
    """H1: a message recorded sent (the gateway took it) is not turned failed by a late refusal."""
    job = store.create_job(N, "x", phones=phones(1), rate=10, actor="a")
    r = store.recipient(job.job_id, 0)
    store.set_recipient(job.job_id, 0, "sending", expect=("pending",))
    msg = OutgoingSms(message_id=r.message_id, number=N, sender="10657" + N, to=r.phone, text="x", parts=1,
                      kind="job")
    store.mark_sent(msg, r, attempts=1, at=100)
    store.mark_failed(msg, r, attempts=2, at=101)  # recipient no longer sending: nothing changes
    store.record_message(msg, outcome="failed", at=102)  # even a direct record keeps "sent"
    assert store.sms_totals(N, 0, 2e9)["failed"] == 0
    assert store.recipient(job.job_id, 0).state == "sent"


def test_stop_before_run_returns_at_once(store):
    store.create_job(N, "x", phones=phones(2), rate=10, actor="a")
    gw = FakeSmsGateway()
    runner = JobRunner(store, gw)
    runner.stop()
    run_virtual(runner.run)
    assert gw.sent == []


def test_bad_runner_settings_refused(store):
    with pytest.raises(ValueError, match="per_number_rate"):
        JobRunner(store, FakeSmsGateway(), per_number_rate=0)
    with pytest.raises(ValueError, match="max_attempts"):
        JobRunner(store, FakeSmsGateway(), max_attempts=0)


def test_two_runners_on_one_store_one_sends(store):
    """M2: a second runner waits for the lease; two would double the number's rate and resend in-flight ones."""
    job = store.create_job(N, "x", phones=phones(20), rate=100, actor="a")
    gw1, gw2 = FakeSmsGateway(), FakeSmsGateway()

    async def main():
        r1, r2 = JobRunner(store, gw1, per_number_rate=10), JobRunner(store, gw2, per_number_rate=10)
        t1 = asyncio.create_task(r1.run())
        await asyncio.sleep(0)
        t2 = asyncio.create_task(r2.run())
        await drive_until(done(store, N, job.job_id))
        r1.stop(), r2.stop()
        await asyncio.gather(t1, t2)

    async def drive_until(until):
        while not until():
            await asyncio.sleep(0.1)

    run_virtual(main)
    assert sorted(len(g.sent) for g in (gw1, gw2)) == [0, 20]
    sent = gw1 if gw1.sent else gw2
    assert sent.times[-1] - sent.times[0] >= 1.8  # 20 at 10/s: the ceiling held (one runner)


def test_the_lease_of_a_killed_runner_expires(tmp_path):
    """M2: a holder that never renews (kill -9) loses the lease after its ttl; a clean one releases it."""
    now = [1000.0]
    store = SmsStore(tmp_path / "sms.db", clock=lambda: now[0])
    assert store.take_lease("a", 10) and not store.take_lease("b", 10)
    assert store.take_lease("a", 10)  # renewal
    now[0] += 9.9
    assert not store.take_lease("b", 10)
    now[0] += 0.2
    assert store.take_lease("b", 10)
    store.release_lease("b")
    assert store.take_lease("c", 10)
    with pytest.raises(ValueError, match="lease_renew_s"):
        JobRunner(store, FakeSmsGateway(), lease_ttl_s=3, lease_renew_s=3)


def test_stop_leaves_a_message_in_doubt_for_the_next_runner(store):
    """H1: stop() does not wait out (or resend after) an in-doubt wait: the message stays ``sending``."""
    job = store.create_job(N, "x", phones=phones(1), rate=10, actor="a")
    gw = AnswerLost(lose=5)

    async def main():
        runner = JobRunner(store, gw, indoubt_wait_s=30)
        task = asyncio.create_task(runner.run())
        await asyncio.sleep(2)
        runner.stop()
        await task
        return asyncio.get_running_loop().time()

    assert run_virtual(main) < 5
    assert gw.attempts == 1 and store.recipient(job.job_id, 0).state == "sending"
