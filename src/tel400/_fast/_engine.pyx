# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tel400._engine_py``: the routing decision in C.

A plan compiles into C structs (rules with province bit masks, weekday masks,
minute slots and date ranges; blacklist prefixes as sorted integers; caps
with their keys) and a call walks them touching Python objects only to read
its arguments, to look the dialed number up in one dict, and to build the
``Decision``.  The order of checks and every choice are the reference's; a
property test holds the two to the same decisions.

``explain`` and dry runs go to a reference engine for the one plan
concerned, sharing this engine's state (counters, round-robin positions,
statistics), so that the trace has a single author.
"""

import attrs

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_INCREF, PyObject
from cpython.tuple cimport PyTuple_SET_ITEM
from cpython cimport array
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t

from ._clock cimport CalendarTable, LocalTime, ZoneTable, calendar_table, zone_table
from ._counters cimport CCounters as FastCounters
from ._numbers cimport c_normalize_or_none
from ._segments cimport IntervalLookup
from ._select cimport FastRandom, Selector

from .. import _engine_py, provinces
from .._common import (
    AT_MAX, AT_MIN, OUTCOME_INDEX, SMS_ACCESS_PREFIX, UNKNOWN_LABEL, CallRecord, cap_key, check_at,
)
from ..counters import PERIOD_TTL_S, CapCheck
from ..decision import Decision
from ..exceptions import BackendError
from ._select import make_selector

cdef double _AT_MIN = AT_MIN
cdef double _AT_MAX = AT_MAX

cdef extern from "time.h" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_REALTIME

cdef extern from *:
    """
    static PyObject* tel400_alloc_tuple(PyObject* type, Py_ssize_t n) {
        return ((PyTypeObject*)type)->tp_alloc((PyTypeObject*)type, n);
    }
    """
    object tel400_alloc_tuple(object type, Py_ssize_t n)
    void PyObject_GC_UnTrack(object o)

cdef enum:
    CH_ANY = 0
    CH_VOICE = 1
    CH_SMS = 2

cdef enum:
    K_BRIDGE = 0
    K_REJECT = 1
    K_QUEUE = 2
    K_CONFERENCE = 3

cdef enum:
    P_HOUR = 0
    P_DAY = 1
    P_WEEK = 2
    P_MONTH = 3

cdef enum:
    M_CALLS = 0
    M_MINUTES = 1
    M_COST = 2

cdef enum:
    MAX_STACK_CAPS = 16
    MAX_PREFIX_DIGITS = 18

cdef dict _CHANNEL_CODES = {"any": CH_ANY, "voice": CH_VOICE, "sms": CH_SMS}
cdef dict _KIND_CODES = {"bridge": K_BRIDGE, "reject": K_REJECT, "queue": K_QUEUE, "conference": K_CONFERENCE}
cdef tuple _KIND_NAMES = ("bridge", "reject", "queue", "conference")
cdef dict _PER_CODES = {"hour": P_HOUR, "day": P_DAY, "week": P_WEEK, "month": P_MONTH}
cdef dict _METRIC_CODES = {"calls": M_CALLS, "minutes": M_MINUTES, "cost": M_COST}
cdef tuple _EMPTY = ()
cdef str _VOICE = "voice"
cdef str _SMS = "sms"
cdef str _ANONYMOUS = "anonymous"
cdef tuple _CODES = provinces.CODES

cdef int I_BRIDGE_OK = OUTCOME_INDEX[("bridge", "ok")]
cdef int I_QUEUE_OK = OUTCOME_INDEX[("queue", "ok")]
cdef int I_CONFERENCE_OK = OUTCOME_INDEX[("conference", "ok")]
cdef int I_PIN_REQUIRED = OUTCOME_INDEX[("collect_pin", "pin_required")]
cdef int I_UNKNOWN = OUTCOME_INDEX[("reject", "unknown_number")]
cdef int I_BLACKLISTED = OUTCOME_INDEX[("reject", "blacklisted")]
cdef int I_BAD_CALLER = OUTCOME_INDEX[("reject", "bad_caller")]
cdef int I_BAD_PIN = OUTCOME_INDEX[("reject", "bad_pin")]
cdef int I_PIN_LOCKED = OUTCOME_INDEX[("reject", "pin_locked")]
cdef int I_CLOSED = OUTCOME_INDEX[("reject", "closed")]
cdef int I_RULE_REJECT = OUTCOME_INDEX[("reject", "rule_reject")]
cdef int I_CAP_EXCEEDED = OUTCOME_INDEX[("reject", "cap_exceeded")]
cdef int I_BACKEND_ERROR = OUTCOME_INDEX[("reject", "backend_error")]
cdef dict _OUTCOME_OF_REASON = {
    "unknown_number": I_UNKNOWN, "blacklisted": I_BLACKLISTED, "bad_caller": I_BAD_CALLER,
    "bad_pin": I_BAD_PIN, "pin_locked": I_PIN_LOCKED, "backend_error": I_BACKEND_ERROR,
}


cdef struct RuleC:
    # 40 bytes: a plan's rules are scanned in order, so keep them dense.
    PyObject* action         # the rule's CAction (owned by CPlan.rule_actions)
    uint64_t provinces       # a bit per province index; every bit set when the rule names none
    int32_t date_offset      # into the plan's int32 pool: start, end, start, end …
    int32_t slot_offset      # into the pool: start minute, end minute …
    uint16_t ndates          # 0: no date condition
    uint16_t nslots          # 0: no time condition
    uint8_t channel
    uint8_t has_days
    uint8_t weekdays
    uint8_t workday
    uint8_t holiday


cdef struct PrefixGroup:
    int length
    int count
    int64_t* values          # sorted


cdef class CAction:
    cdef int kind
    cdef bint connects
    cdef str kind_name
    cdef str reason
    cdef int outcome
    cdef object prompt
    cdef Selector selector
    cdef tuple fixed


cdef class CCap:
    cdef str key
    cdef int metric
    cdef str metric_name
    cdef int per
    cdef int64_t limit
    cdef bint per_caller
    cdef object prompt
    cdef int channel
    cdef int64_t ttl


cdef class CPlan:
    cdef readonly str number
    cdef ZoneTable zone
    cdef CalendarTable calendar
    cdef frozenset bl_exact
    cdef bint has_bl_exact
    cdef bint bl_anonymous
    cdef PrefixGroup* bl_groups
    cdef int n_bl_groups
    cdef bint reject_unknown
    cdef object pin_gate
    cdef dict prompts
    cdef bint fail_open
    cdef object tariff
    cdef RuleC* rules
    cdef int nrules
    cdef int32_t* pool
    cdef list rule_names
    cdef list rule_actions
    cdef CAction default
    cdef list caps
    cdef int ncaps
    cdef bint has_charges
    cdef array.array outcomes
    cdef int64_t* outcome_data

    def __dealloc__(self):
        cdef int i
        PyMem_Free(self.rules)  # the pool lives in the same block
        if self.bl_groups != NULL:
            for i in range(self.n_bl_groups):
                PyMem_Free(self.bl_groups[i].values)
            PyMem_Free(self.bl_groups)


cdef inline int64_t _period(int per, LocalTime* t) noexcept nogil:
    if per == P_DAY:
        return t.ordinal
    if per == P_HOUR:
        return t.ordinal * 24 + t.hour
    if per == P_WEEK:
        return t.ordinal - t.weekday
    return <int64_t>t.year * 12 + t.month - 1


cdef inline object _make_decision(str action, tuple targets, object prompt, str reason, object rule,
                                  object province, object number, object caller, str channel, object call_id):
    cdef object d = tel400_alloc_tuple(Decision, 11)
    Py_INCREF(action); PyTuple_SET_ITEM(d, 0, action)
    Py_INCREF(targets); PyTuple_SET_ITEM(d, 1, targets)
    Py_INCREF(prompt); PyTuple_SET_ITEM(d, 2, prompt)
    Py_INCREF(reason); PyTuple_SET_ITEM(d, 3, reason)
    Py_INCREF(rule); PyTuple_SET_ITEM(d, 4, rule)
    Py_INCREF(province); PyTuple_SET_ITEM(d, 5, province)
    Py_INCREF(number); PyTuple_SET_ITEM(d, 6, number)
    Py_INCREF(caller); PyTuple_SET_ITEM(d, 7, caller)
    Py_INCREF(channel); PyTuple_SET_ITEM(d, 8, channel)
    Py_INCREF(call_id); PyTuple_SET_ITEM(d, 9, call_id)
    Py_INCREF(None); PyTuple_SET_ITEM(d, 10, None)
    # Strings, a tuple of strings and None cannot form a cycle: keep the
    # decision out of the cyclic GC, which would otherwise visit every one.
    PyObject_GC_UnTrack(d)
    return d


cdef int64_t _digits_value(const char* s, Py_ssize_t n, int length) noexcept nogil:
    """The first ``length`` characters as a number, or -1 if not all digits."""
    cdef int64_t v = 0
    cdef int i
    if n < length:
        return -1
    for i in range(length):
        if s[i] < c'0' or s[i] > c'9':
            return -1
        v = v * 10 + (s[i] - c'0')
    return v


cdef bint _sorted_contains(const int64_t* values, int count, int64_t v) noexcept nogil:
    cdef int lo = 0, hi = count - 1, mid
    while lo <= hi:
        mid = (lo + hi) >> 1
        if values[mid] == v:
            return True
        if values[mid] < v:
            lo = mid + 1
        else:
            hi = mid - 1
    return False


cdef class Engine:
    """A compiled plan set that routes calls (compiled twin of the reference)."""

    cdef readonly object plans
    cdef readonly object prefixes
    cdef readonly object shared
    cdef readonly dict rr_states
    cdef readonly dict pin_checks
    cdef readonly dict by_number
    cdef IntervalLookup lookup
    cdef object counters
    cdef FastCounters fast_counters
    cdef FastRandom rng
    cdef object calls
    cdef object unknown_prompt
    cdef array.array unknown_outcomes
    cdef dict delegates

    def __init__(self, plans, prefixes, shared):
        self.plans = plans
        self.prefixes = prefixes
        self.shared = shared
        self.rr_states = {}
        self.pin_checks = {}
        lookup = prefixes.lookup
        self.lookup = lookup if isinstance(lookup, IntervalLookup) else IntervalLookup(prefixes.starts, prefixes.codes)
        self.counters = shared.counters
        self.fast_counters = shared.counters if isinstance(shared.counters, FastCounters) else None
        if shared.fast_rng is None:
            shared.fast_rng = FastRandom(shared.rng.getrandbits(64))
        self.rng = shared.fast_rng
        self.calls = shared.calls
        self.delegates = {}
        compiled = {}
        for plan in plans.numbers:
            compiled[plan.number] = self._compile_plan(plan)
        self.by_number = compiled
        self.unknown_prompt = dict(plans.prompts).get("unknown_number", "unknown_number")
        self.unknown_outcomes = shared.outcome_counts(UNKNOWN_LABEL)

    # -- compiling ------------------------------------------------------------

    cdef CPlan _compile_plan(self, plan):
        cdef CPlan cp = CPlan()
        cdef CCap c
        cdef RuleC* r
        cdef int i, k, pos
        plans = self.plans
        cp.number = plan.number
        cp.zone = zone_table(plan.timezone)
        cp.calendar = calendar_table(plans.calendar.merged(plan.calendar).build())
        self._compile_blacklist(cp, plans.blacklist + plan.blacklist)
        cp.reject_unknown = plan.reject_unknown_callers
        cp.pin_gate = _engine_py.pin_gate(plan, self.shared, self.pin_checks)
        cp.prompts = _engine_py.plan_prompts(plans, plan)
        cp.fail_open = plan.on_backend_error == "allow"
        cp.tariff = plan.tariff
        cp.outcomes = self.shared.outcome_counts(plan.number)
        cp.outcome_data = <int64_t*>cp.outcomes.data.as_longlongs

        rules = plan.rules
        cp.nrules = len(rules)
        pool_size = 0
        for rule in rules:
            pool_size += 2 * (len(rule.dates.ranges) if rule.dates is not None else 0)
            pool_size += 2 * (len(rule.time.slots) if rule.time is not None else 0)
        # Rules and the ranges they point into share one block: a plan's
        # conditions are then one or two cache lines apart, not anywhere.
        cp.rules = <RuleC*>PyMem_Malloc(cp.nrules * sizeof(RuleC) + pool_size * sizeof(int32_t) + 8)
        if cp.rules == NULL:
            raise MemoryError()
        cp.pool = <int32_t*>(cp.rules + cp.nrules)
        cp.rule_names = []
        cp.rule_actions = []
        pos = 0
        for i, rule in enumerate(rules):
            r = &cp.rules[i]
            r.channel = _CHANNEL_CODES[rule.channel]
            r.provinces = ~(<uint64_t>0)
            if rule.provinces is not None:
                r.provinces = 0
                for code in rule.provinces:
                    r.provinces |= (<uint64_t>1) << provinces.INDEX[code]
            r.ndates = 0
            r.date_offset = pos
            if rule.dates is not None:
                for start, end in rule.dates.ranges:
                    cp.pool[pos] = start
                    cp.pool[pos + 1] = end
                    pos += 2
                r.ndates = len(rule.dates.ranges)
            r.has_days = rule.days is not None
            r.weekdays = rule.days.weekdays if r.has_days else 0
            r.workday = r.has_days and rule.days.workday
            r.holiday = r.has_days and rule.days.holiday
            r.nslots = 0
            r.slot_offset = pos
            if rule.time is not None:
                for start, end in rule.time.slots:
                    cp.pool[pos] = start
                    cp.pool[pos + 1] = end
                    pos += 2
                r.nslots = len(rule.time.slots)
            cp.rule_names.append(rule.name)
            compiled_action = self._compile_action(cp, plan, rule.action, rule.name)
            cp.rule_actions.append(compiled_action)
            r.action = <PyObject*>compiled_action
        cp.default = self._compile_action(cp, plan, plan.default, None)

        seen = {}
        cp.caps = []
        for cap in plan.caps:
            ident = (cap.metric, cap.per, cap.scope, cap.channel)
            seen[ident] = seen.get(ident, 0) + 1
            c = CCap()
            c.key = cap_key(plan.number, cap, seen[ident])
            c.metric = _METRIC_CODES[cap.metric]
            c.metric_name = cap.metric
            c.per = _PER_CODES[cap.per]
            c.limit = cap.limit_units
            c.per_caller = cap.scope == "caller"
            c.prompt = cp.prompts["limit_reached"] if cap.prompt is None else cap.prompt
            c.channel = _CHANNEL_CODES[cap.channel]
            c.ttl = PERIOD_TTL_S[cap.per]
            cp.caps.append(c)
        cp.ncaps = len(cp.caps)
        cp.has_charges = False
        for c in cp.caps:
            if c.metric != M_CALLS:
                cp.has_charges = True
        return cp

    cdef _compile_blacklist(self, CPlan cp, entries):
        exact = set()
        groups = {}
        cp.bl_anonymous = False
        for entry in entries:
            if entry == "anonymous":
                cp.bl_anonymous = True
            elif entry.endswith("*"):
                digits = entry.removesuffix("*")
                groups.setdefault(len(digits), set()).add(int(digits))
            else:
                exact.add(entry)
        cp.bl_exact = frozenset(exact)
        cp.has_bl_exact = bool(exact)
        cp.n_bl_groups = len(groups)
        cp.bl_groups = NULL
        if groups:
            cp.bl_groups = <PrefixGroup*>PyMem_Malloc(len(groups) * sizeof(PrefixGroup))
            if cp.bl_groups == NULL:
                raise MemoryError()
            for i, length in enumerate(sorted(groups)):
                values = sorted(groups[length])
                cp.bl_groups[i].length = length
                cp.bl_groups[i].count = len(values)
                cp.bl_groups[i].values = <int64_t*>PyMem_Malloc(len(values) * sizeof(int64_t))
                if cp.bl_groups[i].values == NULL:
                    raise MemoryError()
                for k, v in enumerate(values):
                    cp.bl_groups[i].values[k] = v

    cdef CAction _compile_action(self, CPlan cp, plan, action, rule_name):
        cdef CAction a = CAction()
        a.kind = _KIND_CODES[action.kind]
        a.kind_name = _KIND_NAMES[a.kind]  # module constants, not each plan's own copy
        a.connects = action.connects
        a.selector = None
        a.fixed = _EMPTY
        a.prompt = None
        if action.kind == "reject":
            a.reason = "closed" if rule_name is None else "rule_reject"
            a.outcome = I_CLOSED if rule_name is None else I_RULE_REJECT
            a.prompt = _engine_py.action_prompt(action, cp.prompts)
            return a
        a.reason = "ok"
        if action.kind == "bridge":
            a.outcome = I_BRIDGE_OK
            targets = [t.to for t in action.targets]
            weights = [t.weight for t in action.targets]
            state = None
            if action.strategy == "round_robin":
                ident = (plan.number, rule_name, tuple(targets), tuple(weights))
                state = self.shared.round_robin_state(ident, len(targets), self.rr_states)
            a.selector = make_selector(action.strategy, targets, weights, state)
        elif action.kind == "queue":
            a.outcome = I_QUEUE_OK
            a.fixed = (action.queue,)
        else:
            a.outcome = I_CONFERENCE_OK
            a.fixed = (action.room,)
        return a

    # -- the decision ---------------------------------------------------------

    def route(self, dialed, caller, at=None, channel="voice", pin=None, call_id=None,
              bint explain=False, bint dry_run=False):
        cdef int ch
        cdef int64_t key
        cdef int province_index = 0
        cdef CPlan plan
        cdef LocalTime lt
        cdef timespec now
        cdef double ts
        cdef int i, j, workday = -1
        cdef RuleC* r
        cdef bint ok
        cdef CAction action
        cdef object rule_name = None

        if channel is _VOICE or channel == _VOICE:
            ch = CH_VOICE
        elif channel is _SMS or channel == _SMS:
            ch = CH_SMS
        else:
            raise ValueError(f"channel: expected 'voice' or 'sms', got {channel!r}")
        if at is not None:
            if type(at) is float:
                # one comparison for the common case; NaN fails it too
                if not (_AT_MIN <= <double>at < _AT_MAX):
                    check_at(at)
            else:
                check_at(at)
        if explain or dry_run:
            return self._delegate(dialed).route(dialed, caller, at, channel, pin, call_id, explain, dry_run)

        caller_n = c_normalize_or_none(caller, &key)
        if caller_n is not None:
            province_index = self.lookup.c_index(key)
        province = _CODES[province_index]

        found = self.by_number.get(dialed) if type(dialed) is str else None
        if found is None:
            dialed_n = c_normalize_or_none(dialed, &key)
            found = self.by_number.get(dialed_n) if dialed_n is not None else None
            if found is None and dialed_n is not None and dialed_n.startswith(SMS_ACCESS_PREFIX):
                found = self.by_number.get(dialed_n[5:])  # an SMS: 10657 + the number
            if found is None:
                self.unknown_outcomes.data.as_longlongs[I_UNKNOWN] += 1
                return _make_decision("reject", _EMPTY, self.unknown_prompt, "unknown_number", None,
                                      province, dialed_n, caller_n, channel, call_id)
        plan = <CPlan>found
        number = plan.number

        if self._blacklisted(plan, caller_n):
            plan.outcome_data[I_BLACKLISTED] += 1
            return _make_decision("reject", _EMPTY, plan.prompts["blacklisted"], "blacklisted", None,
                                  province, number, caller_n, channel, call_id)
        if caller_n is None and plan.reject_unknown:
            plan.outcome_data[I_BAD_CALLER] += 1
            return _make_decision("reject", _EMPTY, plan.prompts["bad_caller"], "bad_caller", None,
                                  province, number, caller_n, channel, call_id)

        if at is None:
            clock_gettime(CLOCK_REALTIME, &now)
            plan.zone.from_timestamp(<double>now.tv_sec + <double>now.tv_nsec * 1e-9, &lt)
        elif type(at) is float or type(at) is int:
            plan.zone.from_timestamp(<double>at, &lt)
        else:
            plan.zone.from_datetime(at, &lt)

        if plan.pin_gate is not None:
            reason = plan.pin_gate.decide(caller_n, pin, lt.ts)
            if reason is not None:
                if reason == "pin_required":
                    plan.outcome_data[I_PIN_REQUIRED] += 1
                    return _make_decision("collect_pin", _EMPTY, plan.prompts["enter_pin"], reason, None,
                                          province, number, caller_n, channel, call_id)
                plan.outcome_data[<int>_OUTCOME_OF_REASON[reason]] += 1
                return _make_decision("reject", _EMPTY, plan.prompts[reason], reason, None,
                                      province, number, caller_n, channel, call_id)

        action = None
        for i in range(plan.nrules):
            r = &plan.rules[i]
            if r.channel != CH_ANY and r.channel != ch:
                continue
            if not (r.provinces >> province_index) & 1:
                continue
            if r.ndates:
                ok = False
                for j in range(r.ndates):
                    if plan.pool[r.date_offset + 2 * j] <= lt.ordinal <= plan.pool[r.date_offset + 2 * j + 1]:
                        ok = True
                        break
                if not ok:
                    continue
            if r.has_days:
                if not (r.weekdays >> lt.weekday) & 1:
                    if not (r.workday or r.holiday):
                        continue
                    if workday < 0:
                        workday = plan.calendar.is_workday(lt.ordinal)
                    if not (r.workday if workday else r.holiday):
                        continue
            if r.nslots:
                ok = False
                for j in range(r.nslots):
                    if _in_slot(plan.pool[r.slot_offset + 2 * j], plan.pool[r.slot_offset + 2 * j + 1], lt.minute):
                        ok = True
                        break
                if not ok:
                    continue
            action = <CAction>r.action
            rule_name = plan.rule_names[i]
            break
        if action is None:
            action = plan.default

        if not action.connects:
            plan.outcome_data[action.outcome] += 1
            return _make_decision(action.kind_name, _EMPTY, action.prompt, action.reason, rule_name,
                                  province, number, caller_n, channel, call_id)

        caller_key = caller_n if caller_n is not None else _ANONYMOUS
        if action.selector is not None:
            targets = action.selector.c_order(caller_key, self.rng, True)
        else:
            targets = action.fixed

        if plan.ncaps:
            over = self._acquire(plan, ch, caller_key, &lt)
            if over == -2:
                plan.outcome_data[I_BACKEND_ERROR] += 1
                return _make_decision("reject", _EMPTY, plan.prompts["backend_error"], "backend_error", rule_name,
                                      province, number, caller_n, channel, call_id)
            if over >= 0:
                plan.outcome_data[I_CAP_EXCEEDED] += 1
                return _make_decision("reject", _EMPTY, self._applying_cap(plan, ch, over).prompt, "cap_exceeded",
                                      rule_name, province, number, caller_n, channel, call_id)

        if call_id is not None:
            self._remember(plan, call_id, caller_n, caller_key, province_index, targets, ch, channel, &lt)
        plan.outcome_data[action.outcome] += 1
        return _make_decision(action.kind_name, targets, None, "ok", rule_name,
                              province, number, caller_n, channel, call_id)

    cdef bint _blacklisted(self, CPlan plan, object caller_n) except -1:
        cdef Py_ssize_t n
        cdef const char* s
        cdef int64_t v
        cdef int g
        if caller_n is None:
            return plan.bl_anonymous
        if plan.has_bl_exact and caller_n in plan.bl_exact:
            return True
        if plan.n_bl_groups:
            s = PyUnicode_AsUTF8AndSize(caller_n, &n)
            for g in range(plan.n_bl_groups):
                v = _digits_value(s, n, plan.bl_groups[g].length)
                if v >= 0 and _sorted_contains(plan.bl_groups[g].values, plan.bl_groups[g].count, v):
                    return True
        return False

    cdef CCap _applying_cap(self, CPlan plan, int ch, int index):
        """The ``index``-th cap that applies to the channel."""
        cdef CCap cap
        for cap in plan.caps:
            if cap.channel == CH_ANY or cap.channel == ch:
                if index == 0:
                    return cap
                index -= 1
        raise AssertionError("cap index out of range")

    cdef int _acquire(self, CPlan plan, int ch, str caller_key, LocalTime* lt) except -3:
        """-1 admitted and counted, >= 0 the first applying cap at its limit, -2 backend failed (reject)."""
        cdef PyObject* keys[MAX_STACK_CAPS]
        cdef int64_t periods[MAX_STACK_CAPS]
        cdef int64_t limits[MAX_STACK_CAPS]
        cdef int64_t increments[MAX_STACK_CAPS]
        cdef int64_t ttls[MAX_STACK_CAPS]
        cdef int n = 0
        cdef CCap cap
        cdef list owned = None
        if self.fast_counters is not None and plan.ncaps <= MAX_STACK_CAPS:
            for cap in plan.caps:
                if cap.channel != CH_ANY and cap.channel != ch:
                    continue
                if cap.per_caller:
                    if owned is None:
                        owned = []
                    key = cap.key + ":" + caller_key
                    owned.append(key)  # keeps the borrowed pointer below alive
                    keys[n] = <PyObject*>key
                else:
                    keys[n] = <PyObject*>cap.key
                periods[n] = _period(cap.per, lt)
                limits[n] = cap.limit
                increments[n] = 1 if cap.metric == M_CALLS else 0
                ttls[n] = cap.ttl
                n += 1
            if n == 0:
                return -1
            try:
                return self.fast_counters.c_acquire(keys, periods, limits, increments, ttls, n)
            except BackendError:
                return self._backend_failed(plan)
        checks = []
        for cap in plan.caps:
            if cap.channel != CH_ANY and cap.channel != ch:
                continue
            checks.append(CapCheck(
                cap.key + ":" + caller_key if cap.per_caller else cap.key,
                _period(cap.per, lt), cap.limit, 1 if cap.metric == M_CALLS else 0, cap.ttl,
            ))
        if not checks:
            return -1
        try:
            return self.counters.acquire(checks, dry_run=False)
        except BackendError:
            return self._backend_failed(plan)

    cdef int _backend_failed(self, CPlan plan) except -3:
        policy = "allow" if plan.fail_open else "reject"
        self.shared.backend_errors[policy] += 1
        return -1 if plan.fail_open else -2

    cdef _remember(self, CPlan plan, call_id, caller_n, str caller_key, int province_index, tuple targets,
                   int ch, str channel, LocalTime* lt):
        cdef CCap cap
        charges = ()
        if plan.has_charges:
            charges = tuple([
                (cap.metric_name, cap.key + ":" + caller_key if cap.per_caller else cap.key,
                 _period(cap.per, lt), cap.ttl)
                for cap in plan.caps
                if cap.metric != M_CALLS and (cap.channel == CH_ANY or cap.channel == ch)
            ])
        self.calls.remember(CallRecord(
            str(call_id), plan.number, caller_n, province_index, targets, channel, lt.ts,
            plan.tariff, charges, plan.fail_open,
        ))

    cdef object _delegate(self, dialed):
        """A reference engine for the plan ``dialed`` reaches, sharing this engine's state."""
        cdef int64_t key
        dialed_n = c_normalize_or_none(dialed, &key)
        found = self.by_number.get(dialed_n) if dialed_n is not None else None
        if found is None and dialed_n is not None and dialed_n.startswith(SMS_ACCESS_PREFIX):
            found = self.by_number.get(dialed_n[5:])
        number = (<CPlan>found).number if found is not None else None
        engine = self.delegates.get(number)
        if engine is None:
            # the plan is read back where the router keeps it (Shared.plan_source), not held here
            plan = self.shared.plan_source(number) if found is not None else None
            numbers = (plan,) if plan is not None else ()
            engine = _engine_py.Engine(attrs.evolve(self.plans, numbers=numbers), self.prefixes, self.shared)
            self.delegates[number] = engine
        return engine

    # -- one number at a time (Router.update, Router.from_store) ---------------

    def put(self, plan):
        """Compile ``plan`` with this engine's settings and route its number by it.

        The entry is replaced only once compiled: a call routed meanwhile
        sees the old entry or the new one.  O(this plan).
        """
        compiled = self._compile_plan(plan)
        self.by_number[plan.number] = compiled
        self.delegates.pop(plan.number, None)  # explain's copy of the old plan

    def remove(self, number):
        """Stop routing ``number`` (nothing if it had no entry).  O(1)."""
        self.by_number.pop(number, None)
        self.delegates.pop(number, None)


cdef inline bint _in_slot(int32_t start, int32_t end, int minute) noexcept nogil:
    if start <= end:
        return start <= minute <= end
    return minute >= start or minute <= end
