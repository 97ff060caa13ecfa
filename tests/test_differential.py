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
from tel400 import _impl, pins

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
    weights = draw(st.lists(st.integers(0, 5), min_size=len(chosen), max_size=len(chosen)))
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


@st.composite
def cap(draw):
    metric = draw(st.sampled_from(["calls", "calls", "minutes", "cost"]))
    out = {"metric": metric, "per": draw(st.sampled_from(["hour", "day", "week", "month"])),
           "limit": draw(st.integers(0, 4)) if metric != "cost" else draw(st.sampled_from([0, "0.2", "0.5", 2])),
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
        "tariff": {"local": "0.1", "long_distance": "0.3", "increment_s": draw(st.sampled_from([1, 6, 60]))},
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
        "end": draw(st.sampled_from([None, 0, 1, 59, 61, 600])),
    }


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
@given(plan_sets(), st.lists(calls(), min_size=1, max_size=25), pin_policies, st.data())
def test_compiled_engine_decides_like_the_reference(tree, sequence, pin_policy, data):
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
    routers = [tel400.Router(plans, seed=7, implementation=name, pin_policy=pin_policy)
               for name in ("python", "cython")]
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
            charges = [r.call_ended(call["call_id"], call["end"], target=target) for r in routers]
            assert charges[0] == charges[1]
    assert routers[0].decision_counts() == routers[1].decision_counts()
    assert routers[0].pin_event_counts() == routers[1].pin_event_counts()
    explained = [r.explain(sequence[0]["dialed"], sequence[0]["caller"], sequence[0]["at"]) for r in routers]
    assert [s.check for s in explained[0].explain] == [s.check for s in explained[1].explain]
