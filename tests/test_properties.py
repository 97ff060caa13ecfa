"""Property tests: the router against slow, obvious oracles."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import Counter

import chinese_calendar
from hypothesis import given, settings
from hypothesis import strategies as st

import tel400

from .conftest import one_number

ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kathmandu"]
DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

clock = st.tuples(st.integers(0, 23), st.integers(0, 59))
day_tokens = st.lists(
    st.sampled_from(DAY_NAMES + ["workday", "holiday", "mon-fri", "sat,sun", "fri-mon"]), min_size=1, max_size=3
)
# Instants within the years the calendar package covers, so the oracle can ask it.
instants = st.datetimes(
    min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2026, 12, 31), timezones=st.just(dt.timezone.utc)
)


def oracle_days(tokens, local: dt.datetime) -> bool:
    name = DAY_NAMES[local.weekday()]
    for token in ",".join(tokens).split(","):
        if token == "workday" and chinese_calendar.is_workday(local.date()):
            return True
        if token == "holiday" and not chinese_calendar.is_workday(local.date()):
            return True
        if "-" in token:
            first, last = token.split("-")
            i = DAY_NAMES.index(first)
            while True:
                if DAY_NAMES[i] == name:
                    return True
                if DAY_NAMES[i] == last:
                    break
                i = (i + 1) % 7
        elif token == name:
            return True
    return False


def oracle_time(start, end, local: dt.datetime) -> bool:
    t = dt.time(local.hour, local.minute)
    a, b = dt.time(*start), dt.time(*end)
    minute = dt.datetime.combine(local.date(), a)
    while True:  # walk the slot minute by minute
        if minute.time() == t:
            return True
        if minute.time() == b:
            return False
        minute += dt.timedelta(minutes=1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ZONES), day_tokens, clock, clock, instants)
def test_time_conditions_against_datetime_oracle(impl, zone, tokens, start, end, instant):
    time_text = f"{start[0]:02d}:{start[1]:02d}-{end[0]:02d}:{end[1]:02d}"
    plans = tel400.PlanSet.from_dict(
        {
            "numbers": [
                {
                    "number": "4001012345",
                    "timezone": zone,
                    "rules": [{"name": "r", "days": ",".join(tokens), "time": time_text, "targets": ["1"]}],
                }
            ]
        }
    )
    router = tel400.Router(plans, implementation=impl.name)
    local = instant.astimezone(zoneinfo.ZoneInfo(zone))
    expected = oracle_days(tokens, local) and oracle_time(start, end, local)
    got = router.route("4001012345", "13901012345", at=instant.timestamp()).rule == "r"
    assert got == expected
    # An aware datetime in any zone means the same instant.
    assert (router.route("4001012345", "13901012345", at=local).rule == "r") == expected


weights = st.lists(st.integers(0, 20), min_size=1, max_size=6).filter(any)


@settings(max_examples=100, deadline=None)
@given(weights)
def test_round_robin_gives_exact_shares_each_cycle(impl, ws):
    targets = [f"t{i}@x" for i in range(len(ws))]
    router = tel400.Router(
        tel400.PlanSet.from_dict(
            one_number(rules=[{"strategy": "round_robin", "targets": [{"to": t, "weight": w} for t, w in zip(targets, ws)]}])
        ),
        implementation=impl.name,
    )
    cycle = sum(ws)
    for _ in range(2):
        picks = Counter(router.route("4001012345", None).targets[0] for _ in range(cycle))
        assert picks == {t: w for t, w in zip(targets, ws) if w}


@settings(max_examples=25, deadline=None)
@given(weights, st.integers(0, 2**32))
def test_weighted_shares_within_statistical_bounds(impl, ws, seed):
    targets = [f"t{i}@x" for i in range(len(ws))]
    router = tel400.Router(
        tel400.PlanSet.from_dict(
            one_number(rules=[{"targets": [{"to": t, "weight": w} for t, w in zip(targets, ws)]}])
        ),
        seed=seed,
        implementation=impl.name,
    )
    n = 4000
    picks = Counter(router.route("4001012345", None).targets[0] for _ in range(n))
    total = sum(ws)
    for t, w in zip(targets, ws):
        p = w / total
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(picks[t] - n * p) <= 5 * sigma + 1, (t, w, picks)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 20),
    st.lists(st.integers(0, 3 * 86400 - 1), min_size=1, max_size=60),
    st.sampled_from(["hour", "day", "week", "month"]),
)
def test_calls_cap_admits_exactly_the_limit_per_period(impl, limit, offsets, per):
    router = tel400.Router(
        tel400.PlanSet.from_dict(one_number(rules=[{"targets": ["1"]}], caps=[{"metric": "calls", "per": per, "limit": limit}])),
        implementation=impl.name,
    )
    shanghai = zoneinfo.ZoneInfo("Asia/Shanghai")
    base = dt.datetime(2026, 11, 29, 12, tzinfo=shanghai)  # a Sunday: weeks change mid-run
    admitted: Counter = Counter()
    offered: Counter = Counter()
    for offset in sorted(offsets):
        local = (base + dt.timedelta(seconds=offset)).astimezone(shanghai)
        period = {
            "hour": (local.date(), local.hour),
            "day": local.date(),
            "week": local.isocalendar()[:2],
            "month": (local.year, local.month),
        }[per]
        offered[period] += 1
        admitted[period] += router.route("4001012345", None, at=local).reason == "ok"
    for period, count in offered.items():
        assert admitted[period] == min(limit, count)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6), st.integers(0, 8), st.sampled_from([10, 600]),
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40), st.booleans()), min_size=1, max_size=40),
)
def test_pin_lockouts_against_an_oracle(impl, caller_failures, number_failures, window, calls):
    """Callers (by index) try wrong or right PINs at increasing times; an
    obvious model of both lockouts (windows from the first failure) agrees."""
    from tel400 import pins

    policy = pins.PinPolicy(caller_failures=caller_failures, caller_window_s=window,
                            number_failures=number_failures, number_window_s=window)
    plans = tel400.PlanSet.from_dict(one_number(pin="2468", rules=[{"targets": ["13901010001"]}]))
    router = tel400.Router(plans, implementation=impl.name, pin_policy=policy)
    windows: dict = {}  # key -> [opened_at, failures]

    def failures(key, now):
        entry = windows.get(key)
        return 0 if entry is None or now - entry[0] >= window else entry[1]

    def fail(key, now):
        if failures(key, now) == 0:
            windows[key] = [now, 0]
        windows[key][1] += 1
        return windows[key][1]

    now = dt.datetime(2026, 3, 2, 10, tzinfo=dt.timezone.utc).timestamp()
    for who, gap, right in calls:
        now += gap
        caller = f"1390000000{who}"
        if number_failures and failures("number", now) >= number_failures or failures(who, now) >= caller_failures:
            expected = "pin_locked"
        elif right:
            windows.pop(who, None)
            expected = "ok"
        else:
            mine = fail(who, now)
            everyone = fail("number", now) if number_failures else 0
            locked = (number_failures and everyone >= number_failures) or mine >= caller_failures
            expected = "pin_locked" if locked else "bad_pin"
        assert router.route("4001012345", caller, at=now, pin="2468" if right else "1357").reason == expected
