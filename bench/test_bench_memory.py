"""Memory per number and per rule of a routing process (issue 12 item 2), at a CI-small size.

A router streamed from an SQLite store of generated plans (``Router.from_store``,
what a deployment starts), in a fresh process per figure: RSS after the first
route minus that of a 10-number router, and tracemalloc's traced bytes (a
second process: tracing changes RSS).  Sizes: TEL400_BENCH_MEMORY_NUMBERS
(default 20,000) numbers of 5 and of 20 rules; stores are kept in
TEL400_BENCH_DIR like the scale benchmarks'.

``extra_info``: ``rss_per_number``, ``traced_per_number``, ``traced_per_rule``
and ``kb22_over_per_rule`` (the issue's ~2.2 KB per rule before, over the
traced bytes per rule now: the CI guard's floor is 5, the issue's "at least 5x
lower").  Figures are deterministic up to the allocator (no timing).

Run as a script, this module is the measured process::

    python bench/test_bench_memory.py rss|traced sqlite:////tmp/plans.db
"""

from __future__ import annotations

import gc
import json
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import _scale  # noqa: E402

ISSUE_BYTES_PER_RULE = 2200  # issue 12: the PlanSet alone, ~2.2 KB per rule, before any engine


def measure(mode: str, url: str) -> dict:
    """One routing process's memory: (RSS or traced bytes) after the first route, and its numbers."""
    import tracemalloc

    import tel400

    _scale.quiet_logs()
    store = tel400.open_store(url, create=False)
    if mode == "traced":
        tracemalloc.start()
    rss0, _ = _scale.rss_bytes()
    router = tel400.Router.from_store(store)
    router.route(_scale.generate.number_of(0), _scale.CALLER, _scale.AT)
    gc.collect()
    rss1, _ = _scale.rss_bytes()
    out = {"numbers": len(router.routed_numbers()), "rss": rss1 - rss0}
    if mode == "traced":
        out["traced"] = tracemalloc.get_traced_memory()[0]
    return out


def _child(mode: str, db: pathlib.Path) -> dict:
    result = subprocess.run([sys.executable, __file__, mode, f"sqlite:///{db}"], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def memory_dir(tmp_path_factory) -> pathlib.Path:
    return _scale.kept_dir(tmp_path_factory, "memory")


@pytest.mark.parametrize("rules", [5, 20])
def test_memory_per_number(benchmark, rules, memory_dir):
    """Bytes a routing process holds per number and per rule, everything included."""
    numbers = _scale.env_int("TEL400_BENCH_MEMORY_NUMBERS", 20_000)
    large = _scale.build_store(memory_dir, numbers, rules)
    small = _scale.build_store(memory_dir, 10, rules)
    result = {}

    def run():
        base = _child("rss", small)
        rss = _child("rss", large)
        traced = _child("traced", large)
        traced_small = _child("traced", small)
        n = rss["numbers"] - base["numbers"]
        result.update(
            rss_per_number=(rss["rss"] - base["rss"]) / n,
            traced_per_number=(traced["traced"] - traced_small["traced"]) / n,
        )

    benchmark.pedantic(run, rounds=1, iterations=1)
    per_rule = result["traced_per_number"] / rules
    benchmark.extra_info.update(numbers=numbers, rules=rules, traced_per_rule=per_rule,
                                kb22_over_per_rule=ISSUE_BYTES_PER_RULE / per_rule, **result)
    assert result["traced_per_number"] > 0


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2])))
