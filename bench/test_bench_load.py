"""Load time and resident memory: the prefix table and 10,000 compiled plans.

Resident memory is measured in a fresh interpreter (RSS after minus before),
so that nothing else the benchmark process holds is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import tel400
from tel400 import _impl, segments

from _inputs import ROOT, many_plans

IMPLS = list(_impl.ENGINES)


def test_load_builtin_prefix_table(benchmark):
    def load():
        segments._builtin.cache_clear()
        return tel400.PrefixTable.builtin()

    table = benchmark.pedantic(load, rounds=5, iterations=1)
    benchmark.extra_info.update(intervals=len(table), rss_mb=_rss_of("prefix_table"))
    assert len(table) > 20_000


@pytest.mark.parametrize("impl", IMPLS)
def test_compile_10000_plans(benchmark, impl):
    plans = many_plans(10_000)
    router = tel400.Router(plans, implementation=impl)
    benchmark.extra_info.update(impl=impl, rss_mb=_rss_of(f"plans:{impl}"))
    benchmark.pedantic(router.reload, args=(plans,), rounds=2, iterations=1)


_MEASURE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {bench!r})
    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096
    what = {what!r}
    import tel400, tel400.segments
    if what == "prefix_table":
        before = rss()
        table = tel400.PrefixTable.builtin()
    else:
        from _inputs import many_plans
        plans = many_plans(10_000)
        tel400.PrefixTable.builtin()
        before = rss()
        router = tel400.Router(plans, implementation=what.split(":")[1])
    print(json.dumps((rss() - before) / 2**20))
    """
)


def _rss_of(what: str) -> float:
    code = _MEASURE.format(bench=str(ROOT / "bench"), what=what)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    return round(json.loads(out.stdout.strip().splitlines()[-1]), 1)
