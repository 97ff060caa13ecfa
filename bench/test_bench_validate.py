"""Validation per rule: the fast path (dict and JSON bytes) against the precise parser, in one run.

Plans are shaped like _inputs.many_plans (3 provinces, a time slot, days, 2
weighted targets per rule, a daily calls cap per number), with random slots,
provinces and targets: the worst case for the validator's memos, which are
emptied before every batch.  Each figure is per rule (``calls`` = rules in a
batch).  ``precise`` is the parser every plan went through before the fast
path (it still reports every mistake).  docs/performance.md ("Validation")
has the table; the CI guard reads ``precise_over_fast`` from the interleaved
benchmark, which catches a return to the slow path.

    .venv/bin/pytest bench/test_bench_validate.py --benchmark-enable --benchmark-columns=median
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import pytest

import tel400
from tel400 import plans

from _inputs import many_plan_tables

SETTINGS = tel400.PlanSet()
RULES_PER_BATCH = 1000


@functools.lru_cache(maxsize=None)
def plan_trees(n_numbers: int, n_rules: int, seed: int = 1) -> tuple[dict, ...]:
    """``n_numbers`` number tables of ``n_rules`` rules, as a plan file or a store holds them."""
    return tuple(many_plan_tables(n_numbers, n_rules, seed))


def clear_memos() -> None:
    plans._fast_path().clear_caches()


def fast_dicts(trees) -> None:
    clear_memos()
    for i, raw in enumerate(trees):
        plans.validate_number(raw, SETTINGS, index=i)


def fast_json(blobs) -> None:
    clear_memos()
    for i, blob in enumerate(blobs):
        plans.validate_number_json(blob, SETTINGS, index=i)


def precise_dicts(trees) -> None:
    parser = plans._Parser(None)
    for i, raw in enumerate(trees):
        parser.number_plan(raw, i, SETTINGS.calendar)


def precise_json(blobs) -> None:
    parser = plans._Parser(None)
    for i, blob in enumerate(blobs):
        parser.number_plan(json.loads(blob), i, SETTINGS.calendar)


PATHS = {"fast-dict": fast_dicts, "fast-json": fast_json, "precise-dict": precise_dicts, "precise-json": precise_json}


def batch(n_rules: int, form: str):
    trees = plan_trees(RULES_PER_BATCH // n_rules, n_rules)
    return trees if form == "dict" else [json.dumps(t).encode() for t in trees]


@pytest.mark.parametrize("n_rules", [5, 20])
@pytest.mark.parametrize("path", list(PATHS))
def test_validate_per_rule(benchmark, path, n_rules):
    data = batch(n_rules, path.split("-")[1])
    run = PATHS[path]
    benchmark.extra_info.update(calls=RULES_PER_BATCH, rules_per_number=n_rules, impl=plans._fast_path().__name__)
    benchmark.pedantic(run, args=(data,), rounds=15, iterations=1, warmup_rounds=1)


def test_validate_interleaved(benchmark):
    """The precise parser over the fast path, in alternating batches (5 rules a number, dicts).

    Each precise batch is divided by the fast batch right after it and the
    median of those ratios kept (``extra_info["precise_over_fast"]``, what
    the CI guard reads): both sides share the machine's noise.
    """
    data = batch(5, "dict")
    ratios = []

    def timed(run) -> float:
        t0 = time.perf_counter()
        run(data)
        return time.perf_counter() - t0

    def rounds():
        for _ in range(15):
            ratios.append(timed(precise_dicts) / timed(fast_dicts))

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    benchmark.extra_info.update(calls=RULES_PER_BATCH * 15 * 2, precise_over_fast=statistics.median(ratios))


def table(repeats: int = 25) -> str:
    """The table of docs/performance.md ("Validation"): every path in alternating batches, medians per rule."""
    rows = []
    for n_rules in (5, 20):
        data = {form: batch(n_rules, form) for form in ("dict", "json")}
        times: dict[str, list[float]] = {path: [] for path in PATHS}
        for _ in range(repeats):
            for path, run in PATHS.items():
                t0 = time.perf_counter()
                run(data[path.split("-")[1]])
                times[path].append(time.perf_counter() - t0)
        per_rule = {path: statistics.median(ts) / RULES_PER_BATCH * 1e6 for path, ts in times.items()}
        for form in ("dict", "json"):
            before, after = per_rule[f"precise-{form}"], per_rule[f"fast-{form}"]
            rows.append(f"| {n_rules} | {form} | {before:.1f} µs | {after:.2f} µs | {before / after:.1f}x |")
    head = ["| rules per number | input | precise parser (before) | fast path (after) | speed-up |",
            "|---:|---|---:|---:|---:|"]
    return "\n".join(head + rows)


def precise_plan_set(tree: dict) -> tel400.PlanSet:
    """PlanSet.from_dict as it was: every number through the precise parser."""
    parser = plans._Parser(None)
    parser.checked_number_plan = parser.number_plan
    return parser.plan_set(tree, None)


def fast_plan_set(tree: dict) -> tel400.PlanSet:
    clear_memos()
    return tel400.PlanSet.from_dict(tree)


def precise_rows(blobs) -> list:
    parser = plans._Parser(None)
    return [parser.number_plan(json.loads(blob), i, SETTINGS.calendar) for i, blob in enumerate(blobs)]


def fast_rows(blobs) -> list:
    clear_memos()
    return [plans.validate_number_json(blob, SETTINGS, index=i) for i, blob in enumerate(blobs)]


def plan_set_table(repeats: int = 3) -> str:
    """Whole plan sets, garbage collector on, as a load does: the plans made so far stay alive."""
    rows = ["| plans | before | after | per rule before / after | speed-up |", "|---|---:|---:|---:|---:|"]
    for n_numbers, n_rules in ((5000, 5), (1250, 20)):
        trees = plan_trees(n_numbers, n_rules)
        cases = [
            ("`PlanSet.from_dict`", {"numbers": list(trees)}, precise_plan_set, fast_plan_set),
            ("store rows (JSON bytes, one number each)", [json.dumps(t).encode() for t in trees], precise_rows,
             fast_rows),
        ]
        for label, data, slow, fast in cases:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(repeats):
                for side, run in (("before", slow), ("after", fast)):
                    t0 = time.perf_counter()
                    run(data)
                    times[side].append(time.perf_counter() - t0)
            before, after = (statistics.median(times[side]) for side in ("before", "after"))
            rules = n_numbers * n_rules
            rows.append(f"| {label}, {n_numbers:,} numbers x {n_rules} rules | {before:.2f} s | {after:.2f} s | "
                        f"{before / rules * 1e6:.1f} / {after / rules * 1e6:.1f} µs | {before / after:.1f}x |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(f"fast path: {plans._fast_path().__name__}")
    print(table())
    print()
    print(plan_set_table())
