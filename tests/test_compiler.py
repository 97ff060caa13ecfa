"""The one compile step (tel400.compiler) and what both engines do with it: _check, put, remove, sharing."""

from __future__ import annotations

import gc
import pathlib
import random
import subprocess
import sys

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tel400
from tel400 import _impl, compiler, limits
from tel400.calls import CallRegistry
from tel400.router import _prefixes_of
from tel400.shared import Shared

from .conftest import at, plans_from
from .test_differential import calls, plan_sets

BJ, SH = "13901012345", "02112345678"
TUESDAY_10 = at(2026, 11, 24, 10, 0)

FULL = {
    "blacklist": ["1710*", "anonymous"],
    "prompts": {"closed": "after_hours"},
    "numbers": [
        {
            "number": "4001012345",
            "blacklist": ["13800000000", "170*"],
            "pin": "4821",
            "prompts": {"limit_reached": "busy_today"},
            "calendar": {"holidays": ["2026-11-25"]},
            "rules": [
                {"name": "bj", "provinces": ["BJ"], "days": "workday,sat", "time": "20:00-07:59,09:00-17:59",
                 "dates": ["2026-01-01..2026-12-31"], "targets": [{"to": "13901010001", "weight": 3},
                                                                    {"to": "13901010002", "weight": 1}]},
                {"name": "rr", "channel": "sms", "strategy": "round_robin", "targets": ["13901010003", "13901010004"]},
                {"name": "q", "action": "queue", "queue": "sales"},
                {"name": "shut", "action": "reject", "days": "sun"},
            ],
            "default": {"action": "conference", "room": "all-hands"},
            "caps": [
                {"metric": "calls", "per": "day", "limit": 100},
                {"metric": "calls", "per": "day", "limit": 50},
                {"metric": "minutes", "per": "month", "limit": 600, "scope": "caller", "channel": "voice"},
            ],
            "tariff": {"local": "0.1", "long_distance": "0.3"},
        },
        {"number": "4007654321", "rules": [{"name": "all", "targets": ["13901010009"]}]},
    ],
}


def engine_of(impl, plans):
    shared = Shared(impl.MemoryCounters(), random.Random(0), CallRegistry())
    shared.plan_source = {p.number: p for p in plans.numbers}.get
    return impl.Engine(plans, _prefixes_of(plans), shared)


def test_the_description_holds_what_both_engines_route_by():
    plans = plans_from(FULL)
    shared = Shared(None, random.Random(0), CallRegistry())
    rr, pin_checks = {}, {}
    c = compiler.Compiler(plans, shared, lambda *args: args, rr, pin_checks)
    cp = c.compile(plans.numbers[0])
    cp._check()
    bj, sms, queue, shut = cp.rules
    assert bj.province_mask == 1 << tel400.provinces.INDEX["CN-BJ"]
    assert (bj.weekdays, bj.workday, bj.holiday) == (0b0100000, True, False)
    assert bj.slots == ((1200, 479), (540, 1079)) and len(bj.date_ranges) == 1
    assert sms.province_mask == compiler.ALL_PROVINCES and not sms.has_days and sms.slots == ()
    assert sms.action.selector[0] == "round_robin" and list(rr["4001012345"]) == [("4001012345", "rr", ("13901010003", "13901010004"), (1, 1))]
    assert (queue.action.kind, queue.action.fixed, queue.action.reason) == ("queue", ("sales",), "ok")
    assert (shut.action.reason, shut.action.prompt) == ("rule_reject", "after_hours")  # the global renaming
    assert (cp.default.kind, cp.default.fixed) == ("conference", ("all-hands",))
    keys = [cap.key for cap in cp.caps]
    assert keys == ["tel400:{4001012345}:cap:calls:day:number:any:1", "tel400:{4001012345}:cap:calls:day:number:any:2",
                    "tel400:{4001012345}:cap:minutes:month:caller:voice:1"]
    assert [cap.prompt for cap in cp.caps] == ["busy_today"] * 3
    assert cp.caps[2].key_for(BJ) == keys[2] + ":" + BJ and cp.caps[0].key_for(BJ) == keys[0]
    assert cp.has_charges and cp.pin_gate is not None and list(pin_checks["4001012345"]) == [("4001012345", "4821", None)]
    assert cp.blacklist.groups == ((3, (170,)), (4, (1710,))) and cp.blacklist.anonymous
    assert "13800000000" in cp.blacklist.exact


def test_numbers_alike_share_calendar_prompts_and_blacklist():
    tree = {"blacklist": ["1710*"], "numbers": [{"number": f"40010{i:05d}"} for i in range(3)]
            + [{"number": "4009999999", "blacklist": ["13800000000"], "prompts": {"closed": "x"}}]}
    plans = plans_from(tree)
    c = compiler.Compiler(plans, Shared(None, random.Random(0), CallRegistry()), lambda *a: None, {}, {})
    a, b, _, own = (c.compile(p) for p in plans.numbers)
    assert a.calendar is b.calendar is own.calendar and a.prompts is b.prompts and a.blacklist is b.blacklist
    assert own.blacklist is not a.blacklist and own.prompts is not a.prompts
    assert own.blacklist.matches("17101234567") == "1710*"  # the global entries stay in a number's own list


def test_check_catches_a_broken_description():
    plans = plans_from(FULL)
    c = compiler.Compiler(plans, Shared(None, random.Random(0), CallRegistry()), lambda *a: object(), {}, {})
    cp = c.compile(plans.numbers[0])
    cp.caps[1].key = cp.caps[0].key
    with pytest.raises(AssertionError, match="distinct"):
        cp._check()
    cp = c.compile(plans.numbers[0])
    cp.rules[0].action.outcome += 1
    with pytest.raises(AssertionError):
        cp._check()


def test_both_engines_check_after_compiling(impl):
    engine = engine_of(impl, plans_from(FULL))
    engine._check()
    assert set(engine.by_number) == {"4001012345", "4007654321"}
    assert not engine.settings.numbers  # the engine keeps the settings, not the plans
    assert not hasattr(engine, "plans")


def test_put_replaces_one_number_and_remove_drops_it(impl):
    plans = plans_from(FULL)
    engine = engine_of(impl, plans)
    other = engine.by_number["4001012345"]
    changed = plans_from({"numbers": [{"number": "4007654321", "rules": [{"name": "all", "targets": ["13901010010"]}]},
                                      {"number": "4005550000", "default": {"action": "queue", "queue": "q"}}]})
    engine.shared.plan_source = {p.number: p for p in changed.numbers}.get
    for plan in changed.numbers:
        engine.put(plan)
    engine._check()
    assert engine.by_number["4001012345"] is other  # untouched
    assert engine.route("4007654321", BJ, at=TUESDAY_10).targets == ("13901010010",)
    assert engine.route("4005550000", BJ, at=TUESDAY_10).targets == ("q",)
    explained = engine.route("4007654321", BJ, TUESDAY_10, "voice", None, None, True, True)
    assert explained.targets == ("13901010010",) and explained.explain
    engine.remove("4007654321")
    engine.remove("4000000000")  # absent: nothing happens
    assert engine.route("4007654321", BJ, at=TUESDAY_10).reason == "unknown_number"
    assert engine.route("4007654321", BJ, TUESDAY_10, "voice", None, None, True, True).reason == "unknown_number"
    assert engine.route("106574005550000", BJ, at=TUESDAY_10, channel="sms").targets == ("q",)  # SMS prefix


def test_put_keeps_the_settings(impl):
    plans = plans_from(FULL)
    engine = engine_of(impl, plans)
    engine.put(plans_from({"numbers": [{"number": "4005550000", "default": {"action": "queue", "queue": "q"}}]}).numbers[0])
    assert engine.route("4005550000", "17101234567", at=TUESDAY_10).reason == "blacklisted"  # the global blacklist


def test_explain_reads_the_plan_from_the_routers_source(impl):
    router = tel400.Router(plans_from(FULL), implementation=impl.name)
    decision = router.explain("4007654321", BJ, at=TUESDAY_10)
    assert decision.targets == ("13901010009",) and [s.check for s in decision.explain] == ["number", "rule", "select"]


@pytest.mark.skipif(_impl.CYTHON is None, reason="the compiled engine is not built here")
def test_compiled_plans_without_a_pin_are_out_of_the_cyclic_gc():
    engine = engine_of(_impl.CYTHON, plans_from(FULL))
    assert gc.is_tracked(engine.by_number["4001012345"])  # holds a PIN gate (the router's shared state)
    assert not gc.is_tracked(engine.by_number["4007654321"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan_sets(), st.lists(calls(), min_size=1, max_size=15), st.randoms(use_true_random=False))
def test_numbers_put_one_at_a_time_decide_like_a_whole_compile(tree, sequence, rnd):
    """An engine built by put() (in any order, with a number removed again) routes like one built whole."""
    plans = tel400.PlanSet.from_dict(tree)
    settings_only = attrs.evolve(plans, numbers=())
    spare = plans_from({"numbers": [{"number": "4009999999", "default": {"action": "queue", "queue": "q"}}]}).numbers[0]
    for impl in _impl.ENGINES.values():
        whole = engine_of(impl, plans)
        one_by_one = engine_of(impl, settings_only)
        one_by_one.shared.plan_source = whole.shared.plan_source  # what a router's store would give explain
        order = list(plans.numbers) + [spare]
        rnd.shuffle(order)
        for plan in order:
            one_by_one.put(plan)
        one_by_one.remove(spare.number)
        one_by_one._check()
        assert set(one_by_one.by_number) == set(whole.by_number)
        for call in sequence:
            if call["pin"] is not None or call["call_id"] is not None:
                continue  # PIN windows and calls in progress are router state, not the compile's
            args = (call["dialed"], call["caller"], call["at"], call["channel"])
            a, b = whole.route(*args, None, None, True, True), one_by_one.route(*args, None, None, True, True)
            assert (a.action, a.reason, a.rule, a.prompt, a.number, [s.check for s in a.explain]) == \
                   (b.action, b.reason, b.rule, b.prompt, b.number, [s.check for s in b.explain])


def test_a_full_cache_of_shared_pieces_is_emptied_not_grown(monkeypatch, impl):
    monkeypatch.setattr(compiler.Compiler, "SHARED_PIECES", 2)
    tree = {"numbers": [{"number": f"40010{i:05d}", "prompts": {"closed": f"closed_{i}"}, "blacklist": [f"1390000000{i}"]}
                        for i in range(5)]}
    engine = engine_of(impl, plans_from(tree))
    engine._check()
    assert len(engine.compiler._prompts) <= 2 and len(engine.compiler._blacklists) <= 2
    for i in range(5):
        number = f"40010{i:05d}"
        assert engine.route(number, BJ, at=TUESDAY_10).prompt == f"closed_{i}"
        assert engine.route(number, f"1390000000{i}", at=TUESDAY_10).reason == "blacklisted"
        assert engine.route(number, f"1390000000{(i + 1) % 5}", at=TUESDAY_10).reason == "closed"


@pytest.mark.skipif(_impl.CYTHON is None, reason="the compiled engine is not built here")
def test_the_compiled_engines_check_compares_each_packed_plan_with_its_description():
    plans = plans_from(FULL)
    engine = engine_of(_impl.CYTHON, plans)
    assert engine._check() == 2  # both numbers read back and compared field by field
    full = engine.by_number["4001012345"]
    full._check_against(engine.compiler.compile(plans.numbers[0], carry=False))
    with pytest.raises(AssertionError):
        full._check_against(engine.compiler.compile(plans.numbers[1], carry=False))
    nearly = attrs.evolve(plans.numbers[0], caps=plans.numbers[0].caps[:2] + (
        attrs.evolve(plans.numbers[0].caps[2], limit=plans.numbers[0].caps[2].limit + 1),))
    with pytest.raises(AssertionError):
        full._check_against(engine.compiler.compile(nearly, carry=False))


@pytest.mark.skipif(_impl.CYTHON is None, reason="the compiled engine is not built here")
def test_explain_keeps_a_bounded_number_of_tracers_sharing_the_engines_compiler(monkeypatch):
    monkeypatch.setattr(limits, "EXPLAIN_TRACERS", 3)
    tree = {"numbers": [{"number": f"40010{i:05d}", "rules": [{"name": "r", "targets": [f"139010{i:05d}"]}]}
                        for i in range(8)]}
    engine = engine_of(_impl.CYTHON, plans_from(tree))
    for i in [0, 1, 2, 0, 3, 4]:
        decision = engine.route(f"40010{i:05d}", BJ, TUESDAY_10, "voice", None, None, True, True)
        assert decision.targets == (f"139010{i:05d}",) and decision.explain
    assert list(engine.tracers) == ["4001000000", "4001000003", "4001000004"]  # least recently explained out
    assert all(tracer.compiler is engine.compiler for _, tracer in engine.tracers.values())
    engine.put(plans_from({"numbers": [{"number": "4001000003", "default": {"action": "queue", "queue": "q"}}]}).numbers[0])
    assert "4001000003" not in engine.tracers


def _slots_of(obj, cls) -> dict:
    return {name: getattr(obj, name) for name in cls.__slots__ if name not in ("action", "packed")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan_sets())
def test_the_rule_builder_in_use_builds_what_the_reference_builds(tree):
    """compiler._rules_builder() (the compiled twin where built) against compiler.compiled_rules."""
    plans = plans_from(tree)
    builder = compiler._rules_builder()
    assert (builder is compiler.compiled_rules) == (_impl.IMPLEMENTATION == "python")
    for plan in plans.numbers:
        made = []
        for build in (compiler.compiled_rules, builder):
            c = compiler.Compiler(plans, Shared(None, random.Random(0), CallRegistry()), lambda *args: args, {}, {})
            prompts, rr_states = c._prompt_names(plan), {}
            made.append((build(c, plan.number, plan.rules, prompts, rr_states), rr_states))
        (reference, reference_rr), (built, built_rr) = made
        assert built_rr == reference_rr
        assert len(built) == len(reference) == len(plan.rules)
        for ours, theirs in zip(built, reference):
            assert type(ours) is compiler.CompiledRule and type(ours.action) is compiler.CompiledAction
            assert _slots_of(ours, compiler.CompiledRule) == _slots_of(theirs, compiler.CompiledRule)
            assert _slots_of(ours.action, compiler.CompiledAction) == _slots_of(theirs.action, compiler.CompiledAction)
            assert [type(v) for v in _slots_of(ours, compiler.CompiledRule).values()] == \
                   [type(v) for v in _slots_of(theirs, compiler.CompiledRule).values()]
            assert ours.action.packed is None


def test_a_rule_of_a_subclass_is_built_by_the_reference():
    """The twin reads the validator's classes' slots; anything else goes the reference's way."""
    plans = plans_from(FULL)
    plan = plans.numbers[0]

    @attrs.frozen
    class OwnRule(tel400.plans.Rule):
        pass

    rules = tuple(OwnRule(**attrs.asdict(rule, recurse=False)) for rule in plan.rules)
    c = compiler.Compiler(plans, Shared(None, random.Random(0), CallRegistry()), lambda *args: args, {}, {})
    built = compiler._rules_builder()(c, plan.number, rules, c._prompt_names(plan), {})
    assert [rule.name for rule in built] == [rule.name for rule in plan.rules]
    assert built[0].province_mask == 1 << tel400.provinces.INDEX["CN-BJ"]


def test_the_rule_builder_never_shows_a_half_built_tuple_to_another_thread(tmp_path):
    """A thread walking young objects while rules are built (a profiler or leak finder does).

    Round-robin rules run Python code (the state lookup) between two rules,
    so another thread can run mid-build; it must find nothing half made.
    Run in a child: the failure this guards against is a segfault.
    """
    script = tmp_path / "walk.py"
    script.write_text(
        "import gc, random, sys, threading\n"
        f"sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parent.parent)!r})\n"
        "from tel400 import compiler\n"
        "from tel400.calls import CallRegistry\n"
        "from tel400.shared import Shared\n"
        "from tests.conftest import plans_from\n"
        "rules = [{'name': f'r{i}', 'strategy': 'round_robin', 'targets': ['13901010001', '13901010002']}"
        " for i in range(60)]\n"
        "plans = plans_from({'numbers': [{'number': '4001000001', 'rules': rules}]})\n"
        "plan = plans.numbers[0]\n"
        "c = compiler.Compiler(plans, Shared(None, random.Random(0), CallRegistry()), lambda *a: a, {}, {})\n"
        "prompts = c._prompt_names(plan)\n"
        "sys.setswitchinterval(1e-5)\n"
        "stop = False\n"
        "def walk():\n"
        "    while not stop:\n"
        "        for o in gc.get_objects(generation=0):\n"
        "            if type(o) is tuple and len(o) == 60:\n"
        "                sum(1 for _ in o)\n"
        "threading.Thread(target=walk, daemon=True).start()\n"
        "build = compiler._rules_builder()\n"
        "for _ in range(20000):\n"
        "    assert len(build(c, plan.number, plan.rules, prompts, {})) == 60\n"
        "stop = True\n"
        "print('built')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "built", (done.returncode, done.stderr[-500:])


def test_plans_built_by_hand_with_a_list_of_rules_compile_as_validated_ones(impl):
    """The rule builder takes what the reference takes: a plan built by hand with a list of rules."""
    from tel400.plans import Action, NumberPlan, PlanSet, Rule, Target

    plan = NumberPlan("4001000001", rules=[Rule("r", Action("bridge", (Target("13901010001"),)))])
    router = tel400.Router(PlanSet(numbers=(plan,)), implementation=impl.name)
    assert router.route("4001000001", "13901012345", at(2026, 1, 6, 10)).targets == ("13901010001",)
