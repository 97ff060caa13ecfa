"""Plan stores (file, SQLite, Redis) and the watcher that keeps routers current."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import time

import pytest
import structlog

import tel400
from tel400.stores import SqliteStore

from .conftest import EXAMPLES, one_number

FORK = multiprocessing.get_context("fork")
BJ = "13901012345"


def plan_tree(target: str, **extra) -> dict:
    return {"number": "4001012345", "rules": [{"name": "office", "targets": [target]}], **extra}


def write_toml(path, target: str, time_slot: str = "00:00-23:59") -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(f'[[numbers]]\nnumber = "4001012345"\n[[numbers.rules]]\nname = "office"\n'
                 f'time = "{time_slot}"\ntargets = ["{target}"]\n')
    os.replace(tmp, path)  # an atomic rename, as editors and deploy tools do


@pytest.fixture(params=["file", "sqlite", "redis"])
def store_url(request, tmp_path):
    if request.param == "file":
        path = tmp_path / "plans.toml"
        write_toml(path, "13901010001")
        return str(path)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/plans.db"
    else:
        url = request.getfixturevalue("redis_url")
    tel400.open_store(url).put_number(plan_tree("13901010001"), actor="test")
    return url


def change(url: str, target: str) -> None:
    store = tel400.open_store(url)
    if isinstance(store, tel400.FileStore):
        write_toml(url, target)
    else:
        store.put_number(plan_tree(target), actor="test")


def break_it(url: str) -> None:
    """An invalid change that reaches the store anyway (a hand edit, a buggy tool)."""
    store = tel400.open_store(url)
    bad = plan_tree("13901019999")
    bad["rules"][0]["time"] = "25:00-26:00"
    if isinstance(store, tel400.FileStore):
        write_toml(url, "13901019999", "25:00-26:00")
    elif isinstance(store, SqliteStore):
        db = store._connect()
        db.execute("UPDATE plans SET body = ? WHERE number = '4001012345'", (json.dumps(bad),))
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
    else:
        store._client.hset(store._numbers_key, "4001012345", json.dumps(bad))
        store._client.incr(store._version_key)


def _follow(url, reports, stop):
    store = tel400.open_store(url)
    router = tel400.Router(store.load())
    watcher = tel400.PlanWatcher(router, store, interval_s=0.5).start()
    last = None
    while not stop.is_set():
        targets = router.route("4001012345", BJ).targets
        if targets != last:
            reports.put((os.getpid(), time.time(), targets, watcher.refusals))
            last = targets
        time.sleep(0.005)
    reports.put((os.getpid(), time.time(), "refusals", watcher.refusals))


def _wait_for(reports, pids, target, deadline_s=5.0):
    seen = {}
    end = time.monotonic() + deadline_s
    while set(seen) != pids and time.monotonic() < end:
        try:
            pid, at, targets, _ = reports.get(timeout=0.1)
        except queue.Empty:
            continue
        if targets == (target,):
            seen.setdefault(pid, at)
    return seen


def test_a_change_reaches_every_process_within_two_seconds(store_url):
    reports, stop = FORK.Queue(), FORK.Event()
    workers = [FORK.Process(target=_follow, args=(store_url, reports, stop)) for _ in range(3)]
    for w in workers:
        w.start()
    pids = {w.pid for w in workers}
    assert set(_wait_for(reports, pids, "13901010001")) == pids

    changed_at = time.time()
    change(store_url, "13901010002")
    seen = _wait_for(reports, pids, "13901010002")
    assert set(seen) == pids
    assert max(seen.values()) - changed_at < 2.0

    break_it(store_url)  # refused: everyone keeps routing by the good plans
    time.sleep(1.5)
    change(store_url, "13901010003")  # and the next good change is taken
    seen = _wait_for(reports, pids, "13901010003")
    assert set(seen) == pids
    stop.set()
    refusals = {}
    end = time.monotonic() + 10
    while len(refusals) < len(pids) and time.monotonic() < end:
        pid, _, what, count = reports.get(timeout=5)
        if what == "refusals":
            refusals[pid] = count
        else:
            assert what in {("13901010002",), ("13901010003",)}, what  # never the broken plan
    for w in workers:
        w.join(timeout=10)
    assert refusals == {pid: 1 for pid in pids}


def test_watcher_logs_a_refused_change_once(tmp_path, make_router):
    path = tmp_path / "plans.toml"
    write_toml(path, "13901010001")
    router = make_router(tel400.load_plans(path))
    watcher = tel400.PlanWatcher(router, str(path), interval_s=0)
    write_toml(path, "13901019999", "25:00-26:00")
    with structlog.testing.capture_logs() as logs:
        watcher.poll()  # a store that cannot name the change is read whole: the number keeps its entry
        assert not watcher.poll()
    refused = [e for e in logs if e["event"] == "plan_change_refused"]
    assert len(refused) == 1 and "bad time '25:00'" in refused[0]["error"]
    assert router.route("4001012345", BJ).targets == ("13901010001",)
    write_toml(path, "13901010002")
    assert watcher.poll()
    assert router.route("4001012345", BJ).targets == ("13901010002",)


def test_poll_is_throttled():
    now = [0.0]
    router = tel400.Router(tel400.PlanSet())

    class CountingStore(tel400.PlanStore):
        url = "counting"
        calls = 0

        def version(self):
            CountingStore.calls += 1
            return 1

        def load(self):
            return tel400.PlanSet()

    watcher = tel400.PlanWatcher(router, CountingStore(), interval_s=0.5, clock=lambda: now[0])
    for _ in range(100):
        watcher.poll()
    assert CountingStore.calls == 1
    now[0] = 0.6
    watcher.poll()
    assert CountingStore.calls == 2


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_writable_stores_validate_and_audit(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path}/p.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    store = tel400.open_store(url)
    store.replace_all(tel400.load_plans(EXAMPLES / "manual.toml"), actor="seed")
    assert store.numbers() == ["4001012345", "4001100868", "4001532532"]
    assert set(store.load().numbers) == set(tel400.load_plans(EXAMPLES / "manual.toml").numbers)
    version = store.version()
    bad = plan_tree("13901010001")
    bad["rules"][0]["targets"] = ["13901010001;evil"]
    with pytest.raises(tel400.PlanError, match="bad target"):
        store.put_number(bad, actor="mallory")
    assert store.version() == version  # nothing written
    store.put_number(plan_tree("13901010009", number="400-101-2345"), actor="alice")
    assert store.version() != version
    assert store.get_number("4001012345")["rules"][0]["targets"] == [{"to": "13901010009", "weight": 1}]
    assert store.delete_number("4001100868", actor="bob") and not store.delete_number("4001100868", actor="bob")
    log = store.audit()
    assert [(e["actor"], e["action"], e["number"]) for e in log[:3]] == [
        ("bob", "delete", "4001100868"), ("alice", "put", "4001012345"), ("seed", "replace_all", None)
    ]
    assert log[1]["before"]["rules"][0]["name"] == "sms-desk" and log[1]["after"]["rules"][0]["name"] == "office"
    assert [e["action"] for e in store.audit("4001012345")] == ["put"]
    store.put_settings({"blacklist": ["13800000000"]}, actor="alice")
    assert store.load().blacklist == ("13800000000",)
    with pytest.raises(tel400.PlanError):
        store.put_settings({"colour": "red"})


def test_open_store_urls(tmp_path):
    assert isinstance(tel400.open_store(EXAMPLES / "manual.toml"), tel400.FileStore)
    assert isinstance(tel400.open_store(f"file://{EXAMPLES}/manual.toml"), tel400.FileStore)
    store = tel400.open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(store, tel400.SqliteStore) and store.path == f"{tmp_path}/x.db"
    with pytest.raises(ValueError, match="unsupported"):
        tel400.open_store("ftp://example/plans")


def test_opening_a_missing_sqlite_store_for_reading_refuses(tmp_path):
    with pytest.raises(tel400.BackendError, match="no such database"):
        tel400.open_store(f"sqlite:///{tmp_path}/missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    tel400.open_store(f"sqlite:///{tmp_path}/sub/dir/new.db")  # create=True (the default): made, directory too
    assert tel400.open_store(f"sqlite:///{tmp_path}/sub/dir/new.db", create=False).load().numbers == ()


def test_store_unreachable_keeps_plans(make_router):
    router = make_router(one_number(rules=[{"targets": ["1"]}]))
    watcher = tel400.PlanWatcher(router, "redis://127.0.0.1:1/0", interval_s=0)
    with structlog.testing.capture_logs() as logs:
        assert not watcher.poll()
    assert watcher.errors == 1 and logs[0]["event"] == "plan_store_unavailable"
    assert router.route("4001012345", BJ).action == "bridge"


# -- a bad number in a store: refused on write, quarantined on load ------------------------------

from tel400 import _impl, limits  # noqa: E402

from .plans_at_bounds import plan_at_the_bounds  # noqa: E402

#: A plan an older version accepted: minutes beyond a C long (OverflowError in the compiled engine).
POISON = {"number": "4007777777", "caps": [{"metric": "minutes", "per": "day", "limit": "1e30"}],
          "default": {"action": "bridge", "targets": ["13901010001"]}}


def plant(url: str, plan: dict) -> None:
    """Write a plan straight into the store, as an older version or a hand edit would."""
    store = tel400.open_store(url)
    if isinstance(store, tel400.FileStore):
        with open(url) as fh:
            tree = json.load(fh)
        tree["numbers"].append(plan)
        with open(url, "w") as fh:
            json.dump(tree, fh)
    elif isinstance(store, SqliteStore):
        db = store._connect()
        db.execute("INSERT OR REPLACE INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, 0, 'old')",
                   (plan["number"], json.dumps(plan)))
        db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
    else:
        store._client.hset(store._numbers_key, plan["number"], json.dumps(plan))
        store._client.incr(store._version_key)


@pytest.fixture(params=["file", "sqlite", "redis"])
def two_numbers(request, tmp_path):
    """A store with a good plan for 4001012345 (bridging to 13901010001)."""
    if request.param == "file":
        url = str(tmp_path / "plans.json")
        with open(url, "w") as fh:
            json.dump({"numbers": [plan_tree("13901010001")]}, fh)
        return url
    url = f"sqlite:///{tmp_path}/plans.db" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    tel400.open_store(url).put_number(plan_tree("13901010001"), actor="test")
    return url


def test_a_store_holding_a_bad_number_loads_every_other_and_reports_it(two_numbers, make_router):
    plant(two_numbers, POISON)
    store = tel400.open_store(two_numbers)
    with structlog.testing.capture_logs() as logs:
        plans = store.load()  # before: PlanError, or OverflowError compiling; the process did not start
    assert [p.number for p in plans.numbers] == ["4001012345"]
    assert list(store.quarantined) == ["4007777777"] and "caps[0].limit" in store.quarantined["4007777777"]
    quarantined = [e for e in logs if e["event"] == "plan_quarantined"]
    assert len(quarantined) == 1 and quarantined[0]["number"] == "4007777777" and quarantined[0]["log_level"] == "error"
    router = make_router(plans)
    assert router.route("4001012345", BJ).targets == ("13901010001",)
    assert router.route("4007777777", BJ).reason == "unknown_number"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_stored_row_that_is_not_json_is_quarantined(kind, tmp_path, request, make_router):
    url = f"sqlite:///{tmp_path}/p.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    store = tel400.open_store(url)
    store.put_number(plan_tree("13901010001"), actor="test")
    if kind == "sqlite":
        store._connect().execute("INSERT INTO plans VALUES ('4007777777', '{not json', 0, 'x')")
    else:
        store._client.hset(store._numbers_key, "4007777777", "{not json")
    plans = store.load()  # before: JSONDecodeError, nothing loaded
    assert [p.number for p in plans.numbers] == ["4001012345"]
    assert "not JSON" in store.quarantined["4007777777"]
    assert store.get_number("4007777777") is None
    store.put_number({**POISON, "caps": []}, actor="fix")  # a valid plan replaces it
    assert store.load().get("4007777777") is not None and store.quarantined == {}


def test_a_number_that_goes_bad_keeps_its_last_good_plan_and_others_change(two_numbers, make_router):
    store = tel400.open_store(two_numbers)
    router = make_router(store.load())
    watcher = tel400.PlanWatcher(router, store, interval_s=0)
    bad = plan_tree("13901019999")
    bad["caps"] = POISON["caps"]
    plant(two_numbers, {**POISON, "number": "4008888888"})
    plant(two_numbers, bad)  # 4001012345 goes bad
    if isinstance(store, tel400.FileStore):  # one file: its numbers are rewritten together
        with open(two_numbers) as fh:
            tree = json.load(fh)
        tree["numbers"] = [bad, {"number": "4001100868", "rules": [{"name": "all", "targets": ["13901010005"]}]}]
        with open(two_numbers, "w") as fh:
            json.dump(tree, fh)
    else:
        store.put_number({"number": "4001100868", "rules": [{"name": "all", "targets": ["13901010005"]}]})
    with structlog.testing.capture_logs() as logs:
        assert watcher.poll()
    assert router.route("4001012345", BJ).targets == ("13901010001",)  # the last good plan
    assert router.route("4001100868", BJ).targets == ("13901010005",)  # the other change is taken
    refused = [e for e in logs if e["event"] == "plan_change_refused"]
    assert len(refused) == 1 and refused[0]["number"] == "4001012345" and watcher.refusals == 1
    assert "4001012345" in watcher.quarantined


class _CLongEngine:
    """An engine that holds cap limits in a C long, as the compiled one does, whichever is installed."""

    def __init__(self, plans, prefixes, shared):
        for plan in plans.numbers:
            for cap in plan.caps:
                if cap.limit_units >= 2**63:
                    raise OverflowError("Python int too large to convert to C long")
        self.rr_states = {}


@pytest.fixture
def lenient_validation(monkeypatch):
    """Validation that lets through what an engine cannot hold: the defence behind the bounds."""
    monkeypatch.setattr(limits, "MAX_CAP_MINUTES", 10**40)
    engine = _impl.Implementation("c-long", _CLongEngine, _impl.PYTHON.MemoryCounters, None, None, None, None)
    monkeypatch.setitem(_impl.ENGINES, "c-long", engine)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_write_no_engine_can_compile_stores_nothing(kind, tmp_path, request, lenient_validation):
    url = f"sqlite:///{tmp_path}/p.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    store = tel400.open_store(url)
    store.replace_all(tel400.load_plans(EXAMPLES / "manual.toml"), actor="seed")
    version, audit = store.version(), store.audit()
    with pytest.raises(tel400.PlanError, match="engine cannot compile this plan") as info:
        store.put_number(POISON, actor="mallory")
    assert info.value.number == "4007777777"
    with pytest.raises(tel400.PlanError, match="cannot compile"):
        store.replace_all(tel400.PlanSet.from_dict({"numbers": [POISON]}), actor="mallory")
    assert store.version() == version and store.audit() == audit and store.get_number("4007777777") is None


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_stored_size_is_bounded(kind, tmp_path, request, monkeypatch):
    url = f"sqlite:///{tmp_path}/p.db" if kind == "sqlite" else request.getfixturevalue("redis_url")
    store = tel400.open_store(url)
    store.put_number(plan_at_the_bounds(), actor="test")  # every bound at once fits
    entry = store.audit()[0]  # too large for the audit log to keep: its size and digest
    assert entry["after"]["omitted"] and entry["after"]["bytes"] > limits.MAX_AUDITED_BYTES
    assert len(entry["after"]["sha256"]) == 64
    monkeypatch.setattr(limits, "MAX_STORED_PLAN_BYTES", 100_000)
    version = store.version()
    with pytest.raises(tel400.PlanError, match="at most 100000"):
        store.put_number(plan_at_the_bounds(), actor="test")
    assert store.version() == version


def test_settings_that_would_break_a_number_are_refused_but_a_bad_number_does_not_block_them(tmp_path):
    store = tel400.open_store(f"sqlite:///{tmp_path}/p.db")
    store.put_number(plan_tree("13901010001", calendar={"workdays": ["2026-10-01"]}), actor="test")
    plant(store.url, POISON)
    store.put_settings({"blacklist": ["13800000000"]}, actor="alice")  # the bad number does not block it
    with pytest.raises(tel400.PlanError, match="4001012345"):
        store.put_settings({"calendar": {"holidays": ["2026-10-01"]}}, actor="alice")
    assert store.load().blacklist == ("13800000000",)
