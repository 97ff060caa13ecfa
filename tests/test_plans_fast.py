"""The validator's fast path against the precise parser: same plans, same errors.

tel400._plans_fast accepts the common shapes of a plan and hands everything
else to plans._Parser; these tests feed both the same generated trees (valid
ones, ones with a mistake, hostile values anywhere) and demand an equal
NumberPlan (compared type by type: True is not 1, Decimal("5") is not
Decimal("5.0")) or the same error text.  They also check that the fast path
really takes the shapes plans are written in, so that the comparison is not
vacuous and the speed does not quietly go.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import sys
import types
from decimal import Decimal

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tel400
from tel400 import _impl, _plans_fast, limits, plans

from .conftest import EXAMPLES

#: Every fast path importable here: the reference module and its compiled twin.
FAST_PATHS = [_plans_fast]
if _impl.CYTHON is not None:
    from tel400._fast import _plans as _compiled_plans

    FAST_PATHS.append(_compiled_plans)
FAST_IDS = [m.__name__ for m in FAST_PATHS]

SETTINGS = tel400.PlanSet()
CALENDAR = tel400.PlanSet().calendar


class Text(str):
    """A str subclass: the parser takes it (isinstance), the fast path leaves it to the parser."""


# --- comparing outcomes ----------------------------------------------------------


def canonical(value):
    """A value with every type spelled out, so that equal-but-different (1 and True) differ."""
    if attrs.has(type(value)):
        return (type(value).__name__, tuple(canonical(getattr(value, f.name)) for f in attrs.fields(type(value))))
    if isinstance(value, frozenset):
        return ("frozenset", tuple(sorted(canonical(v) for v in value)))
    if isinstance(value, tuple):
        return tuple(canonical(v) for v in value)
    return (type(value).__name__, repr(value))


def outcome(call):
    try:
        return ("plan", canonical(call()))
    except tel400.PlanError as exc:
        return ("PlanError", str(exc), exc.number, exc.rule, exc.field)
    except Exception as exc:  # the parser's own behaviour on odd input, whatever it is, must not change
        return (type(exc).__name__, str(exc))


def precise(raw, index=0):
    return outcome(lambda: plans._Parser("plans.json").number_plan(raw, index, CALENDAR))


def checked(raw, index=0):
    return outcome(lambda: plans.validate_number(raw, SETTINGS, source="plans.json", index=index))


# --- generated plan trees -----------------------------------------------------

HOSTILE = st.sampled_from([
    None, True, False, 0, 1, -1, 2**70, 1.5, float("nan"), "", " ", "x" * 80, "🙂", [], {}, [None], {"a": 1},
    Decimal("1"), Text("r1"), types.MappingProxyType({"to": "1"}), ("a",), dt.date(2026, 5, 1),
]) | st.integers() | st.text(max_size=6)


def pick(valid, wrong=(), bad=False):
    """One of ``valid``; when ``bad``, now and then a plausible mistake or anything hostile."""
    good = st.sampled_from(valid)
    if not bad:
        return good
    mistakes = st.sampled_from(wrong) if wrong else HOSTILE
    return st.one_of(good, good, good, good, good, good, mistakes, HOSTILE)


def table(required: dict, optional: dict, bad: bool):
    """A dict of the required keys and any of the optional ones (when ``bad``, maybe a key that does not belong)."""
    extra = {"priority": HOSTILE} if bad else {}
    return st.fixed_dictionaries(required, optional={**optional, **extra}).map(dict)


def maybe_hostile(strategy, bad: bool):
    return st.one_of(strategy, strategy, strategy, strategy, HOSTILE) if bad else strategy


def targets(bad: bool):
    target = st.one_of(
        pick(("13901010001", "13901010002", "agent@pbx.example.com:5060", "desk@10.0.0.5", "+8613901010003", "*86"),
             ("user@host:99999", "bad target", "13901010001;x"), bad),
        table({"to": pick(("13901010001", "13901010004", "q@x", "#100"), ("user@host:0", ""), bad)},
              {"weight": pick((0, 1, 5, 70, limits.MAX_WEIGHT), (-1, True, 1.0, limits.MAX_WEIGHT + 1), bad)}, bad),
    )
    unique = None if bad else (lambda t: t if isinstance(t, str) else t["to"])
    return maybe_hostile(st.lists(target, min_size=0 if bad else 1, max_size=4, unique_by=unique), bad)


def rule(bad: bool):
    conditions = {
        "name": pick(("r1", "r2", "office", "夜间", "night.shift:2"), ("bad name", "", "x" * 65), bad),
        "provinces": pick(("CN-BJ", "北京", ("CN-BJ", "浙江"), ("Beijing", "beijing", "CN-BJ"), ("Zhejiang",) * 3),
                          ((), ("Atlantis",), (1,)), bad).map(lambda v: list(v) if isinstance(v, tuple) else v),
        "days": pick(("mon-fri", "workday", "sat,sun", "any", "fri-mon", "workday,holiday", ("mon", "tue")),
                     ("funday", ""), bad).map(lambda v: list(v) if isinstance(v, tuple) else v),
        "time": pick(("09:00-18:00", "9:00-18:00", "20:00-07:59", "08:00-11:59,14:00-17:59", ("09:00-10:00",),
                      "09:00-18:00 ", "23:59-00:00"), ("25:00-26:00", "09:00"), bad).map(
                          lambda v: list(v) if isinstance(v, tuple) else v),
        "dates": pick(("2026-01-01..2026-12-31", "2026-05-01", ("2026-05-01",), dt.date(2026, 5, 1)),
                      ("2026-12-31..2026-01-01", "May Day"), bad).map(lambda v: list(v) if isinstance(v, tuple) else v),
        "channel": pick(("voice", "sms", "any"), ("fax",), bad),
    }
    kinds = [
        table({"targets": targets(bad)}, {**conditions, "action": pick(("bridge",)),
              "strategy": pick(("weighted", "round_robin", "sequential", "sticky"), ("random",), bad)}, bad),
        table({"action": pick(("reject",))}, {**conditions, "prompt": pick(("closed", "night.wav"), ("bad;",), bad)}, bad),
        table({"action": pick(("queue",)), "queue": pick(("sales", 7), ("bad queue",), bad)}, conditions, bad),
        table({"action": pick(("conference",)), "room": pick(("r100", 100), ("",), bad)}, conditions, bad),
    ]
    if bad:  # any field with any action
        kinds.append(table({}, {**conditions, "action": pick(("bridge", "teleport")), "targets": targets(bad),
                                "queue": pick(("sales",)), "prompt": pick(("closed",))}, bad))
    return st.one_of(*kinds)


def cap(bad: bool):
    calls = table({"metric": pick(("calls",)), "per": pick(("hour", "day", "week", "month"), ("year",), bad),
                   "limit": pick((0, 100, 10**12), (10**13, -1, 1.5, "5"), bad)},
                  {"scope": pick(("number", "caller"), ("world",), bad), "prompt": pick(("limit",), ("bad;",), bad),
                   "channel": pick(("voice", "sms", "any"), ("fax",), bad)}, bad)
    minutes = table({"metric": pick(("minutes",)), "per": pick(("day",)),
                     "limit": pick(("5", "1.5", 1.5, 100, "1e3", Decimal("2.5")), (-1, "x", True), bad)}, {}, bad)
    return st.one_of(calls, calls, minutes)


def number(bad: bool):
    unique = None if bad else (lambda r: r.get("name"))
    return table(
        {"number": pick(("4001012345", "400-101-2345", 4001012345, "4001012346"), ("+8613901012345", "12"), bad)},
        {
            "timezone": pick(("Asia/Shanghai", "Europe/London"), ("Nowhere/Zone", "America", "../etc/passwd"), bad),
            "rules": maybe_hostile(st.lists(rule(bad), min_size=0 if bad else 1, max_size=4, unique_by=unique), bad),
            "default": maybe_hostile(st.one_of(
                table({}, {"action": pick(("reject",)), "prompt": pick(("closed",), ("bad;",), bad)}, bad),
                table({"action": pick(("bridge",)), "targets": targets(bad)}, {}, bad),
            ), bad),
            "caps": maybe_hostile(st.lists(cap(bad), max_size=3), bad),
            "prompts": pick(({"closed": "c1"},), ({"unknown_number": "x"}, {"bogus": "x"}, {"closed": "bad;"}), bad),
            "pin": pick(("1234", "12345678"), (1234, "12"), bad),
            "reject_unknown_callers": pick((True, False), (1,), bad),
            "on_backend_error": pick(("allow", "reject"), ("x",), bad),
            "tariff": pick(({"local": "0.1", "long_distance": "0.3"},), ({"local": 1},), bad),
            "calendar": pick(({"holidays": ["2026-10-09"]}, {"years": [2027]}), ({"holidays": ["1900-01-01"]},), bad),
            "blacklist": pick((["13901010001", "1710*"],), (["bad"], "13901010001"), bad),
        },
        bad,
    )


#: Valid plans, and plans with mistakes and hostile values anywhere.
NUMBER = st.one_of(number(False), number(True))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NUMBER, st.integers(0, 3))
def test_fast_path_gives_what_the_parser_gives(raw, index):
    assert checked(raw, index) == precise(raw, index)


@pytest.mark.parametrize("fast_path", FAST_PATHS, ids=FAST_IDS)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=NUMBER)
def test_whatever_the_fast_path_accepts_the_parser_accepts_alike(fast_path, raw):
    try:
        fast = fast_path.number_plan(raw, plans._Parser(None), CALENDAR)
    except Exception:
        return
    assert ("plan", canonical(fast)) == precise(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(NUMBER, max_size=4))
def test_plan_sets_and_refused_numbers_alike(numbers):
    tree = {"numbers": numbers}
    refused_fast: dict = {}
    refused_precise: dict = {}
    fast = outcome(lambda: tel400.PlanSet.from_dict(tree, source="plans.json", refused=refused_fast))
    assert fast == outcome(lambda: _precise_parser().plan_set(tree, None, refused_precise))
    assert {k: str(v) for k, v in refused_fast.items()} == {k: str(v) for k, v in refused_precise.items()}
    assert outcome(lambda: tel400.PlanSet.from_dict(tree, source="plans.json")) == outcome(
        lambda: _precise_parser().plan_set(tree, None)
    )


def _precise_parser():
    """A parser that walks every number precisely (what from_dict did before the fast path)."""
    parser = plans._Parser("plans.json")
    parser.checked_number_plan = parser.number_plan
    return parser


# --- the JSON path ----------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NUMBER)
def test_json_text_gives_what_json_loads_gives(raw):
    try:
        text = json.dumps(raw, default=str, ensure_ascii=False)
    except ValueError:  # a float nan is written NaN: still JSON to json.loads
        return
    expected = outcome(lambda: plans.validate_number(json.loads(text), SETTINGS, source="s"))
    assert outcome(lambda: plans.validate_number_json(text.encode(), SETTINGS, source="s")) == expected
    assert outcome(lambda: plans.validate_number_json(text, SETTINGS, source="s")) == expected


@pytest.mark.parametrize("text", [
    b'{"number": "4001012345", "rules": [{"targets": ["1"], "name": NaN}]}',  # json.loads reads NaN
    b'{"number": "4001012345", "rules": [{"targets": ["\\ud800"]}]}',  # a lone surrogate
    '{"number": "4001012345", "caps": [{"metric": "minutes", "per": "day", "limit": 1e400}]}'.encode(),
    '{"number": "4001012345"}'.encode("utf-16"),
    b'{"number": "4001012345", "number": "4001012346"}',
    b'{"number": "4001012345", "rules": [{"targets": [{"to": "1", "weight": 1' + b"0" * 5000 + b"}]}]}",
])
def test_json_texts_msgspec_reads_differently_or_not_at_all(text):
    try:
        tree = json.loads(text)
    except ValueError as exc:
        expected = ("PlanError", f"s: invalid JSON: {exc}", None, None, None)
    else:
        expected = outcome(lambda: plans.validate_number(tree, SETTINGS, source="s"))
    assert outcome(lambda: plans.validate_number_json(text, SETTINGS, source="s")) == expected


@pytest.mark.parametrize("text, fragment", [
    (b'{"number": "4001012345",', "s: invalid JSON at line 1 column 25: Expecting property name"),
    (b"\xff", "s: invalid JSON: "),
])
def test_json_that_is_not_json(text, fragment):
    with pytest.raises(tel400.PlanError) as info:
        plans.validate_number_json(text, SETTINGS, source="s")
    assert str(info.value).startswith(fragment)


# --- the fast path takes what plans are made of -----------------------------------------


def example_numbers():
    for path in sorted(pathlib.Path(EXAMPLES).glob("*.toml")):
        for raw in tel400.loading.parse_text(path.read_text(), "toml", str(path)).get("numbers", []):
            yield pytest.param(raw, id=f"{path.name}:{raw.get('number')}")


@pytest.mark.parametrize("fast_path", FAST_PATHS, ids=FAST_IDS)
@pytest.mark.parametrize("raw", list(example_numbers()))
def test_the_examples_take_the_fast_path(fast_path, raw):
    """Every example number takes the fast path (queues, conferences, PINs, caps, prompts, tariffs...)."""
    plan = fast_path.number_plan(raw, plans._Parser(None), CALENDAR)
    assert ("plan", canonical(plan)) == precise(raw)


@pytest.mark.parametrize("fast_path", FAST_PATHS, ids=FAST_IDS)
def test_the_benchmark_shape_takes_the_fast_path(fast_path):
    raw = {
        "number": "4000000001",
        "rules": [{"name": f"r{k}", "provinces": ["CN-BJ", "CN-ZJ", "CN-GD"], "time": "09:00-18:00", "days": "mon-fri",
                   "targets": [{"to": "13901010001", "weight": 3}, {"to": "13901010002", "weight": 7}]} for k in range(5)],
        "caps": [{"metric": "calls", "per": "day", "limit": 10**12}],
    }
    plan = fast_path.number_plan(raw, plans._Parser(None), CALENDAR)
    assert ("plan", canonical(plan)) == precise(raw)
    assert plan.rules[0].name is sys.intern("r0")


def test_rule_names_are_interned_on_both_paths():
    name = "".join(["off", "ice"])  # built at run time: not interned by the compiler
    raw = {"number": "4001012345", "rules": [{"name": name, "targets": ["1"]}]}
    assert plans.validate_number(raw, SETTINGS).rules[0].name is sys.intern("office")
    for fast_path in FAST_PATHS:
        fast_path.clear_caches()
    assert plans.validate_number(raw, SETTINGS).rules[0].name is sys.intern("office")


@pytest.mark.parametrize("fast_path", FAST_PATHS, ids=FAST_IDS)
def test_memos_are_bounded(fast_path):
    """A memo that reaches its size is emptied, never grows past it."""
    fast_path.clear_caches()
    size = limits.VALIDATION_CACHE_ENTRIES
    most = 0
    for minute in range(size + 5):
        start = minute % 1440
        rule = {"name": f"r{minute}", "time": f"{start // 60:02d}:{start % 60:02d}-{(minute // 1440) % 24:02d}:00",
                "targets": [f"1390{minute:07d}"]}
        fast_path.number_plan({"number": "4001012345", "rules": [rule]}, plans._Parser(None), CALENDAR)
        most = max(most, *fast_path.memo_lengths().values())
    assert size // 2 < most <= size


def test_many_generated_numbers_alike():
    """Plans shaped like the benchmark's (bench/test_bench_validate.py), 300 numbers of 5 rules: equal plans."""
    import random

    from tel400 import provinces

    rng = random.Random(7)
    codes = [c for c in provinces.CODES if c]
    for i in range(300):
        raw = {
            "number": f"400{i:07d}",
            "rules": [
                {
                    "name": f"r{k}",
                    "provinces": rng.sample(codes, 3),
                    "time": f"{rng.randrange(24):02d}:{rng.randrange(60):02d}-{rng.randrange(24):02d}:{rng.randrange(60):02d}",
                    "days": rng.choice(["mon-fri", "workday", "sat,sun", "any"]),
                    "targets": [{"to": f"139{rng.randrange(10**8):08d}", "weight": rng.randrange(1, 10)} for _ in range(2)],
                }
                for k in range(5)
            ],
            "caps": [{"metric": "calls", "per": "day", "limit": 10**12}],
        }
        for fast_path in FAST_PATHS:
            fast = fast_path.number_plan(raw, plans._Parser(None), CALENDAR)
            assert ("plan", canonical(fast)) == precise(raw)


@pytest.mark.parametrize("fast_path", FAST_PATHS, ids=FAST_IDS)
def test_plans_are_freed_and_compiled_ones_left_to_reference_counting(fast_path):
    """The compiled fast path's plan objects are not tracked by the collector (they cannot form cycles;
    the reference module has no way to say so); either way they are freed when the last reference goes."""
    import gc
    import weakref

    raw = {"number": "4001012345", "rules": [{"name": "r", "time": "09:00-18:00", "provinces": ["CN-BJ"],
                                              "targets": [{"to": "13901010001", "weight": 2}]}],
           "caps": [{"metric": "calls", "per": "day", "limit": 5}]}
    plan = fast_path.number_plan(raw, plans._Parser(None), CALENDAR)
    rule = plan.rules[0]
    if fast_path is not _plans_fast:
        for obj in (plan, plan.rules, rule, rule.action, rule.action.targets, rule.action.targets[0], rule.time,
                    rule.time.slots, rule.provinces, plan.caps, plan.caps[0]):
            assert not gc.is_tracked(obj), obj
    assert ("plan", canonical(plan)) == precise(raw)
    gone = weakref.ref(rule.action.targets[0])
    del plan, rule
    assert gone() is None


def test_a_rule_name_of_a_str_subclass_is_a_plain_interned_name():
    """Python callers may hand in str subclasses; sys.intern refused them with a TypeError."""
    raw = {"number": "4001012345", "rules": [{"name": Text("office"), "targets": ["1"]}]}
    name = plans.validate_number(raw, SETTINGS).rules[0].name
    assert type(name) is str and name is sys.intern("office")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=number(False))
def test_the_dumped_tree_is_the_references_key_by_key(raw):
    """plans.dumped_plan (the compiled twin's dump_plan where built) against plans._dump_plan,
    keys in the same order (stores sort them; PlanSet.to_dict's users may not), for plans from
    the fast path and from the precise parser (whose objects the twin hands to the reference)."""
    try:
        made = [plans.validate_number(raw, SETTINGS), plans._Parser(None).number_plan(raw, 0, CALENDAR)]
    except tel400.PlanError:
        return
    for plan in made:
        dumped = plans.dumped_plan(plan)
        assert json.dumps(dumped) == json.dumps(plans._dump_plan(plan))
        assert plans.validate_number(dumped, SETTINGS) == plan  # what the stores keep reads back the same


def test_the_benchmark_shape_is_dumped_by_the_compiled_twin(monkeypatch):
    """The twin really dumps the common shape (else the comparison above would be vacuous)."""
    raw = {
        "number": "4000000001",
        "rules": [{"name": "r0", "provinces": ["CN-BJ", "CN-ZJ"], "time": "09:00-18:00", "days": "mon-fri",
                   "targets": [{"to": "13901010001", "weight": 3}, {"to": "13901010002", "weight": 7}]}],
        "caps": [{"metric": "calls", "per": "day", "limit": 10**12}],
    }
    plan = plans.validate_number(raw, SETTINGS)
    expected = plans._dump_plan(plan)
    if plans._fast_path() is _plans_fast:
        assert not hasattr(_plans_fast, "dump_plan")  # the reference dumps
    else:
        monkeypatch.setattr(plans, "_dump_plan", lambda plan: pytest.fail("the reference was asked"))
    assert plans.dumped_plan(plan) == expected
    assert expected["rules"][0]["provinces"] == ["CN-BJ", "CN-ZJ"] and expected["caps"][0]["limit"] == 10**12
