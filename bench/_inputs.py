"""Inputs shared by the benchmarks, built outside any timed region."""

from __future__ import annotations

import datetime as dt
import functools
import pathlib
import random
import zoneinfo

import generate
import tel400

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANUAL = ROOT / "examples" / "manual.toml"
#: A Tuesday morning in Shanghai: the manual plan's province and split rules are open.
TUESDAY_10 = dt.datetime(2026, 11, 24, 10, tzinfo=zoneinfo.ZoneInfo("Asia/Shanghai")).timestamp()
BATCH = 1000


@functools.lru_cache(maxsize=None)
def callers(n: int = BATCH, seed: int = 1) -> tuple[str, ...]:
    """Realistic normalised callers (mobiles and fixed lines from every province)."""
    from tel400.simulate import CallerSampler

    sampler = CallerSampler(tel400.default_segments(), random.Random(seed))
    out = []
    while len(out) < n:
        c = sampler.caller()
        if c != "anonymous":
            out.append(c)
    return tuple(out)


def manual_plans() -> tel400.PlanSet:
    """The manual's plan with its daily calls cap raised out of reach, so that
    the benchmark measures counting, not refusing."""
    tree = tel400.load_plans(MANUAL).to_dict()
    tree["numbers"][0]["caps"][0]["limit"] = 10**12
    return tel400.PlanSet.from_dict(tree)


@functools.lru_cache(maxsize=None)
def many_plans(n_plans: int, n_rules: int = 20, seed: int = 1) -> tel400.PlanSet:
    """``n_plans`` numbers of ``n_rules`` rules each: provinces, slots, days, 2 targets, a cap."""
    return tel400.PlanSet.from_dict({"numbers": list(many_plan_tables(n_plans, n_rules, seed))})


def many_plan_tables(n_plans: int, n_rules: int = 20, seed: int = 1):
    """The number tables of :func:`many_plans`, one at a time (for JSON Lines and stores)."""
    rng = random.Random(seed)
    for i in range(n_plans):
        rules = [generate.random_rule(rng, k) for k in range(n_rules)]
        yield {
            "number": f"400{i:07d}",
            "rules": rules,
            "caps": [{"metric": "calls", "per": "day", "limit": 10**12}],
        }


def write_many_plans_jsonl(path, n_plans: int, n_rules: int = 5, seed: int = 1) -> None:
    """:func:`many_plan_tables` as JSON Lines (one number a line), what ``tel400 store import`` reads."""
    import json

    with open(path, "w") as fh:
        for table in many_plan_tables(n_plans, n_rules, seed):
            fh.write(json.dumps(table, separators=(",", ":")) + "\n")


def many_trees(n_plans: int, n_rules: int = 20, seed: int = 1) -> list[dict]:
    """The plan trees of :func:`many_plans`, not validated."""
    return list(many_plan_tables(n_plans, n_rules, seed))


def dialed_sample(n_plans: int, n: int = BATCH, seed: int = 2) -> tuple[str, ...]:
    rng = random.Random(seed)
    return tuple(f"400{rng.randrange(n_plans):07d}" for _ in range(n))


def dialed_skewed(n_plans: int, n: int = BATCH, seed: int = 3) -> tuple[str, ...]:
    """Dialed numbers with Zipf-like popularity (s = 1), as real 400 traffic is."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(n_plans)]
    picks = rng.choices(range(n_plans), weights=weights, k=n)
    return tuple(f"400{i:07d}" for i in picks)
