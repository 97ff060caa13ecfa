"""The cost of sharing calls in progress: route(call_id) + call_ended() per call, by call registry.

Counters stay in memory so that the registry is the only difference: the
memory registry (one process), SQLite (one host, WAL) and Redis (127.0.0.1).
Each round routes and ends BATCH calls with fresh ids; the per-call figure
is the batch median divided by BATCH (``extra_info["us_per_call"]``), and
``extra_info["over_memory"]`` is the ratio to the memory registry's median
measured in the same run (the order of the parameters keeps memory first).
"""

from __future__ import annotations

import itertools

import pytest

import tel400

from _inputs import BATCH, TUESDAY_10, callers

PLAN = {"numbers": [{"number": "4001012345", "rules": [{"targets": ["13901010001"]}],
                     "tariff": {"local": "0.1", "long_distance": "0.3"},
                     "caps": [{"metric": "minutes", "per": "day", "limit": 10**9},
                              {"metric": "cost", "per": "day", "limit": 10**6}]}]}

_medians: dict[str, float] = {}


@pytest.fixture(scope="module")
def redis_url():
    from tel400.testing import RedisServer

    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.mark.parametrize("registry", ["memory", "sqlite", "redis"])
def test_route_and_end_by_registry(benchmark, registry, tmp_path_factory, request):
    if registry == "memory":
        url = "memory://"
    elif registry == "sqlite":
        url = f"sqlite://{tmp_path_factory.mktemp('calls')}/calls.db"
    else:
        url = request.getfixturevalue("redis_url")
    router = tel400.Router(tel400.PlanSet.from_dict(PLAN), seed=1, calls=url)
    route, call_ended = router.route, router.call_ended
    sample = callers()
    ids = itertools.count()

    def batch():
        for caller in sample:
            call_id = f"bench-{next(ids)}"
            route("4001012345", caller, TUESDAY_10, call_id=call_id)
            call_ended(call_id, 65)

    benchmark.extra_info.update(impl=router.implementation, registry=registry, calls=BATCH)
    benchmark(batch)
    median = benchmark.stats.stats.median
    _medians[registry] = median
    benchmark.extra_info["us_per_call"] = round(median / BATCH * 1e6, 2)
    if "memory" in _medians:
        benchmark.extra_info["over_memory"] = round(median / _medians["memory"], 1)
    assert router.calls_in_progress == 0 and not router.backend_error_counts()
    router._shared.calls.close()
