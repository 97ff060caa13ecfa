"""The plan store at scale: a bulk import, and one number's write beside many.

    .venv/bin/pytest bench/test_bench_store.py --benchmark-enable

The import is timed per 2,000 numbers × 5 rules (the tables of
``_inputs.many_plans`` as JSON Lines); the one-number write and read are
timed in stores of 1,000 and 10,000 numbers, whose ratio should stay near 1
(a return to whole-store reads makes it ~10).  docs/performance.md ("Store
import and the change log") has the 100,000-number figures.
"""

from __future__ import annotations

import copy
import json

import pytest
from _inputs import many_plan_tables, write_many_plans_jsonl

import tel400
from tel400.stores import import_jsonl

IMPORTED = 2_000


def test_store_import_jsonl(benchmark, tmp_path):
    path = tmp_path / "plans.jsonl"
    write_many_plans_jsonl(path, IMPORTED, 5)
    store = tel400.SqliteStore(tmp_path / "plans.db")

    benchmark.extra_info.update(impl="sqlite", calls=IMPORTED)
    benchmark.pedantic(lambda: import_jsonl(store, path, actor="bench"), rounds=3, iterations=1)
    assert store.count() == IMPORTED


@pytest.fixture(scope="module", params=[1_000, 10_000])
def filled(request, tmp_path_factory):
    store = tel400.SqliteStore(tmp_path_factory.mktemp("store") / "plans.db")
    tables = ((f"t[{i}]", t) for i, t in enumerate(many_plan_tables(request.param, 5)))
    store.import_numbers({}, tables, actor="bench", workers=2)
    return request.param, store


def test_store_put_one_number(benchmark, filled):
    size, store = filled
    plan = json.loads(json.dumps(next(many_plan_tables(1, 5))))

    def put():
        store.put_number(copy.deepcopy(plan), actor="bench")

    benchmark.extra_info.update(impl="sqlite", numbers=size, calls=1)
    benchmark.pedantic(put, rounds=10, iterations=1)


def test_store_changes_since_one(benchmark, filled):
    size, store = filled
    store.put_number(next(many_plan_tables(1, 5)), actor="bench")
    version = store.version() - 1

    benchmark.extra_info.update(impl="sqlite", numbers=size, calls=1)
    changes = benchmark(lambda: store.changes_since(version))
    assert changes.numbers == {"4000000000"}
