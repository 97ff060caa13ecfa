"""``redis+cluster://`` and ``redis+sentinel://``: counters and plan stores on the real thing.

A Redis Cluster of three masters and a Sentinel group (master, replica,
three sentinels) are started from Debian's redis-server on free loopback
ports by ``tel400.testing``; nothing is mocked.  Shown here: the URL forms;
caps exact across processes that come in through different nodes; every key
of one call in the number's slot; a script the node does not know
(NOSCRIPT) and a slot that moved (MOVED) followed without a failed call; a
sentinel failover (the master killed) during which every call is decided
within its bound by the plan's ``on_backend_error``, after which counting
resumes on the promoted replica; and a plan edit that reaches processes
connected through other nodes.  No timing is asserted beyond generous
bounds.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time

import pytest

import tel400
from tel400.redis_clients import RedisURL, parse_url
from tel400.stores import RedisStore
from tel400.testing import RedisClusterServers, RedisSentinelServers

from .conftest import one_number
from .test_shared_counters import _route_many, calls_today

FORK = multiprocessing.get_context("fork")
BJ = "13901012345"
TAG = "{4001012345}"


@pytest.fixture(scope="module")
def cluster():
    servers = RedisClusterServers(3).start()
    yield servers
    servers.stop()


@pytest.fixture
def clean_cluster(cluster):
    for node in cluster.nodes:
        node.cli("FLUSHALL")
        node.cli("SCRIPT", "FLUSH")
    return cluster


@pytest.fixture(scope="module")
def sentinels():
    servers = RedisSentinelServers().start()
    yield servers
    servers.stop()


def counted(url: str, number: str = "4001012345") -> int:
    """The number's daily calls counter, read by a client of its own (not through a router's breaker)."""
    counters = tel400.open_counters(url + "?timeout_ms=2000")
    try:
        return calls_today(counters, number)
    finally:
        counters.close()


# --- the URLs ---------------------------------------------------------------------------------------


def test_url_forms():
    assert parse_url("redis+cluster://10.0.0.1:7000,10.0.0.2/") == RedisURL(
        "cluster", (("10.0.0.1", 7000), ("10.0.0.2", 6379)), None, 0, None, None, False)
    assert parse_url("rediss+cluster://:pw@[::1]:7000/0").tls
    assert parse_url("redis+sentinel://app:s%40cret@s1:5000,s2/mymaster/2") == RedisURL(
        "sentinel", (("s1", 5000), ("s2", 26379)), "mymaster", 2, "app", "s@cret", False)
    assert parse_url("redis://h:1/0").kind == "single"


@pytest.mark.parametrize("url, message", [
    ("redis+cluster://h:7000/1", "database 0 only"),
    ("redis+cluster:///", "a host is missing"),
    ("redis+cluster://h:70x0/", "port must be a whole number"),
    ("redis+cluster://h:7000/?db=1", "takes no query parameters"),
    ("redis+sentinel://h:26379/", "needs the service name"),
    ("redis+sentinel://h/mymaster/zero", "database must be a whole number"),
    ("redis+sentinel://u:secret@h/", "u:***@h"),
    ("redis+shard://h/", "unsupported URL"),
])
def test_bad_urls_are_refused_with_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("+", r"\+")) as caught:
        parse_url(url)
    assert "secret" not in str(caught.value)


def test_counters_and_stores_name_every_form_they_accept():
    with pytest.raises(ValueError, match="redis\\+cluster://.*redis\\+sentinel://"):
        tel400.open_counters("redis+shard://h/")
    with pytest.raises(ValueError, match="redis\\+cluster://.*redis\\+sentinel://"):
        tel400.open_store("redis+shard://h/")


class KeyRecorder(tel400.counters.CounterBackend):
    """A memory backend that remembers every key it is asked about."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.keys: set[str] = set()

    def acquire(self, checks, *, dry_run=False):
        self.keys.update(c.key for c in checks)
        return self.inner.acquire(checks, dry_run=dry_run)

    def add(self, key, period, amount, ttl_s):
        self.keys.add(key)
        return self.inner.add(key, period, amount, ttl_s)

    def value(self, key, period):
        self.keys.add(key)
        return self.inner.value(key, period)

    def pin_failures(self, key, now, window_s):
        self.keys.add(key)
        return self.inner.pin_failures(key, now, window_s)

    def add_pin_failure(self, key, now, window_s):
        self.keys.add(key)
        return self.inner.add_pin_failure(key, now, window_s)

    def clear_pin_failures(self, key):
        self.keys.add(key)
        self.inner.clear_pin_failures(key)


def test_every_key_either_engine_counts_carries_its_numbers_hash_tag(impl, make_router):
    """What makes one call one slot: checked on both engines without a cluster."""
    numbers = []
    for i, scope in enumerate(["number", "caller"]):
        numbers.append({
            "number": f"400101234{i}", "pin": "4821", "tariff": {"local": "0.1", "long_distance": "0.3"},
            "rules": [{"targets": ["1"]}],
            "caps": [{"metric": metric, "per": per, "limit": 1000, "scope": scope, "channel": channel}
                     for metric in ("calls", "minutes", "cost") for per in ("day",)
                     for channel in ("voice", "sms", "any")]
            + [{"metric": "calls", "per": "month", "limit": 1000, "scope": scope}],
        })
    recorder = KeyRecorder(impl.MemoryCounters())
    router = make_router({"numbers": numbers}, recorder)
    for number in ("4001012340", "4001012341"):
        for caller in (BJ, "02161234567", None):
            assert router.route(number, caller, pin="0000").reason == "bad_pin"
            for channel in ("voice", "sms"):
                decision = router.route(number, caller, pin="4821", channel=channel, call_id=f"{number}{caller}{channel}")
                assert decision.reason == "ok"
                router.call_ended(f"{number}{caller}{channel}", 125)
    tags = {key[key.index("{"):key.index("}") + 1] for key in recorder.keys}
    assert tags == {"{4001012340}", "{4001012341}"}
    assert all(key.count("{") == 1 for key in recorder.keys)  # the first {…} is the tag Redis reads
    assert any(":pin" in key for key in recorder.keys) and any(key.endswith(BJ) for key in recorder.keys)


# --- the cluster: counters ----------------------------------------------------------------------------


@pytest.mark.slow  # starts redis-servers
def test_caps_exact_across_processes_coming_in_through_every_node(clean_cluster, impl):
    tree = one_number(rules=[{"targets": ["1"]}], caps=[{"metric": "calls", "per": "day", "limit": 1500}])
    # A 2 s bound: this is about the script's exactness, not the bound (on a
    # loaded machine a 20 ms bound would fail open and admit past the cap).
    urls = [clean_cluster.url_via(i % 3) + "?timeout_ms=2000" for i in range(4)]
    parent = tel400.Router(tel400.PlanSet.from_dict(tree), urls[0], implementation=impl.name)
    results = FORK.Queue()
    workers = [FORK.Process(target=_route_many, args=(url, tree, 600, impl.name, results)) for url in urls]
    for w in workers:
        w.start()
    admitted = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert sum(admitted) == 1500
    assert parent.route("4001012345", BJ).reason == "cap_exceeded"
    assert counted(clean_cluster.url) == 1500


@pytest.mark.slow  # starts redis-servers
def test_every_key_of_a_call_lives_in_the_numbers_slot(clean_cluster, make_router):
    # Caps of every kind, per caller, and the PIN's lockout keys: a script
    # whose keys spanned slots would fail (CROSSSLOT) and show as a failure.
    router = make_router(
        one_number(rules=[{"targets": ["1"]}], pin="4821",
                   caps=[{"metric": "calls", "per": "day", "limit": 100},
                         {"metric": "calls", "per": "day", "limit": 2, "scope": "caller"},
                         {"metric": "minutes", "per": "month", "limit": 100}]),
        clean_cluster.url_via(1) + "?timeout_ms=2000",
    )
    shanghai = "02161234567"
    wrong = [router.route("4001012345", shanghai, pin="0000").reason for _ in range(6)]
    assert wrong == ["bad_pin"] * 4 + ["pin_locked"] * 2
    first = router.route("4001012345", BJ, pin="4821", call_id="a")
    router.call_ended("a", 125)
    assert [first.reason, router.route("4001012345", BJ, pin="4821").reason,
            router.route("4001012345", BJ, pin="4821").reason] == ["ok", "ok", "cap_exceeded"]
    assert router.counters.failures == {} and router.backend_error_counts() == {}

    home = clean_cluster.node_of(TAG)
    keys = {node.port: node.cli("KEYS", "*") for node in clean_cluster.nodes}
    assert keys[home.port] and all(TAG in key for key in keys[home.port])
    assert all(not found for port, found in keys.items() if port != home.port)
    assert counted(clean_cluster.url) == 2


@pytest.mark.slow  # starts redis-servers
def test_a_node_that_does_not_know_the_script_is_sent_it(clean_cluster, make_router):
    router = make_router(one_number(rules=[{"targets": ["1"]}], caps=[{"metric": "calls", "per": "day", "limit": 100}]),
                         clean_cluster.url_via(0) + "?timeout_ms=2000")
    assert router.route("4001012345", BJ).reason == "ok"
    home = clean_cluster.node_of(TAG)
    home.cli("SCRIPT", "FLUSH")  # as after a restart, or on a replica just promoted
    home.cli("CONFIG", "RESETSTAT")
    assert [router.route("4001012345", BJ).reason for _ in range(3)] == ["ok"] * 3
    stats = home.cli("INFO", "commandstats")
    # One EVALSHA answered NOSCRIPT, one EVAL loaded and ran it, then EVALSHA again.
    assert stats["cmdstat_eval"]["calls"] == 1
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert router.counters.failures == {}
    assert counted(clean_cluster.url) == 4


def move_slot(cluster: RedisClusterServers, key: str) -> tuple:
    """Move ``key``'s slot, with its keys, to another node (as ``redis-cli --cluster reshard`` does)."""
    source = cluster.node_of(key)
    target = next(n for n in cluster.nodes if n is not source)
    slot = source.cli("CLUSTER", "KEYSLOT", key)
    source_id, target_id = source.cli("CLUSTER", "MYID"), target.cli("CLUSTER", "MYID")
    target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    keys = source.cli("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if keys:
        source.cli("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.nodes:
        node.cli("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return source, target


@pytest.mark.slow  # starts redis-servers
def test_a_slot_that_moved_is_followed_without_a_failed_call(clean_cluster, make_router):
    router = make_router(one_number(rules=[{"targets": ["1"]}], caps=[{"metric": "calls", "per": "day", "limit": 100}]),
                         clean_cluster.url + "?timeout_ms=2000")
    assert [router.route("4001012345", BJ).reason for _ in range(2)] == ["ok"] * 2
    source, target = move_slot(clean_cluster, TAG)
    # The router still thinks the slot is on `source`: MOVED, then the
    # script again on `target`, which has never seen it (NOSCRIPT, EVAL).
    assert [router.route("4001012345", BJ).reason for _ in range(3)] == ["ok"] * 3
    assert router.counters.failures == {} and router.backend_error_counts() == {}
    assert calls_today(router.counters) == 5
    assert source.cli("DBSIZE") == 0 and target.cli("DBSIZE") == 1


# --- plan edits reach processes connected through other nodes ------------------------------------------


def plan(target: str) -> dict:
    return {"number": "4001012345", "rules": [{"name": "office", "targets": [target]}]}


def _follow(url, reports, stop):
    """Route by a store's plans, kept current by a PlanWatcher; report each new target."""
    store = tel400.open_store(url)
    router = tel400.Router(store.load())
    tel400.PlanWatcher(router, store, interval_s=0.2).start()
    last = None
    while not stop.is_set():
        targets = router.route("4001012345", BJ).targets
        if targets != last:
            reports.put((os.getpid(), targets))
            last = targets
        time.sleep(0.01)


def edit_reaches_every_follower(writer_url: str, follower_urls: list[str]) -> None:
    writer = tel400.open_store(writer_url)
    assert isinstance(writer, RedisStore)
    writer.put_number(plan("13901010001"), actor="test")
    reports, stop = FORK.Queue(), FORK.Event()
    workers = [FORK.Process(target=_follow, args=(url, reports, stop)) for url in follower_urls]
    for w in workers:
        w.start()
    try:
        pids = {w.pid for w in workers}
        for target in ("13901010001", "13901010002"):
            if target != "13901010001":
                writer.put_number(plan(target), actor="test")
            seen = set()
            deadline = time.monotonic() + 15
            while seen != pids and time.monotonic() < deadline:
                try:
                    pid, targets = reports.get(timeout=0.2)
                except queue.Empty:
                    continue
                if targets == (target,):
                    seen.add(pid)
            assert seen == pids, f"{target} reached {len(seen)} of {len(pids)} processes"
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)
        writer.close()


@pytest.mark.slow  # starts redis-servers
def test_a_plan_edit_reaches_processes_connected_through_other_cluster_nodes(clean_cluster):
    edit_reaches_every_follower(clean_cluster.url_via(0), [clean_cluster.url_via(1), clean_cluster.url_via(2)])


@pytest.mark.slow  # starts redis-servers
def test_a_plan_edit_through_sentinel_reaches_other_processes(sentinels):
    master = f"redis://127.0.0.1:{sentinels.master_port()}/0"
    tel400.open_store(master)._client.flushall()
    edit_reaches_every_follower(sentinels.url, [sentinels.url, master])


# --- a sentinel failover ------------------------------------------------------------------------------------

#: A decision's wait for Redis, generously: a call makes at most a few
#: round trips bounded by ``timeout_ms`` (50 here: a late reply collected, a
#: connection whose opening asks the sentinels, the script).  A call that
#: waited for the failover itself would take seconds.
BOUND_S = 1.0


@pytest.mark.slow  # starts redis-servers
def test_sentinel_failover_every_call_decided_by_the_policy_then_counting_resumes():
    group = RedisSentinelServers().start()
    try:
        tree = {"numbers": [
            {"number": "4001012345", "rules": [{"targets": ["1"]}], "on_backend_error": "reject",
             "caps": [{"metric": "calls", "per": "day", "limit": 40}]},
            {"number": "4001012346", "rules": [{"targets": ["2"]}], "on_backend_error": "allow",
             "caps": [{"metric": "calls", "per": "day", "limit": 10_000}]},
        ]}
        router = tel400.Router(tel400.PlanSet.from_dict(tree), group.url + "?timeout_ms=50&backoff_ms=100")
        before = [router.route(n, BJ) for n in ("4001012345", "4001012346") * 10]
        assert {d.reason for d in before} == {"ok"}
        assert group.master.cli("WAIT", 1, 2000) == 1  # every count is on the replica too

        group.fail_over()
        during: list = []  # (number, decision, seconds)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for number in ("4001012345", "4001012346"):
                started = time.monotonic()
                during.append((number, router.route(number, BJ), time.monotonic() - started))
            if during[-2][1].reason == "ok" and router.counters.breaker.state == "closed":
                break
            time.sleep(0.005)
        assert max(seconds for _, _, seconds in during) < BOUND_S
        rejecting = {(d.action, d.reason) for n, d, _ in during if n == "4001012345"}
        assert rejecting == {("reject", "backend_error"), ("bridge", "ok")}  # the outage, then counting again
        assert {(d.action, d.reason) for n, d, _ in during if n == "4001012346"} == {("bridge", "ok")}

        group.wait_promoted()  # the sentinels name the replica; it took the writes
        after = [router.route("4001012345", BJ) for _ in range(60)]
        admitted = sum(d.reason == "ok" for d in before + [d for n, d, _ in during] + after if d.targets == ("1",))
        # Every place of the cap went to an admitted call: the ones counted on
        # the old master (replicated) and the ones counted on the promoted one.
        assert admitted == 40
        assert after[-1].reason == "cap_exceeded"
        assert counted(group.url) == 40
        allowed = sum(d.action == "bridge" for d in before + [d for n, d, _ in during] if d.targets == ("2",))
        assert counted(group.url, "4001012346") == allowed - router.backend_error_counts()["allow"]
        router.counters.close()
    finally:
        group.stop()


# --- a cluster failover, and a cluster that was not there at first --------------------------------------------


def serving(servers, key: str):
    """The node serving ``key``'s slot, or None while a failover leaves it unowned for a moment."""
    try:
        return servers.node_of(key)
    except LookupError:
        return None


def route_until_counted(router, number: str = "4001012345", deadline_s: float = 30) -> list:
    """Route (every 5 ms) until a call is counted with the breaker closed; (decision, seconds) of each call."""
    calls = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        started = time.monotonic()
        decision = router.route(number, BJ)
        calls.append((decision, time.monotonic() - started))
        if decision.reason == "ok" and router.counters.breaker.state == "closed":
            break
        time.sleep(0.005)
    return calls


@pytest.mark.slow  # starts redis-servers
def test_cluster_failover_every_call_decided_by_the_policy_then_counting_resumes_on_the_replica():
    servers = RedisClusterServers(3, replicas=1).start()
    try:
        tree = one_number(rules=[{"targets": ["1"]}], on_backend_error="reject",
                          caps=[{"metric": "calls", "per": "day", "limit": 40}])
        router = tel400.Router(tel400.PlanSet.from_dict(tree), servers.url + "?timeout_ms=50&backoff_ms=100")
        before = [router.route("4001012345", BJ) for _ in range(10)]
        assert {d.reason for d in before} == {"ok"}
        home = servers.node_of(TAG)
        replica = servers.replica_of(home)
        assert home.cli("WAIT", 1, 2000) == 1

        home.kill()
        killed_at = time.monotonic()
        during = route_until_counted(router)
        assert max(seconds for _, seconds in during) < BOUND_S
        # (once seen under the whole suite's load: no call counted within 30 s; say what the cluster did)
        assert {(d.action, d.reason) for d, _ in during} == {("reject", "backend_error"), ("bridge", "ok")}, (
            f"{len(during)} calls in {time.monotonic() - killed_at:.1f} s; the slot's node now: "
            f"{getattr(serving(servers, TAG), 'port', None)} (replica {replica.port}); "
            f"breaker {router.counters.breaker.state}; replica: {replica.cli('CLUSTER', 'INFO')}")
        # The slot is the replica's now (every node agrees within moments);
        # it had never run the script (NOSCRIPT, then EVAL).
        deadline = time.monotonic() + 5
        while serving(servers, TAG) is not replica and time.monotonic() < deadline:
            time.sleep(0.05)
        assert servers.node_of(TAG) is replica
        assert replica.cli("INFO", "commandstats")["cmdstat_eval"]["calls"] >= 1

        after = [router.route("4001012345", BJ) for _ in range(40)]
        admitted = sum(d.reason == "ok" for d in before + [d for d, _ in during] + after)
        assert admitted == 40
        assert after[-1].reason == "cap_exceeded"
        assert counted(servers.url) == 40
    finally:
        servers.stop()


@pytest.mark.slow  # starts redis-servers
def test_a_cluster_that_answers_only_later_is_found_without_a_restart():
    servers = RedisClusterServers(3)  # its ports are chosen, nothing listens yet
    try:
        tree = one_number(rules=[{"targets": ["1"]}], on_backend_error="reject",
                          caps=[{"metric": "calls", "per": "day", "limit": 100}])
        router = tel400.Router(tel400.PlanSet.from_dict(tree), servers.url + "?timeout_ms=50&backoff_ms=100")
        first = router.route("4001012345", BJ)
        assert (first.action, first.reason) == ("reject", "backend_error")
        assert router.counters.failures["connection"] == 1

        servers.start()
        calls = route_until_counted(router)
        assert max(seconds for _, seconds in calls) < BOUND_S
        assert calls[-1][0].reason == "ok"
        assert {d.reason for d, _ in calls[:-1]} <= {"backend_error"}
        assert counted(servers.url) == 1
    finally:
        servers.stop()


def test_a_plan_store_on_a_cluster_that_does_not_answer_is_a_backend_error():
    servers = RedisClusterServers(3)  # nothing listens on its ports
    with pytest.raises(tel400.BackendError, match="no seed of redis\\+cluster://"):
        tel400.open_store(servers.url)
