"""Routing while the plans change: stalls and memory.

route() is called in a tight loop in the main thread, each call timed,
while another thread

* ``edits``: a PlanWatcher thread applies a stream of single-number edits
  (one every 5 ms, polled every 10 ms);
* ``store_reload``: a PlanWatcher thread reloads every number, streamed from
  the store, after a settings change (then takes the old engine apart);
* ``planset_reload``: ``Router.reload(planset)`` of every number;
* ``control``: a thread that only runs Python bytecode: the floor any
  second busy thread sets (the interpreter's 5 ms switch interval, and this
  machine's other load);
* ``before``: what a watcher did before one-number changes: ``store.load()``
  and ``Router.reload`` of the whole set, with the loaded tables left in the
  cyclic GC's generations (no ``gc.freeze()``), as measured in issue 12.

Each reports route()'s p50, p99.9 and max in microseconds (extra_info and a
printed line).  A separate test measures the memory of a router loaded from
the store (streamed, compiled form only) against one given the whole
PlanSet, in a fresh interpreter: RSS and tracemalloc per number and per rule.

Sizes: ``TEL400_BENCH_STALL_NUMBERS`` numbers (default 10,000) of 5 rules;
100,000 takes minutes (validation of every plan).

    TEL400_BENCH_STALL_NUMBERS=100000 .venv/bin/pytest bench/test_bench_stalls.py --benchmark-enable -s
"""

from __future__ import annotations

import array
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import tel400
from tel400 import _impl, router as router_module
from tel400.plans import validate_number, validate_settings
from tel400.stores import Changes, PlanStore

from _inputs import ROOT, callers, dialed_sample, many_trees

NUMBERS = int(os.environ.get("TEL400_BENCH_STALL_NUMBERS", "10000"))
RULES = 5
IMPLS = list(_impl.ENGINES)


class TreeStore(PlanStore):
    """Plan trees in memory with a change log: the one-number store interface, without a database."""

    url = "trees://bench"

    def __init__(self, trees: list[dict]) -> None:
        self.trees = {tree["number"]: tree for tree in trees}
        self.settings_tree: dict = {}
        self._version = 1
        self.log: list[tuple[int, str | None]] = []
        self.quarantined = {}
        self._lock = threading.Lock()

    def put(self, tree: dict) -> None:
        with self._lock:
            self.trees[tree["number"]] = tree
            self._version += 1
            self.log.append((self._version, tree["number"]))

    def put_settings(self, settings: dict) -> None:
        with self._lock:
            self.settings_tree = settings
            self._version += 1
            self.log.append((self._version, None))

    def version(self):
        return self._version

    def changes_since(self, version):
        with self._lock:
            current = self._version
            changed = [number for v, number in self.log if version is not None and v > version]
        if version is None or None in changed:
            return Changes(current, everything=True)
        return Changes(current, frozenset(changed))

    def settings(self):
        return validate_settings(self.settings_tree, source=self.url)

    def load_number(self, number):
        tree = self.trees.get(number)
        return None if tree is None else validate_number(tree, self.settings(), source=self.url)

    def iter_plans(self, *, batch=1000):
        settings = self.settings()
        numbers = sorted(self.trees)
        for start in range(0, len(numbers), batch):
            yield [validate_number(self.trees[n], settings, source=self.url) for n in numbers[start:start + batch]]

    def load(self):
        return tel400.PlanSet.from_dict({**self.settings_tree, "numbers": list(self.trees.values())},
                                        source=self.url)


@pytest.fixture(scope="module")
def trees():
    return many_trees(NUMBERS, RULES)


def _percentiles(latencies: array.array) -> dict:
    ordered = sorted(latencies)
    n = len(ordered)

    def pick(q):
        return round(ordered[min(n - 1, int(q * n))] / 1000, 1)

    return {"calls": n, "p50_us": pick(0.5), "p99_us": pick(0.99), "p99_9_us": pick(0.999),
            "max_us": round(ordered[-1] / 1000, 1)}


def _route_while(router, busy: threading.Thread, *, at_least_s: float) -> dict:
    """route() timed call by call in this thread until ``busy`` is done and ``at_least_s`` passed."""
    dialed, calling = dialed_sample(NUMBERS), callers()
    latencies = array.array("q")
    clock = time.perf_counter_ns
    route = router.route
    end = time.monotonic() + at_least_s
    busy.start()
    i = 0
    while busy.is_alive() or time.monotonic() < end:
        k = i % 1000
        t0 = clock()
        route(dialed[k], calling[k], at=1_700_000_000.0)
        latencies.append(clock() - t0)
        i += 1
        if route is not router.route:  # a reload rebinds the router's route
            route = router.route
    busy.join()
    return _percentiles(latencies)


def _report(benchmark, scenario: str, impl: str, result: dict) -> None:
    benchmark.extra_info.update(scenario=scenario, impl=impl, numbers=NUMBERS, rules=RULES, **result)
    print(f"\n{scenario:15s} {impl:7s} {NUMBERS:>8,} numbers: " + " ".join(f"{k}={v}" for k, v in result.items()))


@pytest.mark.parametrize("impl", IMPLS)
def test_route_while_single_numbers_are_edited(benchmark, impl, trees):
    store = TreeStore(trees)
    router = tel400.Router.from_store(store, implementation=impl)
    watcher = tel400.PlanWatcher(router, store, interval_s=0.01, version=router.plans_version)

    def edit_stream():
        for i in range(300):  # one edit every 5 ms for 1.5 s
            number = f"400{(i * 7919) % NUMBERS:07d}"
            tree = dict(store.trees[number])
            tree["default"] = {"action": "reject", "prompt": f"edit{i}"}
            store.put(tree)
            time.sleep(0.005)
        time.sleep(0.05)  # the last poll

    def run():
        watcher.start()
        try:
            return _route_while(router, threading.Thread(target=edit_stream), at_least_s=1.5)
        finally:
            watcher.stop()

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    result["polls_applied"] = watcher.reloads
    _report(benchmark, "edits", impl, result)
    assert watcher.reloads > 50 and router.reloads == 0  # applied one by one, never reloaded whole


@pytest.mark.parametrize("impl", IMPLS)
def test_one_number_edit_applied_by_a_poll(benchmark, impl, trees):
    """What one edit costs the routing process: the poll that reads the number and compiles it."""
    store = TreeStore(trees)
    router = tel400.Router.from_store(store, implementation=impl)
    watcher = tel400.PlanWatcher(router, store, interval_s=0, version=router.plans_version)
    edits = iter(range(10**9))

    def edit():
        i = next(edits)
        tree = dict(store.trees[f"400{(i * 7919) % NUMBERS:07d}"])
        tree["default"] = {"action": "reject", "prompt": f"edit{i}"}
        store.put(tree)
        return (), {}

    benchmark.pedantic(watcher.poll, setup=edit, rounds=200, iterations=1)
    benchmark.extra_info.update(impl=impl, numbers=NUMBERS, rules=RULES,
                                median_ms=round(benchmark.stats.stats.median * 1000, 3))
    print(f"\none edit applied {impl} {NUMBERS:,} numbers: median {benchmark.stats.stats.median * 1e3:.3f} ms")
    assert watcher.reloads == 200 and router.reloads == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_route_while_the_store_is_reloaded_in_a_watcher_thread(benchmark, impl, trees):
    store = TreeStore(trees)
    router = tel400.Router.from_store(store, implementation=impl)
    watcher = tel400.PlanWatcher(router, store, interval_s=0.01, version=router.plans_version)

    def settings_change():
        store.put_settings({"prompts": {"closed": "after_hours"}})
        while watcher.reloads == 0:
            time.sleep(0.01)
        time.sleep(1.5)  # the old engine taken apart after the grace period

    def run():
        watcher.start()
        try:
            return _route_while(router, threading.Thread(target=settings_change), at_least_s=0.5)
        finally:
            watcher.stop()

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    _report(benchmark, "store_reload", impl, result)
    assert router.reloads == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_route_while_a_planset_is_reloaded_in_a_thread(benchmark, impl, trees):
    store = TreeStore(trees)
    plans = store.load()
    router = tel400.Router(plans, implementation=impl)
    result = benchmark.pedantic(
        lambda: _route_while(router, threading.Thread(target=router.reload, args=(plans,)), at_least_s=0.5),
        rounds=1, iterations=1)
    _report(benchmark, "planset_reload", impl, result)


@pytest.mark.parametrize("impl", IMPLS)
def test_route_while_reloading_as_before(benchmark, impl, trees, monkeypatch):
    """The old watcher: the whole store loaded and reloaded, the tables left to the cyclic GC."""
    monkeypatch.setattr(router_module, "_frozen_after_load", lambda loaded: None)
    gc.unfreeze()
    store = TreeStore(trees)
    router = tel400.Router(store.load(), implementation=impl)

    def reload_whole():
        router.reload(store.load())

    result = benchmark.pedantic(
        lambda: _route_while(router, threading.Thread(target=reload_whole), at_least_s=0.5), rounds=1, iterations=1)
    _report(benchmark, "before", impl, result)
    gc.freeze()


@pytest.mark.parametrize("impl", IMPLS)
def test_route_beside_a_busy_python_thread(benchmark, impl, trees):
    """The floor: another thread only runs Python bytecode for 1.5 s (the interpreter's switch interval at work)."""
    router = tel400.Router.from_store(TreeStore(trees), implementation=impl)

    def spin():
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            sum(range(100))

    result = benchmark.pedantic(lambda: _route_while(router, threading.Thread(target=spin), at_least_s=0.5),
                                rounds=1, iterations=1)
    _report(benchmark, "control", impl, result)


# -- memory -------------------------------------------------------------------------------------

_MEASURE = textwrap.dedent(
    """
    import gc, json, sys, tracemalloc
    sys.path.insert(0, {bench!r})
    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096
    import tel400
    from test_bench_stalls import TreeStore
    from _inputs import many_trees
    store = TreeStore(many_trees({numbers}, {rules}))
    tel400.PrefixTable.builtin()
    tel400.Router.from_store(TreeStore(many_trees(2, {rules})), implementation={impl!r})  # zones, modules
    gc.collect()
    tracemalloc.start() if {traced} else None
    before = rss()
    if {how!r} == "whole":
        router = tel400.Router(store.load(), implementation={impl!r})
    else:
        router = tel400.Router.from_store(store, implementation={impl!r})
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] if {traced} else None
    print(json.dumps({{"rss": rss() - before, "traced": traced}}))
"""
)


def _memory(how: str, impl: str, *, traced: bool) -> dict:
    code = _MEASURE.format(bench=str(ROOT / "bench"), numbers=NUMBERS, rules=RULES, impl=impl, how=how,
                           traced=traced)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", IMPLS)
def test_memory_of_a_store_loaded_router(benchmark, impl):
    """RSS (untraced run) and tracemalloc (traced run) per number and per rule: whole PlanSet vs streamed."""
    def measure():
        out = {}
        for how in ("whole", "streamed"):
            rss = _memory(how, impl, traced=False)["rss"]
            traced = _memory(how, impl, traced=True)["traced"]
            out[how] = {"rss_per_number_b": round(rss / NUMBERS), "rss_per_rule_b": round(rss / (NUMBERS * RULES)),
                        "traced_per_number_b": round(traced / NUMBERS),
                        "traced_per_rule_b": round(traced / (NUMBERS * RULES))}
        return out

    result = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(impl=impl, numbers=NUMBERS, rules=RULES, **result)
    print(f"\nmemory {impl} {NUMBERS:,} numbers x {RULES} rules: {result}")
    assert result["streamed"]["traced_per_rule_b"] < result["whole"]["traced_per_rule_b"]
