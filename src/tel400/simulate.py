"""Synthetic traffic: route many realistic calls through a plan set.

Callers are drawn from the prefix table itself (mobile segments in
proportion to how many numbers they hold, some fixed lines by area code, a
few withheld numbers), spread uniformly over one week in each plan's zone,
with a share of SMS.  Plans with a PIN are answered with the right PIN most
of the time.  Connected calls end after an exponential talk time so that
minutes and cost caps are exercised too.

:func:`week_grid` is the other view of a plan: not a random sample but the
decision at each hour of some days for one caller of a chosen province (the
portal's week view and ``tel400 simulate --week``), a dry run that counts
nothing.
"""

from __future__ import annotations

import datetime as _dt
import random
import zoneinfo
from bisect import bisect_right
from collections import Counter

import attrs

from . import counters as _counters
from . import provinces
from .plans import PlanSet
from .router import Router
from .segments import KEY_SPACE, PrefixTable

# Keys from 13000000000 to 19999999999 are mobile segments; the others are
# fixed lines by area code (10 Beijing, 2x, 3xx-9xx).
_MOBILE_KEYS = range(13 * 10**9, 20 * 10**9)
_WITHHELD_SHARE = 0.02
_FIXED_SHARE = 0.15
_SMS_SHARE = 0.05
_RIGHT_PIN_SHARE = 0.85
_MEAN_TALK_S = 150.0


class CallerSampler:
    """Draws caller numbers whose provinces follow the prefix table."""

    def __init__(self, table: PrefixTable, rng: random.Random) -> None:
        self._rng = rng
        bounds = table.starts[1:] + (KEY_SPACE,)
        mobile, fixed = [], []
        for start, end, code in zip(table.starts, bounds, table.codes):
            if code == 0:
                continue
            (mobile if start in _MOBILE_KEYS else fixed).append((start, end))
        self._mobile = self._weighted(mobile)
        self._fixed = self._weighted(fixed)

    @staticmethod
    def _weighted(intervals):
        cumulative, total = [], 0
        for start, end in intervals:
            total += end - start
            cumulative.append(total)
        return intervals, cumulative, total

    def _key(self, pool) -> int:
        intervals, cumulative, total = pool
        r = self._rng.randrange(total)
        start, end = intervals[bisect_right(cumulative, r)]
        return self._rng.randrange(start, end)

    def caller(self) -> str:
        u = self._rng.random()
        if u < _WITHHELD_SHARE:
            return "anonymous"
        if u < _WITHHELD_SHARE + _FIXED_SHARE and self._fixed[2]:
            nsn = str(self._key(self._fixed)).rjust(11, "0")
            # Two-digit area codes (10, 2x) have 8-digit subscribers.
            length = 10 if nsn[0] == "2" or nsn.startswith("10") else 11
            return "0" + nsn[:length]
        return str(self._key(self._mobile))


@attrs.frozen
class SimulationReport:
    calls: int
    start: _dt.date
    seed: int
    outcomes: Counter  # (number, rule, action, reason) -> count
    targets: Counter  # (number, target) -> connected calls it was picked for
    reasons: Counter  # reason -> count
    provinces: Counter  # province code or "unknown" -> count
    minutes: float
    cost: float

    def as_dict(self) -> dict:
        return {
            "calls": self.calls,
            "start": self.start.isoformat(),
            "seed": self.seed,
            "outcomes": [
                {"number": n, "rule": r, "action": a, "reason": why, "calls": c}
                for (n, r, a, why), c in sorted(self.outcomes.items(), key=_order)
            ],
            "targets": [
                {"number": n, "target": t, "calls": c} for (n, t), c in sorted(self.targets.items())
            ],
            "reasons": dict(self.reasons.most_common()),
            "minutes": round(self.minutes, 2),
            "cost": round(self.cost, 6),
        }

    def render(self) -> str:
        lines = [
            f"Simulated {self.calls} calls over the week from {self.start.isoformat()} (seed {self.seed})",
            "",
            f"{'number':<16}{'rule':<22}{'action':<13}{'reason':<16}{'calls':>7}{'share':>8}",
        ]
        for (number, rule, action, reason), count in sorted(self.outcomes.items(), key=_order):
            lines.append(
                f"{number:<16}{rule or '(none)':<22}{action:<13}{reason:<16}{count:>7}{count / self.calls:>8.1%}"
            )
        lines += ["", f"{'number':<16}{'first target':<22}{'calls':>7}{'share of number':>17}"]
        per_number = Counter()
        for (number, _), count in self.targets.items():
            per_number[number] += count
        for (number, target), count in sorted(self.targets.items()):
            lines.append(f"{number:<16}{target:<22}{count:>7}{count / per_number[number]:>17.1%}")
        lines += ["", f"{'reason':<16}{'calls':>7}{'share':>8}"]
        for reason, count in self.reasons.most_common():
            lines.append(f"{reason:<16}{count:>7}{count / self.calls:>8.1%}")
        top = ", ".join(f"{p} {c / self.calls:.0%}" for p, c in self.provinces.most_common(6))
        lines += ["", f"callers by province: {top}, …", f"charged: {self.minutes:.1f} min, cost {self.cost:.2f}"]
        return "\n".join(lines)


def _order(item):
    (number, rule, action, reason), count = item
    return (number, -count, rule or "", action, reason)


def _simulation_counters(plans: PlanSet, calls: int):
    """memory:// counters whose bound cannot change a run's outcome.

    Every synthetic call may open a counter per cap and a PIN window, and
    none expires during a run, so the bound grows with the run (as its
    memory does anyway).
    """
    from ._impl import MemoryCounters

    most_caps = max(len(p.caps) for p in plans.numbers)
    return MemoryCounters(max_keys=max(_counters.DEFAULT_MAX_KEYS, calls * (most_caps + 1)))


def simulate(plans: PlanSet, calls: int, *, seed: int = 0, start: _dt.date | None = None,
             counters=None) -> SimulationReport:
    """Route ``calls`` synthetic calls through a fresh router over ``plans``."""
    if calls < 1:
        raise ValueError("calls: expected at least 1")
    if not plans.numbers:
        raise ValueError("the plan set has no numbers to call")
    rng = random.Random(seed)
    if counters is None:
        counters = _simulation_counters(plans, calls)
    router = Router(plans, counters, seed=seed)
    sampler = CallerSampler(router.prefixes, rng)
    if start is None:
        today = _dt.date.today()
        start = today - _dt.timedelta(days=today.weekday())
    numbers = [p.number for p in plans.numbers]
    pins = {p.number: p.pin for p in plans.numbers if p.has_pin}
    zones = {p.number: zoneinfo.ZoneInfo(p.timezone) for p in plans.numbers}
    outcomes: Counter = Counter()
    targets: Counter = Counter()
    reasons: Counter = Counter()
    located: Counter = Counter()
    minutes = cost = 0.0
    week_s = 7 * 86400
    for i in range(calls):
        number = rng.choice(numbers)
        caller = sampler.caller()
        midnight = _dt.datetime.combine(start, _dt.time(), zones[number])
        at = midnight.timestamp() + rng.random() * week_s
        channel = "sms" if rng.random() < _SMS_SHARE else "voice"
        dialed = "10657" + number if channel == "sms" else number
        call_id = f"sim-{i}"
        decision = router.route(dialed, caller, at=at, channel=channel, call_id=call_id)
        if decision.action == "collect_pin":
            right = pins.get(number)
            pin = right if right and rng.random() < _RIGHT_PIN_SHARE else f"{rng.randrange(10**4):04d}"
            decision = router.route(dialed, caller, at=at, channel=channel, pin=pin, call_id=call_id)
        outcomes[(number, decision.rule, decision.action, decision.reason)] += 1
        reasons[decision.reason] += 1
        located[decision.province or "unknown"] += 1
        if decision.connects:
            targets[(number, decision.targets[0])] += 1
            if channel == "voice":
                charge = router.call_ended(call_id, rng.expovariate(1 / _MEAN_TALK_S))
                if charge is not None:
                    minutes += charge.billed_s / 60
                    cost += float(charge.cost or 0)
    return SimulationReport(calls, start, seed, outcomes, targets, reasons, located, minutes, cost)


# -- the week view: what a plan does, hour by hour --------------------------

#: Cap on the grid's size (days × hours explains), so a request cannot ask for years.
MAX_GRID_DAYS = 31


@attrs.frozen
class GridCell:
    """What the plan decides for a call placed at ``at`` (a dry run, nothing counted)."""

    at: _dt.datetime
    rule: str | None
    action: str
    target: str | None  # the first target (the pick), or None for a reject
    reason: str

    def as_dict(self) -> dict:
        return {"at": self.at.isoformat(), "rule": self.rule, "action": self.action,
                "target": self.target, "reason": self.reason}


@attrs.frozen
class GridDay:
    """One day of the grid: its date, weekday (Monday = 0), kind in the official calendar and hours."""

    day: _dt.date
    weekday: int
    kind: str  # see tel400.workdays.DAY_KINDS
    cells: tuple[GridCell, ...]

    @property
    def holiday(self) -> bool:
        return self.kind == "holiday"

    @property
    def adjusted_workday(self) -> bool:
        """A weekend that is a working day by State Council notice (调休)."""
        return self.kind == "adjusted_workday"

    def as_dict(self) -> dict:
        return {"day": self.day.isoformat(), "weekday": self.weekday, "kind": self.kind,
                "cells": [c.as_dict() for c in self.cells]}


@attrs.frozen
class WeekGrid:
    """:func:`week_grid`'s answer: the decision at each hour of some days, for one caller."""

    number: str
    province: str
    caller: str
    channel: str
    timezone: str
    rules: tuple[str, ...]  # the plan's rule names in plan order (the colour of a cell is its index here)
    days: tuple[GridDay, ...]

    def rule_index(self, rule: str | None) -> int | None:
        """The position of ``rule`` in the plan (``None`` for the default or a refusal without a rule)."""
        try:
            return self.rules.index(rule)
        except ValueError:
            return None

    def as_dict(self) -> dict:
        return {"number": self.number, "province": self.province, "caller": self.caller,
                "channel": self.channel, "timezone": self.timezone, "rules": list(self.rules),
                "days": [d.as_dict() for d in self.days]}

    def render(self) -> str:
        """A text table: one line per hour, one column per day (``rule>target`` or ``action``)."""
        heads = []
        for d in self.days:
            mark = {"holiday": " 假", "adjusted_workday": " 班"}.get(d.kind, "")
            heads.append(f"{d.day.isoformat()} {_WEEKDAYS[d.weekday]}{mark}")
        width = max([len(h) for h in heads] + [len(_cell_text(c)) for d in self.days for c in d.cells])
        lines = [f"{self.number} for a caller from {self.province} ({self.caller}), {self.channel}, "
                 f"times in {self.timezone}; 假 = public holiday, 班 = adjusted working day (调休)", "",
                 ("hour  " + "  ".join(h.ljust(width) for h in heads)).rstrip()]
        for hour in range(len(self.days[0].cells) if self.days else 0):
            row = "  ".join(_cell_text(d.cells[hour]).ljust(width) for d in self.days)
            lines.append(f"{self.days[0].cells[hour].at.hour:02d}    {row}".rstrip())
        return "\n".join(lines)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _cell_text(cell: GridCell) -> str:
    what = cell.rule or "(default)"
    return f"{what}>{cell.target}" if cell.target else f"{what}:{cell.action}/{cell.reason}"


def representative_caller(prefixes: PrefixTable, province: str) -> str:
    """A caller number the prefix table places in ``province`` (any name :func:`tel400.provinces.resolve`
    takes): the first number of the first mobile segment of that province, so always the same one.

    Raises:
        ValueError: the name is no province, or the table has no segment for it.
    """
    code = provinces.resolve(province)
    if code is None:
        raise ValueError(f"province: {province!r} is not a province of China")
    wanted = provinces.INDEX[code]
    fixed = None
    for start, found in zip(prefixes.starts, prefixes.codes):
        if found != wanted:
            continue
        if start in _MOBILE_KEYS:
            return str(start)
        fixed = fixed or start
    if fixed is not None:  # a table with only area codes for the province: a fixed line
        nsn = str(fixed).rjust(11, "0")
        return "0" + nsn[: 10 if nsn[0] == "2" or nsn.startswith("10") else 11]
    raise ValueError(f"province: the prefix table has no number in {code}")


def week_grid(plans: PlanSet, number: str, province: str, *, start: _dt.date, hours: int = 24,
              days: int = 7, channel: str = "voice", pin: str | None = None, seed: int = 0) -> WeekGrid:
    """The decision for a call from ``province`` to ``number`` at every hour of ``days`` days from ``start``.

    Each cell is :meth:`Router.explain` at the start of that hour in the plan's
    zone, on a router of its own over this one plan with empty ``memory://``
    counters: building a grid never counts anything anywhere, and caps are not
    yet used up in it, so the grid shows the plan, not today's counters.  A
    ``weighted`` pick comes from a generator seeded with ``seed``: the same
    grid twice is the same grid.  Days carry their kind in the plan's official
    calendar (the plan set's and the number's ``calendar`` additions included).

    Args:
        hours: the hours of each day shown, from midnight (1–24).
        days: how many days (1–:data:`MAX_GRID_DAYS`).

    Raises:
        ValueError: an unknown number, province or channel, or sizes out of range.

    Cost: ``days × hours`` explains plus compiling one plan.
    """
    if not 1 <= days <= MAX_GRID_DAYS:
        raise ValueError(f"days: expected 1 to {MAX_GRID_DAYS}, got {days}")
    if not 1 <= hours <= 24:
        raise ValueError(f"hours: expected 1 to 24, got {hours}")
    if channel not in ("voice", "sms"):
        raise ValueError(f"channel: expected voice or sms, got {channel!r}")
    plan = plans.get(number)
    if plan is None:
        raise ValueError(f"number: {number} has no plan")
    from ._impl import MemoryCounters

    router = Router(attrs.evolve(plans, numbers=(plan,)), MemoryCounters(), seed=seed)
    caller = representative_caller(router.prefixes, province)
    code = provinces.resolve(province)
    zone = zoneinfo.ZoneInfo(plan.timezone)
    calendar = plans.calendar.merged(plan.calendar).build()
    dialed = ("10657" + plan.number) if channel == "sms" else plan.number
    grid_days = []
    for offset in range(days):
        day = start + _dt.timedelta(days=offset)
        cells = []
        for hour in range(hours):
            at = _dt.datetime.combine(day, _dt.time(hour), zone)
            decision = router.explain(dialed, caller, at=at, channel=channel, pin=pin)
            cells.append(GridCell(at, decision.rule, decision.action,
                                  decision.targets[0] if decision.targets else None, decision.reason))
        grid_days.append(GridDay(day, day.weekday(), calendar.day_kind(day.toordinal()), tuple(cells)))
    return WeekGrid(plan.number, code, caller, channel, plan.timezone,
                    tuple(rule.name for rule in plan.rules), tuple(grid_days))


__all__ = ["MAX_GRID_DAYS", "CallerSampler", "GridCell", "GridDay", "SimulationReport", "WeekGrid",
           "representative_caller", "simulate", "week_grid"]
