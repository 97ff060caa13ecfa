"""One number at a time: Router.update, Router.from_store, and the watcher that applies single changes."""

from __future__ import annotations

import gc
import time
import weakref

import pytest
import structlog

import tel400
from tel400.compiler import Compiler
from tel400.plans import validate_number, validate_settings
from tel400.stores import Changes, PlanStore

from .conftest import at, one_number, refuse_compile

BJ = "13901012345"
TUESDAY_10 = at(2026, 11, 24, 10)


def bridge(*targets, name="all", **extra):
    return {"name": name, "targets": list(targets), **extra}


def tree_of(number: str, target: str, **extra) -> dict:
    return {"number": number, "rules": [bridge(target)], **extra}


class DictStore(PlanStore):
    """A store with a change log, answering the one-number reads of the store interface, counting them."""

    url = "dict://test"

    def __init__(self, trees: dict[str, dict] | None = None, settings: dict | None = None) -> None:
        self.trees = dict(trees or {})
        self.settings_tree = dict(settings or {})
        self._version = 1
        self.log: list[tuple[int, str | None]] = []  # (version, number or None: the settings)
        self.quarantined = {}
        self.reads = {"load": 0, "load_number": 0, "iter_plans": 0, "settings": 0}
        self.yielded: list[weakref.ref] = []
        self.alive_at_batches: list[int] = []

    # writes, as an admin API would make them
    def put(self, tree: dict) -> None:
        self.trees[tree["number"]] = tree
        self._bump(tree["number"])

    def delete(self, number: str) -> None:
        del self.trees[number]
        self._bump(number)

    def put_settings(self, settings: dict) -> None:
        self.settings_tree = settings
        self._bump(None)

    def _bump(self, number) -> None:
        self._version += 1
        self.log.append((self._version, number))

    # the store interface
    def version(self):
        return self._version

    def changes_since(self, version):
        if version is None or version < self._version - len(self.log):
            return Changes(self._version, everything=True)
        changed = [number for v, number in self.log if v > version]
        if None in changed:
            return Changes(self._version, everything=True)
        return Changes(self._version, frozenset(changed))

    def settings(self):
        self.reads["settings"] += 1
        return validate_settings(self.settings_tree, source=self.url)

    def load_number(self, number):
        self.reads["load_number"] += 1
        tree = self.trees.get(number)
        return None if tree is None else validate_number(tree, self.settings(), source=self.url)

    def iter_plans(self, *, batch=1000):
        self.reads["iter_plans"] += 1
        settings = self.settings()
        numbers = sorted(self.trees)
        refused = {}
        for start in range(0, len(numbers), batch):
            plans = []
            self.alive_at_batches.append(sum(ref() is not None for ref in self.yielded))
            for number in numbers[start:start + batch]:
                try:
                    plans.append(validate_number(self.trees[number], settings, source=self.url))
                except tel400.PlanError as exc:
                    refused[number] = exc
            self.yielded.extend(weakref.ref(plan) for plan in plans)
            yield plans
        self._quarantine(refused)

    def load(self):
        self.reads["load"] += 1
        return tel400.PlanSet.from_dict({**self.settings_tree, "numbers": list(self.trees.values())})


def many(count: int) -> dict[str, dict]:
    return {f"400{i:07d}": tree_of(f"400{i:07d}", f"1390101{i % 10000:04d}") for i in range(count)}


@pytest.fixture
def from_store(impl):
    def make(store, **kwargs):
        return tel400.Router.from_store(store, implementation=impl.name, **kwargs)

    return make


@pytest.fixture
def compiles(monkeypatch):
    """Numbers compiled, counted where both engines compile one number (the shared compiler)."""
    seen: list[str] = []
    real = Compiler.compile

    def counting(self, plan, **kwargs):
        seen.append(plan.number)
        return real(self, plan, **kwargs)

    monkeypatch.setattr(Compiler, "compile", counting)
    return seen


# -- Router.update -------------------------------------------------------------------------------


def test_update_replaces_one_number_and_leaves_the_others_alone(make_router):
    plans = tel400.PlanSet.from_dict({"numbers": [
        tree_of("4001012345", "13901010001"),
        {"number": "4007654321", "rules": [bridge("02150001000", "02150002000", strategy="round_robin")],
         "caps": [{"metric": "calls", "per": "day", "limit": 3}]},
    ]})
    router = make_router(plans)
    first = [router.route("4007654321", BJ, at=TUESDAY_10).targets[0] for _ in range(2)]
    changed = validate_number(tree_of("4001012345", "13901010002"), router.settings)
    router.update([changed])
    assert router.route("4001012345", BJ, at=TUESDAY_10).targets == ("13901010002",)
    third = router.route("4007654321", BJ, at=TUESDAY_10)
    assert [*first, third.targets[0]] == ["02150001000", "02150002000", "02150001000"]  # round robin went on
    assert router.route("4007654321", BJ, at=TUESDAY_10).reason == "cap_exceeded"  # the count went on
    assert router.plan_of("400-101-2345") == changed and router.plans.get("4001012345") == changed
    assert router.number_count == 2 and router.reloads == 0


def test_update_adds_and_removes_numbers(make_router):
    router = make_router(one_number(rules=[bridge("13901010001")]))
    added = validate_number(tree_of("4007654321", "13901010005"), router.settings)
    router.update([added], removed=["400-101-2345"])
    assert router.route("4001012345", BJ).reason == "unknown_number"
    assert router.route("4007654321", BJ).targets == ("13901010005",)
    assert router.plan_of("4001012345") is None and [p.number for p in router.plans.numbers] == ["4007654321"]
    router.update(removed=["4009999999"])  # a number it never had: nothing happens
    assert router.number_count == 1


def test_update_compiles_every_plan_before_changing_any(make_router, monkeypatch):
    router = make_router({"numbers": [tree_of("4001012345", "13901010001"), tree_of("4007654321", "13901010002")]})
    good = validate_number(tree_of("4001012345", "13901019999"), router.settings)
    bad = validate_number(tree_of("4007654321", "13901018888"), router.settings)
    refuse_compile(monkeypatch, "4007654321", ValueError("cannot compile this one"))
    with pytest.raises(tel400.PlanError, match="cannot compile this plan") as info:
        router.update([good, bad])
    assert info.value.number == "4007654321"
    assert router.route("4001012345", BJ).targets == ("13901010001",)  # compiled, then put back
    assert router.route("4007654321", BJ).targets == ("13901010002",)
    assert router.plan_of("4001012345").rules[0].action.targets[0].to == "13901010001"


def test_update_refuses_what_is_not_a_plan(make_router):
    router = make_router(one_number(rules=[bridge("1")]))
    with pytest.raises(TypeError, match="NumberPlan"):
        router.update([one_number()])
    assert router.route("4001012345", BJ).action == "bridge"


# -- Router.from_store ---------------------------------------------------------------------------


def test_from_store_routes_like_a_router_given_the_whole_plan_set(from_store, make_router):
    store = DictStore(many(50), settings={"blacklist": ["13800000000"]})
    router = from_store(store)
    whole = make_router(store.load())
    for i in range(0, 50, 7):
        number = f"400{i:07d}"
        assert router.route(number, BJ, at=TUESDAY_10) == whole.route(number, BJ, at=TUESDAY_10)
    assert router.route("4000000001", "13800000000").reason == "blacklisted"
    assert router.plans_version == 1 and router.number_count == 50
    assert router.plans == whole.plans  # read back from the store: O(numbers)
    assert router.plan_of("4000000003") == whole.plans.get("4000000003")


def test_from_store_never_holds_every_plan(from_store, impl):
    store = DictStore(many(250))
    from tel400 import router as router_module

    old = router_module.STREAM_BATCH
    router_module.STREAM_BATCH = 100
    try:
        router = from_store(store)
    finally:
        router_module.STREAM_BATCH = old
    assert store.alive_at_batches == [0, 0, 0]  # each batch gone before the next is read
    assert sum(ref() is not None for ref in store.yielded) == 0  # and none kept by the router
    assert store.reads["load"] == 0 and store.reads["load_number"] == 0
    assert router.route("4000000249", BJ).action == "bridge"


def test_from_store_reports_a_bad_number_and_routes_the_others(from_store):
    trees = many(3)
    trees["4000000001"] = {**trees["4000000001"], "rules": [bridge("13901010001", time="25:00-26:00")]}
    store = DictStore(trees)
    with structlog.testing.capture_logs() as logs:
        router = from_store(store)
    assert router.route("4000000000", BJ).action == "bridge"
    assert router.route("4000000001", BJ).reason == "unknown_number"
    assert list(store.quarantined) == ["4000000001"]
    assert [e["number"] for e in logs if e["event"] == "plan_quarantined"] == ["4000000001"]


def test_explain_reads_the_plan_back_from_the_store(from_store):
    store = DictStore(many(3))
    router = from_store(store)
    decision = router.explain("4000000002", BJ)
    assert decision.targets == ("13901010002",) and decision.explain[0].passed
    assert router.route("4000000002", BJ, explain=True).explain is not None


def test_a_load_freezes_the_tables_out_of_the_cyclic_gc(from_store, make_router):
    big = tel400.router.FREEZE_EVERY
    gc.unfreeze()
    from_store(DictStore(many(big)))
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    router = make_router(one_number(rules=[bridge("1")]))
    gc.unfreeze()
    router.reload(tel400.PlanSet.from_dict({"numbers": list(many(big).values())}))
    assert gc.get_freeze_count() > 0


def test_a_small_load_leaves_the_collector_alone(from_store, make_router):
    # An application's few numbers (and every test) must not freeze its
    # objects: what is frozen is never collected if it becomes cyclic garbage.
    gc.unfreeze()
    from_store(DictStore(many(tel400.router.FREEZE_EVERY - 1)))
    router = make_router(one_number(rules=[bridge("1")]))
    router.reload(tel400.PlanSet.from_dict(one_number(rules=[bridge("2")])))
    assert gc.get_freeze_count() == 0


def test_from_store_opens_a_url(tmp_path, impl):
    url = f"sqlite:///{tmp_path}/p.db"
    tel400.open_store(url).put_number(tree_of("4001012345", "13901010001"), actor="test")
    router = tel400.Router.from_store(url, implementation=impl.name)
    assert router.route("4001012345", BJ).targets == ("13901010001",)
    assert router.plan_of("4001012345").number == "4001012345"


# -- the watcher applies single numbers ----------------------------------------------------------


def test_a_one_number_edit_costs_one_read_and_one_compile(from_store, compiles):
    """With 1,000 numbers, one edit makes the watcher read one number and compile one: not the set."""
    store = DictStore(many(1000))
    router = from_store(store)
    watcher = tel400.PlanWatcher(router, store, interval_s=0, version=router.plans_version)
    assert len(compiles) == 1000
    compiles.clear()
    store.reads = dict.fromkeys(store.reads, 0)
    store.put(tree_of("4000000500", "13901019999"))
    assert watcher.poll()
    assert compiles == ["4000000500"]
    assert store.reads["load_number"] == 1 and store.reads["iter_plans"] == 0 and store.reads["load"] == 0
    assert router.route("4000000500", BJ).targets == ("13901019999",)
    assert router.route("4000000501", BJ).targets == ("13901010501",)
    assert not watcher.poll() and compiles == ["4000000500"]  # nothing changed since


def test_the_watcher_applies_a_deletion_and_an_addition(from_store):
    store = DictStore(many(3))
    router = from_store(store)
    watcher = tel400.PlanWatcher(router, store, interval_s=0, version=router.plans_version)
    store.delete("4000000001")
    store.put(tree_of("4001100868", "13901010005"))
    assert watcher.poll()
    assert router.route("4000000001", BJ).reason == "unknown_number"
    assert router.route("4001100868", BJ).targets == ("13901010005",)
    assert router.number_count == 3 and watcher.reloads == 1


def test_a_number_that_goes_bad_keeps_its_entry_and_is_refused_once(from_store, make_router):
    store = DictStore(many(3))
    for router in (from_store(store), make_router(store.load())):
        watcher = tel400.PlanWatcher(router, store, interval_s=0, version=store.version())
        store.put({**tree_of("4000000001", "13901019999"), "rules": [bridge("13901019999", time="25:00-26:00")]})
        store.put(tree_of("4000000002", "13901010007"))
        with structlog.testing.capture_logs() as logs:
            assert watcher.poll()
            assert not watcher.poll()
        assert router.route("4000000001", BJ).targets == ("13901010001",)  # its last good plan
        assert router.route("4000000002", BJ).targets == ("13901010007",)  # the other change is taken
        refused = [e for e in logs if e["event"] == "plan_change_refused"]
        assert [e["number"] for e in refused] == ["4000000001"] and watcher.refusals == 1
        assert "4000000001" in watcher.quarantined
        store.put(tree_of("4000000001", "13901010008"))  # fixed: taken, and no longer quarantined
        assert watcher.poll()
        assert router.route("4000000001", BJ).targets == ("13901010008",)
        assert "4000000001" not in watcher.quarantined
        store.put(tree_of("4000000001", "13901010001"))
        store.put(tree_of("4000000002", "13901010002"))


def test_a_settings_change_reloads_everything_streamed(from_store, make_router):
    store = DictStore(many(3))
    router = make_router(store.load())
    watcher = tel400.PlanWatcher(router, store, interval_s=0, version=store.version())
    store.put_settings({"blacklist": ["13901012345"]})
    assert watcher.poll()
    assert router.route("4000000001", BJ).reason == "blacklisted"
    assert store.reads["iter_plans"] == 1 and store.reads["load"] == 1  # the one load made the router above
    assert router.plans_version == store.version() and router.reloads == 1
    assert router.plan_of("4000000002").number == "4000000002"  # now read back from the store


def test_a_full_reload_keeps_the_last_good_entry_of_a_number_gone_bad(from_store):
    store = DictStore(many(3))
    router = from_store(store)
    watcher = tel400.PlanWatcher(router, store, interval_s=0, version=router.plans_version)
    store.trees["4000000001"] = {**tree_of("4000000001", "1"), "rules": [bridge("1", time="25:00-26:00")]}
    store.put_settings({"prompts": {"closed": "after_hours"}})
    with structlog.testing.capture_logs() as logs:
        assert watcher.poll()
    assert router.route("4000000001", BJ).targets == ("13901010001",)
    assert [e["number"] for e in logs if e["event"] == "plan_change_refused"] == ["4000000001"]
    assert router.number_count == 3


def test_a_watcher_starts_from_the_version_the_router_was_loaded_at(from_store, compiles):
    """Kamailio's script makes its watcher without a version: the first poll must not read everything again."""
    store = DictStore(many(20))
    router = from_store(store)
    compiles.clear()
    watcher = tel400.PlanWatcher(router, store, interval_s=0)
    assert not watcher.poll() and compiles == [] and store.reads["iter_plans"] == 1


def test_a_background_watcher_takes_the_replaced_engine_apart(from_store, monkeypatch):
    from tel400 import router as router_module, watch

    monkeypatch.setattr(watch, "RETIRE_GRACE_S", 0.01)
    taken_apart = []
    real = router_module._dismantle
    monkeypatch.setattr(router_module, "_dismantle", lambda engine: (taken_apart.append(len(engine.by_number)),
                                                                     real(engine)))
    store = DictStore(many(30))
    router = from_store(store)
    watcher = tel400.PlanWatcher(router, store, interval_s=0.01).start()
    try:
        store.put_settings({"blacklist": ["13901012345"]})
        deadline = time.monotonic() + 5
        while not taken_apart and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert taken_apart == [30] and router.route("4000000001", BJ).reason == "blacklisted"


def test_a_changed_plan_no_engine_can_compile_keeps_its_entry_and_the_others_apply(from_store, monkeypatch):
    store = DictStore(many(3))
    router = from_store(store)
    watcher = tel400.PlanWatcher(router, store, interval_s=0)
    refuse_compile(monkeypatch, "4000000001")
    store.put(tree_of("4000000001", "13901019999"))
    store.put(tree_of("4000000002", "13901010007"))
    with structlog.testing.capture_logs() as logs:
        assert watcher.poll()
    assert router.route("4000000001", BJ).targets == ("13901010001",)
    assert router.route("4000000002", BJ).targets == ("13901010007",)
    refused = [e for e in logs if e["event"] == "plan_change_refused"]
    assert [e["number"] for e in refused] == ["4000000001"] and "cannot compile" in refused[0]["error"]


def test_a_router_given_a_plan_source_reads_plans_through_it(make_router):
    plans = tel400.PlanSet.from_dict({"numbers": [tree_of("4001012345", "13901010001")]})
    asked = []

    def source(number):
        asked.append(number)
        return plans.get(number)

    router = make_router(plans, plan_source=source)
    assert router.plan_of("+86 400-101-2345").number == "4001012345" and asked == ["4001012345"]
    assert router.plan_of("not a number") is None and router.plan_of("4009999999") is None
    assert router.explain("4001012345", BJ).targets == ("13901010001",)
    assert router.plans.numbers == plans.numbers and router.routed_numbers() == ["4001012345"]
    with pytest.raises(TypeError, match="plan_source"):
        make_router(plans, plan_source="store")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_updates_route_like_a_router_built_from_the_final_plans(make_router, seed):
    """Seeded stress: a router changed by 300 random updates and removals decides like one built afresh."""
    import random

    rng = random.Random(seed)
    numbers = [f"40010{i:05d}" for i in range(40)]

    def random_tree(number):
        start = rng.randrange(1440)
        rules = [{"name": f"r{k}", "time": f"{start // 60:02d}:{start % 60:02d}-{(start + 600) % 1440 // 60:02d}:00",
                  "strategy": "sequential", "targets": [f"139{rng.randrange(10**8):08d}" for _ in range(2)]}
                 for k in range(rng.randrange(1, 4))]
        return {"number": number, "rules": rules, "blacklist": [f"1390101{rng.randrange(10):04d}"],
                "caps": [{"metric": "calls", "per": "day", "limit": 10**6}]}

    current = {n: random_tree(n) for n in numbers[:20]}
    router = make_router({"numbers": list(current.values())})
    for _ in range(300):
        number = rng.choice(numbers)
        if number in current and rng.random() < 0.3:
            del current[number]
            router.update(removed=[number])
        else:
            current[number] = random_tree(number)
            router.update([validate_number(current[number], router.settings)])
    fresh = make_router({"numbers": list(current.values())})
    assert router.routed_numbers() == sorted(current) and router.plans == fresh.plans
    for number in numbers:
        for hour in (0, 6, 12, 18):
            for caller in (BJ, "13901010003"):
                when = at(2026, 11, 24, hour)
                assert router.route(number, caller, at=when) == fresh.route(number, caller, at=when)


# -- explain traces the plan its entry was compiled from ----------------------------------------------


def test_explain_does_not_keep_tracing_a_plan_read_while_the_number_changed(from_store):
    """Explain reads the old plan; the watcher applies a change before explain keeps its tracer."""
    store = DictStore(many(2))
    router = from_store(store)
    watcher = tel400.PlanWatcher(router, store, interval_s=0, version=router.plans_version)
    read = router._shared.plan_source

    def racing(number):
        plan = read(number)
        router._shared.plan_source = read
        store.put(tree_of("4000000001", "13901019999"))
        assert watcher.poll()
        return plan

    router._shared.plan_source = racing
    assert router.explain("4000000001", BJ, at=TUESDAY_10).targets == ("13901010001",)  # the entry it found then
    if router._shared.plan_source is racing:  # the reference engine traces its entries: it reads nothing back
        router._shared.plan_source = read
        store.put(tree_of("4000000001", "13901019999"))
        assert watcher.poll()
    assert router.route("4000000001", BJ, at=TUESDAY_10).targets == ("13901019999",)
    explained = router.explain("4000000001", BJ, at=TUESDAY_10)
    assert explained.targets == ("13901019999",) and [s.check for s in explained.explain] == ["number", "rule", "select"]


def test_explain_during_an_update_or_a_reload_answers_by_the_entry_in_service(make_router, monkeypatch):
    router = make_router({"numbers": [tree_of("4001012345", "13901010001")]})
    seen = []

    def both():
        seen.append((router.route("4001012345", BJ, at=TUESDAY_10).targets,
                     router.explain("4001012345", BJ, at=TUESDAY_10).targets))

    real_put = tel400.router._put

    def put(engine, plan, impl, settings):
        real_put(engine, plan, impl, settings)
        both()  # another thread's explain: the entry is new, the plan held not yet

    monkeypatch.setattr(tel400.router, "_put", put)
    router.update([validate_number(tree_of("4001012345", "13901019999"), router.settings)])
    monkeypatch.undo()
    real_hold = tel400.Router._hold

    def hold(self, plans, source):
        both()  # between the swap of engines and of the plans held
        real_hold(self, plans, source)

    monkeypatch.setattr(tel400.Router, "_hold", hold)
    router.reload(tel400.PlanSet.from_dict({"numbers": [tree_of("4001012345", "13901018888")]}))
    monkeypatch.undo()
    both()
    assert seen == [(("13901019999",), ("13901019999",)), (("13901018888",), ("13901018888",)),
                    (("13901018888",), ("13901018888",))]


def test_explain_of_a_number_whose_stored_plan_went_bad_answers_by_its_last_good_entry(from_store):
    store = DictStore(many(2))
    router = from_store(store)
    watcher = tel400.PlanWatcher(router, store, interval_s=0, version=router.plans_version)
    store.put({**tree_of("4000000001", "13901019999"), "rules": [bridge("13901019999", time="25:00-26:00")]})
    watcher.poll()
    assert "4000000001" in watcher.quarantined
    assert router.route("4000000001", BJ, at=TUESDAY_10).targets == ("13901010001",)
    before = router.decision_counts().get(("4000000001", "bridge", "ok"), 0)
    explained = router.explain("4000000001", BJ, at=TUESDAY_10)
    assert explained.targets == ("13901010001",) and explained.explain[0].check == "number"
    assert router.decision_counts().get(("4000000001", "bridge", "ok"), 0) == before  # explain counts nothing
    routed = router.route("4000000001", BJ, at=TUESDAY_10, explain=True)
    assert routed.targets == ("13901010001",) and routed.explain
    assert router.decision_counts()[("4000000001", "bridge", "ok")] == before + 1


# -- what is kept per number follows its current plan ----------------------------------------------


def rr_pin_tree(number: str, i: int) -> dict:
    return {"number": number, "pin": f"{1000 + i}",
            "rules": [bridge("13901010001", f"1390102{i:04d}", strategy="round_robin")]}


def test_edits_keep_only_the_current_plans_round_robin_states_pin_checks_and_statistics(make_router):
    router = make_router({"numbers": [rr_pin_tree("4001012345", 0), rr_pin_tree("4007654321", 0)]})
    shared = router._shared
    for i in range(1, 30):
        router.update([validate_number(rr_pin_tree("4001012345", i), router.settings)])
        router.route("4001012345", BJ, pin=f"{1000 + i}", at=TUESDAY_10)
    assert len(shared.round_robin) == 2 and len(shared.pin_checks) == 2
    assert [len(kept) for kept in shared.round_robin.values()] == [1, 1]
    router.update(removed=["4001012345"])
    assert list(shared.round_robin) == list(shared.pin_checks) == ["4007654321"]
    assert "4001012345" not in shared.outcomes
    assert not [key for key in router.decision_counts() if key[0] == "4001012345"]


def test_a_failed_update_puts_back_the_round_robin_states_with_the_entries(make_router, monkeypatch):
    tree = {"numbers": [rr_pin_tree("4001012345", 0), tree_of("4007654321", "13901010002")]}
    router = make_router(tree)
    assert router.route("4001012345", BJ, pin="1000", at=TUESDAY_10).targets[0] == "13901010001"
    refuse_compile(monkeypatch, "4007654321", ValueError("cannot compile this one"))
    with pytest.raises(tel400.PlanError):
        router.update([validate_number(rr_pin_tree("4001012345", 1), router.settings),
                       validate_number(tree_of("4007654321", "13901018888"), router.settings)])
    monkeypatch.undo()
    router.reload(tel400.PlanSet.from_dict(tree))  # the position carries over: the next target
    assert router.route("4001012345", BJ, pin="1000", at=TUESDAY_10).targets[0] == "13901020000"
