"""Plan stores (file, SQLite, Redis) and the watcher that keeps routers current."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import queue
import time

import pytest
import structlog

import tel400
from tel400.stores import SqliteStore

from .conftest import EXAMPLES, one_number, refuse_compile

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
        hand_write_redis(store, "4001012345", json.dumps(bad))


def hand_write_redis(store, number: str, body: str) -> None:
    """Write one number's row behind the store's back, logging it as docs/deploy.md says a hand edit must."""
    version = store._client.incr(store._version_key)
    store._client.hset(store._numbers_key, number, body)
    store._client.zadd(store._changes_key, {number: version})


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
    # daemonic: a failed assertion below must not leave pytest waiting for them at exit
    workers = [FORK.Process(target=_follow, args=(store_url, reports, stop), daemon=True) for _ in range(3)]
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
        hand_write_redis(store, plan["number"], json.dumps(plan))


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
        store._connect().execute("INSERT INTO plans (number, body, updated_at, updated_by) "
                                 "VALUES ('4007777777', '{not json', 0, 'x')")
    else:
        hand_write_redis(store, "4007777777", "{not json")
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


# -- the change log: which numbers changed since a version ----------------------------------------

from tel400 import stores  # noqa: E402
from tel400.stores import Changes  # noqa: E402


def numbered(number: str, target: str = "13901010001") -> dict:
    return {"number": number, "rules": [{"name": "office", "targets": [target]}]}


@pytest.fixture(params=["sqlite", "redis"])
def writable(request, tmp_path):
    url = f"sqlite:///{tmp_path}/p.db" if request.param == "sqlite" else request.getfixturevalue("redis_url")
    return tel400.open_store(url)


def test_changes_since_names_the_numbers_added_changed_and_deleted(writable):
    for n in ("4001000001", "4001000002", "4001000003"):
        writable.put_number(numbered(n), actor="test")
    start = writable.version()
    assert writable.changes_since(start) == Changes(start)
    assert writable.changes_since(None).everything
    writable.put_number(numbered("4001000001", "13901010002"), actor="test")  # changed
    writable.put_number(numbered("4001000004"), actor="test")  # added
    writable.delete_number("4001000002", actor="test")  # deleted
    changes = writable.changes_since(start)
    assert changes == Changes(writable.version(), frozenset({"4001000001", "4001000002", "4001000004"}))
    assert writable.changes_since(changes.version) == Changes(changes.version)
    assert writable.load_number("4001000002") is None  # what a reader does with a deleted one
    assert writable.load_number("400-100-0001").rules[0].action.targets[0].to == "13901010002"
    middle = writable.version()
    writable.put_number(numbered("4001000002"), actor="test")  # back again
    assert writable.changes_since(middle).numbers == {"4001000002"}
    assert writable.changes_since(start).numbers == {"4001000001", "4001000002", "4001000004"}
    assert writable.changes_since(writable.version() + 1).everything  # a version this store never had
    assert writable.changes_since((1, 2, 3)).everything  # nor of its kind


def test_a_settings_change_tells_older_readers_to_read_everything(writable):
    writable.put_number(numbered("4001000001"), actor="test")
    before = writable.version()
    writable.put_settings({"blacklist": ["13800000000"]}, actor="test")
    assert writable.changes_since(before).everything
    after = writable.version()
    writable.put_number(numbered("4001000002"), actor="test")
    assert writable.changes_since(after) == Changes(writable.version(), frozenset({"4001000002"}))
    assert writable.settings().blacklist == ("13800000000",) and writable.settings().numbers == ()


def test_the_change_log_is_bounded_and_a_reader_behind_it_reads_everything(writable, monkeypatch):
    monkeypatch.setattr(limits, "CHANGE_LOG_VERSIONS", 5)
    writable.put_number(numbered("4001000000"), actor="test")
    old = writable.version()
    for i in range(1, 9):  # 8 changes, 4 of them deletes: more than the log keeps
        writable.put_number(numbered(f"400100{i:04d}"), actor="test")
        if i % 2:
            writable.delete_number(f"400100{i:04d}", actor="test")
    assert writable.changes_since(old).everything  # 16 versions behind a log of 5
    recent = writable.version() - 5
    assert not writable.changes_since(recent).everything
    # versions 9-13: 5 deleted, 6 put, 7 put and deleted, 8 put
    assert writable.changes_since(recent).numbers == {"4001000005", "4001000006", "4001000007", "4001000008"}
    if isinstance(writable, SqliteStore):
        kept = writable._read("SELECT COUNT(*) FROM deleted")[0][0]
    else:
        kept = writable._client.zcard(writable._changes_key)
    assert kept <= 5


def test_a_row_written_behind_the_sqlite_store_is_named_too(tmp_path):
    """An older tel400 (or a hand edit) writes rows without the version column; triggers stamp them."""
    store = tel400.open_store(f"sqlite:///{tmp_path}/p.db")
    store.put_number(numbered("4001000001"), actor="test")
    store.put_number(numbered("4001000002"), actor="test")
    start = store.version()
    db = store._connect()
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, 0, 'old') "
               "ON CONFLICT(number) DO UPDATE SET body = excluded.body",
               ("4001000001", json.dumps(numbered("4001000001", "13901019999"))))
    db.execute("INSERT INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, 0, 'old')",
               ("4001000003", json.dumps(numbered("4001000003"))))
    db.execute("DELETE FROM plans WHERE number = '4001000002'")
    db.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
    db.execute("COMMIT")
    assert store.changes_since(start).numbers == {"4001000001", "4001000002", "4001000003"}


def test_file_store_names_the_numbers_whose_tables_changed(tmp_path):
    path = tmp_path / "plans.json"

    def write(tree):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            json.dump(tree, fh)
        os.replace(tmp, path)

    write({"numbers": [numbered("4001000001"), numbered("4001000002"), numbered("4001000003")]})
    store = tel400.open_store(path)
    first = store.changes_since(None)
    assert first.everything and store.count() == 3
    assert store.changes_since(first.version) == Changes(first.version)
    write({"numbers": [numbered("4001000001"), numbered("4001000002", "13901010002"), numbered("4001000004")]})
    second = store.changes_since(first.version)
    assert second == Changes(store.version(), frozenset({"4001000002", "4001000003", "4001000004"}))
    assert store.load_number("4001000002").rules[0].action.targets[0].to == "13901010002"
    assert store.load_number("4001000003") is None
    write({"blacklist": ["13800000000"], "numbers": [numbered("4001000001")]})
    assert store.changes_since(second.version).everything  # the settings changed
    assert store.settings().blacklist == ("13800000000",)
    assert tel400.open_store(path).changes_since(second.version).everything  # no earlier parse to compare with


def test_iter_plans_streams_every_valid_number_and_quarantines_the_rest(writable):
    for i in range(7):
        writable.put_number(numbered(f"400100{i:04d}"), actor="test")
    plant(writable.url, POISON)
    batches = list(writable.iter_plans(batch=3))
    assert all(1 <= len(b) <= 3 for b in batches)
    assert sorted(p.number for b in batches for p in b) == [f"400100{i:04d}" for i in range(7)]
    assert list(writable.quarantined) == ["4007777777"] and writable.count() == 8
    with pytest.raises(tel400.PlanError, match="caps"):
        writable.load_number("4007777777")
    assert [p.number for p in writable.load().numbers] == [f"400100{i:04d}" for i in range(7)]


# -- one number read and written, whatever the store holds -----------------------------------------


def _seed_many(store, n: int) -> None:
    settings_and_numbers = ((f"seed[{i}]", numbered(f"400{i:07d}")) for i in range(n))
    store.import_numbers({}, settings_and_numbers, actor="seed")


def test_sqlite_one_number_operations_read_one_row(tmp_path):
    store = tel400.open_store(f"sqlite:///{tmp_path}/p.db")
    _seed_many(store, 10_000)
    statements: list[str] = []
    store._connect().set_trace_callback(statements.append)
    store.put_number(numbered("4000000005", "13901010002"), actor="test")
    assert store.get_number("4000000005")["rules"][0]["targets"][0]["to"] == "13901010002"
    assert store.load_number("4000000006").number == "4000000006"
    assert store.delete_number("4000000007", actor="test")
    assert store.changes_since(store.version() - 2).numbers == {"4000000005", "4000000007"}
    reads_of_plans = [s for s in statements if "FROM plans" in s]
    # before: every put/get/delete read all 10,000 rows ("SELECT number, body FROM plans")
    assert reads_of_plans and all("WHERE number = " in s or "WHERE version > " in s for s in reads_of_plans), \
        reads_of_plans
    assert store.count() == 9_999


def test_redis_one_number_operations_read_one_field(redis_url):
    store = tel400.open_store(redis_url)
    _seed_many(store, 10_000)

    def whole_hash_reads():
        stats = store._client.info("commandstats")
        return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("hgetall", "hscan", "hkeys", "hvals")}

    before = whole_hash_reads()
    store.put_number(numbered("4000000005", "13901010002"), actor="test")
    assert store.get_number("4000000005")["rules"][0]["targets"][0]["to"] == "13901010002"
    assert store.load_number("4000000006").number == "4000000006"
    assert store.delete_number("4000000007", actor="test")
    assert store.changes_since(store.version() - 2).numbers == {"4000000005", "4000000007"}
    assert whole_hash_reads() == before  # before: HGETALL of all 10,000 for each
    assert store.count() == 9_999


def test_redis_keys_share_one_hash_tag(redis_url):
    store = tel400.open_store(redis_url)
    store.put_number(numbered("4001000001"), actor="test")
    store.put_settings({"blacklist": ["13800000000"]}, actor="test")
    store.delete_number("4001000001", actor="test")
    keys = store._client.keys("*")
    assert keys and all("{plans}" in k for k in keys), keys  # one slot on a cluster


# -- stores written by the layout before the change log --------------------------------------------

_OLD_SQLITE_SCHEMA = """
CREATE TABLE plans (number TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at REAL NOT NULL, updated_by TEXT NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
                    action TEXT NOT NULL, number TEXT, before TEXT, after TEXT);
INSERT INTO meta VALUES ('version', 7);
INSERT INTO settings VALUES ('blacklist', '["13800000000"]');
"""


def test_a_sqlite_store_of_the_earlier_layout_is_migrated_on_open(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SQLITE_SCHEMA)
    db.execute("INSERT INTO plans VALUES (?, ?, 0, 'old')", ("4001000001", json.dumps(numbered("4001000001"))))
    db.execute("INSERT INTO audit (at, actor, action, number) VALUES (0, 'old', 'put', '4001000001')")
    db.commit()
    db.close()
    store = tel400.open_store(f"sqlite:///{path}", create=False)
    assert store.version() == 7 and [p.number for p in store.load().numbers] == ["4001000001"]
    assert store.load().blacklist == ("13800000000",)
    assert store.changes_since(6).everything and store.changes_since(7) == Changes(7)
    store.put_number(numbered("4001000002"), actor="new")
    assert store.changes_since(7) == Changes(8, frozenset({"4001000002"}))
    assert [e["actor"] for e in store.audit()] == ["new", "old"]
    assert tel400.open_store(f"sqlite:///{path}").changes_since(7).numbers == {"4001000002"}  # opened again: as is


def test_a_redis_store_of_the_earlier_layout_is_adopted_at_first_use(redis_url):
    import redis

    old = redis.Redis.from_url(redis_url, decode_responses=True)
    old.hset("tel400:plans:numbers", "4001000001", json.dumps(numbered("4001000001")))
    old.set("tel400:plans:settings", json.dumps({"blacklist": ["13800000000"]}))
    old.set("tel400:plans:version", 7)
    old.rpush("tel400:plans:audit", json.dumps({"at": 0, "actor": "old", "action": "put", "number": "4001000001",
                                                "before": None, "after": None}))
    store = tel400.open_store(redis_url)
    assert store.version() == 7 and [p.number for p in store.load().numbers] == ["4001000001"]
    assert store.load().blacklist == ("13800000000",)
    assert store.changes_since(6).everything and store.changes_since(7) == Changes(7)
    store.put_number(numbered("4001000002"), actor="new")
    assert store.changes_since(7) == Changes(8, frozenset({"4001000002"}))
    assert [e["actor"] for e in store.audit()] == ["new", "old"]
    again = tel400.open_store(redis_url)  # a second process: adopts nothing twice
    assert again.version() == 8 and again.count() == 2
    old.close()


# -- bulk import: JSON Lines -------------------------------------------------------------------------


def write_jsonl(path, lines) -> None:
    with open(path, "w") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def test_jsonl_import_streams_settings_and_numbers(writable, tmp_path):
    path = tmp_path / "plans.jsonl"
    write_jsonl(path, [{"settings": {"blacklist": ["13800000000"]}}]
                + [numbered(f"400200{i:04d}") for i in range(12)] + [""])
    writable.put_number(numbered("4001000001"), actor="old")  # replaced: the import is everything
    assert stores.import_jsonl(writable, path, actor="bulk", workers=2) == 12
    assert writable.count() == 12 and writable.get_number("4001000001") is None
    assert writable.settings().blacklist == ("13800000000",)
    assert writable.audit()[0]["action"] == "replace_all" and writable.audit()[0]["after"]["numbers"] == 12
    assert writable.changes_since(writable.version() - 1).everything


@pytest.mark.parametrize("workers", [1, 2])
def test_jsonl_import_reports_every_bad_line_and_writes_nothing(writable, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(stores, "IMPORT_BATCH", 3)  # a duplicate across batches, too
    writable.put_number(numbered("4001000001"), actor="old")
    version, audit = writable.version(), writable.audit()
    path = tmp_path / "plans.jsonl"
    bad_time = numbered("4002000003")
    bad_time["rules"][0]["time"] = "25:00-26:00"
    write_jsonl(path, [numbered("4002000001"), numbered("4002000002"), "{not json", bad_time,
                       numbered("4002000005"), numbered("4002000001"), numbered("4002000006")])
    with pytest.raises(tel400.PlanError) as info:
        stores.import_jsonl(writable, path, actor="bulk", workers=workers)
    text = str(info.value)
    assert text.startswith("3 numbers refused, nothing imported")
    assert f"{path} line 3: not JSON" in text
    assert f"{path} line 4: number 4002000003: rule 'office': field 'time'" in text
    assert f"{path} line 6: number 4002000001: duplicate number" in text
    assert len(info.value.problems) == 3
    assert writable.version() == version and writable.audit() == audit
    assert writable.numbers() == ["4001000001"]


def test_jsonl_import_of_valid_lines_refuses_a_number_given_again_in_a_later_batch(writable, tmp_path, monkeypatch):
    """The only refusal a duplicate across batches (found when its batch is written): nothing written."""
    monkeypatch.setattr(stores, "IMPORT_BATCH", 2)
    writable.put_number(numbered("4001000001"), actor="old")
    version = writable.version()
    path = tmp_path / "plans.jsonl"
    write_jsonl(path, [numbered("4002000001"), numbered("4002000002"), numbered("4002000003"),
                       numbered("4002000002"), numbered("4002000004"), numbered("4002000001")])
    with pytest.raises(tel400.PlanError) as info:
        stores.import_jsonl(writable, path, actor="bulk")
    assert str(info.value).startswith("2 numbers refused, nothing imported")
    assert [(p.source, p.number) for p in info.value.problems] == \
           [(f"{path} line 4", "4002000002"), (f"{path} line 6", "4002000001")]
    assert writable.version() == version and writable.numbers() == ["4001000001"]
    write_jsonl(path, [numbered(f"400200000{i}") for i in range(1, 6)])
    assert stores.import_jsonl(writable, path, actor="bulk") == 5
    assert writable.numbers() == [f"400200000{i}" for i in range(1, 6)]


def test_jsonl_export_reads_back(writable, tmp_path):
    import io

    writable.import_numbers({"blacklist": ["13800000000"]},
                            ((f"t[{i}]", numbered(f"400300{i:04d}")) for i in range(5)), actor="seed")
    out = io.StringIO()
    assert writable.export_jsonl(out) == 5
    path = tmp_path / "copy.jsonl"
    path.write_text(out.getvalue())
    copy = tel400.open_store(f"sqlite:///{tmp_path}/copy.db")
    assert stores.import_jsonl(copy, path) == 5
    assert copy.load() == writable.load()


def test_opening_a_sqlite_store_does_not_wait_for_a_writer(tmp_path):
    """A router starting while an import holds the write lock (minutes for a million numbers) opens at once."""
    import sqlite3

    url = f"sqlite:///{tmp_path}/p.db"
    tel400.open_store(url).put_number(numbered("4001000001"), actor="test")
    writer = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        reader = tel400.open_store(url, create=False)  # before: "database is locked" after busy_timeout
        assert reader.load_number("4001000001").number == "4001000001"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# -- what a store reports and what the router routes agree -----------------------------------------

def test_a_number_no_engine_can_compile_is_reported_with_the_invalid_ones(writable, impl, monkeypatch):
    for number in ("4001000001", "4001000002"):
        writable.put_number(numbered(number), actor="test")
    plant(writable.url, POISON)
    refuse_compile(monkeypatch, "4001000002")
    router = tel400.Router.from_store(writable, implementation=impl.name)
    # before: the store's own report at the end of iter_plans replaced the compile failure
    assert sorted(writable.quarantined) == ["4001000002", "4007777777"]
    assert "cannot compile" in writable.quarantined["4001000002"]
    assert router.routed_numbers() == ["4001000001"]


def test_a_full_reload_keeps_the_last_good_entry_of_a_number_no_engine_can_compile(writable, impl, monkeypatch):
    for number in ("4001000001", "4001000002"):
        writable.put_number(numbered(number), actor="test")
    router = tel400.Router.from_store(writable, implementation=impl.name)
    watcher = tel400.PlanWatcher(router, writable, interval_s=0)
    writable.put_settings({"blacklist": ["13800000000"]}, actor="test")  # the settings: everything again
    refuse_compile(monkeypatch, "4001000002")
    assert watcher.poll() and watcher.applied is None
    assert router.route("4001000002", BJ).targets == ("13901010001",)  # its last good plan
    assert "4001000002" in watcher.quarantined


def test_a_redis_load_keeps_no_set_of_the_numbers_seen(redis_url, monkeypatch):
    """HSCAN may give a number twice (a rehash): a streamed load puts it twice rather than remember them all."""
    store = tel400.open_store(redis_url)
    for number in ("4001000001", "4001000002"):
        store.put_number(numbered(number), actor="test")
    client = store._client
    real = client.hscan
    pages = iter([(7, {"4001000001": client.hget(store._numbers_key, "4001000001")}), None])

    def hscan(key, cursor=0, match=None, count=None):  # the first page comes again in the second
        page = next(pages)
        return page if page is not None else real(key, 0, match, count)

    monkeypatch.setattr(client, "hscan", hscan)
    streamed = [p.number for b in store.iter_plans() for p in b]
    assert sorted(streamed) == ["4001000001", "4001000001", "4001000002"]  # before: a set removed the repeat
    pages = iter([(7, {"4001000001": client.hget(store._numbers_key, "4001000001")}), None])
    assert [p.number for p in store.load().numbers] == ["4001000001", "4001000002"]
    pages = iter([(7, {"4001000001": client.hget(store._numbers_key, "4001000001")}), None])
    out = io.StringIO()
    assert store.export_jsonl(out) == 2  # an export names each number once


def _write_json(path, tree) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(tree, fh)
    os.replace(tmp, path)


def test_a_file_table_without_a_number_going_away_never_makes_poll_raise(tmp_path, make_router, impl):
    path = tmp_path / "plans.json"
    bad = {"number": "12", "rules": [{"name": "office", "targets": ["13901010001"]}]}
    _write_json(path, {"numbers": [numbered("4001000001"), bad]})
    store = tel400.open_store(path)
    router = tel400.Router.from_store(store, implementation=impl.name)
    watcher = tel400.PlanWatcher(router, store, interval_s=0)
    assert list(watcher.quarantined) == ["numbers[1]"]
    _write_json(path, {"numbers": [numbered("4001000001"), bad]})
    watcher.poll()  # the same tables: a parse to compare the next change with
    _write_json(path, {"numbers": [numbered("4001000001", "13901010002")]})  # the bad table fixed away
    assert watcher.poll()  # before: NumberError out of poll, at every poll
    assert router.route("4001000001", BJ).targets == ("13901010002",)
    assert watcher.quarantined == {}


def test_a_file_number_given_twice_is_refused_as_a_whole_at_start_and_by_the_watcher(tmp_path, impl):
    path = tmp_path / "plans.json"
    one, other = numbered("4001000001"), numbered("4001000002")
    twice = [numbered("4001000002", "13901010002"), numbered("400-100-0002", "13901010003")]
    _write_json(path, {"numbers": [one, *twice]})
    cold_store = tel400.open_store(path)
    cold = tel400.Router.from_store(cold_store, implementation=impl.name)
    assert cold.routed_numbers() == ["4001000001"]  # before: routed by its first table, yet quarantined
    assert "duplicate number" in cold_store.quarantined["4001000002"]
    _write_json(path, {"numbers": [one, other]})
    store = tel400.open_store(path)
    router = tel400.Router.from_store(store, implementation=impl.name)
    watcher = tel400.PlanWatcher(router, store, interval_s=0)
    _write_json(path, {"numbers": [one, other]})
    watcher.poll()  # the same tables: a parse to compare the next change with
    _write_json(path, {"numbers": [one, *twice]})
    watcher.poll()  # 4001000002 named changed, read alone
    assert router.route("4001000002", BJ).targets == ("13901010001",)  # its last good plan, as a full reload keeps
    assert "duplicate number" in watcher.quarantined["4001000002"]


@pytest.mark.parametrize("body", [
    '{"a": 1, "a": 2}', '{"x": NaN}', '[1e400]', '{"n": 123456789012345678901234567890}', '"\\ud800"',
    '{"a": 1.5, "b": [true, null, "\\u4e2d"]}',
])
def test_a_stored_row_reads_as_json_loads_reads_it(body):
    # Rows are decoded with msgspec (faster) and json.loads where msgspec refuses:
    # whatever the row, the tree validation sees is json.loads's.
    from tel400.stores import _decoded

    assert repr(_decoded(body)) == repr(json.loads(body))


def test_a_stored_row_that_is_not_json_is_unreadable():
    from tel400.stores import _decoded, _Unreadable

    assert isinstance(_decoded("{not json"), _Unreadable)


DEEP = "[" * 3000 + "]" * 3000  # past every JSON decoder's nesting limit


@pytest.mark.parametrize("workers", [1, 2])
def test_jsonl_import_reports_a_line_nested_too_deeply_with_the_others(writable, tmp_path, workers):
    """msgspec refuses deep nesting with RecursionError, not DecodeError: still one refusal among the others."""
    path = tmp_path / "plans.jsonl"
    no_rules = {"number": "4002000003", "rules": 5}
    write_jsonl(path, [numbered("4002000001"), '{"number": "4002000002", "x": ' + DEEP + "}", no_rules])
    with pytest.raises(tel400.PlanError) as info:
        stores.import_jsonl(writable, path, actor="bulk", workers=workers)
    text = str(info.value)
    assert text.startswith("2 numbers refused, nothing imported")
    assert f"{path} line 2: nested too deeply to be a plan" in text
    assert f"{path} line 3: number 4002000003" in text
    assert writable.numbers() == []


def test_import_of_text_lines_reports_a_lone_surrogate_with_the_others(writable):
    """A text table handed to import_numbers (not read from a UTF-8 file) may hold a lone surrogate."""
    bad_name = numbered("4002000001")
    bad_name["rules"][0]["name"] = "\ud800"
    lines = [("t[1]", json.dumps(bad_name, ensure_ascii=False)), ("t[2]", '{"number": "4002000002", "rules": 5}')]
    with pytest.raises(tel400.PlanError) as info:
        writable.import_numbers({}, iter(lines), actor="bulk")
    assert str(info.value).startswith("2 numbers refused, nothing imported")
    assert writable.numbers() == []


def test_a_stored_row_nested_too_deeply_is_quarantined(tmp_path):
    store = tel400.open_store(f"sqlite:///{tmp_path}/p.db")
    store.put_number(plan_tree("13901010001"), actor="test")
    store._connect().execute("INSERT INTO plans (number, body, updated_at, updated_by) VALUES (?, ?, 0, 'x')",
                             ("4007777777", DEEP))
    plans = store.load()  # before: RecursionError, nothing loaded
    assert [p.number for p in plans.numbers] == ["4001012345"]
    assert "4007777777" in store.quarantined


def test_one_numbers_churn_never_drops_another_numbers_audit(writable, monkeypatch):
    """The audit keeps the newest AUDIT_PER_NUMBER entries of each number: a company changing its own
    plan all day cannot flush what happened to the others."""
    monkeypatch.setattr(tel400.stores, "AUDIT_PER_NUMBER", 5)
    monkeypatch.setattr(tel400.stores, "AUDIT_LIMIT", 8)  # the store-wide view: newest first, at most this
    writable.put_number(plan_tree("13901010001", number="4007000001"), actor="quiet")
    for n in range(20):
        writable.put_number(plan_tree(f"139010100{n:02d}", number="4007000002"), actor=f"busy-{n}")
    assert [e["actor"] for e in writable.audit("4007000001")] == ["quiet"]
    busy = writable.audit("4007000002", limit=100)
    assert [e["actor"] for e in busy] == [f"busy-{n}" for n in range(19, 14, -1)]
    assert len(writable.audit(limit=100)) <= 8
