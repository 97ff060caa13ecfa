"""The fast path of plan validation: the common shapes of a number's plan, checked tightly.

:class:`tel400.plans._Parser` walks a plan tree keeping track of where it is
so that a mistake is reported with its file, number, rule and field path.
That bookkeeping, ``isinstance`` against ABCs and re-parsing values that
thousands of plans share ("09:00-18:00", "mon-fri", the same three
provinces) cost ~42 µs per rule; a million numbers took minutes.

This module accepts what plans almost always are (plain dicts, lists and
strings as JSON, TOML and YAML give them) with exact-type checks, and
memoizes the results of leaf values that repeat across plans.  It never
reports a mistake: on anything it does not accept — a mistake, a rare shape
(a Mapping that is not a dict, a str subclass), a rarely used field it
leaves to the parser — it raises :class:`Slow`, and the caller runs the
precise parser on the same input, which raises today's :class:`PlanError`
(or, for a shape that is valid but rare, returns the plan).  So every
message stays what it was by construction, and the only property to keep is
that whatever this module accepts, the parser accepts into an equal
:class:`NumberPlan`; tests/test_plans_fast.py checks it against generated
valid, mutated and hostile trees.

This is the reference; ``tel400/_fast/_plans.pyx`` is its compiled twin
(the same checks, typed, ~4x faster, and its plan objects left to reference
counting), used when the compiled hot path is.  A check added here is added
there, and the differential tests run both.

Memoized leaves (each a dict from the exact string, or tuple of strings, to
the validated value; values are immutable and shared between plans):
rule names, province lists, days, time slots, date ranges, prompt names,
targets, time zones.  Each holds at most
:data:`tel400.limits.VALIDATION_CACHE_ENTRIES` entries and is emptied when
full (a bounded cost, not an LRU: the values are cheap to recompute).
Keys are only ever exact ``str`` or tuples of exact ``str``: ``1``,
``1.0`` and ``True`` hash alike, so no other type may share a cache.
Threads may validate at once: each memo step is one dict operation under the
GIL, and a race can at worst empty a memo early (a miss validates again).
"""

from __future__ import annotations

import re
import sys
from decimal import Decimal

from . import limits
from ._numbers_py import normalize
from .plans import (
    ACTIONS,
    BACKEND_POLICIES,
    CHANNELS,
    MAX_WEIGHT,
    METRICS,
    PERIODS,
    SCOPES,
    STRATEGIES,
    Action,
    CalendarSpec,
    Cap,
    NumberPlan,
    Rule,
    Target,
    _NAME,
    _NUMBER_TARGET,
    _PROMPT,
    _RULE_NAME,
    _URI_TARGET,
    DEFAULT_TIMEZONE,
)
from .timespec import TimeSlots, parse_dates, parse_days, parse_time


class Slow(Exception):
    """Not accepted here: the caller runs the precise parser on the same input."""


_NUMBER_FIELDS = frozenset((
    "number", "timezone", "pin", "pin_hash", "blacklist", "default", "caps", "rules",
    "prompts", "reject_unknown_callers", "on_backend_error", "tariff", "calendar",
))
_RULE_FIELDS = frozenset((
    "name", "provinces", "days", "time", "dates", "channel",
    "action", "strategy", "targets", "queue", "room", "prompt",
))
_ACTION_FIELDS = frozenset(("action", "strategy", "targets", "queue", "room", "prompt"))
_CAP_FIELDS = frozenset(("metric", "per", "limit", "scope", "prompt", "channel"))
_TARGET_FIELDS = frozenset(("to", "weight"))
# What a field of each action kind must not be given with (the parser's
# "does not apply to action ..." rule).
_NOT_WITH = {
    "bridge": ("queue", "room", "prompt"),
    "reject": ("strategy", "targets", "queue", "room"),
    "queue": ("strategy", "targets", "room", "prompt"),
    "conference": ("strategy", "targets", "queue", "prompt"),
}
_CHANNELS = frozenset(CHANNELS)
_STRATEGIES = frozenset(STRATEGIES)
_SCOPES = frozenset(SCOPES)
_PERIODS = frozenset(PERIODS)
_METRICS = frozenset(METRICS)
_BACKEND_POLICIES = frozenset(BACKEND_POLICIES)
_ACTIONS = frozenset(ACTIONS)
# One time slot written as the parser writes it back ("09:00-18:00"): its
# text is already the normal form, so it needs no re-formatting.
_ONE_SLOT = re.compile(r"\A([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])\Z")

_REJECT = Action()
_NO_CALENDAR = CalendarSpec()
_CALLS = "calls"


class _Memo(dict):
    """A dict of validated leaf values that empties itself when it holds ``size`` entries."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def keep(self, key, value):
        if len(self) >= self.size:
            self.clear()
        self[key] = value
        return value


_SIZE = limits.VALIDATION_CACHE_ENTRIES
_rule_names = _Memo(_SIZE)
_provinces = _Memo(_SIZE)
_province_codes = _Memo(_SIZE)
_days = _Memo(_SIZE)
_times = _Memo(_SIZE)
_dates = _Memo(_SIZE)
_prompts = _Memo(_SIZE)
_targets = _Memo(_SIZE)
_zones = _Memo(_SIZE)
_calendars = _Memo(64)  # the global calendar a number is checked against: a handful per process


def clear_caches() -> None:
    """Forget every memoized leaf (tests; a process that wants the memory back)."""
    for memo in (_rule_names, _provinces, _province_codes, _days, _times, _dates, _prompts, _targets, _zones, _calendars):
        memo.clear()


def memo_lengths() -> dict[str, int]:
    """Entries each memo holds now, by name (tests)."""
    return {"rule_names": len(_rule_names), "provinces": len(_provinces), "province_codes": len(_province_codes),
            "days": len(_days), "times": len(_times), "dates": len(_dates), "prompts": len(_prompts),
            "targets": len(_targets), "zones": len(_zones), "calendars": len(_calendars)}


def number_plan(raw: object, parser, global_calendar: CalendarSpec) -> NumberPlan:
    """One number's plan, or :class:`Slow`.  O(this plan).

    ``parser`` is a scratch :class:`tel400.plans._Parser` whose leaf methods
    check the fields this path leaves to it (pin, tariff, blacklist, prompts,
    a number's own calendar); an error it raises only sends the caller to
    the precise path.
    """
    if type(raw) is not dict or not raw.keys() <= _NUMBER_FIELDS:
        raise Slow
    get = raw.get
    number = _number(get("number"))
    timezone = get("timezone", DEFAULT_TIMEZONE)
    if type(timezone) is not str:
        raise Slow
    if timezone not in _zones:
        _zones.keep(timezone, parser.timezone(timezone))
    pin = pin_hash = None
    if "pin" in raw or "pin_hash" in raw:
        pin, pin_hash = _pins(raw, parser)
    prompts = ()
    if "prompts" in raw:
        prompts = parser.prompts(raw["prompts"], "prompts")
        if any(key == "unknown_number" for key, _ in prompts):
            raise Slow
    tariff = parser.tariff(raw["tariff"]) if "tariff" in raw else None
    caps = _caps(raw["caps"], tariff, parser) if "caps" in raw else ()
    rules = _rules(raw["rules"]) if "rules" in raw else ()
    default = _default(raw["default"]) if "default" in raw else _REJECT
    calendar = _NO_CALENDAR
    if "calendar" in raw:
        calendar = parser.calendar(raw["calendar"], "calendar")
        global_calendar.merged(calendar).build()
    elif global_calendar not in _calendars:
        global_calendar.merged(calendar).build()
        _calendars.keep(global_calendar, True)
    blacklist = parser.blacklist(raw["blacklist"], "blacklist", limits.MAX_BLACKLIST) if "blacklist" in raw else ()
    unknown_callers = get("reject_unknown_callers", False)
    on_error = get("on_backend_error", "allow")
    if type(unknown_callers) is not bool or type(on_error) is not str or on_error not in _BACKEND_POLICIES:
        raise Slow
    return NumberPlan(
        number, rules, default, timezone, pin, pin_hash, blacklist, caps, prompts,
        unknown_callers, on_error, tariff, calendar,
    )


def _number(value: object) -> str:
    if type(value) is int:
        value = str(value)
    elif type(value) is not str:
        raise Slow
    number = normalize(value)
    if number.startswith("+"):
        raise Slow
    return number


def _pins(raw: dict, parser) -> tuple[str | None, str | None]:
    """Rare fields, checked by the parser's own code (an int PIN is refused there)."""
    if "pin" in raw and "pin_hash" in raw:
        raise Slow
    if "pin" in raw:
        from . import pins

        pin = raw["pin"]
        if type(pin) is not str or not pins.PIN_RE.match(pin):
            raise Slow
        return pin, None
    from . import pins

    pin_hash = raw["pin_hash"]
    if type(pin_hash) is not str:
        raise Slow
    pins.check_hash_format(pin_hash)
    return None, pin_hash


def _rules(value: object) -> tuple[Rule, ...]:
    if type(value) is not list or len(value) > limits.MAX_RULES:
        raise Slow
    rules = []
    names = set()
    for index, data in enumerate(value):
        rule = _rule(data, index)
        if rule.name in names:
            raise Slow
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _rule(data: object, index: int) -> Rule:
    if type(data) is not dict or not data.keys() <= _RULE_FIELDS:
        raise Slow
    name = data.get("name")
    if name is None:
        if "name" in data:
            raise Slow
        name = f"rule-{index + 1}"
    elif type(name) is not str:
        raise Slow
    interned = _rule_names.get(name)
    if interned is None:
        interned = _rule_name(name)
    provinces_ = days = time = dates = None
    if "provinces" in data:
        provinces_ = _provinces_of(data["provinces"])
    if "days" in data:
        days = _memo(_days, data["days"], parse_days)
    if "time" in data:
        time = _time(data["time"])
    if "dates" in data:
        dates = _memo(_dates, data["dates"], parse_dates)
    channel = data.get("channel", "any")
    if type(channel) is not str or channel not in _CHANNELS:
        raise Slow
    return Rule(interned, _action(data, "bridge"), provinces_, days, time, dates, channel)


def _rule_name(name: str) -> str:
    if not _RULE_NAME.match(name):
        raise Slow
    # Interned as the parser does: thousands of plans share a few names.
    return _rule_names.keep(name, sys.intern(name))


def _key(value: object) -> str | tuple[str, ...]:
    """A memo key for a string or a list of strings (no other shape: 1 == 1.0 == True)."""
    if type(value) is str:
        return value
    if type(value) is list and len(value) <= limits.MAX_LIST_ITEMS:
        for item in value:
            if type(item) is not str:
                raise Slow
        return tuple(value)
    raise Slow


def _memo(memo: _Memo, value: object, parse):
    """``parse(value)`` memoized by the string(s) it is given; a ValueError means Slow."""
    key = _key(value)
    found = memo.get(key)
    if found is None:
        found = memo.keep(key, parse(value))
    return found


def _time(value: object) -> TimeSlots:
    if type(value) is not str:
        return _memo(_times, value, parse_time)
    found = _times.get(value)
    if found is None:
        m = _ONE_SLOT.match(value)
        if m:  # the parser's own normal form: parse_time would return the same, 20x slower
            h1, m1, h2, m2 = m.groups()
            found = _times.keep(value, TimeSlots(value, ((int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)),)))
        else:
            found = _times.keep(value, parse_time(value))
    return found


def _provinces_of(value: object) -> frozenset[str]:
    key = _key(value)
    found = _provinces.get(key)
    if found is None:
        if not key:
            raise Slow
        found = _provinces.keep(key, frozenset(map(_province, (key,) if type(key) is str else key)))
    return found


def _province(name: str) -> str:
    code = _province_codes.get(name)
    if code is None:
        from . import provinces

        code = provinces.resolve(name)
        if code is None:
            raise Slow
        _province_codes.keep(name, code)
    return code


def _prompt(value: object) -> str:
    if type(value) is not str:
        raise Slow
    if value not in _prompts:
        if not _PROMPT.match(value):
            raise Slow
        _prompts.keep(value, True)
    return value


def _default(data: object) -> Action:
    if type(data) is not dict or not data.keys() <= _ACTION_FIELDS:
        raise Slow
    return _action(data, "reject")


def _action(data: dict, default_kind: str) -> Action:
    """The action of a rule (whose table, already checked, holds its conditions too) or of a default."""
    kind = data.get("action", default_kind)
    if type(kind) is not str or kind not in _ACTIONS:
        raise Slow
    for key in _NOT_WITH[kind]:
        if key in data:
            raise Slow
    if kind == "bridge":
        strategy = data.get("strategy", "weighted")
        if type(strategy) is not str or strategy not in _STRATEGIES or "targets" not in data:
            raise Slow
        return Action("bridge", _targets_of(data["targets"]), strategy)
    if kind == "reject":
        if "prompt" in data:
            return Action("reject", prompt=_prompt(data["prompt"]))
        return _REJECT
    key = "queue" if kind == "queue" else "room"
    return Action(kind, **{key: _place(data.get(key))})


def _place(name: object) -> str:
    """A queue or room name (a whole number is taken as its digits, as the parser does)."""
    if type(name) is int:
        name = str(name)
    elif type(name) is not str:
        raise Slow
    if not _NAME.match(name):
        raise Slow
    return name


def _targets_of(value: object) -> tuple[Target, ...]:
    if type(value) is not list or not value or len(value) > limits.MAX_TARGETS:
        raise Slow
    targets = []
    seen = set()
    working = False
    for raw in value:
        if type(raw) is str:
            to, weight = raw, 1
        elif type(raw) is dict and raw.keys() <= _TARGET_FIELDS:
            to = raw.get("to")
            weight = raw.get("weight", 1)
            if type(to) is not str or type(weight) is not int or not 0 <= weight <= MAX_WEIGHT:
                raise Slow
        else:
            raise Slow
        if to in seen:
            raise Slow
        seen.add(to)
        if to not in _targets:
            _check_target(to)
        targets.append(Target(to, weight))
        working = working or weight > 0
    if not working:
        raise Slow
    return tuple(targets)


def _check_target(to: str) -> None:
    if not _NUMBER_TARGET.match(to):
        m = _URI_TARGET.match(to)
        if not (m and (m.group(1) is None or 0 < int(m.group(1)) < 65536)):
            raise Slow
    _targets.keep(to, True)


def _caps(value: object, tariff, parser) -> tuple[Cap, ...]:
    if type(value) is not list or len(value) > limits.MAX_CAPS:
        raise Slow
    caps = []
    for data in value:
        if type(data) is not dict or not data.keys() <= _CAP_FIELDS:
            raise Slow
        get = data.get
        metric, per = get("metric"), get("per")
        if type(metric) is not str or metric not in _METRICS or type(per) is not str or per not in _PERIODS:
            raise Slow
        if "limit" not in data:
            raise Slow
        limit = data["limit"]
        if metric == _CALLS:
            if type(limit) is not int or not 0 <= limit <= limits.MAX_CAP_CALLS:
                raise Slow
            limit = Decimal(limit)
        else:
            if metric == "cost" and tariff is None:
                raise Slow
            maximum = limits.MAX_CAP_MINUTES if metric == "minutes" else limits.MAX_CAP_COST
            limit = parser.decimal(limit, "limit", maximum=maximum)
        scope, channel = get("scope", "number"), get("channel", "any")
        if type(scope) is not str or scope not in _SCOPES or type(channel) is not str or channel not in _CHANNELS:
            raise Slow
        prompt = _prompt(data["prompt"]) if "prompt" in data else None
        caps.append(Cap(metric, per, limit, scope, prompt, channel))
    return tuple(caps)
