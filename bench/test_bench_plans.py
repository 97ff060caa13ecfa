"""What one number's plan can cost the service at most: a plan at every bound of tel400.limits.

The plan (tests/plans_at_bounds.py) holds 1,000 rules, 64 targets, 16 caps,
10,000 blacklist entries and 3,700 calendar days, and stores as ~550 KB of
JSON.  Each benchmark times one operation on it: validating the tree,
compiling it with each engine, the store write the admin API makes (validate,
compile with every engine, write), and the longest ``explain`` (every rule
tried).  docs/performance.md ("A plan at every bound") has the figures.

    .venv/bin/pytest bench/test_bench_plans.py --benchmark-enable --benchmark-columns=median,max
"""

from __future__ import annotations

import copy
import datetime as dt
import random

import pytest

import tel400
from tel400 import _impl
from tel400._common import Shared
from tel400.calls import CallRegistry
from tests.plans_at_bounds import NUMBER, plan_at_the_bounds, plan_set_at_the_bounds

IMPLS = list(_impl.ENGINES)
TUESDAY = dt.datetime(2026, 11, 24, 10, tzinfo=dt.timezone.utc).timestamp()  # every rule tried


def test_plan_at_bounds_validate(benchmark):
    tree = plan_set_at_the_bounds()
    benchmark.extra_info.update(impl="python", calls=1)
    benchmark.pedantic(tel400.PlanSet.from_dict, args=(tree,), rounds=5, iterations=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_plan_at_bounds_compile(benchmark, impl):
    plans = tel400.PlanSet.from_dict(plan_set_at_the_bounds())
    engine = _impl.ENGINES[impl]
    prefixes = tel400.default_segments()
    engine.Engine(plans, prefixes, Shared(engine.MemoryCounters(), random.Random(0), CallRegistry()))  # zone tables

    def compile_once():
        engine.Engine(plans, prefixes, Shared(engine.MemoryCounters(), random.Random(0), CallRegistry()))

    benchmark.extra_info.update(impl=impl, calls=1)
    benchmark.pedantic(compile_once, rounds=5, iterations=1)


def test_plan_at_bounds_store_put(benchmark, tmp_path):
    """What PUT /v1/numbers/{number} costs at the bounds, beside the HTTP layer."""
    store = tel400.SqliteStore(tmp_path / "plans.db")
    plan = plan_at_the_bounds()

    def put():
        store.put_number(copy.deepcopy(plan), actor="bench")

    benchmark.extra_info.update(impl="sqlite", calls=1)
    benchmark.pedantic(put, rounds=5, iterations=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_plan_at_bounds_explain(benchmark, impl):
    router = tel400.Router(tel400.PlanSet.from_dict(plan_set_at_the_bounds()), implementation=impl, seed=1)

    def explain():
        return router.explain(NUMBER, "13901012345", TUESDAY)

    benchmark.extra_info.update(impl=impl, calls=1)
    decision = benchmark.pedantic(explain, rounds=20, iterations=1)
    assert len(decision.explain) <= tel400.limits.MAX_RULES + 20
