"""What the compiled engine packs into a plan's C block (targets, rule names, the default) and keeps
lazily (decision counters), against the reference engine and the compiler's description."""

from __future__ import annotations

import array
import random

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tel400
from tel400 import _impl, _select_py, limits
from tel400.calls import CallRegistry
from tel400.plans import Target
from tel400.router import _prefixes_of
from tel400.shared import Shared

from .conftest import at, plans_from

BJ = "13901012345"
TUESDAY_10 = at(2026, 11, 24, 10, 0)
needs_cython = pytest.mark.skipif(_impl.CYTHON is None, reason="the compiled engine is not built here")
STRATEGIES = ("weighted", "round_robin", "sequential", "sticky")


def engines_of(plans):
    """One engine per implementation, each with its own shared state and a plan source for explain."""
    engines = []
    for impl in _impl.ENGINES.values():
        shared = Shared(impl.MemoryCounters(), random.Random(0), CallRegistry())
        shared.plan_source = {p.number: p for p in plans.numbers}.get
        engines.append(impl.Engine(plans, _prefixes_of(plans), shared))
    return engines


def compiled_engine(plans):
    return engines_of(plans)[list(_impl.ENGINES).index("cython")]


def long_uri(i: int) -> str:
    """A SIP target at the bounds of plans.py's pattern: a 64-character user, a 253-character host, a port."""
    user = f"{i:03d}" + "u" * 61
    return f"{user}@{'h' * 249}.com:65535"


def bridge_tree(strategy: str, targets: list, weights: list[int]) -> dict:
    return {"numbers": [{"number": "4001012345", "rules": [
        {"name": "all", "strategy": strategy, "targets": [{"to": t, "weight": w} for t, w in zip(targets, weights)]}],
        "default": {"action": "bridge", "strategy": strategy, "targets": [targets[0]]}}]}


def failover_after(pick: str, targets: list[str], weights: list[int]) -> tuple[str, ...]:
    """The reference's order for a pick: the pick, then the others by weight, heaviest first, ties listed."""
    return _select_py.orders_by_pick(targets, weights)[targets.index(pick)]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", ["numbers", "long_uris"])
def test_the_most_targets_a_rule_may_have_round_trip_through_the_packed_form(strategy, kind):
    """MAX_TARGETS targets (numbers, or SIP URIs of 320 characters): the same orders from both engines."""
    n = limits.MAX_TARGETS
    targets = [f"139{i:08d}" for i in range(n)] if kind == "numbers" else [long_uri(i) for i in range(n)]
    weights = [(i * 7) % 5 for i in range(n)]  # zeros among them: failover only
    plans = plans_from(bridge_tree(strategy, targets, weights))
    engines = engines_of(plans)
    for engine in engines:
        engine._check()
    callers = [f"1390101{i:04d}" for i in range(25)] + ["anonymous"]
    for caller in callers:
        decisions = [engine.route("4001012345", caller, at=TUESDAY_10) for engine in engines]
        for d in decisions:
            assert sorted(d.targets) == sorted(targets) and d.rule == "all"
            assert d.targets == failover_after(d.targets[0], targets, weights) or strategy in ("sequential", "sticky")
            assert weights[targets.index(d.targets[0])] > 0
        if strategy != "weighted":  # weighted draws differ between the engines' generators by design
            assert len({d.targets for d in decisions}) == 1


@needs_cython
def test_targets_of_any_text_are_packed_as_utf8_and_given_back_unchanged():
    """Plans only admit ASCII targets; a description that holds others (a future schema) still round-trips."""
    plans = plans_from(bridge_tree("sequential", ["13900000001", "13900000002"], [1, 1]))
    exotic = ("用户@例子.中国", "ü" * 300 + "@x", "13900000003", "😀@emoji")
    number = plans.numbers[0]
    rule = number.rules[0]
    edited = attrs.evolve(number, rules=(attrs.evolve(rule, action=attrs.evolve(
        rule.action, targets=tuple(Target(t, w) for t, w in zip(exotic, (3, 1, 0, 2))))),))
    engines = engines_of(plans)
    for engine in engines:
        engine.shared.plan_source = {edited.number: edited}.get
        engine.put(edited)
        engine._check()
    answers = {engine.route("4001012345", BJ, at=TUESDAY_10).targets for engine in engines}
    assert answers == {("用户@例子.中国", "ü" * 300 + "@x", "😀@emoji", "13900000003")}
    assert engines[list(_impl.ENGINES).index("cython")]._check() == 1  # the packed texts compared with the description's, field by field


@needs_cython
@pytest.mark.parametrize("change", ["target", "weight", "strategy", "order", "name", "default"])
def test_check_against_compares_the_packed_targets_with_the_description(change):
    tree = bridge_tree("weighted", ["13900000001", "13900000002", "13900000003"], [3, 2, 1])
    plans = plans_from(tree)
    engine = compiled_engine(plans)
    packed = engine.by_number["4001012345"]
    packed._check()
    packed._check_against(engine.compiler.compile(plans.numbers[0], carry=False))
    rule = tree["numbers"][0]["rules"][0]
    if change == "target":
        rule["targets"][1]["to"] = "13900000009"
    elif change == "weight":
        rule["targets"][1]["weight"] = 5
    elif change == "strategy":
        rule["strategy"] = "sticky"
    elif change == "order":
        rule["targets"].reverse()
    elif change == "name":
        rule["name"] = "other"
    else:
        tree["numbers"][0]["default"]["targets"] = ["13900000002"]
    other = plans_from(tree).numbers[0]
    with pytest.raises(AssertionError, match="differs from the compiler's description"):
        packed._check_against(engine.compiler.compile(other, carry=False))


@needs_cython
def test_equal_rule_names_of_many_numbers_are_one_string():
    tree = {"numbers": [{"number": f"40010{i:05d}", "rules": [{"name": "".join(["office", "-hours"]),
                                                               "targets": [f"139010{i:05d}"]}]} for i in range(5)]}
    engine = compiled_engine(plans_from(tree))
    names = {id(engine.route(n, BJ, at=TUESDAY_10).rule) for n in engine.by_number}
    assert len(names) == 1


def test_a_number_has_decision_counters_only_once_a_decision_counted(impl):
    """Never routed: no counters, nothing reported; explain and dry runs count nothing and make none."""
    tree = {"numbers": [{"number": "4001012345", "rules": [{"name": "r", "targets": ["13900000001"]}]},
                        {"number": "4007654321", "rules": [{"name": "r", "targets": ["13900000002"]}]}]}
    router = tel400.Router(plans_from(tree), implementation=impl.name)
    shared = router._shared
    assert "4001012345" not in shared.outcomes and "4007654321" not in shared.outcomes
    assert router.explain("4001012345", BJ, at=TUESDAY_10).targets == ("13900000001",)  # a dry run
    assert "4001012345" not in shared.outcomes and router.decision_counts() == {}
    router.route("4001012345", BJ, at=TUESDAY_10)
    router.route("4001012345", "17100000000", at=TUESDAY_10)
    assert set(shared.outcomes) >= {"4001012345"} and "4007654321" not in shared.outcomes
    assert router.decision_counts() == {("4001012345", "bridge", "ok"): 2}
    router.reload(plans_from(tree))  # kept over a reload: the new entry counts on into the same array
    router.route("4001012345", BJ, at=TUESDAY_10)
    assert router.decision_counts() == {("4001012345", "bridge", "ok"): 3}


def test_lazy_decision_counters_report_the_same_in_both_engines():
    tree = {"blacklist": ["1710*"], "numbers": [
        {"number": f"40010{i:05d}", "pin": "4821" if i == 3 else None,
         "rules": [{"name": "r", "time": "09:00-17:59", "targets": [f"139010{i:05d}"]}]} for i in range(6)]}
    for number in tree["numbers"]:
        if number["pin"] is None:
            del number["pin"]
    routers = [tel400.Router(plans_from(tree), implementation=name, seed=1) for name in _impl.ENGINES]
    calls = [("4001000000", BJ, TUESDAY_10), ("4001000001", "17100000000", TUESDAY_10),
             ("4001000003", BJ, TUESDAY_10), ("4001000004", BJ, at(2026, 11, 24, 20, 0)), ("4009999999", BJ, TUESDAY_10)]
    for router in routers:
        for call in calls:
            router.route(*call)
    counts = [router.decision_counts() for router in routers]
    assert counts[0] == counts[-1]
    assert counts[0] == {("4001000000", "bridge", "ok"): 1, ("4001000001", "reject", "blacklisted"): 1,
                         ("4001000003", "collect_pin", "pin_required"): 1, ("4001000004", "reject", "closed"): 1,
                         ("unknown", "reject", "unknown_number"): 1}
    for router in routers:
        assert "4001000002" not in router._shared.outcomes and "4001000005" not in router._shared.outcomes


@needs_cython
@settings(max_examples=60, deadline=None)
@given(st.integers(65, 150), st.data())
def test_selectors_past_the_stack_arrays_match_the_reference(n, data):
    """More targets than STACK_TARGETS (a raised TEL400_MAX_TARGETS): the allocated scratch gives the same orders."""
    from tel400._fast import _select

    targets = [f"139{i:08d}" for i in range(n)]
    weights = data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n).filter(any))
    sticky, reference = _select.Sticky(targets, weights), _select_py.Sticky(targets, weights)
    for caller in ("13901012345", "anonymous", ""):
        assert sticky.order(caller, _select.FastRandom(1)) == reference.order(caller, None)
    rr = _select.RoundRobin(targets, weights)
    rr_reference = _select_py.RoundRobin(targets, weights, array.array("q", bytes(8 * n)))
    rng = _select.FastRandom(1)
    for _ in range(5):
        assert rr.order("x", rng, False) == rr_reference.order("x", None, False)
        assert rr.order("x", rng) == rr_reference.order("x", None)
    assert _select.Sequential(targets, weights).order("x", rng) == _select_py.Sequential(targets, weights).order("x", None)
    picked = _select.Weighted(targets, weights).order("x", rng)
    assert picked == failover_after(picked[0], targets, weights) and weights[targets.index(picked[0])]


@pytest.mark.parametrize("source", ["kept", "gone"])
def test_dry_runs_leave_the_round_robin_where_it_was(source):
    """Traced (the plan read back) or decided by the packed entry (the plan gone from the source): no advance."""
    tree = bridge_tree("round_robin", ["13900000001", "13900000002", "13900000003"], [3, 2, 1])
    plans = plans_from(tree)
    expected = None
    for engine in engines_of(plans):
        if source == "gone":
            engine.shared.plan_source = {}.get
        picks = []
        for _ in range(6):
            for _ in range(3):
                dry = engine.route("4001012345", BJ, TUESDAY_10, "voice", None, None, False, True)
                assert dry.targets[0] == engine.route("4001012345", BJ, TUESDAY_10, "voice", None, None, True, True).targets[0]
            picks.append(engine.route("4001012345", BJ, at=TUESDAY_10).targets)
        assert [p[0] for p in picks] == ["13900000001", "13900000002", "13900000001", "13900000003", "13900000002",
                                         "13900000001"]  # smooth weighted round robin of 3/2/1
        assert expected is None or picks == expected
        expected = picks
