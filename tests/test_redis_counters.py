"""``redis://`` when Redis is slow, stopped, killed and restarted: with a real redis-server.

Each test starts its own server (``tel400.testing.RedisServer``) and pauses
it with SIGSTOP/SIGCONT (the kernel still accepts connections and buffers
the commands, which Redis then runs when it resumes: exactly what a client
that gave up waiting must account for), or kills it and starts a new one on
the same port.  No timing is asserted beyond generous bounds.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import tel400
from tel400.testing import RedisServer

from .conftest import one_number
from .test_shared_counters import calls_today

BJ = "13901012345"


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGCONT)  # a test that failed while Redis was paused
    server.stop()


def capped(policy: str, limit: int) -> dict:
    return one_number(rules=[{"targets": ["1"]}], caps=[{"metric": "calls", "per": "day", "limit": limit}],
                      on_backend_error=policy)


def route_while(router, stop: threading.Event, threads: int = 4) -> tuple[list, list]:
    """Start threads that route until ``stop`` is set; (the threads, the list their decisions go to)."""
    decisions: list = []

    def work(i):
        mine = []
        while not stop.is_set():
            mine.append(router.route("4001012345", f"1390101{i:04d}"))
            time.sleep(0.002)
        decisions.extend(mine)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    return workers, decisions


def paused(server: RedisServer, seconds: float, router) -> list:
    """Route from four threads while redis-server is stopped for ``seconds``; the decisions."""
    stop = threading.Event()
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        workers, decisions = route_while(router, stop)
        time.sleep(seconds)
        stop.set()
        for w in workers:
            w.join()
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
    return decisions


def reasons(decisions) -> dict:
    out: dict = {}
    for d in decisions:
        out[(d.action, d.reason)] = out.get((d.action, d.reason), 0) + 1
    return out


def settle(router) -> None:
    """Let the late replies of timed-out scripts arrive and be accounted for."""
    assert router.counters.settle(5) == 0


def until_ok(router, then: int = 0) -> list:
    """Route (every 10 ms, for at most 5 s) until a call is admitted and counted, then ``then`` more."""
    decisions = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        decisions.append(router.route("4001012345", BJ))
        if decisions[-1].reason in ("ok", "cap_exceeded") and router.counters.breaker.state == "closed":
            break
        time.sleep(0.01)
    assert router.counters.breaker.state == "closed", "counting did not resume"
    return decisions + [router.route("4001012345", BJ) for _ in range(then)]


def counted(server: RedisServer) -> int:
    """The number's daily calls counter, read by a client of its own (not through the breaker)."""
    counters = tel400.open_counters(server.url + "?timeout_ms=2000")
    try:
        return calls_today(counters)
    finally:
        counters.close()


def warm(router, calls: int = 40) -> list:
    """Route from four threads at once, so that the pool holds several connections."""
    out: list = []

    def work(i):
        out.extend(router.route("4001012345", f"1390202{i:04d}") for _ in range(calls // 4))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def asleep(server: RedisServer, seconds: float) -> threading.Thread:
    """Make redis-server sleep (DEBUG SLEEP) and return once it does; join the thread to wait for it to wake."""
    import socket

    sleeper = threading.Thread(target=server.cli, args=("DEBUG", "SLEEP", str(seconds)))
    sleeper.start()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
            s.settimeout(0.01)
            s.sendall(b"PING\r\n")
            try:
                s.recv(16)
            except TimeoutError:
                return sleeper  # no answer: asleep
        time.sleep(0.005)
    raise AssertionError("redis-server did not fall asleep")


# --- (a) reject: a refused call never keeps a cap place ------------------------------------------


def test_reject_refused_calls_use_no_cap_place(own_redis, make_router):
    router = make_router(capped("reject", 60), own_redis.url + "?timeout_ms=20&backoff_ms=100")
    first = warm(router)
    assert {d.reason for d in first} == {"ok"}

    during = paused(own_redis, 1.0, router)
    assert set(reasons(during)) == {("reject", "backend_error")}
    assert router.backend_error_counts() == {"reject": len(during)}
    failures = dict(router.counters.failures)
    assert failures["timeout"] >= 1 and failures["backoff"] > failures["timeout"]  # the breaker opened

    settle(router)
    assert router.counters.late_replies["given_back"] >= 1  # scripts that ran when Redis resumed
    assert counted(own_redis) == 40  # exactly the admitted calls, before any new call
    after = until_ok(router, then=40)
    admitted = sum(d.reason == "ok" for d in first + after)
    # Every place of the cap went to an admitted call: none to a refused one.
    assert admitted == 60
    assert counted(own_redis) == 60
    assert after[-1].reason == "cap_exceeded"


# --- (b) allow: admitted calls during the outage are the uncounted ones ---------------------------


def test_allow_uncounted_admissions_are_the_backend_errors(own_redis, make_router):
    router = make_router(capped("allow", 10_000), own_redis.url + "?timeout_ms=20&backoff_ms=100")
    first = warm(router)
    during = paused(own_redis, 1.0, router)
    assert set(reasons(during)) == {("bridge", "ok")}
    settle(router)
    after = until_ok(router, then=20)
    admitted = sum(d.action == "bridge" for d in first + during + after)
    uncounted = router.backend_error_counts()["allow"]
    assert uncounted >= len(during)
    # Each admission is either in the counter or in the backend error metric, never both.
    assert counted(own_redis) == admitted - uncounted


# --- (c) one slow reply is not an outage ------------------------------------------------------------


def test_one_slow_reply_does_not_open_a_window(own_redis, make_router):
    router = make_router(capped("allow", 1000), own_redis.url + "?timeout_ms=20")  # the default backoff
    assert router.route("4001012345", BJ).reason == "ok"
    sleeper = asleep(own_redis, 0.3)
    slow = router.route("4001012345", BJ)
    assert (slow.action, router.backend_error_counts()) == ("bridge", {"allow": 1})
    sleeper.join()
    # The slow script's reply has arrived: the next command, on whatever
    # connection, must read its own reply (a count of 1 or 2), not that one (-1).
    assert calls_today(router.counters) in (1, 2)
    nxt = router.route("4001012345", BJ)
    assert nxt.reason == "ok"
    assert router.backend_error_counts() == {"allow": 1}  # the next call went to Redis
    assert router.counters.failures == {"timeout": 1}
    settle(router)
    assert counted(own_redis) == 2  # the slow call was not counted: it is the one backend error
    assert router.counters.late_replies == {"given_back": 1}


# --- (d) Redis killed and restarted --------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["allow", "reject"])
def test_killed_and_restarted_redis_counts_again_after_a_probe(own_redis, make_router, policy):
    router = make_router(capped(policy, 1000), own_redis.url + "?timeout_ms=20&backoff_ms=100")
    warm(router)
    # Paused first, so that scripts wait unanswered on their connections; then killed.
    os.killpg(own_redis.process.pid, signal.SIGSTOP)
    during = [router.route("4001012345", BJ) for _ in range(5)]
    os.killpg(own_redis.process.pid, signal.SIGKILL)
    own_redis.process.wait()
    during += [router.route("4001012345", BJ) for _ in range(5)]
    expected = ("bridge", "ok") if policy == "allow" else ("reject", "backend_error")
    assert set(reasons(during)) == {expected}
    assert router.counters.breaker.state != "closed"
    own_redis.start()  # same port, empty (no persistence)
    after = until_ok(router, then=9)
    assert {d.reason for d in after[-10:]} == {"ok"}
    assert counted(own_redis) == 10  # counting resumed with the probe, in the same router
    assert router.counters.settle(1) == 0
    assert router.counters.late_replies["lost"] >= 1  # the killed server's unanswered scripts


# --- the parts, one at a time ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_failures_in_a_row_and_probes_one_at_a_time():
    from tel400.redis_counters import Breaker

    clock = FakeClock()
    breaker = Breaker(open_after=3, backoff_s=0.25, clock=clock)
    for _ in range(5):  # failures, each run ended by a success, never open it
        assert breaker.admit()
        breaker.failed(breaker.generation)
        breaker.failed(breaker.generation)
        breaker.succeeded()
    assert breaker.state == "closed"
    for _ in range(3):
        assert breaker.admit()
        breaker.failed(breaker.generation)
    assert breaker.state == "open" and not breaker.admit()
    clock.now += 0.25
    assert breaker.admit()  # the probe
    assert breaker.state == "half-open" and not breaker.admit() and not breaker.admit()  # only one
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.admit() and breaker.admit()
    breaker.failed()
    assert breaker.state == "closed"  # one failure after a success: not yet


def test_breaker_counts_one_stall_once_however_many_calls_it_hit():
    from tel400.redis_counters import Breaker

    breaker = Breaker(open_after=3, backoff_s=0.25, clock=FakeClock())
    for _ in range(2):  # two stalls, each failing 8 calls that were waiting at once
        began = breaker.generation
        for _ in range(8):
            breaker.failed(began)
    assert breaker.state == "closed"
    breaker.failed(breaker.generation)  # a third, begun after the second was seen
    assert breaker.state == "open"


def test_breaker_probes_at_a_late_reply_until_a_probe_fails():
    from tel400.redis_counters import Breaker

    clock = FakeClock()
    breaker = Breaker(open_after=1, backoff_s=0.25, clock=clock)
    breaker.failed()
    assert not breaker.admit()
    breaker.probe_now()  # a late reply arrived: Redis answers again
    assert breaker.admit() and not breaker.admit()  # one probe, at once
    breaker.failed()  # ... but it timed out too: Redis is slow, not back
    assert breaker.state == "open"
    breaker.probe_now()
    assert not breaker.admit()  # from now on, one probe per backoff
    clock.now += 0.25
    assert breaker.admit()
    breaker.succeeded()
    breaker.failed()
    breaker.probe_now()
    assert breaker.admit()  # a new outage: late replies may shorten it again


def test_give_back_is_once_never_negative_and_creates_nothing(redis_url):
    import redis

    counters = tel400.open_counters(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        counters.add("a", 1, 5, 600)
        counters.add("b", 1, 1, 600)
        keys = ["a:1", "b:1", "missing:1"]
        counters._give_back(keys, [2, 3, 4], "tel400:{}:given-back:t1")
        assert (counters.value("a", 1), counters.value("b", 1)) == (3, 0)  # b: 1 given back of 3
        assert client.exists("missing:1") == 0  # a give-back never makes a counter
        counters._give_back(keys, [2, 3, 4], "tel400:{}:given-back:t1")  # the same give-back, retried
        assert counters.value("a", 1) == 3
        assert 60 <= client.ttl("tel400:{}:given-back:t1") <= 600  # lives as long as its counters
        counters._give_back(keys, [2, 3, 4], "tel400:{}:given-back:t2")  # another one
        assert counters.value("a", 1) == 1
        assert counters.late_replies == {"given_back": 3}
        assert 590 <= client.ttl("a:1") <= 600  # the counter keeps its lifetime
    finally:
        client.close()
        counters.close()


@pytest.mark.parametrize("query, message", [
    ("timeout_ms=0", "timeout_ms must be more than 0"),
    ("timeout_ms=abc", "timeout_ms must be a number"),
    ("backoff_ms=-1", "backoff_ms must be a finite number of at least 0"),
    ("open_after=0", "open_after must be a finite number of at least 1"),
    ("open_after=1.5", "open_after must be a whole number"),
    ("max_late=64", "max_late .64. must be less than max_connections .64."),
    ("timeout_ms=nan", "timeout_ms must be a finite number"),
])
def test_url_options_are_checked(query, message):
    with pytest.raises(ValueError, match=message):
        tel400.open_counters(f"redis://127.0.0.1:1/0?{query}")


def test_url_options_reach_the_backend():
    counters = tel400.open_counters("redis://127.0.0.1:1/0?timeout_ms=50&open_after=5&backoff_ms=2000&max_late=4")
    assert (counters.timeout_s, counters.breaker.open_after, counters.breaker.backoff_s, counters.max_late) == (
        0.05, 5, 2.0, 4)
    counters.close()


def test_metrics_show_late_replies_and_the_breaker(own_redis, make_router):
    import tel400.metrics
    from prometheus_client import CollectorRegistry, generate_latest

    router = make_router(capped("reject", 100), own_redis.url + "?timeout_ms=20&backoff_ms=60000&open_after=1")
    registry = CollectorRegistry()
    tel400.metrics.register(router, registry)
    assert router.route("4001012345", BJ).reason == "ok"
    os.killpg(own_redis.process.pid, signal.SIGSTOP)
    try:
        assert router.route("4001012345", BJ).reason == "backend_error"
        assert "tel400_counter_breaker_open 1.0" in generate_latest(registry).decode()
    finally:
        os.killpg(own_redis.process.pid, signal.SIGCONT)
    settle(router)
    text = generate_latest(registry).decode()
    assert 'tel400_counter_late_replies_total{outcome="given_back"} 1.0' in text
    assert "tel400_counter_breaker_open 1.0" in text  # a late reply lets a probe through at once, but none came yet
    assert until_ok(router)[-1].reason == "ok"
    assert "tel400_counter_breaker_open 0.0" in generate_latest(registry).decode()
    assert counted(own_redis) == 2


def test_no_reply_is_read_by_the_wrong_command_after_timeouts(own_redis):
    """Each kind of command times out on an established connection during a DEBUG SLEEP;
    afterwards every command reads its own reply, never the late one."""
    from .test_shared_counters import check

    counters = tel400.open_counters(own_redis.url + "?timeout_ms=20&open_after=1000")
    attempts = [
        lambda: counters.acquire([check("k", 100)]),  # kept for its late reply
        lambda: counters.acquire([check("k", 100)], dry_run=True),  # closed: counts nothing
        lambda: counters.acquire([check("k", 100, increment=0)]),  # counts nothing
        lambda: counters.value("k", 7),
        lambda: counters.add("m", 7, 1, 600),  # a charge: may be applied late, not given back
        lambda: counters.pin_failures("p", 0, 600),
    ]
    try:
        assert counters.acquire([check("k", 100)]) == -1
        counters.add("m", 7, 5, 600)
        for attempt in attempts:
            sleeper = asleep(own_redis, 0.15)
            with pytest.raises(tel400.BackendError, match="timeout"):
                attempt()
            sleeper.join()
            charged = int(own_redis.cli("GET", "m:7"))
            for _ in range(3):
                assert counters.value("m", 7) == charged
                assert counters.pin_failures("p", 0, 600) == 0
                assert counters.acquire([check("other", 10**6)]) == -1
        assert counters.settle(5) == 0
        assert counters.value("k", 7) == 1  # the timed-out acquire ran late, and was given back
        assert counters.late_replies == {"given_back": 1}
        assert counters.failures == {"timeout": len(attempts)}
    finally:
        counters.close()


def _child_settles(counters, out):
    # A forked child inherits the parked connection: it must leave its reply to the parent.
    out.put((counters.settle(0.3), dict(counters.late_replies), counters.acquire([_check("child", 10)])))


def _check(key, limit):
    from .test_shared_counters import check

    return check(key, limit)


def test_a_forked_child_leaves_late_replies_to_its_parent(own_redis):
    import multiprocessing

    counters = tel400.open_counters(own_redis.url + "?timeout_ms=20&open_after=1000")
    try:
        assert counters.acquire([_check("k", 10)]) == -1
        os.killpg(own_redis.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(tel400.BackendError):
                counters.acquire([_check("k", 10)])
        finally:
            os.killpg(own_redis.process.pid, signal.SIGCONT)
        fork = multiprocessing.get_context("fork")
        out = fork.Queue()
        child = fork.Process(target=_child_settles, args=(counters, out))
        child.start()
        assert out.get(timeout=30) == (0, {}, -1)  # nothing awaited, nothing read, its own connection works
        child.join(timeout=30)
        assert counters.settle(5) == 0
        assert counters.late_replies == {"given_back": 1}
        assert counters.value("k", 7) == 1
    finally:
        counters.close()
