"""Plans at every bound of tel400.limits, shared by the plan, differential and bench tests."""

from __future__ import annotations

import datetime as dt

from tel400 import limits

NUMBER = "4001012345"
FIRST_HOLIDAY = dt.date(2026, 1, 1)


def targets(count: int, weight: int) -> list[dict]:
    """``count`` distinct mobile numbers, each with ``weight``."""
    return [{"to": f"139{i:08d}", "weight": weight} for i in range(count)]


def plan_at_the_bounds(number: str = NUMBER) -> dict:
    """One number holding as much as a plan may: every list at its bound, every number at its maximum.

    The rules never match a call on 2026-11-24 (their date range is in 2027)
    except the last, so a call there tries every rule: the longest explain
    trace a plan can produce.
    """
    strategies = ("weighted", "round_robin", "sequential", "sticky")
    rules = [
        {"name": f"r{i}", "provinces": ["CN-BJ", "CN-SH", "CN-GD"], "days": "mon-fri,workday",
         "time": "08:00-11:59,13:00-17:59", "dates": "2027-01-01..2027-01-31",
         "strategy": strategies[i % 4], "targets": targets(3, limits.MAX_WEIGHT)}
        for i in range(limits.MAX_RULES - 1)
    ]
    rules.append({"name": "last", "strategy": "round_robin", "targets": targets(limits.MAX_TARGETS, limits.MAX_WEIGHT)})
    holidays = [(FIRST_HOLIDAY + dt.timedelta(days=k)).isoformat() for k in range(limits.MAX_CALENDAR_DAYS)]
    metrics = [("calls", limits.MAX_CAP_CALLS), ("minutes", str(limits.MAX_CAP_MINUTES)),
               ("cost", str(limits.MAX_CAP_COST))]
    caps = []
    for i in range(limits.MAX_CAPS):
        metric, limit = metrics[i % 3]
        caps.append({"metric": metric, "per": ("hour", "day", "week", "month")[i % 4], "limit": limit,
                     "scope": ("number", "caller")[i % 2]})
    return {
        "number": number,
        "timezone": "America/Argentina/ComodRivadavia",
        "tariff": {"local": str(limits.MAX_RATE), "long_distance": str(limits.MAX_RATE),
                   "increment_s": limits.MAX_INCREMENT_S},
        "caps": caps,
        "blacklist": [f"0{10 + i // 10**8}{i % 10**8:08d}" for i in range(limits.MAX_BLACKLIST - 1)] + ["1710*"],
        "calendar": {"holidays": holidays},
        "rules": rules,
        "default": {"action": "bridge", "targets": targets(limits.MAX_TARGETS, limits.MAX_WEIGHT)},
    }


def plan_set_at_the_bounds() -> dict:
    return {"numbers": [plan_at_the_bounds()]}
