"""The compiled engine's number index (route() reads it instead of by_number): it leads to exactly
what by_number holds, whatever put/remove/put_entry/drop_entry did, in both engines' terms."""

from __future__ import annotations

import random

import pytest

import tel400
from tel400 import _impl
from tel400.calls import CallRegistry
from tel400.router import _dismantle, _kept_of, _prefixes_of, _restore_entry
from tel400.shared import Shared

from .conftest import at, plans_from

BJ = "13901012345"
TUESDAY_10 = at(2026, 11, 24, 10, 0)

#: Numbers an index keyed by digits could confuse: leading zeros, short numbers, one digit more or
#: less, the longest it keys (17 digits) and longer ones it leaves to by_number.
TRICKY = ("123", "123000", "95555", "0101234567", "101234567", "01012345678", "1012345678", "4001012345",
          "12345678901234567", "123456789012345678", "12345678901234567890")


def queue_plan(number: str, queue: str):
    return plans_from({"numbers": [{"number": number, "default": {"action": "queue", "queue": queue}}]}).numbers[0]


def empty_engine(impl):
    plans = plans_from({"numbers": []})
    shared = Shared(impl.MemoryCounters(), random.Random(0), CallRegistry())
    return impl.Engine(plans, _prefixes_of(plans), shared)


def routes_to(engine, dialed: str, **kwargs):
    decision = engine.route(dialed, BJ, at=TUESDAY_10, **kwargs)
    return decision.targets[0] if decision.reason == "ok" else decision.reason


def test_numbers_that_differ_only_in_length_or_leading_zeros_each_find_their_own_plan(impl):
    engine = empty_engine(impl)
    for number in TRICKY:
        engine.put(queue_plan(number, f"q{number}"))
    engine._check()
    for number in TRICKY:
        decision = engine.route(number, BJ, at=TUESDAY_10)
        assert decision.targets == (f"q{number}",) and decision.number == number
    for absent in ("1230", "0101234568", "4001012346", "1234567890123456", "12345678901234568", "1234567890123456789"):
        assert routes_to(engine, absent) == "unknown_number"


def test_many_puts_and_removes_leave_the_index_leading_to_what_by_number_holds(impl):
    """Thousands of numbers put, replaced and removed in a random order (the table grows past its
    first sizes, probes collide, removals shift entries back): every number routes by its last plan."""
    rnd = random.Random(12)
    engine = empty_engine(impl)
    pool = [f"400{rnd.randrange(10**7):07d}" for _ in range(3000)] + list(TRICKY)
    expected: dict[str, str] = {}
    for step in range(12000):
        number = rnd.choice(pool)
        if rnd.random() < 0.35:
            engine.remove(number)
            expected.pop(number, None)
        else:
            engine.put(queue_plan(number, f"q{step}"))
            expected[number] = f"q{step}"
        if step % 3000 == 0:
            engine._check()
    engine._check()
    assert set(engine.by_number) == set(expected)
    for number in pool:
        assert routes_to(engine, number) == expected.get(number, "unknown_number")


def test_a_whole_compile_indexes_every_number(impl):
    numbers = [f"400{i:07d}" for i in range(0, 50_000, 7)] + list(TRICKY)
    plans = plans_from({"numbers": [{"number": n, "default": {"action": "queue", "queue": f"q{n}"}} for n in numbers]})
    engine = impl.Engine(plans, _prefixes_of(plans), Shared(impl.MemoryCounters(), random.Random(0), CallRegistry()))
    engine._check()
    for number in numbers[::97] + list(TRICKY):
        assert routes_to(engine, number) == f"q{number}"


def test_sms_and_unnormalised_dialed_numbers_still_find_the_plan(impl):
    engine = empty_engine(impl)
    engine.put(queue_plan("4001012345", "q"))
    engine.put(queue_plan("10657", "short"))
    assert routes_to(engine, "106574001012345", channel="sms") == "q"  # 10657 + the number
    assert routes_to(engine, "10657", channel="sms") == "short"
    assert routes_to(engine, "+86 400-101-2345") == "q"
    assert engine.route("400-101-2345", BJ, at=TUESDAY_10).number == "4001012345"
    engine.remove("4001012345")
    assert routes_to(engine, "106574001012345", channel="sms") == "unknown_number"
    assert routes_to(engine, "4001012345") == "unknown_number"


def test_the_routers_undo_and_dismantle_keep_the_index_in_step(impl):
    engine = empty_engine(impl)
    engine.put(queue_plan("4001012345", "old"))
    kept = _kept_of(engine, "4001012345")
    engine.put(queue_plan("4001012345", "new"))
    _restore_entry(engine, "4001012345", kept)
    engine._check()
    assert routes_to(engine, "4001012345") == "old"
    gone = _kept_of(engine, "4009999999")
    engine.put(queue_plan("4009999999", "added"))
    _restore_entry(engine, "4009999999", gone)  # it had no entry: removed again
    engine._check()
    assert routes_to(engine, "4009999999") == "unknown_number"
    _dismantle(engine)
    engine._check()
    assert not engine.by_number and routes_to(engine, "4001012345") == "unknown_number"


def test_put_entry_takes_only_the_entry_of_that_number(impl):
    engine = empty_engine(impl)
    engine.put(queue_plan("4001012345", "q"))
    entry = engine.by_number["4001012345"]
    with pytest.raises(TypeError):
        engine.put_entry("4009999999", entry)
    with pytest.raises(TypeError):
        engine.put_entry("4001012345", object())
    engine._check()


@pytest.mark.skipif(_impl.CYTHON is None, reason="the compiled engine is not built here")
def test_check_catches_an_index_out_of_step():
    """_check compares the index with by_number (by_number changed behind the engine's back)."""
    engine = empty_engine(_impl.CYTHON)
    engine.put(queue_plan("4001012345", "q"))
    engine.put(queue_plan("4007654321", "r"))
    entry = engine.by_number.pop("4001012345")
    with pytest.raises(AssertionError, match="index"):
        engine._check()
    engine.by_number["4001012345"] = entry
    engine._check()
    other = empty_engine(_impl.CYTHON)
    other.put(queue_plan("4001012345", "q"))
    engine.by_number["4001012345"] = other.by_number["4001012345"]  # an equal plan, not the one indexed
    with pytest.raises(AssertionError, match="index"):
        engine._check()
    engine.by_number["4001012345"] = entry


def test_a_router_routes_every_tricky_number_to_its_own_plan(impl):
    tree = {"numbers": [{"number": n, "default": {"action": "queue", "queue": f"q{n}"}} for n in TRICKY]}
    router = tel400.Router(plans_from(tree), implementation=impl.name)
    for number in TRICKY:
        assert router.route(number, BJ, at=TUESDAY_10).targets == (f"q{number}",)


def test_numbers_given_as_a_str_subclass_change_the_index_with_by_number(impl):
    """remove/drop_entry/put_entry with an equal str subclass: by_number matches it by equality,
    so the index must follow (it held a pointer to the freed plan: a crash at the next route)."""

    class Digits(str):
        pass

    engine = empty_engine(impl)
    engine.put(queue_plan("4001012345", "q"))
    engine.remove(Digits("4001012345"))
    engine._check()
    assert routes_to(engine, "4001012345") == "unknown_number"
    engine.put(queue_plan("4001012345", "q"))
    kept = engine.by_number["4001012345"]
    engine.put(queue_plan("4001012345", "r"))
    engine.put_entry(Digits("4001012345"), kept)
    engine._check()
    assert routes_to(engine, "4001012345") == "q"
    engine.drop_entry(Digits("4001012345"))
    engine._check()
    assert routes_to(engine, "4001012345") == "unknown_number"
