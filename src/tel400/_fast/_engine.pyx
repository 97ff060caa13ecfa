# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tel400._engine_py``: the routing decision in C.

A number's plan is compiled by ``tel400.compiler`` (the step both engines
share) and its description packed here into C structs (rules with province
bit masks, weekday masks, minute slots and date ranges; blacklist prefixes as
sorted integers; caps with their keys); nothing about what a plan means is
decided here.  A call walks them touching Python objects only to read
its arguments, to look the dialed number up in one dict, and to build the
``Decision``.  The order of checks and every choice are the reference's; a
property test holds the two to the same decisions.

``explain`` and dry runs go to a reference engine for the one plan
concerned (a *tracer*), sharing this engine's state (counters, round-robin
positions, statistics) and compiler, so that the trace has a single author.
This engine keeps only the packed form, so a tracer compiles the plan read
back through ``shared.plan_source``, and is used only if the entry packs
that description (``CPlan._differs``: nothing is kept per number for it, and
compiling costs nothing more): a plan
changed or unreadable since (a change not applied yet, a number whose stored
plan went bad and keeps its last good entry) is not traced; the packed entry
then decides, honouring ``dry_run``, and the trace is one step saying why.
A tracer is kept with the entry it was made for, and used only while that
entry is the number's: at most ``tel400.limits.EXPLAIN_TRACERS`` of them,
the least recently used dropped first.
"""

from collections import OrderedDict

cimport cython
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
from ._select cimport FastRandom, RoundRobin, Selector, Sequential, Sticky, Weighted

from .. import _engine_py, limits, provinces
from ..billing import CallRecord
from ..calltime import AT_MAX, AT_MIN, check_at
from ..compiler import Compiler, lookup_plan
from ..counters import CapCheck
from ..outcomes import OUTCOME_INDEX, UNKNOWN_LABEL
from ..decision import Decision, Step
from ..exceptions import BackendError, PlanError
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

cdef int I_PIN_REQUIRED = OUTCOME_INDEX[("collect_pin", "pin_required")]
cdef int I_UNKNOWN = OUTCOME_INDEX[("reject", "unknown_number")]
cdef int I_BLACKLISTED = OUTCOME_INDEX[("reject", "blacklisted")]
cdef int I_BAD_CALLER = OUTCOME_INDEX[("reject", "bad_caller")]
cdef int I_BAD_PIN = OUTCOME_INDEX[("reject", "bad_pin")]
cdef int I_PIN_LOCKED = OUTCOME_INDEX[("reject", "pin_locked")]
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


@cython.no_gc
cdef class CAction:
    """A CompiledAction packed: holds strings, a selector and a tuple, never itself (no cycle: no GC)."""
    cdef int kind
    cdef bint connects
    cdef str kind_name
    cdef str reason
    cdef int outcome
    cdef object prompt
    cdef Selector selector
    cdef tuple fixed


@cython.no_gc
cdef class CCap:
    """A CompiledCap packed (strings and numbers only: no GC)."""
    cdef str key
    cdef object caller_prefix    # None: number-wide; else the key of a caller is this + the caller
    cdef int metric
    cdef str metric_name
    cdef int per
    cdef int64_t limit
    cdef int64_t increment
    cdef object prompt
    cdef int channel
    cdef int64_t ttl

    cdef inline str key_for(self, str caller_key):
        return self.key if self.caller_prefix is None else <str>self.caller_prefix + caller_key


@cython.no_gc
cdef class CBlacklist:
    """A compiler Blacklist packed; one per distinct blacklist, shared by the numbers that have it."""
    cdef frozenset exact
    cdef bint has_exact
    cdef bint anonymous
    cdef PrefixGroup* groups
    cdef int n_groups

    def __dealloc__(self):
        cdef int i
        if self.groups != NULL:
            for i in range(self.n_groups):
                PyMem_Free(self.groups[i].values)
            PyMem_Free(self.groups)


cdef CBlacklist _pack_blacklist(blacklist):
    cdef CBlacklist b = CBlacklist()
    cdef int i, k
    b.exact = blacklist.exact
    b.has_exact = bool(blacklist.exact)
    b.anonymous = blacklist.anonymous
    groups = blacklist.groups
    b.n_groups = len(groups)
    b.groups = NULL
    if groups:
        b.groups = <PrefixGroup*>PyMem_Malloc(len(groups) * sizeof(PrefixGroup))
        if b.groups == NULL:
            raise MemoryError()
        for i in range(b.n_groups):
            b.groups[i].values = NULL
        for i, (length, values) in enumerate(groups):
            b.groups[i].length = length
            b.groups[i].count = len(values)
            b.groups[i].values = <int64_t*>PyMem_Malloc(len(values) * sizeof(int64_t) + 8)
            if b.groups[i].values == NULL:
                raise MemoryError()
            for k, v in enumerate(values):
                b.groups[i].values[k] = v
    return b


cdef class CPlan:
    """One number's CompiledPlan packed into C structs.

    A plan without a PIN gate cannot reach itself again, so it is untracked
    from the cyclic GC once packed (a million of them add nothing to a
    collection's walk); one with a PIN gate stays tracked, since the gate
    holds the router's shared state.
    """
    cdef readonly str number
    cdef ZoneTable zone
    cdef CalendarTable calendar
    cdef CBlacklist blacklist
    cdef bint reject_unknown
    cdef object pin_gate
    cdef dict prompts
    cdef bint fail_open
    cdef object tariff
    cdef RuleC* rules
    cdef int nrules
    cdef int32_t* pool
    cdef Py_ssize_t pool_size
    cdef tuple rule_names
    cdef tuple rule_actions
    cdef CAction default
    cdef tuple caps
    cdef int ncaps
    cdef bint has_charges
    cdef array.array outcomes
    cdef int64_t* outcome_data

    def __dealloc__(self):
        PyMem_Free(self.rules)  # the pool lives in the same block

    def _check(self):
        """Assert the packing's invariants (tests call it after every compile).  O(this plan)."""
        cdef int i, j
        cdef RuleC* r
        assert self.number and self.zone is not None and self.calendar is not None and self.blacklist is not None
        assert self.nrules == len(self.rule_names) == len(self.rule_actions)
        assert self.nrules == 0 or self.rules != NULL
        for i in range(self.nrules):
            r = &self.rules[i]
            assert r.action == <PyObject*>self.rule_actions[i]
            assert r.channel in (CH_ANY, CH_VOICE, CH_SMS) and r.weekdays < 128
            assert 0 <= r.date_offset and r.date_offset + 2 * r.ndates <= self.pool_size
            assert 0 <= r.slot_offset and r.slot_offset + 2 * r.nslots <= self.pool_size
            for j in range(r.nslots):
                assert 0 <= self.pool[r.slot_offset + 2 * j] < 1440 and 0 <= self.pool[r.slot_offset + 2 * j + 1] < 1440
            for j in range(r.ndates):
                assert self.pool[r.date_offset + 2 * j] <= self.pool[r.date_offset + 2 * j + 1]
        for action in self.rule_actions + (self.default,):
            _check_action(action)
        assert self.ncaps == len(self.caps)
        assert self.has_charges == any((<CCap>c).metric != M_CALLS for c in self.caps)
        for c in self.caps:
            assert (<CCap>c).key.startswith("tel400:{" + self.number + "}:cap:")
            assert (<CCap>c).increment == (1 if (<CCap>c).metric == M_CALLS else 0)
        assert self.outcome_data == <int64_t*>self.outcomes.data.as_longlongs
        assert len(self.outcomes) == len(OUTCOME_INDEX)
        for g in range(self.blacklist.n_groups):
            for j in range(1, self.blacklist.groups[g].count):
                assert self.blacklist.groups[g].values[j - 1] < self.blacklist.groups[g].values[j]


    def _check_against(self, described):
        """Assert that this packs ``described`` (a CompiledPlan): tests call it after compiling."""
        why = self._differs(described)
        assert why is None, f"number {self.number}: the packed {why} differs from the compiler's description"

    cdef str _differs(self, described):
        """The first part in which this does not pack ``described``, or ``None`` when it packs it.

        Compares every part a decision depends on (conditions, actions with
        their selectors' targets and weights, caps, blacklist, prompts, PIN,
        zone, calendar), not where state is kept (round-robin positions,
        statistics).  Explain uses it to trace only the plan an entry was
        compiled from.  O(this plan).
        """
        cdef int i, j
        cdef RuleC* r
        cdef CCap c
        cdef CBlacklist b = self.blacklist
        if self.number != described.number:
            return "number"
        calendar = self.calendar.calendar
        if self.zone.zone.key != described.timezone or (calendar is not described.calendar
                                                        and calendar != described.calendar):
            return "zone or calendar"
        if (self.reject_unknown, self.fail_open, self.tariff) != \
                (described.reject_unknown, described.fail_open, described.tariff) or self.prompts != described.prompts:
            return "settings"
        if not _same_pin(self.pin_gate, described.pin_gate):
            return "PIN"
        bl = described.blacklist
        if b.exact != bl.exact or b.anonymous != bl.anonymous or b.n_groups != len(bl.groups) or any(
                (b.groups[i].length, [b.groups[i].values[j] for j in range(b.groups[i].count)]) != (length, list(values))
                for i, (length, values) in enumerate(bl.groups)):
            return "blacklist"
        if self.nrules != len(described.rules):
            return "rules"
        for i, rule in enumerate(described.rules):
            r = &self.rules[i]
            if (self.rule_names[i], r.channel, r.provinces, r.has_days, r.weekdays, r.workday, r.holiday) != \
                    (rule.name, _CHANNEL_CODES[rule.channel], <uint64_t>rule.province_mask, rule.has_days,
                     rule.weekdays, rule.workday, rule.holiday):
                return f"rule {i}"
            if [(self.pool[r.date_offset + 2 * j], self.pool[r.date_offset + 2 * j + 1]) for j in range(r.ndates)] \
                    != [tuple(d) for d in rule.date_ranges] or \
                    [(self.pool[r.slot_offset + 2 * j], self.pool[r.slot_offset + 2 * j + 1]) for j in range(r.nslots)] \
                    != [tuple(t) for t in rule.slots]:
                return f"rule {i}'s dates or time"
            if not _same_action(<CAction>self.rule_actions[i], rule.action):
                return f"rule {i}'s action"
        if not _same_action(self.default, described.default):
            return "default"
        if self.ncaps != len(described.caps) or self.has_charges != described.has_charges:
            return "caps"
        for c, cap in zip(self.caps, described.caps):
            if (c.key, c.caller_prefix, c.metric, c.per, c.limit, c.increment, c.prompt, c.channel, c.ttl) != \
                    (cap.key, cap.caller_prefix, _METRIC_CODES[cap.metric], _PER_CODES[cap.per], cap.limit,
                     cap.increment, cap.prompt, _CHANNEL_CODES[cap.channel], cap.ttl_s):
                return f"cap {cap.key}"
        return None


cdef bint _same_pin(packed, described) except -1:
    if packed is None or described is None:
        return packed is described
    return packed.check.same_pin(described.check)


cdef bint _same_action(CAction a, described) except -1:
    return (a.kind_name, a.reason, a.outcome, a.prompt, a.fixed) == \
           (described.kind, described.reason, described.outcome, described.prompt, described.fixed) and \
           _selector_key(a.selector) == _selector_key(described.selector)


cdef tuple _selector_key(Selector s):
    """What a selector picks from: its strategy, targets (in every pick's order) and weights (not its state)."""
    cdef int i
    if s is None:
        return None
    if isinstance(s, Sequential):
        return ("sequential", (<Sequential>s)._order)
    if isinstance(s, Weighted):
        w = <Weighted>s
        return ("weighted", w._orders, tuple([(w._cumulative[i], w._indexes[i]) for i in range(w._count)]))
    if isinstance(s, RoundRobin):
        rr = <RoundRobin>s
        return ("round_robin", rr._orders, tuple([rr._weights[i] for i in range(rr._n)]))
    st = <Sticky>s
    return ("sticky", st._targets, tuple([st._weights[i] for i in range(st._n)]))


cdef _check_action(CAction a):
    assert a.kind_name == _KIND_NAMES[a.kind] and a.outcome == OUTCOME_INDEX[(a.kind_name, a.reason)]
    assert a.connects == (a.kind != K_REJECT)
    assert (a.selector is not None) == (a.kind == K_BRIDGE)


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

    cdef readonly object settings
    cdef readonly object prefixes
    cdef readonly object shared
    cdef readonly dict rr_states
    cdef readonly dict pin_checks
    cdef readonly dict by_number
    cdef readonly object compiler
    cdef IntervalLookup lookup
    cdef object counters
    cdef FastCounters fast_counters
    cdef FastRandom rng
    cdef object calls
    cdef object unknown_prompt
    cdef array.array unknown_outcomes
    cdef array.array dry_outcomes   # what a dry run through the packed form counts into: read by nothing
    #: number -> (the entry it traces, a reference engine tracing it); see the module docstring
    cdef readonly object tracers
    cdef object unknown_tracer
    cdef dict calendar_tables       # id(OfficialCalendar) -> (that calendar, its CalendarTable)

    def __init__(self, plans, prefixes, shared):
        self.settings = _engine_py.settings_of(plans)
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
        self.tracers = OrderedDict()
        self.unknown_tracer = None
        self.dry_outcomes = array.array("q", bytes(8 * len(OUTCOME_INDEX)))
        self.calendar_tables = {}
        self.compiler = Compiler(self.settings, shared, make_selector, self.rr_states, self.pin_checks)
        compiled = {}
        for plan in plans.numbers:
            compiled[plan.number] = self._compile_plan(plan)
        self.by_number = compiled
        self.unknown_prompt = dict(plans.prompts).get("unknown_number", "unknown_number")
        self.unknown_outcomes = shared.outcome_counts(UNKNOWN_LABEL)

    # -- compiling: the compiler's description, packed ---------------------------

    cdef CPlan _compile_plan(self, plan):
        return self._pack(self.compiler.compile(plan))

    cdef CalendarTable _calendar_table(self, calendar):
        """The table of a compiler's calendar, by identity (hashing a calendar costs more than the lookup saves)."""
        entry = self.calendar_tables.get(id(calendar))
        if entry is None or (<tuple>entry)[0] is not calendar:
            if len(self.calendar_tables) >= 256:
                self.calendar_tables.clear()
            entry = self.calendar_tables[id(calendar)] = (calendar, calendar_table(calendar))
        return (<tuple>entry)[1]

    cdef CPlan _pack(self, described):
        """Pack a :class:`tel400.compiler.CompiledPlan` into C structs.  O(this plan)."""
        cdef CPlan cp = CPlan()
        cdef RuleC* r
        cdef int i, pos
        cdef Py_ssize_t pool_size = 0
        cp.number = described.number
        cp.zone = zone_table(described.timezone)
        cp.calendar = self._calendar_table(described.calendar)
        blacklist = described.blacklist
        if blacklist.packed is None:
            blacklist.packed = _pack_blacklist(blacklist)  # once for all the numbers that share it
        cp.blacklist = blacklist.packed
        cp.reject_unknown = described.reject_unknown
        cp.pin_gate = described.pin_gate
        cp.prompts = described.prompts
        cp.fail_open = described.fail_open
        cp.tariff = described.tariff
        cp.outcomes = described.outcomes
        cp.outcome_data = <int64_t*>cp.outcomes.data.as_longlongs

        rules = described.rules
        cp.nrules = len(rules)
        for rule in rules:
            pool_size += 2 * (len(rule.date_ranges) + len(rule.slots))
        # Rules and the ranges they point into share one block: a plan's
        # conditions are then one or two cache lines apart, not anywhere.
        cp.rules = <RuleC*>PyMem_Malloc(cp.nrules * sizeof(RuleC) + pool_size * sizeof(int32_t) + 8)
        if cp.rules == NULL:
            raise MemoryError()
        cp.pool = <int32_t*>(cp.rules + cp.nrules)
        cp.pool_size = pool_size
        names = []
        actions = []
        pos = 0
        for i, rule in enumerate(rules):
            r = &cp.rules[i]
            r.channel = _CHANNEL_CODES[rule.channel]
            r.provinces = <uint64_t>rule.province_mask
            r.date_offset = pos
            r.ndates = len(rule.date_ranges)
            for start, end in rule.date_ranges:
                cp.pool[pos] = start
                cp.pool[pos + 1] = end
                pos += 2
            r.has_days = rule.has_days
            r.weekdays = rule.weekdays
            r.workday = rule.workday
            r.holiday = rule.holiday
            r.slot_offset = pos
            r.nslots = len(rule.slots)
            for start, end in rule.slots:
                cp.pool[pos] = start
                cp.pool[pos + 1] = end
                pos += 2
            names.append(rule.name)
            action = _pack_action(rule.action)
            actions.append(action)
            r.action = <PyObject*>action
        cp.rule_names = tuple(names)
        cp.rule_actions = tuple(actions)
        cp.default = _pack_action(described.default)
        cp.caps = tuple([_pack_cap(cap) for cap in described.caps])
        cp.ncaps = len(cp.caps)
        cp.has_charges = described.has_charges
        if cp.pin_gate is None:
            PyObject_GC_UnTrack(cp)  # nothing it holds can lead back to it (see CPlan)
        return cp

    # -- the decision ---------------------------------------------------------

    def route(self, dialed, caller, at=None, channel="voice", pin=None, call_id=None,
              bint explain=False, bint dry_run=False, bint untraced=False):
        """The decision (the reference's ``route``).

        ``explain``/``dry_run`` go to a tracer (see the module docstring);
        ``untraced``: decide by the packed entry even then, honouring
        ``dry_run`` (count nothing, advance nothing, remember nothing) and
        attaching no trace: what explain falls back to.
        """
        cdef int ch
        cdef int64_t key
        cdef int province_index = 0
        cdef CPlan plan
        cdef LocalTime lt
        cdef timespec now
        cdef int i, j, workday = -1
        cdef RuleC* r
        cdef bint ok
        cdef CAction action
        cdef object rule_name = None
        cdef bint dry = dry_run
        cdef int64_t* counts

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
        if (explain or dry_run) and not untraced:
            return self._traced(dialed, caller, at, channel, pin, call_id, explain, dry_run)

        caller_n = c_normalize_or_none(caller, &key)
        if caller_n is not None:
            province_index = self.lookup.c_index(key)
        province = _CODES[province_index]

        found = self.by_number.get(dialed) if type(dialed) is str else None
        if found is None:
            dialed_n = c_normalize_or_none(dialed, &key)
            found = lookup_plan(self.by_number, dialed_n)  # an SMS: 10657 + the number
            if found is None:
                if not dry:
                    self.unknown_outcomes.data.as_longlongs[I_UNKNOWN] += 1
                return _make_decision("reject", _EMPTY, self.unknown_prompt, "unknown_number", None,
                                      province, dialed_n, caller_n, channel, call_id)
        plan = <CPlan>found
        number = plan.number
        counts = plan.outcome_data if not dry else <int64_t*>self.dry_outcomes.data.as_longlongs

        if self._blacklisted(plan, caller_n):
            counts[I_BLACKLISTED] += 1
            return _make_decision("reject", _EMPTY, plan.prompts["blacklisted"], "blacklisted", None,
                                  province, number, caller_n, channel, call_id)
        if caller_n is None and plan.reject_unknown:
            counts[I_BAD_CALLER] += 1
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
            reason = plan.pin_gate.decide(caller_n, pin, lt.ts, None, dry)
            if reason is not None:
                if reason == "pin_required":
                    counts[I_PIN_REQUIRED] += 1
                    return _make_decision("collect_pin", _EMPTY, plan.prompts["enter_pin"], reason, None,
                                          province, number, caller_n, channel, call_id)
                counts[<int>_OUTCOME_OF_REASON[reason]] += 1
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
            counts[action.outcome] += 1
            return _make_decision(action.kind_name, _EMPTY, action.prompt, action.reason, rule_name,
                                  province, number, caller_n, channel, call_id)

        caller_key = caller_n if caller_n is not None else _ANONYMOUS
        if action.selector is not None:
            targets = action.selector.c_order(caller_key, self.rng, not dry)
        else:
            targets = action.fixed

        if plan.ncaps:
            over = self._acquire(plan, ch, caller_key, &lt, dry)
            if over == -2:
                counts[I_BACKEND_ERROR] += 1
                return _make_decision("reject", _EMPTY, plan.prompts["backend_error"], "backend_error", rule_name,
                                      province, number, caller_n, channel, call_id)
            if over >= 0:
                counts[I_CAP_EXCEEDED] += 1
                return _make_decision("reject", _EMPTY, self._applying_cap(plan, ch, over).prompt, "cap_exceeded",
                                      rule_name, province, number, caller_n, channel, call_id)

        if call_id is not None and not dry:
            self._remember(plan, call_id, caller_n, caller_key, province_index, targets, ch, channel, &lt)
        counts[action.outcome] += 1
        return _make_decision(action.kind_name, targets, None, "ok", rule_name,
                              province, number, caller_n, channel, call_id)

    cdef bint _blacklisted(self, CPlan plan, object caller_n) except -1:
        cdef Py_ssize_t n
        cdef const char* s
        cdef int64_t v
        cdef int g
        cdef CBlacklist bl = plan.blacklist
        if caller_n is None:
            return bl.anonymous
        if bl.has_exact and caller_n in bl.exact:
            return True
        if bl.n_groups:
            s = PyUnicode_AsUTF8AndSize(caller_n, &n)
            for g in range(bl.n_groups):
                v = _digits_value(s, n, bl.groups[g].length)
                if v >= 0 and _sorted_contains(bl.groups[g].values, bl.groups[g].count, v):
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

    cdef int _acquire(self, CPlan plan, int ch, str caller_key, LocalTime* lt, bint dry) except -3:
        """-1 admitted and counted, >= 0 the first applying cap at its limit, -2 backend failed (reject).

        ``dry``: checked, not counted (through the backend's Python interface).
        """
        cdef PyObject* keys[MAX_STACK_CAPS]
        cdef int64_t periods[MAX_STACK_CAPS]
        cdef int64_t limits[MAX_STACK_CAPS]
        cdef int64_t increments[MAX_STACK_CAPS]
        cdef int64_t ttls[MAX_STACK_CAPS]
        cdef int n = 0
        cdef CCap cap
        cdef list owned = None
        if self.fast_counters is not None and plan.ncaps <= MAX_STACK_CAPS and not dry:
            for cap in plan.caps:
                if cap.channel != CH_ANY and cap.channel != ch:
                    continue
                if cap.caller_prefix is not None:
                    if owned is None:
                        owned = []
                    key = cap.key_for(caller_key)
                    owned.append(key)  # keeps the borrowed pointer below alive
                    keys[n] = <PyObject*>key
                else:
                    keys[n] = <PyObject*>cap.key
                periods[n] = _period(cap.per, lt)
                limits[n] = cap.limit
                increments[n] = cap.increment
                ttls[n] = cap.ttl
                n += 1
            if n == 0:
                return -1
            try:
                return self.fast_counters.c_acquire(keys, periods, limits, increments, ttls, n)
            except BackendError:
                return self._backend_failed(plan, False)
        checks = []
        for cap in plan.caps:
            if cap.channel != CH_ANY and cap.channel != ch:
                continue
            checks.append(CapCheck(cap.key_for(caller_key), _period(cap.per, lt), cap.limit, cap.increment, cap.ttl))
        if not checks:
            return -1
        try:
            return self.counters.acquire(checks, dry_run=dry)
        except BackendError:
            return self._backend_failed(plan, dry)

    cdef int _backend_failed(self, CPlan plan, bint dry) except -3:
        policy = "allow" if plan.fail_open else "reject"
        if not dry:
            self.shared.backend_errors[policy] += 1
        return -1 if plan.fail_open else -2

    cdef _remember(self, CPlan plan, call_id, caller_n, str caller_key, int province_index, tuple targets,
                   int ch, str channel, LocalTime* lt):
        cdef CCap cap
        charges = ()
        if plan.has_charges:
            charges = tuple([
                (cap.metric_name, cap.key_for(caller_key), _period(cap.per, lt), cap.ttl)
                for cap in plan.caps
                if cap.metric != M_CALLS and (cap.channel == CH_ANY or cap.channel == ch)
            ])
        self.calls.remember(CallRecord(
            str(call_id), plan.number, caller_n, province_index, targets, channel, lt.ts,
            plan.tariff, charges, plan.fail_open,
        ))

    # -- explain and dry runs: traced by a reference engine ----------------------

    cdef object _traced(self, dialed, caller, at, channel, pin, call_id, bint explain, bint dry_run):
        """The decision with its trace (see the module docstring).  O(that plan) when its tracer is made."""
        tracer = self._tracer(dialed)
        if type(tracer) is not str:
            return tracer.route(dialed, caller, at, channel, pin, call_id, explain, dry_run)
        decision = self.route(dialed, caller, at, channel, pin, call_id, False, dry_run, True)
        if not explain:
            return decision
        why = f"plan {decision.number}: {tracer}; decided by its compiled entry, whose checks are not traced"
        return decision._replace(explain=(Step("number", None, True, why),))

    cdef object _tracer(self, dialed):
        """The reference engine tracing the entry ``dialed`` reaches, or why there is none (a str)."""
        cdef int64_t key
        found = lookup_plan(self.by_number, c_normalize_or_none(dialed, &key))
        if found is None:
            if self.unknown_tracer is None:
                self.unknown_tracer = _engine_py.Engine(self.settings, self.prefixes, self.shared, compiler=self.compiler)
            return self.unknown_tracer
        number = (<CPlan>found).number
        kept = self.tracers.pop(number, None)  # popped and put back last: least recently used first out
        if kept is None or (<tuple>kept)[0] is not found:
            described = self._described(<CPlan>found)
            if type(described) is str:
                return described
            tracer = _engine_py.Engine(self.settings, self.prefixes, self.shared, compiler=self.compiler)
            tracer.by_number[number] = described
            kept = (found, tracer)
        self.tracers[number] = kept
        while len(self.tracers) > limits.EXPLAIN_TRACERS:
            try:
                self.tracers.popitem(last=False)
            except KeyError:  # another thread emptied it meanwhile
                break
        return (<tuple>kept)[1]

    cdef object _described(self, CPlan entry):
        """The compiler's description of the plan ``entry`` was packed from, read back; or why not (a str)."""
        source = self.shared.plan_source
        if source is None:
            return "no plan source to read it back from"
        try:
            plan = source(entry.number)
        except (PlanError, BackendError, OSError) as exc:
            return f"its plan could not be read back ({exc})"
        if plan is None:
            return "its plan is no longer stored"
        described = self.compiler.compile(plan, carry=False)
        if entry._differs(described) is not None:
            return "its stored plan changed since it was compiled"
        return described

    # -- one number at a time ----------------------------------------------

    def put(self, plan):
        """Compile one number with this engine's settings and route it by that from now on.  O(this plan)."""
        self.by_number[plan.number] = self._compile_plan(plan)
        self.tracers.pop(plan.number, None)  # no longer used (and never for the new entry): free it now

    def remove(self, number):
        """Stop routing ``number`` (a normalised number; absent: nothing happens).  O(1).

        What is kept for it (round-robin states, PIN checks, statistics) goes too.
        """
        self.by_number.pop(number, None)
        self.tracers.pop(number, None)
        self.compiler.forget(number)

    def _check(self):
        """Assert every packed number's invariants and, when its plan can be read back
        (``shared.plan_source``) and is the one it was compiled from, that it packs
        that plan's description field by field.  Tests call it after every compile.

        Returns how many numbers were compared with their description.  O(plans).
        """
        assert not self.settings.numbers
        compared = 0
        for number, plan in self.by_number.items():
            assert (<CPlan?>plan).number == number
            plan._check()
            described = self._described(<CPlan>plan)
            if type(described) is not str:
                plan._check_against(described)
                compared += 1
        return compared


cdef CAction _pack_action(described):
    """The packed form of a compiler action: made once per action (shared actions are packed once)."""
    cdef CAction a = described.packed
    if a is not None:
        return a
    a = CAction()
    a.kind = _KIND_CODES[described.kind]
    a.kind_name = _KIND_NAMES[a.kind]  # module constants, not each plan's own copy
    a.connects = described.connects
    a.reason = described.reason
    a.outcome = described.outcome
    a.prompt = described.prompt
    a.selector = described.selector
    a.fixed = described.fixed
    described.packed = a
    return a


cdef CCap _pack_cap(described):
    cdef CCap c = CCap()
    c.key = described.key
    c.caller_prefix = described.caller_prefix
    c.metric = _METRIC_CODES[described.metric]
    c.metric_name = described.metric
    c.per = _PER_CODES[described.per]
    c.limit = described.limit
    c.increment = described.increment
    c.prompt = described.prompt
    c.channel = _CHANNEL_CODES[described.channel]
    c.ttl = described.ttl_s
    return c


cdef inline bint _in_slot(int32_t start, int32_t end, int minute) noexcept nogil:
    if start <= end:
        return start <= minute <= end
    return minute >= start or minute <= end
