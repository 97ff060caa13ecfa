"""Calls in progress, one behavioural suite over memory://, sqlite:// and redis://, and across processes.

The cross-process tests fork real workers: calls routed in one process end
in random others, some ends reported twice at once, and each call must be
charged exactly once.  redis-server is Debian's, on 127.0.0.1 (conftest).
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import random
import time

import pytest

import tel400
from tel400 import _impl
from tel400.billing import CallRecord
from tel400.calls import CallRegistry, open_calls
from tel400.callstores import RedisCallRegistry, SqliteCallRegistry

from .conftest import one_number

FORK = multiprocessing.get_context("fork")
BJ = "13901012345"
SHARED = ["sqlite", "redis"]


def record(call_id="c1", number="4001012345", minutes=60):
    return CallRecord(call_id, number, BJ, 1, ("13901010001",), "voice", 1_700_000_000.0, None,
                      (("minutes", f"k:{number}", 1, 86400),), True)


@pytest.fixture
def calls_url(request, tmp_path):
    """The URL of an empty registry of the kind ``request.param`` names."""
    kind = request.param
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite://{tmp_path}/calls.db"
    return request.getfixturevalue("redis_url")


@pytest.fixture
def make_calls(calls_url):
    made = []

    def make(**bounds):
        registry = open_calls(calls_url, **bounds)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


every_kind = pytest.mark.parametrize("calls_url", ["memory", "sqlite", "redis"], indirect=True)
shared_kinds = pytest.mark.parametrize("calls_url", SHARED, indirect=True)


# --- the interface, the same on every registry -----------------------------------------


@every_kind
def test_remember_get_claim_settle(make_calls):
    calls = make_calls()
    assert calls.remember(record("c1")) and "c1" in calls and len(calls) == 1
    found = calls.get("c1")
    assert found.to_token() == record("c1").to_token()
    assert calls.claim("c1", found)
    assert not calls.claim("c1", calls.get("c1"))  # a second report of the same end
    assert calls.get("c1") is not None  # the call stays until its charge is added
    calls.settle("c1", found)
    assert calls.get("c1") is None and "c1" not in calls and len(calls) == 0
    assert calls.get("never") is None


@every_kind
def test_settle_with_rest_keeps_what_is_left_at_the_same_age(make_calls):
    calls = make_calls()
    calls.remember(record("c1"))
    found = calls.get("c1")
    age = found.remembered_at
    assert calls.claim("c1", found)
    rest = found.with_charges(())
    calls.settle("c1", found, rest)
    again = calls.get("c1")
    assert again.charges == () and again.remembered_at == pytest.approx(age)
    assert calls.claim("c1", again)  # the retry claims the rest
    calls.settle("c1", again)
    assert calls.get("c1") is None


@every_kind
def test_a_call_routed_again_is_replaced_and_an_old_claim_changes_nothing(make_calls):
    calls = make_calls()
    calls.remember(record("c1"))
    old = calls.get("c1")
    assert calls.claim("c1", old)
    newer = record("c1", minutes=120)
    newer.targets = ("13901010002",)
    calls.remember(newer)  # a PIN round: the latest wins
    calls.settle("c1", old)  # the old claim's settle must not forget the new call
    found = calls.get("c1")
    assert found.targets == ("13901010002",)
    assert not calls.claim("c1", old)  # the record claimed is no longer the call's
    assert calls.claim("c1", found)


@every_kind
def test_pop_takes_the_call_out(make_calls):
    calls = make_calls()
    calls.remember(record("c1"))
    assert calls.pop("c1").call_id == "c1"
    assert calls.pop("c1") is None and len(calls) == 0


@every_kind
def test_max_calls_refuses_new_calls_never_the_ones_held(make_calls):
    calls = make_calls(max_calls=3)
    assert all(calls.remember(record(f"c{i}")) for i in range(3))
    assert not calls.remember(record("c3"))
    assert calls.remember(record("c1"))  # an id already held is routed again
    assert (len(calls), calls.refused, calls.dropped) == (3, 1, 0)
    assert calls.get("c3") is None and calls.get("c0") is not None


@every_kind
def test_calls_expire_at_max_age_and_make_room(make_calls):
    calls = make_calls(max_calls=2, max_age_s=0.3)
    calls.remember(record("old1"))
    calls.remember(record("old2"))
    assert not calls.remember(record("refused"))
    time.sleep(0.45)
    assert calls.remember(record("new"))  # the expired ones go first
    assert calls.get("old1") is None and calls.get("new") is not None
    assert (calls.dropped, calls.refused, len(calls)) == (2, 1, 1)


@every_kind
def test_open_calls_returns_a_registry_with_the_bounds_asked(make_calls):
    calls = make_calls(max_calls=7, max_age_s=60)
    assert (calls.max_calls, calls.max_age_s) == (7, 60)
    assert open_calls(calls) is calls
    assert calls.shared == (not isinstance(calls, CallRegistry))


def test_open_calls_kinds_and_bad_urls(tmp_path, redis_url):
    assert isinstance(open_calls(None), CallRegistry) and isinstance(open_calls("memory://"), CallRegistry)
    assert isinstance(open_calls(f"sqlite://{tmp_path}/a.db"), SqliteCallRegistry)
    registry = open_calls(f"{redis_url}?claim_lease_s=5&timeout_ms=100&prefix=t")
    assert isinstance(registry, RedisCallRegistry) and registry.claim_lease_s == 5
    registry.close()
    for url, message in [
        ("ftp://x/y", "unsupported URL"), ("memory://somewhere", "unsupported URL"),
        ("sqlite://", "needs a file path"), ("sqlite://host/calls.db", "no host"),
        (f"sqlite://{tmp_path}/", "needs a file path"),
        (f"sqlite://{tmp_path}/a.db?bogus=1", "unknown parameter 'bogus'"),
        (f"sqlite://{tmp_path}/a.db?claim_lease_s=-1", "positive number"),
        (f"{redis_url}?timeout_ms=nan", "positive number"),
        # in range: SQLite reads a busy timeout past 2**31 ms back as 0 (no waiting at all); a socket
        # timeout of 1e300 s overflows; a lease of a microsecond takes over live claims (a double charge)
        (f"sqlite://{tmp_path}/a.db?busy_timeout_ms=3000000000", "busy_timeout_ms: from 1 to 60000"),
        (f"{redis_url}?timeout_ms=1e300", "timeout_ms: from 1 to 60000"),
        (f"{redis_url}?claim_lease_s=0.000001", "claim_lease_s: from 0.1 to 86400"),
        (f"sqlite://{tmp_path}/a.db?claim_lease_s=1e308", "claim_lease_s: from 0.1 to 86400"),
        ("redis+cluster://h:1/3", "database 0 only"),
        ("redis+sentinel://h:1/", "service name"),
    ]:
        with pytest.raises(ValueError, match=message):
            open_calls(url)
    with pytest.raises(ValueError, match="max_calls"):
        open_calls(f"sqlite://{tmp_path}/b.db", max_calls=0)
    with pytest.raises(TypeError, match="call registry or a URL"):
        open_calls(42)
    with pytest.raises(tel400.BackendError, match="cannot open"):
        open_calls(f"sqlite://{tmp_path}/missing/dir/a.db")


# --- through the router ---------------------------------------------------------------


def minutes_plan(limit=10**6):
    return one_number(rules=[{"targets": ["13901010001"]}],
                      caps=[{"metric": "minutes", "per": "day", "limit": limit},
                            {"metric": "cost", "per": "day", "limit": 10**6}],
                      tariff={"local": "0.1", "long_distance": "0.3"})


class FailingCostCounters(tel400.MemoryCounters):
    """Counters whose first add to a cost cap fails (Redis down for a moment)."""

    failures = 1

    def add(self, key, period, amount, ttl_s):
        if ":cap:cost:" in key and self.failures:
            self.failures -= 1
            raise tel400.BackendError("counter backend unavailable")
        return super().add(key, period, amount, ttl_s)


@every_kind
def test_router_takes_a_url_and_a_failed_charge_keeps_the_rest(calls_url, make_router):
    counters = FailingCostCounters()
    router = make_router(minutes_plan(), counters, calls=calls_url)
    assert router.call_registry.shared == (calls_url != "memory://")
    assert router.route("4001012345", BJ, call_id="c1").action == "bridge"
    with pytest.raises(tel400.BackendError, match="charge"):
        router.call_ended("c1", 120)
    rest = router._shared.calls.get("c1")
    assert [c[0] for c in rest.charges] == ["cost"]  # only what was not added waits
    charge = router.call_ended("c1", 120)  # the retry adds the rest
    assert charge.billed_s == 120 and router.call_ended("c1", 120) is None
    assert router.calls_in_progress == 0
    used = {usage.cap.metric: usage.used for usage in router.cap_usage("4001012345")}
    assert used == {"minutes": 2, "cost": charge.cost}  # each once: 120 s, the cost


@every_kind
def test_export_call_and_record_work_through_every_registry(calls_url, make_router):
    router = make_router(minutes_plan(), calls=calls_url)
    router.route("4001012345", BJ, call_id="c1")
    token = router.export_call("c1")
    assert router.calls_in_progress == 0
    assert router.call_ended("c1", 60, record=token).billed_s == 60


# --- claims of dead and live processes -------------------------------------------------------


def _remember_many(url, prefix, start, results):
    calls = open_calls(url, max_calls=150)
    start.wait(timeout=60)
    stored = sum(calls.remember(record(f"{prefix}-{i}")) for i in range(100))
    results.put((stored, calls.refused))


@shared_kinds
def test_max_calls_bounds_all_processes_together(calls_url, make_calls):
    start, results = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_remember_many, args=(calls_url, f"p{n}", start, results)) for n in range(4)]
    for p in procs:
        p.start()
    start.set()
    counts = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sum(stored for stored, _ in counts) == 150  # exactly the bound, however the writes interleaved
    assert sum(refused for _, refused in counts) == 250  # each process counts what it refused
    assert len(make_calls(max_calls=150)) == 150


def _open_and_answer(url, queue):
    try:
        open_calls(url).remember(record(f"c{os.getpid()}"))
        queue.put("ok")
    except Exception as exc:  # the answer the test reads, whatever went wrong
        queue.put(repr(exc))


def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path):
    """SQLite answers some of them "database is locked" at once while another turns WAL on."""
    for round_ in range(8):
        url = f"sqlite://{tmp_path}/calls{round_}.db"
        queue = FORK.Queue()
        procs = [FORK.Process(target=_open_and_answer, args=(url, queue)) for _ in range(6)]
        for p in procs:
            p.start()
        answers = [queue.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert answers == ["ok"] * 6
        assert len(open_calls(url)) == 6


def _claim_and_die(url, queue):
    calls = open_calls(url)
    queue.put(calls.claim("c1", calls.get("c1")))
    queue.close()
    queue.join_thread()  # the answer is sent before the process dies
    os._exit(0)  # killed between claim and settle


@shared_kinds
def test_a_dead_processes_claim_is_taken_over(calls_url, make_calls):
    calls = make_calls()
    calls.remember(record("c1"))
    queue = FORK.Queue()
    child = FORK.Process(target=_claim_and_die, args=(calls_url, queue))
    child.start()
    assert queue.get(timeout=30) is True
    child.join(timeout=30)
    held = calls.get("c1")
    assert held.claimer is not None  # it claimed, and never settled
    assert calls.claim("c1", held)  # its holder is gone: the retry charges the call
    calls.settle("c1", held)
    assert calls.get("c1") is None


@shared_kinds
def test_a_claim_of_a_killed_process_not_yet_reaped_is_taken_over(calls_url, make_calls):
    """A worker killed by SIGKILL is a zombie until its supervisor reaps it: kill(pid, 0) still finds it,
    but it charges nothing more, so the switch's retry must take its claim over at once."""
    calls = make_calls()
    calls.remember(record("c1"))
    queue = FORK.Queue()
    child = FORK.Process(target=_claim_and_die, args=(calls_url, queue))
    child.start()
    assert queue.get(timeout=30) is True
    deadline = time.monotonic() + 30
    while pathlib.Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0] != b"Z":
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    held = calls.get("c1")  # the child is a zombie now: not reaped (no join yet)
    assert calls.claim("c1", held)
    calls.settle("c1", held)
    assert calls.get("c1") is None
    child.join(timeout=30)


def _end_in_child(calls, queue):
    found = calls.get("c1")  # the parent's registry object, used after the fork
    claimed = calls.claim("c1", found)
    calls.settle("c1", found)
    calls.remember(record("from-child"))
    queue.put(claimed)
    queue.close()
    queue.join_thread()


@shared_kinds
def test_a_registry_made_before_a_fork_serves_the_child_and_the_parent(make_calls):
    calls = make_calls()
    calls.remember(record("c1"))
    queue = FORK.Queue()
    child = FORK.Process(target=_end_in_child, args=(calls, queue))
    child.start()
    assert queue.get(timeout=30) is True
    child.join(timeout=30)
    assert child.exitcode == 0
    assert calls.get("c1") is None and calls.get("from-child") is not None  # the parent sees the child's work
    assert calls.remember(record("c2")) and len(calls) == 2  # and its own connection still works


def test_a_claim_from_another_host_or_pid_namespace_waits_for_its_lease(tmp_path):
    import sqlite3

    calls = open_calls(f"sqlite://{tmp_path}/calls.db?claim_lease_s=0.3")
    calls.remember(record("c1"))
    db = sqlite3.connect(f"{tmp_path}/calls.db", isolation_level=None)
    # a pid that does not exist here may well live over there: not taken for dead
    db.execute("UPDATE calls SET claimer = 'elsewhere/1:999999999:ab', claimed_at = ?", (time.time(),))
    assert not calls.claim("c1", calls.get("c1"))
    time.sleep(0.45)
    assert calls.claim("c1", calls.get("c1"))  # its lease ran out
    db.close()
    calls.close()


def test_a_host_cloned_with_the_same_name_is_another_place():
    """Two VMs cloned from one image share a host name and the initial pid namespace's inode (a kernel
    constant): a pid missing here may live there. The boot id tells them apart."""
    import socket

    from tel400 import callstores

    namespace = os.stat("/proc/self/ns/pid").st_ino
    clone = f"{socket.gethostname()}/{namespace}:999999999:ab"  # same name and namespace, no boot id
    assert not callstores.holder_dead(clone)
    assert callstores.holder_dead(callstores.new_claimer().replace(f":{os.getpid()}:", ":999999999:"))


@shared_kinds
def test_a_live_claim_holds_until_its_lease_runs_out(calls_url):
    url = calls_url + ("&" if "?" in calls_url else "?") + "claim_lease_s=0.3"
    calls, other = open_calls(url), open_calls(url)
    calls.remember(record("c1"))
    first = calls.get("c1")
    assert calls.claim("c1", first)
    seen = other.get("c1")
    assert not other.claim("c1", seen)  # its holder lives (this process) and the lease runs
    time.sleep(0.45)
    assert other.claim("c1", seen)  # a holder stalled past its lease is overtaken
    calls.settle("c1", first)  # the stalled one's settle changes nothing
    assert calls.get("c1") is not None
    other.settle("c1", seen)
    assert calls.get("c1") is None
    calls.close()
    other.close()


def test_a_redis_cluster_holds_the_registry_in_one_slot():
    from tel400.testing import RedisClusterServers

    cluster = RedisClusterServers(3).start()
    try:
        calls = open_calls(cluster.url, max_calls=2, max_age_s=0.3)
        assert calls.remember(record("a")) and calls.remember(record("b")) and not calls.remember(record("c"))
        found = calls.get("a")
        assert calls.claim("a", found) and not calls.claim("a", calls.get("a"))
        calls.settle("a", found)
        assert calls.get("a") is None and len(calls) == 1
        time.sleep(0.45)
        assert calls.remember(record("d"))  # "b" expired: dropped by a script on the registry's one node
        assert (calls.dropped, calls.refused, len(calls)) == (1, 1, 1)
        holders = [node for node in cluster.nodes if int(node.cli("DBSIZE")) > 0]
        assert len(holders) == 1  # one hash tag: the registry's keys live on one node
        calls.close()
    finally:
        cluster.stop()


def test_a_redis_sentinel_url_reaches_the_master():
    from tel400.testing import RedisSentinelServers

    servers = RedisSentinelServers().start()
    try:
        calls = open_calls(servers.url + "?timeout_ms=2000")
        assert calls.remember(record("a"))
        found = calls.get("a")
        assert calls.claim("a", found) and not calls.claim("a", calls.get("a"))
        calls.settle("a", found)
        assert calls.get("a") is None and len(calls) == 0
        calls.close()
    finally:
        servers.stop()


def test_a_redis_that_is_gone_refuses_the_call_and_ends_raise(make_router):
    from tel400.testing import RedisServer

    server = RedisServer().start()
    try:
        router = make_router(minutes_plan(), calls=server.url + "?timeout_ms=200")
        router.route("4001012345", BJ, call_id="c1")
    finally:
        server.stop()
    assert router.route("4001012345", BJ, call_id="c2").action == "bridge"  # admitted, not remembered
    assert router.calls_refused == 1 and router._shared.calls.failed == 1
    with pytest.raises(tel400.BackendError):
        router.call_ended("c1", 60)


# --- across processes -----------------------------------------------------------------------


CALLS = 2000
DURATION = 60  # billed 60 s each: the minutes counter must read CALLS exactly


def _counters_for(kind, tmp_path, redis_url):
    """Counters shared between processes: shm:// with the compiled extension, else Redis
    (the registry is what is tested here; any shared counters show the charges)."""
    if kind == "sqlite" and "cython" in _impl.ENGINES:
        return f"shm://{tmp_path}/counters?slots=1024"
    return f"{redis_url}?timeout_ms=2000"


def _report_ends(plans_tree, counters, calls, implementation, ends, start, results):
    router = tel400.Router(tel400.PlanSet.from_dict(plans_tree), counters, calls=calls, implementation=implementation)
    start.wait(timeout=60)
    charged = 0
    for call_id in ends:
        if router.call_ended(call_id, DURATION) is not None:
            charged += 1
    results.put((os.getpid(), charged, sorted(ends)))


@shared_kinds
def test_ends_in_random_processes_charge_each_call_once(calls_url, tmp_path, impl, request):
    redis_url = request.getfixturevalue("redis_url")  # flushed: counters and calls start empty
    if calls_url.startswith("redis"):
        calls_url = redis_url
    counters = _counters_for(request.node.callspec.params["calls_url"], tmp_path, redis_url)
    tree = one_number(rules=[{"targets": ["13901010001"]}], caps=[{"metric": "minutes", "per": "day", "limit": CALLS}])
    router = tel400.Router(tel400.PlanSet.from_dict(tree), counters, calls=calls_url, implementation=impl.name)
    ids = [f"call-{i}" for i in range(CALLS)]
    for call_id in ids:  # process A routes every call
        assert router.route("4001012345", BJ, call_id=call_id).action == "bridge"
    assert router.calls_in_progress == CALLS

    workers = 4
    rng = random.Random(15)
    ends = [[] for _ in range(workers)]
    twice = set(rng.sample(ids, CALLS // 3))
    for call_id in ids:  # each end to a random worker; a third to two workers, at the same point in their lists
        first, second = rng.sample(range(workers), 2)
        ends[first].append(call_id)
        if call_id in twice:
            ends[second].append(call_id)
    start, results = FORK.Event(), FORK.Queue()
    procs = [FORK.Process(target=_report_ends, args=(tree, counters, calls_url, impl.name, mine, start, results))
             for mine in ends]
    for p in procs:
        p.start()
    start.set()
    reports = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    assert sum(charged for _, charged, _ in reports) == CALLS  # every call charged, none twice
    assert router.calls_in_progress == 0
    minutes = next(u for u in router.cap_usage("4001012345") if u.cap.metric == "minutes")
    assert minutes.used == CALLS  # the counter itself: exactly one minute per call
    assert router.route("4001012345", BJ).reason == "cap_exceeded"  # the cap is exact, not one short


def test_a_settle_that_fails_after_a_full_charge_still_reports_the_charge(tmp_path, impl):
    """The registry fails between the charge and forgetting the call: the charge stands and is answered,
    not a BackendError (a 503) whose retry would then find the call claimed and get 404."""
    calls = open_calls(f"sqlite://{tmp_path}/calls.db")
    tree = one_number(rules=[{"targets": ["13901010001"]}], caps=[{"metric": "minutes", "per": "day", "limit": 50}])
    router = tel400.Router(tel400.PlanSet.from_dict(tree), calls=calls, implementation=impl.name)
    assert router.route("4001012345", BJ, call_id="c1").action == "bridge"

    def broken(*args, **kwargs):
        raise tel400.BackendError("calls: the disk went away")

    calls.settle = broken
    charge = router.call_ended("c1", 61)
    assert charge is not None and charge.billed_s == 120
    assert {u.cap.metric: int(u.used) for u in router.cap_usage("4001012345")} == {"minutes": 2}
