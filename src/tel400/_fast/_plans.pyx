# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``tel400._plans_fast``: the validator's fast path, typed.

Same contract, same checks, same memos (see that module): it accepts the
common shapes of a number's plan and raises :class:`Slow` on anything else,
and the caller then runs the precise parser, so every error message is the
parser's by construction.  tests/test_plans_fast.py runs both fast paths
against the parser on generated valid, mutated and hostile trees.

What makes it ~5x faster than its twin: C-typed dict and list access,
hand-written checks for time slots and number targets, and the plan objects
built without the attrs ``__init__`` (a blank instance and each field written
into the slot attrs declared for it: what that ``__init__`` does, minus a
Python frame and a bound-method call per field), then untracked by the
collector (:func:`_acyclic`).  The classes' field lists and slots are checked
at import, so that a field added to a plan class cannot be missed here
silently (the import fails, with one warning, and the reference fast path is
used).
"""

import re
import sys

import attrs

from decimal import Decimal

from .. import limits
from ..plans import (
    DEFAULT_SMS,
    ACTIONS, BACKEND_POLICIES, CHANNELS, DEFAULT_TIMEZONE, MAX_WEIGHT, METRICS, PERIODS, SCOPES, STRATEGIES,
    Action, CalendarSpec, Cap, NumberPlan, Rule, Target,
    _NAME, _PROMPT, _RULE_NAME, _URI_TARGET,
)
from ..timespec import TimeSlots, parse_dates, parse_days, parse_time
from ._numbers import normalize

from ._slots cimport PyObject_GC_UnTrack, PyType_GenericAlloc, get_slot as _slot, put_slot as _put, slot_offsets


class Slow(Exception):
    """Not accepted here: the caller runs the precise parser on the same input."""


def _fields(cls):
    return tuple(f.name for f in attrs.fields(cls))


if (
    _fields(Target) != ("to", "weight")
    or _fields(Action) != ("kind", "targets", "strategy", "queue", "room", "prompt")
    or _fields(Rule) != ("name", "action", "provinces", "days", "time", "dates", "channel")
    or _fields(Cap) != ("metric", "per", "limit", "scope", "prompt", "channel")
    or _fields(TimeSlots) != ("text", "slots")
    or _fields(NumberPlan) != (
        "number", "rules", "default", "timezone", "pin", "pin_hash", "blacklist", "caps", "prompts",
        "reject_unknown_callers", "on_backend_error", "tariff", "calendar", "sms_replies", "sms",
    )
):
    raise ImportError("tel400._fast._plans: the plan classes' fields changed; update its constructors")

# Where each field of the plan classes lives in their instances: the slot
# offsets of their member descriptors (attrs makes slotted classes), read
# once here, so that a field is written as attrs' __init__ writes it through
# the descriptor, without the lookup.
cdef Py_ssize_t _OFF_TARGET[2]
cdef Py_ssize_t _OFF_ACTION[6]
cdef Py_ssize_t _OFF_RULE[7]
cdef Py_ssize_t _OFF_CAP[6]
cdef Py_ssize_t _OFF_TIMESLOTS[2]
cdef Py_ssize_t _OFF_NUMBERPLAN[15]


cdef _offsets(type cls, Py_ssize_t* into):
    slot_offsets("tel400._fast._plans", cls, _fields(cls), into)


_offsets(Target, _OFF_TARGET)
_offsets(Action, _OFF_ACTION)
_offsets(Rule, _OFF_RULE)
_offsets(Cap, _OFF_CAP)
_offsets(TimeSlots, _OFF_TIMESLOTS)
_offsets(NumberPlan, _OFF_NUMBERPLAN)


cdef frozenset _NUMBER_FIELDS = frozenset((
    "number", "timezone", "pin", "pin_hash", "blacklist", "default", "caps", "rules",
    "prompts", "reject_unknown_callers", "on_backend_error", "tariff", "calendar",
))
cdef frozenset _RULE_FIELDS = frozenset((
    "name", "provinces", "days", "time", "dates", "channel",
    "action", "strategy", "targets", "queue", "room", "prompt",
))
cdef frozenset _ACTION_FIELDS = frozenset(("action", "strategy", "targets", "queue", "room", "prompt"))
cdef frozenset _CAP_FIELDS = frozenset(("metric", "per", "limit", "scope", "prompt", "channel"))
cdef frozenset _TARGET_FIELDS = frozenset(("to", "weight"))
cdef tuple _BRIDGE_NOT = ("queue", "room", "prompt")
cdef tuple _REJECT_NOT = ("strategy", "targets", "queue", "room")
cdef tuple _QUEUE_NOT = ("strategy", "targets", "room", "prompt")
cdef tuple _CONFERENCE_NOT = ("strategy", "targets", "queue", "prompt")
cdef frozenset _CHANNELS = frozenset(CHANNELS)
cdef frozenset _STRATEGIES = frozenset(STRATEGIES)
cdef frozenset _SCOPES = frozenset(SCOPES)
cdef frozenset _PERIODS = frozenset(PERIODS)
cdef frozenset _METRICS = frozenset(METRICS)
cdef frozenset _BACKEND_POLICIES = frozenset(BACKEND_POLICIES)
cdef object _uri_target = _URI_TARGET.match
cdef object _prompt_ok = _PROMPT.match
cdef object _name_ok = _NAME.match
cdef object _rule_name_ok = _RULE_NAME.match
cdef object _intern = sys.intern
cdef inline object _new(type cls):
    """A blank instance, as object.__new__ makes it (the plan classes have no __new__ of their own)."""
    return PyType_GenericAlloc(cls, 0)


cdef inline object _acyclic(object o):
    """``o``, no longer tracked by the garbage collector.

    Every object this module builds is frozen and holds only strings,
    numbers and other such objects: it cannot be part of a reference cycle
    (short of object.__setattr__ on a frozen plan), so the collector has
    nothing to find in it.  Tracked, the plan objects made ~70% of a bulk
    validation's time the collector's (PlanSet.from_dict of 5,000 numbers
    x 5 rules: 0.45 s of 0.65 s, the full collections walking every plan so
    far); untracked, ~0.  It is CPython's own rule for tuples of atomic
    values, applied at once.  Reference counting frees them as before.
    """
    PyObject_GC_UnTrack(o)
    return o


cdef object _REJECT = Action()
cdef object _NO_CALENDAR = CalendarSpec()
cdef tuple _EMPTY_TUPLE = ()
cdef long long _MAX_WEIGHT = MAX_WEIGHT
cdef long long _MAX_CAP_CALLS = limits.MAX_CAP_CALLS

cdef Py_ssize_t _SIZE = limits.VALIDATION_CACHE_ENTRIES
cdef dict _rule_names = {}
cdef dict _provinces = {}
cdef dict _province_codes = {}
cdef dict _days = {}
cdef dict _times = {}
cdef dict _dates = {}
cdef dict _prompts = {}
cdef dict _targets = {}
cdef dict _zones = {}
cdef dict _calendars = {}
cdef list _last_calendar = [None]


def clear_caches():
    """Forget every memoized leaf (tests; a process that wants the memory back)."""
    for memo in (_rule_names, _provinces, _province_codes, _days, _times, _dates, _prompts, _targets, _zones,
                 _calendars):
        memo.clear()
    _last_calendar[0] = None


def memo_lengths():
    """Entries each memo holds now, by name (tests)."""
    return {"rule_names": len(_rule_names), "provinces": len(_provinces), "province_codes": len(_province_codes),
            "days": len(_days), "times": len(_times), "dates": len(_dates), "prompts": len(_prompts),
            "targets": len(_targets), "zones": len(_zones), "calendars": len(_calendars)}


cdef inline object _keep(dict memo, object key, object value, Py_ssize_t size=-1):
    if size < 0:
        size = _SIZE
    if len(memo) >= size:
        memo.clear()
    memo[key] = value
    return value


# -- building the plan objects (what their attrs __init__ does, without its frame) --

cdef inline object _target(object to, object weight):
    cdef object o = _new(Target)
    _put(o, _OFF_TARGET[0], to)  # to
    _put(o, _OFF_TARGET[1], weight)  # weight
    return _acyclic(o)


cdef inline object _bridge(tuple targets, object strategy):
    cdef object o = _new(Action)
    _put(o, _OFF_ACTION[0], "bridge")  # kind
    _put(o, _OFF_ACTION[1], targets)  # targets
    _put(o, _OFF_ACTION[2], strategy)  # strategy
    _put(o, _OFF_ACTION[3], None)  # queue
    _put(o, _OFF_ACTION[4], None)  # room
    _put(o, _OFF_ACTION[5], None)  # prompt
    return _acyclic(o)


cdef inline object _rule_object(object name, object action, object provinces, object days, object time, object dates,
                                object channel):
    cdef object o = _new(Rule)
    _put(o, _OFF_RULE[0], name)  # name
    _put(o, _OFF_RULE[1], action)  # action
    _put(o, _OFF_RULE[2], provinces)  # provinces
    _put(o, _OFF_RULE[3], days)  # days
    _put(o, _OFF_RULE[4], time)  # time
    _put(o, _OFF_RULE[5], dates)  # dates
    _put(o, _OFF_RULE[6], channel)  # channel
    return _acyclic(o)


cdef inline object _slots(object text, int start, int end):
    cdef object o = _new(TimeSlots)
    _put(o, _OFF_TIMESLOTS[0], text)  # text
    _put(o, _OFF_TIMESLOTS[1], _acyclic((_acyclic((start, end)),)))  # slots
    return _acyclic(o)


# -- the walk ---------------------------------------------------------------------------

cdef inline bint _keys_within(dict data, frozenset allowed):
    for key in data:
        if key not in allowed:
            return False
    return True


def number_plan(object raw, object parser, object global_calendar):
    """One number's plan, or :class:`Slow`.  O(this plan)."""
    if type(raw) is not dict or not _keys_within(<dict>raw, _NUMBER_FIELDS):
        raise Slow
    cdef dict data = <dict>raw
    cdef object number = _number(data.get("number"))
    cdef object timezone = data.get("timezone", DEFAULT_TIMEZONE)
    if type(timezone) is not str:
        raise Slow
    if timezone not in _zones:
        _keep(_zones, timezone, parser.timezone(timezone))
    pin = pin_hash = None
    if "pin" in data or "pin_hash" in data:
        pin, pin_hash = _pins(data)
    cdef tuple prompts = ()
    if "prompts" in data:
        prompts = parser.prompts(data["prompts"], "prompts")
        for key, _ in prompts:
            if key == "unknown_number":
                raise Slow
    tariff = parser.tariff(data["tariff"]) if "tariff" in data else None
    cdef tuple caps = _caps(data["caps"], tariff, parser) if "caps" in data else ()
    cdef tuple rules = _rules(data["rules"]) if "rules" in data else ()
    default = _default(data["default"]) if "default" in data else _REJECT
    calendar = _NO_CALENDAR
    if "calendar" in data:
        calendar = parser.calendar(data["calendar"], "calendar")
        global_calendar.merged(calendar).build()
    elif global_calendar is not _last_calendar[0]:  # the same settings object, number after number
        if global_calendar not in _calendars:
            global_calendar.merged(calendar).build()
            _keep(_calendars, global_calendar, True, 64)
        _last_calendar[0] = global_calendar
    blacklist = parser.blacklist(data["blacklist"], "blacklist", limits.MAX_BLACKLIST) if "blacklist" in data else ()
    unknown_callers = data.get("reject_unknown_callers", False)
    on_error = data.get("on_backend_error", "allow")
    if type(unknown_callers) is not bool or type(on_error) is not str or on_error not in _BACKEND_POLICIES:
        raise Slow
    cdef object o = _new(NumberPlan)
    _put(o, _OFF_NUMBERPLAN[0], number)  # number
    _put(o, _OFF_NUMBERPLAN[1], rules)  # rules
    _put(o, _OFF_NUMBERPLAN[2], default)  # default
    _put(o, _OFF_NUMBERPLAN[3], timezone)  # timezone
    _put(o, _OFF_NUMBERPLAN[4], pin)  # pin
    _put(o, _OFF_NUMBERPLAN[5], pin_hash)  # pin_hash
    _put(o, _OFF_NUMBERPLAN[6], blacklist)  # blacklist
    _put(o, _OFF_NUMBERPLAN[7], caps)  # caps
    _put(o, _OFF_NUMBERPLAN[8], prompts)  # prompts
    _put(o, _OFF_NUMBERPLAN[9], unknown_callers)  # reject_unknown_callers
    _put(o, _OFF_NUMBERPLAN[10], on_error)  # on_backend_error
    _put(o, _OFF_NUMBERPLAN[11], tariff)  # tariff
    _put(o, _OFF_NUMBERPLAN[12], calendar)  # calendar
    _put(o, _OFF_NUMBERPLAN[13], _EMPTY_TUPLE)  # sms_replies: a plan with any goes to the parser
    _put(o, _OFF_NUMBERPLAN[14], DEFAULT_SMS)  # sms
    # Acyclic too: what the parser's own code gave (blacklist, prompts, tariff,
    # calendar) is frozen values as well, left tracked: they cost the collector
    # little and only plans that use them have them.
    return _acyclic(o)


cdef object _number(object value):
    if type(value) is int:
        value = str(value)
    elif type(value) is not str:
        raise Slow
    number = normalize(value)
    if number.startswith("+"):
        raise Slow
    return number


cdef tuple _pins(dict data):
    """Rare fields: the PIN as the parser checks it (an int PIN is refused there)."""
    from .. import pins

    if "pin" in data and "pin_hash" in data:
        raise Slow
    if "pin" in data:
        pin = data["pin"]
        if type(pin) is not str or not pins.PIN_RE.match(pin):
            raise Slow
        return pin, None
    pin_hash = data["pin_hash"]
    if type(pin_hash) is not str:
        raise Slow
    pins.check_hash_format(pin_hash)
    return None, pin_hash


cdef tuple _rules(object value):
    if type(value) is not list or len(<list>value) > limits.MAX_RULES:
        raise Slow
    cdef list items = <list>value
    cdef list rules = []
    cdef set names = set()
    cdef Py_ssize_t index
    for index in range(len(items)):
        rule = _rule(items[index], index)
        name = (<object>rule).name
        if name in names:
            raise Slow
        names.add(name)
        rules.append(rule)
    return _acyclic(tuple(rules))


cdef object _rule(object raw, Py_ssize_t index):
    if type(raw) is not dict or not _keys_within(<dict>raw, _RULE_FIELDS):
        raise Slow
    cdef dict data = <dict>raw
    name = data.get("name")
    if name is None:
        if "name" in data:
            raise Slow
        name = f"rule-{index + 1}"
    elif type(name) is not str:
        raise Slow
    interned = _rule_names.get(name)
    if interned is None:
        if not _rule_name_ok(name):
            raise Slow
        # Interned as the parser does: thousands of plans share a few names.
        interned = _keep(_rule_names, name, _intern(name))
    provinces = days = time = dates = None
    if "provinces" in data:
        provinces = _provinces_of(data["provinces"])
    if "days" in data:
        days = _memo(_days, data["days"], parse_days)
    if "time" in data:
        time = _time(data["time"])
    if "dates" in data:
        dates = _memo(_dates, data["dates"], parse_dates)
    channel = data.get("channel", "any")
    if type(channel) is not str or channel not in _CHANNELS:
        raise Slow
    return _rule_object(interned, _action(data, "bridge"), provinces, days, time, dates, channel)


cdef object _key(object value):
    """A memo key for a string or a list of strings (no other shape: 1 == 1.0 == True)."""
    if type(value) is str:
        return value
    if type(value) is list and len(<list>value) <= limits.MAX_LIST_ITEMS:
        for item in <list>value:
            if type(item) is not str:
                raise Slow
        return tuple(<list>value)
    raise Slow


cdef object _memo(dict memo, object value, object parse):
    """``parse(value)`` (Days, TimeSlots, DateRanges: strings and tuples of ints), memoized."""
    key = _key(value)
    found = memo.get(key)
    if found is None:
        found = _keep(memo, key, _acyclic(parse(value)))
    return found


cdef object _time(object value):
    if type(value) is not str:
        return _memo(_times, value, parse_time)
    found = _times.get(value)
    if found is None:
        start = _clock(<str>value, 0)
        end = _clock(<str>value, 6)
        if len(<str>value) == 11 and (<str>value)[5] == u"-" and start >= 0 and end >= 0:
            # "HH:MM-HH:MM", the parser's own normal form: parse_time would return the same
            found = _slots(value, start, end)
        else:
            found = _acyclic(parse_time(value))
        _keep(_times, value, found)
    return found


cdef inline int _digit(str s, Py_ssize_t i):
    cdef Py_UCS4 c = s[i]
    return <int>c - 48 if u"0" <= c <= u"9" else -100


cdef int _clock(str s, Py_ssize_t at):
    """The minute of the day of "HH:MM" at ``at`` (00:00 to 23:59, two digits each), or -1."""
    if len(s) < at + 5 or s[at + 2] != u":":
        return -1
    cdef int hour = _digit(s, at) * 10 + _digit(s, at + 1)
    cdef int minute = _digit(s, at + 3) * 10 + _digit(s, at + 4)
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        return -1
    return hour * 60 + minute


cdef object _provinces_of(object value):
    key = _key(value)
    found = _provinces.get(key)
    if found is None:
        if not key:
            raise Slow
        if type(key) is str:
            found = frozenset((_province(key),))
        else:
            found = frozenset([_province(item) for item in <tuple>key])
        _keep(_provinces, key, _acyclic(found))
    return found


cdef object _province(object name):
    code = _province_codes.get(name)
    if code is None:
        from .. import provinces

        code = provinces.resolve(name)
        if code is None:
            raise Slow
        _keep(_province_codes, name, code)
    return code


cdef object _prompt(object value):
    if type(value) is not str:
        raise Slow
    if value not in _prompts:
        if not _prompt_ok(value):
            raise Slow
        _keep(_prompts, value, True)
    return value


cdef object _default(object raw):
    if type(raw) is not dict or not _keys_within(<dict>raw, _ACTION_FIELDS):
        raise Slow
    return _action(<dict>raw, "reject")


cdef object _action(dict data, str default_kind):
    """The action of a rule (whose table, already checked, holds its conditions too) or of a default."""
    kind = data.get("action", default_kind)
    if type(kind) is str and kind == "bridge":
        for key in _BRIDGE_NOT:
            if key in data:
                raise Slow
        strategy = data.get("strategy", "weighted")
        if type(strategy) is not str or strategy not in _STRATEGIES or "targets" not in data:
            raise Slow
        return _bridge(_targets_of(data["targets"]), strategy)
    if type(kind) is str and kind == "reject":
        for key in _REJECT_NOT:
            if key in data:
                raise Slow
        if "prompt" in data:
            return Action("reject", prompt=_prompt(data["prompt"]))
        return _REJECT
    if type(kind) is str and kind == "queue":
        for key in _QUEUE_NOT:
            if key in data:
                raise Slow
        return Action("queue", queue=_place(data.get("queue")))
    if type(kind) is str and kind == "conference":
        for key in _CONFERENCE_NOT:
            if key in data:
                raise Slow
        return Action("conference", room=_place(data.get("room")))
    raise Slow  # a mistake: left to the parser


cdef str _place(object name):
    """A queue or room name (a whole number is taken as its digits, as the parser does)."""
    if type(name) is int:
        name = str(name)
    elif type(name) is not str:
        raise Slow
    if not _name_ok(name):
        raise Slow
    return name


cdef tuple _targets_of(object value):
    if type(value) is not list or not value or len(<list>value) > limits.MAX_TARGETS:
        raise Slow
    cdef list targets = []
    cdef set seen = set()
    cdef bint working = False
    for raw in <list>value:
        if type(raw) is str:
            to, weight = raw, 1
        elif type(raw) is dict and _keys_within(<dict>raw, _TARGET_FIELDS):
            to = (<dict>raw).get("to")
            weight = (<dict>raw).get("weight", 1)
            if type(to) is not str or type(weight) is not int:
                raise Slow
            if weight < 0 or weight > _MAX_WEIGHT:
                raise Slow
        else:
            raise Slow
        if to in seen:
            raise Slow
        seen.add(to)
        if not _is_number_target(<str>to) and to not in _targets:
            _check_target(to)
        targets.append(_target(to, weight))
        if weight:
            working = True
    if not working:
        raise Slow
    return _acyclic(tuple(targets))


cdef bint _is_number_target(str s):
    """What _NUMBER_TARGET matches: an optional + * #, then 1 to 32 of 0-9 * #."""
    cdef Py_ssize_t n = len(s), i = 0
    cdef Py_UCS4 c
    if n > 1 and s[0] in u"+*#":  # (* and # are digits too: "*" alone is a number)
        i = 1
    if not 1 <= n - i <= 32:
        return False
    while i < n:
        c = s[i]
        if not (u"0" <= c <= u"9" or c == u"*" or c == u"#"):
            return False
        i += 1
    return True


cdef _check_target(object to):
    """A user@host[:port] target (the regex and the port's range), memoized."""
    m = _uri_target(to)
    if not (m and (m.group(1) is None or 0 < int(m.group(1)) < 65536)):
        raise Slow
    _keep(_targets, to, True)


cdef tuple _caps(object value, object tariff, object parser):
    if type(value) is not list or len(<list>value) > limits.MAX_CAPS:
        raise Slow
    cdef list caps = []
    for raw in <list>value:
        if type(raw) is not dict or not _keys_within(<dict>raw, _CAP_FIELDS):
            raise Slow
        data = <dict>raw
        metric, per = data.get("metric"), data.get("per")
        if type(metric) is not str or metric not in _METRICS or type(per) is not str or per not in _PERIODS:
            raise Slow
        if "limit" not in data:
            raise Slow
        limit = data["limit"]
        if metric == "calls":
            if type(limit) is not int or limit < 0 or limit > _MAX_CAP_CALLS:
                raise Slow
            limit = Decimal(limit)
        else:
            if metric == "cost" and tariff is None:
                raise Slow
            maximum = limits.MAX_CAP_MINUTES if metric == "minutes" else limits.MAX_CAP_COST
            limit = parser.decimal(limit, "limit", maximum=maximum)
        scope, channel = data.get("scope", "number"), data.get("channel", "any")
        if type(scope) is not str or scope not in _SCOPES or type(channel) is not str or channel not in _CHANNELS:
            raise Slow
        prompt = _prompt(data["prompt"]) if "prompt" in data else None
        cap = _new(Cap)
        _put(cap, _OFF_CAP[0], metric)  # metric
        _put(cap, _OFF_CAP[1], per)  # per
        _put(cap, _OFF_CAP[2], limit)  # limit
        _put(cap, _OFF_CAP[3], scope)  # scope
        _put(cap, _OFF_CAP[4], prompt)  # prompt
        _put(cap, _OFF_CAP[5], channel)  # channel
        caps.append(_acyclic(cap))
    return _acyclic(tuple(caps))


# -- dumping: the canonical tree of a validated plan (twin of tel400.plans._dump_plan) --

cdef dict _dump_action(object action, dict out):
    """The action's fields written into ``out`` (a rule's table, or a new one for a default)."""
    kind = _slot(action, _OFF_ACTION[0])
    out["action"] = kind
    if kind == "bridge":
        given = _slot(action, _OFF_ACTION[1])
        if type(given) is not tuple:
            raise Slow
        targets = []
        for target in <tuple>given:
            if type(target) is not Target:
                raise Slow
            targets.append({"to": _slot(target, _OFF_TARGET[0]), "weight": _slot(target, _OFF_TARGET[1])})
        out["strategy"] = _slot(action, _OFF_ACTION[2])
        out["targets"] = targets
    elif kind == "queue":
        out["queue"] = _slot(action, _OFF_ACTION[3])
    elif kind == "conference":
        out["room"] = _slot(action, _OFF_ACTION[4])
    else:
        prompt = _slot(action, _OFF_ACTION[5])
        if prompt is not None:
            out["prompt"] = prompt
    return out


cdef dict _dump_rule(object rule):
    cdef dict r = {"name": _slot(rule, _OFF_RULE[0])}
    provinces = _slot(rule, _OFF_RULE[2])
    if provinces is not None:
        r["provinces"] = sorted(provinces)
    days = _slot(rule, _OFF_RULE[3])
    if days is not None:
        r["days"] = days.text
    time = _slot(rule, _OFF_RULE[4])
    if time is not None:
        r["time"] = time.text
    dates = _slot(rule, _OFF_RULE[5])
    if dates is not None:
        r["dates"] = dates.text
    channel = _slot(rule, _OFF_RULE[6])
    if channel != "any":
        r["channel"] = channel
    action = _slot(rule, _OFF_RULE[1])
    if type(action) is not Action:
        raise Slow
    return _dump_action(action, r)


cdef dict _dump_cap(object cap):
    metric = _slot(cap, _OFF_CAP[0])
    limit = _slot(cap, _OFF_CAP[2])
    cdef dict out = {"metric": metric, "per": _slot(cap, _OFF_CAP[1]),
                     "limit": int(limit) if metric == "calls" else str(limit),
                     "scope": _slot(cap, _OFF_CAP[3]), "channel": _slot(cap, _OFF_CAP[5])}
    prompt = _slot(cap, _OFF_CAP[4])
    if prompt is not None:
        out["prompt"] = prompt
    return out


def dump_plan(object plan, object reference):
    """``reference(plan)`` (``tel400.plans._dump_plan``: the tree stores keep), built from the
    slots; a plan holding objects of other classes than the validator's goes to ``reference``.
    O(this plan)."""
    try:
        return _dump_plan(plan, reference)
    except Slow:
        return reference(plan)


cdef dict _dump_plan(object plan, object reference):
    if type(plan) is not NumberPlan:
        raise Slow
    cdef dict out = {"number": _slot(plan, _OFF_NUMBERPLAN[0]), "timezone": _slot(plan, _OFF_NUMBERPLAN[3])}
    pin, pin_hash = _slot(plan, _OFF_NUMBERPLAN[4]), _slot(plan, _OFF_NUMBERPLAN[5])
    blacklist, prompts = _slot(plan, _OFF_NUMBERPLAN[6]), _slot(plan, _OFF_NUMBERPLAN[8])
    tariff, calendar = _slot(plan, _OFF_NUMBERPLAN[11]), _slot(plan, _OFF_NUMBERPLAN[12])
    on_error = _slot(plan, _OFF_NUMBERPLAN[10])
    if (pin is not None or pin_hash is not None or blacklist or prompts or tariff is not None
            or calendar is not _NO_CALENDAR or on_error != "allow" or _slot(plan, _OFF_NUMBERPLAN[9])
            or _slot(plan, _OFF_NUMBERPLAN[13]) or _slot(plan, _OFF_NUMBERPLAN[14]) is not DEFAULT_SMS):
        raise Slow  # a field most plans leave out: the reference writes it
    default = _slot(plan, _OFF_NUMBERPLAN[2])
    if type(default) is not Action:
        raise Slow
    out["default"] = _dump_action(default, {})
    caps = _slot(plan, _OFF_NUMBERPLAN[7])
    rules_given = _slot(plan, _OFF_NUMBERPLAN[1])
    if type(caps) is not tuple or type(rules_given) is not tuple:
        raise Slow
    if caps:
        dumped = []
        for cap in <tuple>caps:
            if type(cap) is not Cap:
                raise Slow
            dumped.append(_dump_cap(cap))
        out["caps"] = dumped
    rules = []
    for rule in <tuple>rules_given:
        if type(rule) is not Rule:
            raise Slow
        rules.append(_dump_rule(rule))
    out["rules"] = rules
    return out
