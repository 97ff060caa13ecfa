"""route(): compiled beside the reference, on the manual's plan and on many plans."""

from __future__ import annotations

import pytest

import tel400
from tel400 import _impl

from _inputs import BATCH, TUESDAY_10, callers, dialed_sample, manual_plans, many_plans

IMPLS = list(_impl.ENGINES)


@pytest.mark.parametrize("impl", IMPLS)
def test_route_manual_plan(benchmark, impl):
    """Province + time slot + 30/70 split + blacklist + calls cap, per BATCH calls."""
    router = tel400.Router(manual_plans(), seed=1, implementation=impl)
    route = router.route
    sample = callers()

    def batch():
        for caller in sample:
            route("4001012345", caller, TUESDAY_10)

    benchmark.extra_info.update(impl=impl, calls=BATCH)
    benchmark(batch)
    assert router.decision_counts()[("4001012345", "bridge", "ok")] > 0


@pytest.mark.parametrize("n_plans", [10, 10_000])
@pytest.mark.parametrize("impl", IMPLS)
def test_route_many_plans(benchmark, impl, n_plans):
    """20 rules per plan, the full prefix table: the cost must not grow with plans."""
    router = tel400.Router(many_plans(n_plans), seed=1, implementation=impl)
    route = router.route
    calls = list(zip(dialed_sample(n_plans), callers()))

    def batch():
        for dialed, caller in calls:
            route(dialed, caller, TUESDAY_10)

    benchmark.extra_info.update(impl=impl, calls=BATCH, plans=n_plans)
    benchmark(batch)


@pytest.mark.parametrize("impl", IMPLS)
def test_route_10000_plans_skewed_traffic(benchmark, impl):
    """As above with 10,000 plans, but callers dial popular numbers more often (Zipf, s = 1)."""
    from _inputs import dialed_skewed

    router = tel400.Router(many_plans(10_000), seed=1, implementation=impl)
    route = router.route
    calls = list(zip(dialed_skewed(10_000), callers()))

    def batch():
        for dialed, caller in calls:
            route(dialed, caller, TUESDAY_10)

    benchmark.extra_info.update(impl=impl, calls=BATCH, plans=10_000, traffic="zipf")
    benchmark(batch)


@pytest.fixture(scope="module")
def redis_url():
    from tel400.testing import RedisServer

    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.mark.parametrize("backend", ["memory", "shm", "redis"])
def test_route_counters_backend(benchmark, backend, tmp_path_factory, request):
    """The manual's plan with each counter backend (compiled engine when built)."""
    if backend == "memory":
        url = "memory://"
    elif backend == "shm":
        if "cython" not in _impl.ENGINES:
            pytest.skip("shm:// is part of the compiled extension")
        url = f"shm://{tmp_path_factory.mktemp('shm')}/counters?slots=65536"
    else:
        url = request.getfixturevalue("redis_url") + "?timeout_ms=200"
    router = tel400.Router(manual_plans(), url, seed=1)
    route = router.route
    sample = callers()

    def batch():
        for caller in sample:
            route("4001012345", caller, TUESDAY_10)

    benchmark.extra_info.update(impl=router.implementation, backend=backend, calls=BATCH)
    benchmark(batch)
    assert not router.backend_error_counts()
