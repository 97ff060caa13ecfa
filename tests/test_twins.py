"""The compiled pieces one by one against the reference pieces and oracles."""

from __future__ import annotations

import array
import datetime as dt
import zoneinfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tel400 import _impl, _select_py
from tel400.workdays import OfficialCalendar

pytestmark = pytest.mark.skipif("cython" not in _impl.ENGINES, reason="needs the compiled twins")

names = st.lists(st.from_regex(r"\A1[3-9][0-9]{9}\Z"), min_size=1, max_size=8, unique=True)
weights_for = lambda n: st.lists(st.integers(0, 9), min_size=n, max_size=n).filter(any)  # noqa: E731


@given(st.data(), names, st.lists(st.text(max_size=12), min_size=1, max_size=20))
def test_sticky_twins_are_bit_identical(data, targets, callers):
    from tel400._fast import _select

    weights = data.draw(weights_for(len(targets)))
    reference = _select_py.Sticky(targets, weights)
    compiled = _select.Sticky(targets, weights)
    for caller in callers:
        assert compiled.order(caller, _select.FastRandom(1)) == reference.order(caller, None)


@given(st.data(), names, st.integers(1, 60))
def test_round_robin_twins_give_the_same_sequence(data, targets, calls):
    from tel400._fast import _select

    weights = data.draw(weights_for(len(targets)))
    reference = _select_py.RoundRobin(targets, weights, array.array("q", bytes(8 * len(targets))))
    compiled = _select.RoundRobin(targets, weights)
    rng = _select.FastRandom(1)
    for _ in range(calls):
        assert compiled.order("x", rng, False) == reference.order("x", None, False)  # a peek changes nothing
        assert compiled.order("x", rng) == reference.order("x", None)
    assert list(compiled.state) == list(reference.state)


@given(st.data(), names)
def test_weighted_twins_offer_the_same_orders(data, targets):
    from tel400._fast import _select

    weights = data.draw(weights_for(len(targets)))
    expected = set(_select_py.orders_by_pick(targets, weights)[i] for i, w in enumerate(weights) if w)
    compiled = _select.Weighted(targets, weights)
    rng = _select.FastRandom(5)
    seen = {compiled.order("x", rng) for _ in range(400)}
    assert seen <= expected
    assert len(seen) == len(expected) or min(weights[i] for i, w in enumerate(weights) if w) * 400 < sum(weights) * 3


ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC"]


@settings(max_examples=500)
@given(st.sampled_from(ZONES), st.floats(-2e9, 5e9, allow_nan=False))
def test_zone_tables_agree_with_datetime(zone, ts):
    from tel400._fast import _clock

    table = _clock.zone_table_for(zone)
    local = dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(zone))
    assert table.local(ts) == (local.toordinal(), local.weekday(), local.hour * 60 + local.minute,
                               local.hour, local.year, local.month)


@given(st.lists(st.dates(dt.date(2024, 1, 1), dt.date(2028, 12, 31)), max_size=6, unique=True),
       st.lists(st.sampled_from([2027, 2028]), max_size=1), st.dates(dt.date(2003, 6, 1), dt.date(2029, 6, 30)))
def test_calendar_tables_agree_with_the_calendar(days, years, day):
    from tel400._fast import _clock

    holidays, workdays = days[: len(days) // 2], days[len(days) // 2:]
    calendar = OfficialCalendar(holidays, workdays, years)
    table = _clock.calendar_table_for(calendar)
    assert table.workday(day.toordinal()) == calendar.is_workday(day.toordinal())


@given(st.lists(st.integers(0, 10**11 - 1), max_size=40, unique=True), st.integers(0, 10**11 - 1))
def test_bucketed_lookup_at_bucket_edges(starts, key):
    """Interval starts on and around the four-digit bucket boundaries."""
    import bisect

    from tel400._fast import _segments

    span = 10**7
    starts = sorted({0} | set(starts) | {s // span * span for s in starts} | {s // span * span - 1 for s in starts if s >= span})
    codes = [i % 30 + 1 for i in range(len(starts))]
    lookup = _segments.IntervalLookup(starts, codes)
    for k in (key, key // span * span, key // span * span - 1, min(key // span * span + span, 10**11 - 1)):
        if k >= 0:
            assert lookup.index_of_key(k) == codes[bisect.bisect_right(starts, k) - 1]


# --- memory:// counters: the same answers, sizes and refusals at the bound ---------------------

_counter_ops = st.one_of(
    st.tuples(st.just("acquire"), st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 4),
                                                     st.integers(0, 2)), min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("add"), st.integers(0, 5), st.integers(0, 3), st.integers(0, 90)),
    st.tuples(st.just("pin"), st.integers(0, 3), st.integers(0, 20)),
    st.tuples(st.just("clear"), st.integers(0, 3)),
    st.tuples(st.just("tick"), st.integers(1, 40)),
)


def _apply(counters, op, now):
    from tel400.counters import CapCheck

    kind = op[0]
    if kind == "acquire":
        checks = [CapCheck(f"k{k}", p, limit, inc, 30) for k, p, limit, inc in op[1]]
        return counters.acquire(checks, dry_run=op[2])
    if kind == "add":
        return counters.add(f"k{op[1]}", op[2], op[3], 30)
    if kind == "pin":
        return counters.add_pin_failure(f"p{op[1]}", now[0] + op[2], 10)
    return counters.clear_pin_failures(f"p{op[1]}")


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.lists(_counter_ops, max_size=80))
def test_memory_counter_twins_agree_at_the_bound(max_keys, ops):
    """Periods, expiry, the max_keys bound and its refusals: the same in both, after every operation."""
    from tel400 import BackendError

    now = [0.0]
    twins = [impl.MemoryCounters(clock=lambda: now[0], max_keys=max_keys) for impl in _impl.ENGINES.values()]
    for op in ops:
        if op[0] == "tick":
            now[0] += op[1]
            continue
        answers = []
        for counters in twins:
            try:
                answers.append(_apply(counters, op, now))
            except BackendError as exc:
                answers.append(str(exc))
        assert answers[0] == answers[1], op
        assert [len(c) for c in twins] == [len(twins[0])] * 2
        assert twins[0].refused == twins[1].refused
    for counters in twins:
        counters._check()
    values = [[c.value(f"k{k}", p) for k in range(6) for p in range(4)] for c in twins]
    pins = [[c.pin_failures(f"p{k}", now[0], 10) for k in range(4)] for c in twins]
    assert values[0] == values[1] and pins[0] == pins[1]
