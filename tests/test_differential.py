"""The compiled engine and the reference decide alike, on random plans and calls.

Hypothesis draws plan sets (provinces, slots that wrap, days and the official
calendar, date ranges, calendar additions, weights, blacklists, PINs, caps of
every metric and scope, zones with daylight saving) and sequences of calls
(numbers in many written forms, withheld and garbage callers, SMS, PINs
right and wrong, call ends), runs the same sequence through a router of each
implementation, and demands equal decisions: every field equal, except that
for ``weighted`` rules, whose pick is random, the targets must be the same
set (shares are tested in test_properties).
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tel400
import tel400._common
from tel400 import _impl, limits, pins

from .plans_at_bounds import NUMBER as BOUND_NUMBER
from .plans_at_bounds import plan_set_at_the_bounds

pytestmark = pytest.mark.skipif("cython" not in _impl.ENGINES, reason="needs the compiled engine")

NUMBERS = ["4001012345", "4001532532", "8001234567"]
CALLERS = [
    "13901012345", "13902001234", "02161234567", "02087654321", "057188888888", "19912345678",
    "17101234567", "13800000000", "+8613901012345", "0086 21 6123 4567", "013901012345",
    "+14155552671", "10086", "anonymous", "", None, "garbage", "1390101234",
]
TARGETS = ["13901010001", "13901010002", "02161234567", "02087654321", "agent@pbx.example", "19912345678"]
CODES = ["CN-BJ", "CN-TJ", "CN-SH", "CN-GD", "CN-ZJ", "CN-HE", "CN-FJ"]
ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London"]
HASHED_2468 = pins.make_hash("2468", n=1 << 4)
START = dt.datetime(2025, 12, 20, tzinfo=dt.timezone.utc).timestamp()

# Slots and call times share a few minutes of the hour (every zone here is a
# whole number of hours from UTC), so calls land on slot edges often.
EDGE_MINUTES = [0, 1, 29, 30, 58, 59]
clock = st.tuples(st.integers(0, 23), st.sampled_from(EDGE_MINUTES)).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")
slot = st.tuples(clock, clock).map(lambda se: f"{se[0]}-{se[1]}")
day_token = st.sampled_from(["mon", "tue", "sat", "sun", "mon-fri", "fri-mon", "sat,sun", "workday", "holiday", "any"])
a_date = st.dates(dt.date(2025, 12, 15), dt.date(2027, 1, 20))


@st.composite
def date_range(draw):
    a, b = sorted((draw(a_date), draw(a_date)))
    return f"{a.isoformat()}..{b.isoformat()}"


@st.composite
def targets(draw):
    chosen = draw(st.lists(st.sampled_from(TARGETS), min_size=1, max_size=4, unique=True))
    weights = draw(st.lists(st.integers(0, 5) | st.just(limits.MAX_WEIGHT), min_size=len(chosen), max_size=len(chosen)))
    if not any(weights):
        weights[0] = 1
    return [{"to": t, "weight": w} for t, w in zip(chosen, weights)]


@st.composite
def action(draw, *, default=False):
    kind = draw(st.sampled_from(["bridge", "bridge", "reject", "queue", "conference"]))
    if kind == "bridge":
        return {"action": "bridge", "strategy": draw(st.sampled_from(["weighted", "round_robin", "sequential", "sticky"])),
                "targets": draw(targets())}
    if kind == "reject":
        out = {"action": "reject"}
        if draw(st.booleans()):
            out["prompt"] = draw(st.sampled_from(["closed", "sorry", "night"]))
        return out
    if kind == "queue":
        return {"action": "queue", "queue": draw(st.sampled_from(["sales", "support"]))}
    return {"action": "conference", "room": "4001"}


@st.composite
def rule(draw, index):
    out = {"name": f"r{index}", **draw(action())}
    if draw(st.booleans()):
        out["provinces"] = draw(st.lists(st.sampled_from(CODES), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        out["days"] = ",".join(draw(st.lists(day_token, min_size=1, max_size=2)))
    if draw(st.booleans()):
        out["time"] = draw(st.lists(slot, min_size=1, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        out["dates"] = draw(st.lists(date_range(), min_size=1, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        out["channel"] = draw(st.sampled_from(["voice", "sms"]))
    return out


# The largest value each cap metric may hold (tel400.limits), drawn beside small ones.
MAX_LIMITS = {"calls": limits.MAX_CAP_CALLS, "minutes": str(limits.MAX_CAP_MINUTES), "cost": str(limits.MAX_CAP_COST)}
RATES = ["0.1", "0.3", str(limits.MAX_RATE)]


@st.composite
def cap(draw):
    metric = draw(st.sampled_from(["calls", "calls", "minutes", "cost"]))
    out = {"metric": metric, "per": draw(st.sampled_from(["hour", "day", "week", "month"])),
           "limit": draw(st.integers(0, 4) | st.just(MAX_LIMITS[metric])) if metric != "cost"
           else draw(st.sampled_from([0, "0.2", "0.5", 2, MAX_LIMITS["cost"]])),
           "scope": draw(st.sampled_from(["number", "caller"]))}
    if draw(st.booleans()):
        out["channel"] = draw(st.sampled_from(["voice", "sms", "any"]))
    if draw(st.booleans()):
        out["prompt"] = "full"
    return out


@st.composite
def plan(draw, number):
    out = {
        "number": number,
        "timezone": draw(st.sampled_from(ZONES)),
        "rules": [draw(rule(i)) for i in range(draw(st.integers(0, 5)))],
        "default": draw(action()),
        "tariff": {"local": draw(st.sampled_from(RATES)), "long_distance": draw(st.sampled_from(RATES)),
                   "increment_s": draw(st.sampled_from([1, 6, 60, limits.MAX_INCREMENT_S]))},
        "caps": draw(st.lists(cap(), max_size=3)),
        "blacklist": draw(st.lists(st.sampled_from(["13800000000", "1710*", "0571*", "anonymous", "+14155552671", "199*"]),
                                   max_size=2, unique=True)),
        "reject_unknown_callers": draw(st.booleans()),
    }
    pin = draw(st.integers(0, 5))
    if pin == 0:
        out["pin"] = "2468"
    elif pin == 1:
        out["pin_hash"] = HASHED_2468
    if draw(st.integers(0, 3)) == 0:
        out["calendar"] = {"holidays": draw(st.lists(a_date.map(str), max_size=2, unique=True))}
    if draw(st.integers(0, 4)) == 0:
        out["prompts"] = {"closed": "after_hours", "limit_reached": "too_busy"}
    return out


@st.composite
def plan_sets(draw):
    count = draw(st.integers(1, len(NUMBERS)))
    tree = {"numbers": [draw(plan(n)) for n in NUMBERS[:count]]}
    if draw(st.booleans()):
        tree["blacklist"] = draw(st.lists(st.sampled_from(["13901012345", "021*"]), max_size=1))
    return tree


@st.composite
def calls(draw):
    dialed = draw(st.sampled_from(NUMBERS + ["400-101-2345", "+86 400 153 2532", "106574001012345", "4009999999", "junk"]))
    return {
        "dialed": dialed,
        "caller": draw(st.sampled_from(CALLERS)),
        "at": START + draw(st.integers(0, 400)) * 86400 + draw(st.integers(0, 23)) * 3600
        + draw(st.sampled_from(EDGE_MINUTES)) * 60 + draw(st.sampled_from([0, 0.5, 59.999999, 59.9999999])),
        "channel": draw(st.sampled_from(["voice", "voice", "sms"])),
        "pin": draw(st.sampled_from([None, None, "2468", "1111", "12"])),
        "call_id": draw(st.sampled_from([None, "a", "b", "c"])),
        "end": draw(st.sampled_from([None, 0, 1, 59, 61, 600, 43200, 43201])),  # 43200: the longest call
    }


def _outcome(fn, *args, **kwargs):
    """What ``fn`` returns, or the ``ValueError`` or ``BackendError`` it raises, as (name, message).

    Both leave a call waiting for its end: a full ``memory://`` refusing a
    charge (``max_keys``) keeps it, with what is left to charge, for the retry.
    """
    try:
        return fn(*args, **kwargs)
    except (ValueError, tel400.BackendError) as exc:
        return (type(exc).__name__, str(exc))


#: PIN lockouts at their smallest bounds and beyond, so that sequences of
#: 25 calls reach them (number_failures = 0: no number-wide lockout).
pin_policies = st.builds(
    pins.PinPolicy, caller_failures=st.integers(1, 5), caller_window_s=st.sampled_from([1, 60, 3600]),
    number_failures=st.integers(0, 4), number_window_s=st.sampled_from([1, 60, 600]),
)


def comparable(decision, weighted_rules):
    fields = decision._asdict()
    fields.pop("explain")
    if decision.action == "bridge" and (decision.number, decision.rule) in weighted_rules:
        fields["targets"] = tuple(sorted(decision.targets))
    return fields


def edge_times(draw, plans: tel400.PlanSet) -> list[float]:
    """Instants on the plans' own boundaries: slot starts and ends (and the
    minutes either side), first and last days of date ranges, in each plan's zone."""
    import zoneinfo

    out = []
    for p in plans.numbers:
        zone = zoneinfo.ZoneInfo(p.timezone)
        for r in p.rules:
            days = [dt.date(2026, 1, 5) + dt.timedelta(days=draw(st.integers(0, 360)))]
            if r.dates is not None:
                days += [dt.date.fromordinal(o) for pair in r.dates.ranges for o in pair]
            minutes = [draw(st.integers(0, 1439))]
            if r.time is not None:
                minutes += [(m + d) % 1440 for pair in r.time.slots for m in pair for d in (-1, 0, 1)]
            for day in days:
                for minute in minutes:
                    local = dt.datetime.combine(day, dt.time(minute // 60, minute % 60), zone)
                    out.append(local.timestamp() + draw(st.sampled_from([0, 30, 59.999])))
    return out


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan_sets(), st.lists(calls(), min_size=1, max_size=25), pin_policies, st.data(),
       st.sampled_from([tel400.counters.DEFAULT_MAX_KEYS, 1, 2, 5]))
def test_compiled_engine_decides_like_the_reference(tree, sequence, pin_policy, data, max_keys):
    plans = tel400.PlanSet.from_dict(tree)
    edges = edge_times(data.draw, plans)
    if edges:
        for call in sequence:
            if data.draw(st.booleans()):
                call["at"] = data.draw(st.sampled_from(edges))
    if data.draw(st.integers(0, 2)) == 0:  # calls seconds apart: PIN windows open, fill and pass
        step = data.draw(st.sampled_from([0.5, 1, 30, 599]))
        for i, call in enumerate(sequence):
            call["at"] = START + i * step
    weighted = set()
    for p in plans.numbers:
        for r in p.rules:
            if r.action.kind == "bridge" and r.action.strategy == "weighted":
                weighted.add((p.number, r.name))
        if p.default.kind == "bridge" and p.default.strategy == "weighted":
            weighted.add((p.number, None))
    # A small counter bound puts calls at it (backend_error or uncounted by the plan's policy).
    routers = [
        tel400.Router(plans, _impl.ENGINES[name].MemoryCounters(max_keys=max_keys), seed=7, implementation=name,
                      pin_policy=pin_policy)
        for name in ("python", "cython")
    ]
    remembered: dict[str, tuple] = {}  # call id -> targets of the call it was last routed for
    for call in sequence:
        decisions = [
            r.route(call["dialed"], call["caller"], call["at"], call["channel"], call["pin"], call["call_id"])
            for r in routers
        ]
        assert comparable(decisions[0], weighted) == comparable(decisions[1], weighted), call
        if call["call_id"] is not None and decisions[0].connects:
            remembered[call["call_id"]] = decisions[0].targets
        if call["end"] is not None and call["call_id"] is not None:
            # The answering target is named, so a random pick cannot change the tariff.
            targets = remembered.pop(call["call_id"], ())
            target = min(targets) if targets else None
            charges = [_outcome(r.call_ended, call["call_id"], call["end"], target=target) for r in routers]
            assert charges[0] == charges[1]
            if isinstance(charges[0], tuple):  # refused, and still waiting: both charge the corrected end
                remembered[call["call_id"]] = targets
    assert routers[0].decision_counts() == routers[1].decision_counts()
    assert routers[0].backend_error_counts() == routers[1].backend_error_counts()
    assert routers[0].counters.refused == routers[1].counters.refused
    assert routers[0].pin_event_counts() == routers[1].pin_event_counts()
    explained = [r.explain(sequence[0]["dialed"], sequence[0]["caller"], sequence[0]["at"]) for r in routers]
    assert [s.check for s in explained[0].explain] == [s.check for s in explained[1].explain]


def _route_or_error(router, at):
    try:
        return router.route("4001012345", "13901012345", at, call_id="x")._asdict()
    except (ValueError, TypeError) as exc:
        return (type(exc).__name__, str(exc))


_EDGE_AT = st.one_of(
    st.sampled_from([tel400._common.AT_MIN, tel400._common.AT_MAX]).flatmap(
        lambda edge: st.one_of(
            st.integers(edge - 86400 * 400, edge + 86400 * 400),
            st.floats(edge - 86400.0 * 400, edge + 86400.0 * 400),
            st.sampled_from([edge - 1, edge, edge + 1, edge - 0.5, edge - 1e-6, float(edge), float(edge) - 1e-3]),
        )
    ),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**30, -(10**30), 1e300]),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                 timezones=st.none() | st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=14)),
                                                          dt.timezone(dt.timedelta(hours=-12))])),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_EDGE_AT, min_size=1, max_size=10), st.sampled_from(ZONES))
def test_both_engines_agree_at_the_bounds_of_time(ats, zone):
    """Times at and past 1901 and 9998: the same decision or the same error from both."""
    plans = tel400.PlanSet.from_dict({"numbers": [{
        "number": "4001012345", "timezone": zone, "rules": [{"days": "workday", "targets": ["1"]}],
        "caps": [{"metric": "calls", "per": "month", "limit": 5}],
    }]})
    routers = [tel400.Router(plans, seed=7, implementation=name) for name in ("python", "cython")]
    for at in ats:
        assert _route_or_error(routers[0], at) == _route_or_error(routers[1], at), at


def test_the_engines_agree_on_a_plan_at_every_bound():
    """Every list at its bound and every number at its maximum (tests/plans_at_bounds.py)."""
    plans = tel400.PlanSet.from_dict(plan_set_at_the_bounds())
    routers = [tel400.Router(plans, seed=7, implementation=name) for name in ("python", "cython")]
    tuesday = dt.datetime(2026, 11, 24, 10, tzinfo=dt.timezone.utc).timestamp()  # no rule's dates: every rule tried
    january = dt.datetime(2027, 1, 5, 14, tzinfo=dt.timezone.utc).timestamp()  # 11:00 local in the rules' dates
    weighted = {(BOUND_NUMBER, f"r{i}") for i in range(0, limits.MAX_RULES, 4)} | {(BOUND_NUMBER, None)}
    rules_taken = set()
    calls = [(caller, at, f"c{i}-{j}") for i, caller in enumerate(CALLERS) for j, at in enumerate((tuesday, january))]
    for caller, at, call_id in calls:
        decisions = [r.route(BOUND_NUMBER, caller, at, "voice", None, call_id) for r in routers]
        assert comparable(decisions[0], weighted) == comparable(decisions[1], weighted), caller
        rules_taken.add(decisions[0].rule)
        if decisions[0].connects:
            target = decisions[0].targets[0]
            # the longest call (the call registry's bound) at the largest rate: the dearest charge
            charges = [r.call_ended(call_id, 43_200.0, target=target) for r in routers]
            assert charges[0] == charges[1] and charges[0].cost is not None
    assert {"r0", "last"} <= rules_taken  # conditions matched and not
    assert routers[0].decision_counts() == routers[1].decision_counts()
    explained = [r.explain(BOUND_NUMBER, "13901012345", tuesday) for r in routers]
    assert [s.check for s in explained[0].explain] == [s.check for s in explained[1].explain]
    # the explain trace is bounded by the rule limit: one step per rule tried and a few more
    assert limits.MAX_RULES <= len(explained[0].explain) <= limits.MAX_RULES + 20


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan_sets(), st.lists(calls(), min_size=1, max_size=20), pin_policies,
       st.sampled_from([tel400.counters.DEFAULT_MAX_KEYS, 1, 2]))
def test_explain_without_a_readable_plan_decides_like_the_references_explain(tree, sequence, pin_policy, max_keys):
    """The compiled engine's fallback (its packed entry, dry run, no trace) changes nothing and decides alike."""
    plans = tel400.PlanSet.from_dict(tree)
    weighted = {(p.number, r.name) for p in plans.numbers for r in p.rules
                if r.action.kind == "bridge" and r.action.strategy == "weighted"}
    weighted |= {(p.number, None) for p in plans.numbers if p.default.kind == "bridge" and p.default.strategy == "weighted"}
    routers = [
        tel400.Router(plans, _impl.ENGINES[name].MemoryCounters(max_keys=max_keys), seed=7, implementation=name,
                      pin_policy=pin_policy)
        for name in ("python", "cython")
    ]
    routers[1]._shared.plan_source = lambda number: None  # no plan to read back: every explain falls back
    for call in sequence:
        args = (call["dialed"], call["caller"], call["at"], call["channel"], call["pin"])
        explained = [r.explain(*args) for r in routers]
        assert comparable(explained[0], weighted) == comparable(explained[1], weighted), call
        assert explained[1].explain is not None and len(explained[1].explain) == 1
        routed = [r.route(*args, call["call_id"], explain=True) for r in routers]
        assert comparable(routed[0], weighted) == comparable(routed[1], weighted), call
    assert routers[0].decision_counts() == routers[1].decision_counts()
    assert routers[0].backend_error_counts() == routers[1].backend_error_counts()
    assert routers[0].pin_event_counts() == routers[1].pin_event_counts()
    assert routers[0].calls_in_progress == routers[1].calls_in_progress
