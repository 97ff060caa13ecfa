# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``tel400._engine_py``: the routing decision in C.

A number's plan is compiled by ``tel400.compiler`` (the step both engines
share) and its description packed here into C structs (rules with province
bit masks, weekday masks, minute slots and date ranges, bridge targets as
UTF-8 with their weights, caps with their keys: one block per plan;
blacklist prefixes as sorted integers); nothing about what a plan means is
decided here.  A call walks them touching Python objects only to read
its arguments and to build the ``Decision`` (its targets made from the
block: ``_packed_order``); the dialed number is found in an index of
``by_number`` keyed by its digits (``NumberIndex``).  The order of checks
and every choice are the reference's; a property test holds the two to
the same decisions.

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
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF, PyObject
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython cimport array
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy, memset

from ._clock cimport CalendarTable, LocalTime, ZoneTable, calendar_table, zone_table
from ._counters cimport CCounters as FastCounters
from ._numbers cimport c_normalize_or_none
from ._segments cimport IntervalLookup
from ._select cimport S_ROUND_ROBIN, S_STICKY, STACK_TARGETS, FastRandom, fnv1a64, fnv_of, select_order

from .. import _engine_py, limits, provinces
from ..billing import CallRecord
from ..calltime import AT_MAX, AT_MIN, check_at
from ..compiler import Compiler, lookup_plan
from ..counters import CapCheck
from ..outcomes import OUTCOME_INDEX, UNKNOWN_LABEL
from ..decision import Decision, Step
from ..exceptions import BackendError, PlanError
from ._select import make_selector, strategy_code

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
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)

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
cdef tuple _METRIC_NAMES = ("calls", "minutes", "cost")
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
    # 56 bytes: a plan's rules are scanned in order, so keep them dense.
    PyObject* action         # the rule's CAction, owned: shared by every rule alike (all bridges share one)
    PyObject* name           # the rule's name, owned (the engine's one copy of equal names); NULL: the default
    uint64_t provinces       # a bit per province index; every bit set when the rule names none
    int32_t date_offset      # into the plan's int32 pool: start, end, start, end …
    int32_t slot_offset      # into the pool: start minute, end minute …
    int32_t first_target     # a bridge's first target in the plan's target arrays
    int32_t ntargets         # a bridge's targets (0: not a bridge)
    int32_t rr_index         # round robin: its state in CPlan.rr_states (else -1)
    uint16_t ndates          # 0: no date condition
    uint16_t nslots          # 0: no time condition
    uint8_t channel
    uint8_t has_days
    uint8_t weekdays
    uint8_t workday
    uint8_t holiday
    uint8_t strategy         # a bridge's strategy (_select's S_* codes)


cdef struct PrefixGroup:
    int length
    int count
    int64_t* values          # sorted


@cython.no_gc
cdef class CAction:
    """What a CompiledAction does, without its targets: strings and a tuple, never itself (no cycle: no GC).

    Shared: one per distinct reject, queue or conference action (the
    compiler shares those), and one, ``_BRIDGE``, for every bridge: a
    bridge's targets, weights and strategy are packed in its plan's block.
    """
    cdef int kind
    cdef bint connects
    cdef str kind_name
    cdef str reason
    cdef int outcome
    cdef object prompt
    cdef tuple fixed


cdef struct CapC:
    # 64 bytes, in the plan's block after its rules: a CompiledCap packed.
    PyObject* key            # owned str: the counter key (number-wide), or the per-caller prefix's base
    PyObject* caller_prefix  # owned str, or NULL for a number-wide cap: the key of a caller is this + the caller
    PyObject* prompt         # owned (a str)
    Py_hash_t key_hash       # hash(key) of a number-wide cap: the counters find it without reading the key
    int64_t limit
    int64_t increment
    int64_t ttl
    uint8_t metric
    uint8_t per
    uint8_t channel


cdef inline str _cap_key(CapC* cap, str caller_key):
    """The counter key of a call from ``caller_key`` (CompiledCap.key_for)."""
    if cap.caller_prefix == NULL:
        return <str>cap.key
    return <str>cap.caller_prefix + caller_key


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

    One block holds the rules (``nrules`` + 1: the last is the default, its
    conditions unused), the int32 pool of their date ranges and minute
    slots, and every bridge's targets: weights (int32, listed order), the
    end offset of each target's text and the texts themselves, UTF-8
    back to back.  A decision's targets tuple is made from it per call
    (:func:`_packed_order`), so a plan keeps no Python string per target
    and no tuple per pick.  Round-robin states stay ``array('q')`` objects
    (``rr_states``), since they are kept over reloads.

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
    cdef int32_t* weights            # every bridge's targets, rule after rule
    cdef int32_t* text_ends          # target i's UTF-8 is text[text_ends[i - 1] (0 for i = 0) : text_ends[i]]
    cdef char* text
    cdef int32_t ntargets
    cdef bint text_ascii             # every target is ASCII (its str is then made with a memcpy)
    cdef tuple rr_states             # the round-robin rules' states (None: no round robin)
    cdef CapC* caps                  # in the block, after the rules
    cdef int ncaps
    cdef bint has_charges
    cdef array.array outcomes        # None until the number's first counted decision
    cdef int64_t* outcome_data

    def __dealloc__(self):
        cdef int i
        if self.rules != NULL:
            for i in range(self.nrules + 1):
                Py_XDECREF(self.rules[i].action)
                Py_XDECREF(self.rules[i].name)
            for i in range(self.ncaps):
                Py_XDECREF(self.caps[i].key)
                Py_XDECREF(self.caps[i].caller_prefix)
                Py_XDECREF(self.caps[i].prompt)
        PyMem_Free(self.rules)  # the pool and the targets live in the same block

    def _check(self):
        """Assert the packing's invariants (tests call it after every compile).  O(this plan)."""
        cdef int i, j
        cdef RuleC* r
        cdef CapC* c
        cdef int32_t next_target = 0
        assert self.number and self.zone is not None and self.calendar is not None and self.blacklist is not None
        assert self.rules != NULL and self.nrules >= 0
        for i in range(self.nrules + 1):
            r = &self.rules[i]
            assert r.action != NULL and isinstance(<object>r.action, CAction)
            assert (r.name == NULL) == (i == self.nrules) and (r.name == NULL or type(<object>r.name) is str)
            assert r.channel in (CH_ANY, CH_VOICE, CH_SMS) and r.weekdays < 128
            assert 0 <= r.date_offset and r.date_offset + 2 * r.ndates <= self.pool_size
            assert 0 <= r.slot_offset and r.slot_offset + 2 * r.nslots <= self.pool_size
            for j in range(r.nslots):
                assert 0 <= self.pool[r.slot_offset + 2 * j] < 1440 and 0 <= self.pool[r.slot_offset + 2 * j + 1] < 1440
            for j in range(r.ndates):
                assert self.pool[r.date_offset + 2 * j] <= self.pool[r.date_offset + 2 * j + 1]
            action = <CAction>r.action
            _check_action(action)
            assert (r.ntargets > 0) == (action.kind == K_BRIDGE) and (action.kind != K_BRIDGE or action is _BRIDGE)
            if r.ntargets:  # a bridge's targets follow the previous bridge's
                assert r.first_target == next_target and r.strategy <= S_STICKY
                assert any(self.weights[r.first_target + j] > 0 for j in range(r.ntargets))
                next_target += r.ntargets
            assert (r.rr_index >= 0) == (r.ntargets > 0 and r.strategy == S_ROUND_ROBIN)
            if r.rr_index >= 0:
                state = self.rr_states[r.rr_index]
                assert isinstance(state, array.array) and state.typecode == "q" and len(state) == r.ntargets
        assert next_target == self.ntargets
        assert (self.rr_states is None) == all(self.rules[i].rr_index < 0 for i in range(self.nrules + 1))
        for i in range(self.ntargets):
            assert self.weights[i] >= 0 and self.text_ends[i] >= (self.text_ends[i - 1] if i else 0)
        text = self._target(0, self.ntargets)
        assert self.text_ascii == all(t.isascii() for t in text)
        assert self.ncaps == 0 or self.caps == <CapC*>(self.rules + self.nrules + 1)
        assert self.has_charges == any(self.caps[i].metric != M_CALLS for i in range(self.ncaps))
        for i in range(self.ncaps):
            c = &self.caps[i]
            assert type(<object>c.key) is str and (<str>c.key).startswith("tel400:{" + self.number + "}:cap:")
            assert c.key_hash == hash(<object>c.key)
            assert c.caller_prefix == NULL or <str>c.caller_prefix == <str>c.key + ":"
            assert c.prompt != NULL and c.metric <= M_COST and c.per <= P_MONTH and c.channel <= CH_SMS
            assert c.increment == (1 if c.metric == M_CALLS else 0)
        if self.outcomes is None:
            assert self.outcome_data == NULL
        else:
            assert self.outcome_data == <int64_t*>self.outcomes.data.as_longlongs
            assert len(self.outcomes) == len(OUTCOME_INDEX)
        for g in range(self.blacklist.n_groups):
            for j in range(1, self.blacklist.groups[g].count):
                assert self.blacklist.groups[g].values[j - 1] < self.blacklist.groups[g].values[j]

    cdef tuple _target(self, int32_t first, int32_t n):
        """Targets ``first`` .. ``first + n - 1`` as strings, in listed order (checks and comparisons)."""
        return tuple([_target_text(self, first + i) for i in range(n)])

    def _check_against(self, described):
        """Assert that this packs ``described`` (a CompiledPlan): tests call it after compiling."""
        why = self._differs(described)
        assert why is None, f"number {self.number}: the packed {why} differs from the compiler's description"

    cdef str _differs(self, described):
        """The first part in which this does not pack ``described``, or ``None`` when it packs it.

        Compares every part a decision depends on (conditions, rule names,
        actions with their targets' text, weights and strategy, caps,
        blacklist, prompts, PIN, zone, calendar), not where state is kept
        (round-robin positions, statistics).  Explain uses it to trace only
        the plan an entry was compiled from.  O(this plan).
        """
        cdef int i, j
        cdef RuleC* r
        cdef CapC* c
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
            if (<object>r.name, r.channel, r.provinces, r.has_days, r.weekdays, r.workday, r.holiday) != \
                    (rule.name, _CHANNEL_CODES[rule.channel], <uint64_t>rule.province_mask, rule.has_days,
                     rule.weekdays, rule.workday, rule.holiday):
                return f"rule {i}"
            if [(self.pool[r.date_offset + 2 * j], self.pool[r.date_offset + 2 * j + 1]) for j in range(r.ndates)] \
                    != [tuple(d) for d in rule.date_ranges] or \
                    [(self.pool[r.slot_offset + 2 * j], self.pool[r.slot_offset + 2 * j + 1]) for j in range(r.nslots)] \
                    != [tuple(t) for t in rule.slots]:
                return f"rule {i}'s dates or time"
            if not self._same_action(r, rule.action):
                return f"rule {i}'s action"
        if not self._same_action(&self.rules[self.nrules], described.default):
            return "default"
        if self.ncaps != len(described.caps) or self.has_charges != described.has_charges:
            return "caps"
        for i, cap in enumerate(described.caps):
            c = &self.caps[i]
            if (<object>c.key, <object>c.caller_prefix if c.caller_prefix != NULL else None, c.metric, c.per, c.limit,
                    c.increment, <object>c.prompt, c.channel, c.ttl) != \
                    (cap.key, cap.caller_prefix, _METRIC_CODES[cap.metric], _PER_CODES[cap.per], cap.limit,
                     cap.increment, cap.prompt, _CHANNEL_CODES[cap.channel], cap.ttl_s):
                return f"cap {cap.key}"
        return None

    cdef bint _same_action(self, RuleC* r, described) except -1:
        """A packed rule's action against the description's: what it does and, for a bridge, what it picks from."""
        cdef CAction a = <CAction>r.action
        if (a.kind_name, a.reason, a.outcome, a.prompt, a.fixed) != \
                (described.kind, described.reason, described.outcome, described.prompt, described.fixed):
            return False
        selector = described.selector
        if selector is None:
            return r.ntargets == 0
        return (r.strategy, self._target(r.first_target, r.ntargets),
                tuple([self.weights[r.first_target + j] for j in range(r.ntargets)])) == \
               (strategy_code(selector.strategy), tuple(selector.targets), tuple(selector.weights))


cdef inline str _target_text(CPlan plan, int32_t i):
    """Target ``i`` of a packed plan as a new str: a memcpy when the plan's targets are ASCII.  O(its length)."""
    cdef int32_t start = plan.text_ends[i - 1] if i else 0
    cdef Py_ssize_t n = plan.text_ends[i] - start
    if plan.text_ascii:
        text = PyUnicode_New(n, 127)
        memcpy(PyUnicode_DATA(text), plan.text + start, n)
        return text
    return PyUnicode_DecodeUTF8(plan.text + start, n, NULL)


cdef tuple _packed_order(CPlan plan, RuleC* r, str caller_key, FastRandom rng, bint advance):
    """A bridge rule's targets, the pick first (select_order on the plan's block), as a new tuple.

    O(targets): the order, then a str per target made from its UTF-8
    (tens of nanoseconds each); allocates scratch only past STACK_TARGETS.
    """
    cdef int stack_out[STACK_TARGETS]
    cdef uint64_t stack_seeds[STACK_TARGETS]
    cdef int* out = stack_out
    cdef uint64_t* seeds = NULL
    cdef int32_t n = r.ntargets, first = r.first_target, k, start
    cdef const int32_t* weights = plan.weights + first
    cdef int64_t total = 0
    cdef int64_t* current = NULL
    cdef uint64_t h = 0
    cdef tuple result
    if n == 1:  # most rules: nothing to choose (select_order would answer the same), only the tuple to make
        text = _target_text(plan, first)
        result = PyTuple_New(1)
        Py_INCREF(text)
        PyTuple_SET_ITEM(result, 0, text)
        PyObject_GC_UnTrack(result)
        return result
    if n > STACK_TARGETS:
        out = <int*>PyMem_Malloc(n * (sizeof(int) + sizeof(uint64_t)) + 8)
        if out == NULL:
            raise MemoryError()
    try:
        for k in range(n):
            total += weights[k]
        if r.strategy == S_STICKY:
            h = fnv_of(caller_key)
            if n <= STACK_TARGETS:
                seeds = &stack_seeds[0]
            else:
                seeds = <uint64_t*>(out + n + (n & 1))
            for k in range(n):
                start = plan.text_ends[first + k - 1] if first + k else 0
                seeds[k] = fnv1a64(plan.text + start, plan.text_ends[first + k] - start)
        elif r.strategy == S_ROUND_ROBIN:
            current = <int64_t*>(<array.array>plan.rr_states[r.rr_index]).data.as_longlongs
        select_order(r.strategy, weights, seeds, n, total, current, h, rng, advance, out)
        result = PyTuple_New(n)
        for k in range(n):
            text = _target_text(plan, first + out[k])
            Py_INCREF(text)
            PyTuple_SET_ITEM(result, k, text)
        # Strings only: no cycle can pass through it.  Untracked, a call
        # allocates no GC-tracked object (they would trigger collections).
        PyObject_GC_UnTrack(result)
        return result
    finally:
        if out != stack_out:
            PyMem_Free(out)


cdef bint _same_pin(packed, described) except -1:
    if packed is None or described is None:
        return packed is described
    return packed.check.same_pin(described.check)


cdef _check_action(CAction a):
    assert a.kind_name == _KIND_NAMES[a.kind] and a.outcome == OUTCOME_INDEX[(a.kind_name, a.reason)]
    assert a.connects == (a.kind != K_REJECT)
    assert (a.kind == K_BRIDGE) == (a.fixed == ()) or a.kind == K_REJECT


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


# -- the number index: dialed digits -> the CPlan by_number holds -----------------
#
# ``by_number`` (a dict of str) stays the table every other piece reads; a
# call reads this index instead.  A dict lookup of a cold number reads three
# scattered places (its index slot, its entry, the key str it compares);
# this reads one 16-byte slot, and the Decision is given the caller's equal
# str, so the number's own str is not read either.  At 10^6 numbers Zipf
# traffic (s = 1) still takes about half its plans from main memory: that
# is where the time goes (docs/performance.md, "Why Zipf traffic misses").

cdef extern from "sys/mman.h" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int madvise(void* addr, size_t length, int advice)
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS
    void* MAP_FAILED

cdef extern from *:
    """
    #ifndef MADV_HUGEPAGE
    #define MADV_HUGEPAGE 14
    #endif
    """
    int MADV_HUGEPAGE
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

cdef struct PlanSlot:
    # 16 bytes, four to a cache line.  (Slots of 32 bytes that also held the
    # plan's block and cap key, to prefetch all three at once before the
    # caller is worked on, measured no faster at 10^6: docs/performance.md.)
    int64_t key            # _index_key of the number (0: an empty slot)
    PyObject* plan         # the CPlan by_number holds for it (borrowed: by_number owns it)

cdef enum:
    INDEX_DIGITS = 17      # longer numbers (none are: 400 numbers have 10 digits) are looked up in by_number
    INDEX_MIN_SLOTS = 16
    INDEX_HUGE_PAGE = 2 * 1024 * 1024


cdef inline int64_t _index_key(object number):
    """The index key of ``number``: its digits' value and their count, 0 if it
    is not a str of 1..INDEX_DIGITS ASCII digits.  Equal keys, equal strs.  O(len)."""
    cdef Py_ssize_t n, i
    cdef const char* s
    cdef int64_t value = 0
    if type(number) is not str or not PyUnicode_IS_COMPACT_ASCII(number):
        return 0
    n = PyUnicode_GET_LENGTH(number)
    if n == 0 or n > INDEX_DIGITS:
        return 0
    s = <const char*>PyUnicode_DATA(number)
    for i in range(n):
        if s[i] < c'0' or s[i] > c'9':
            return 0
        value = value * 10 + (s[i] - c'0')
    return (value << 5) | n    # 10^17 < 2^57: fits, and > 0


cdef inline Py_ssize_t _index_home(int64_t key, int shift) noexcept nogil:
    return <Py_ssize_t>((<uint64_t>key * 0x9E3779B97F4A7C15ULL) >> shift)  # Fibonacci hashing


cdef void _release_slots(PlanSlot* slots, void* mapped, size_t mapped_size) noexcept:
    """Free what NumberIndex._allocate took."""
    if mapped != NULL:
        munmap(mapped, mapped_size)
    elif slots != NULL:
        PyMem_Free(slots)


cdef class NumberIndex:
    """Open addressing (linear probing, backward-shift deletion) from
    :func:`_index_key` to a borrowed CPlan pointer.

    At most half full: it doubles past that (a rehash of every slot, O(n),
    amortised O(1) a put) and never shrinks; 16 bytes a slot, so 10^6
    numbers take 2^21 slots, 32 MiB.  A table of 2 MiB or more is its own
    mapping, advised to use transparent huge pages (``madvise``): one TLB
    entry covers 2 MiB of it, not 4 KiB.  Not thread-safe by itself: the
    engine changes it only under the GIL, with no Python code in between.
    """
    cdef PlanSlot* slots
    cdef Py_ssize_t mask          # slots - 1 (a power of two, minus one)
    cdef int shift                # 64 - log2(slots)
    cdef Py_ssize_t count
    cdef void* mapped             # the mapping holding ``slots`` (NULL: PyMem)
    cdef size_t mapped_size

    def __cinit__(self, Py_ssize_t expected=0):
        cdef Py_ssize_t size = INDEX_MIN_SLOTS
        while size < 2 * expected:
            size *= 2
        self._allocate(size)

    def __dealloc__(self):
        _release_slots(self.slots, self.mapped, self.mapped_size)

    cdef int _allocate(self, Py_ssize_t size) except -1:
        """Empty slots for ``size`` entries (a power of two); on MemoryError nothing has changed."""
        cdef size_t nbytes = size * sizeof(PlanSlot)
        cdef size_t mapped_size = 0
        cdef void* mapped = NULL
        cdef PlanSlot* slots
        cdef int bits = 0
        if nbytes >= INDEX_HUGE_PAGE:
            # one huge page more than asked for, so that the table can start on a 2 MiB boundary
            mapped_size = nbytes + INDEX_HUGE_PAGE
            mapped = mmap(NULL, mapped_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if mapped == MAP_FAILED:
                raise MemoryError()
            slots = <PlanSlot*>(((<size_t>mapped) + INDEX_HUGE_PAGE - 1) & ~(<size_t>INDEX_HUGE_PAGE - 1))
            madvise(slots, nbytes, MADV_HUGEPAGE)  # only advice: refused, the table works on small pages
        else:
            slots = <PlanSlot*>PyMem_Calloc(size, sizeof(PlanSlot))  # a mapping comes zeroed; this is zeroed
            if slots == NULL:
                raise MemoryError()
        self.slots, self.mapped, self.mapped_size = slots, mapped, mapped_size
        self.mask = size - 1
        while (<Py_ssize_t>1 << bits) < size:
            bits += 1
        self.shift = 64 - bits
        self.count = 0
        return 0

    cdef inline PlanSlot* find(self, int64_t key) noexcept:
        """The slot of ``key`` (its plan borrowed), or NULL.  O(1)."""
        cdef Py_ssize_t i = _index_home(key, self.shift)
        while self.slots[i].key != 0:
            if self.slots[i].key == key:
                return &self.slots[i]
            i = (i + 1) & self.mask
        return NULL

    cdef int set(self, int64_t key, CPlan plan) except -1:
        """``key`` now leads to ``plan`` (the caller keeps it alive).  Amortised O(1)."""
        cdef Py_ssize_t i
        if 2 * (self.count + 1) > self.mask + 1:
            self._grow()
        i = _index_home(key, self.shift)
        while self.slots[i].key != 0 and self.slots[i].key != key:
            i = (i + 1) & self.mask
        if self.slots[i].key == 0:
            self.slots[i].key = key
            self.count += 1
        self.slots[i].plan = <PyObject*>plan
        return 0

    cdef void drop(self, int64_t key) noexcept:
        """``key`` leads nowhere any more (absent: nothing happens).  O(1) expected."""
        cdef Py_ssize_t i = _index_home(key, self.shift), j, home
        while self.slots[i].key != key:
            if self.slots[i].key == 0:
                return
            i = (i + 1) & self.mask
        self.count -= 1
        j = i
        while True:  # backward shift: move up what would no longer be found past the hole at i
            memset(&self.slots[i], 0, sizeof(PlanSlot))
            while True:
                j = (j + 1) & self.mask
                if self.slots[j].key == 0:
                    return
                home = _index_home(self.slots[j].key, self.shift)
                # the entry at j moves to i unless its home lies cyclically in (i, j]
                if (home <= i or home > j) if i <= j else (home <= i and home > j):
                    break
            self.slots[i] = self.slots[j]
            i = j

    cdef int _grow(self) except -1:
        cdef PlanSlot* old = self.slots
        cdef void* old_mapped = self.mapped
        cdef size_t old_mapped_size = self.mapped_size
        cdef Py_ssize_t old_size = self.mask + 1, i
        self._allocate(2 * old_size)
        for i in range(old_size):
            if old[i].key != 0:
                self.set(old[i].key, <CPlan>old[i].plan)
        _release_slots(old, old_mapped, old_mapped_size)
        return 0


cdef class Engine:
    """A compiled plan set that routes calls (compiled twin of the reference)."""

    cdef readonly object settings
    cdef readonly object prefixes
    cdef readonly object shared
    cdef readonly dict rr_states
    cdef readonly dict pin_checks
    cdef readonly dict by_number
    cdef NumberIndex index          # by_number's numbers of digits only, for route() (see NumberIndex)
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
    cdef dict names                 # rule name -> the one copy the packed plans hold (see _name)

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
        self.names = {}
        self.compiler = Compiler(self.settings, shared, make_selector, self.rr_states, self.pin_checks)
        compiled = {}
        for plan in plans.numbers:
            compiled[plan.number] = self._compile_plan(plan)
        self.index = NumberIndex(len(compiled))
        for number, entry in compiled.items():
            self._index_set(number, entry)
        self.by_number = compiled
        self.unknown_prompt = dict(plans.prompts).get("unknown_number", "unknown_number")
        self.unknown_outcomes = shared.outcome_counts(UNKNOWN_LABEL)

    # -- by_number and its index: changed together, only here --------------------
    # The index holds borrowed pointers: an entry leaves it before by_number
    # lets it go (whose dealloc may run Python code, other threads included).

    cdef int _index_set(self, number, entry) except -1:
        cdef int64_t key = _index_key(number)
        if key:
            self.index.set(key, <CPlan?>entry)
        return 0

    cdef int _set_entry(self, number, entry) except -1:
        """by_number first (if it cannot take the entry, nothing changed), then the index, keyed
        by the entry's own number: ``number`` may be an equal str subclass, which the dict
        matches and ``_index_key`` does not.  ``old`` keeps the replaced entry alive until the
        index no longer leads to it."""
        cdef CPlan plan = <CPlan?>entry
        old = self.by_number.get(number)
        self.by_number[number] = plan
        try:
            self._index_set(plan.number, plan)
        except BaseException:
            if old is None:
                self.by_number.pop(number, None)
            else:
                self.by_number[number] = old
            raise
        return 0

    cdef object _pop_entry(self, number):
        """Out of by_number, then out of the index by the entry's own number (see _set_entry);
        the popped entry is held until then.  Returns it, or None."""
        cdef int64_t key
        entry = self.by_number.pop(number, None)
        if entry is not None:
            key = _index_key((<CPlan>entry).number)
            if key:
                self.index.drop(key)
        return entry

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

    cdef object _name(self, name):
        """The engine's one copy of a rule name (equal names of many numbers share it).

        At most ``Compiler.SHARED_PIECES`` names are kept; a full table is
        emptied, like the compiler's caches.  O(1).
        """
        kept = self.names.get(name)
        if kept is None:
            if len(self.names) >= self.compiler.SHARED_PIECES:
                self.names.clear()
            self.names[name] = kept = name
        return kept

    cdef CPlan _pack(self, described):
        """Pack a :class:`tel400.compiler.CompiledPlan` into C structs (see CPlan).  O(this plan)."""
        cdef CPlan cp = CPlan()
        cdef RuleC* r
        cdef int i, pos
        cdef int32_t t, k
        cdef Py_ssize_t pool_size = 0, ntargets = 0, text_size = 0, n, block
        cdef const char* data
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
        if cp.outcomes is not None:
            cp.outcome_data = <int64_t*>cp.outcomes.data.as_longlongs

        rules = described.rules
        cp.nrules = len(rules)
        actions = [rule.action for rule in rules]
        actions.append(described.default)
        cp.text_ascii = True
        for rule in rules:
            pool_size += 2 * (len(rule.date_ranges) + len(rule.slots))
        for action in actions:
            if action.selector is not None:
                for target in action.selector.targets:
                    PyUnicode_AsUTF8AndSize(target, &n)
                    text_size += n
                    ntargets += 1
                    if not (<str>target).isascii():
                        cp.text_ascii = False
        # Rules, the ranges they point into and the targets share one block:
        # a plan's conditions are then one or two cache lines apart, not
        # anywhere, and a target costs its UTF-8 and 8 bytes, not a str.
        caps = described.caps
        block = (cp.nrules + 1) * sizeof(RuleC) + len(caps) * sizeof(CapC) \
            + (pool_size + 2 * ntargets) * sizeof(int32_t) + text_size
        cp.rules = <RuleC*>PyMem_Malloc(block + 8)
        if cp.rules == NULL:
            raise MemoryError()
        for i in range(cp.nrules + 1):  # owned references: none until set (the dealloc reads them)
            cp.rules[i].action = NULL
            cp.rules[i].name = NULL
        cp.caps = <CapC*>(cp.rules + cp.nrules + 1)
        for i in range(len(caps)):
            cp.caps[i].key = cp.caps[i].caller_prefix = cp.caps[i].prompt = NULL
        cp.ncaps = len(caps)
        cp.pool = <int32_t*>(cp.caps + cp.ncaps)
        cp.pool_size = pool_size
        cp.weights = cp.pool + pool_size
        cp.text_ends = cp.weights + ntargets
        cp.text = <char*>(cp.text_ends + ntargets)
        cp.ntargets = ntargets
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
            name = self._name(rule.name)
            Py_INCREF(name)
            r.name = <PyObject*>name
        r = &cp.rules[cp.nrules]  # the default: matches whatever reaches it
        r.channel = CH_ANY
        r.provinces = 0xFFFFFFFFFFFFFFFFULL
        r.date_offset = r.slot_offset = 0
        r.ndates = r.nslots = 0
        r.has_days = r.weekdays = r.workday = r.holiday = 0
        states = []
        t = 0
        text_size = 0
        for i, action in enumerate(actions):
            r = &cp.rules[i]
            packed = _pack_action(action)
            Py_INCREF(packed)
            r.action = <PyObject*>packed
            r.first_target = t
            r.ntargets = 0
            r.rr_index = -1
            r.strategy = 0
            selector = action.selector
            if selector is None:
                continue
            r.strategy = strategy_code(selector.strategy)
            if r.strategy == S_ROUND_ROBIN:
                r.rr_index = len(states)
                states.append(selector.state)
            weights = selector.weights
            for k, target in enumerate(selector.targets):
                data = PyUnicode_AsUTF8AndSize(target, &n)
                memcpy(cp.text + text_size, data, n)
                text_size += n
                cp.text_ends[t] = text_size
                cp.weights[t] = weights[k]
                t += 1
            r.ntargets = t - r.first_target
        cp.rr_states = tuple(states) if states else None
        for i, cap in enumerate(caps):
            _pack_cap(&cp.caps[i], cap)
        cp.has_charges = described.has_charges
        if cp.pin_gate is None:
            PyObject_GC_UnTrack(cp)  # nothing it holds can lead back to it (see CPlan)
        return cp

    cdef int64_t* _counts(self, CPlan plan) except NULL:
        """The number's decision counters, made (or found: kept over reloads) at its first counted decision.  O(1)."""
        if plan.outcome_data == NULL:
            plan.outcomes = self.shared.outcome_counts(plan.number)
            plan.outcome_data = <int64_t*>plan.outcomes.data.as_longlongs
        return plan.outcome_data

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
        cdef RuleC* chosen = NULL
        cdef bint ok
        cdef CAction action
        cdef object rule_name = None
        cdef PlanSlot* slot
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

        found = None
        number = None
        if type(dialed) is str:
            key = _index_key(dialed)
            if key:
                slot = self.index.find(key)
                if slot != NULL:
                    found = <object>slot.plan
                    number = dialed  # equal to its number (the key says so), and already in the cache
            else:
                found = self.by_number.get(dialed)
        if found is None:
            dialed_n = c_normalize_or_none(dialed, &key)
            found = lookup_plan(self.by_number, dialed_n)  # an SMS: 10657 + the number
            if found is None:
                if not dry:
                    self.unknown_outcomes.data.as_longlongs[I_UNKNOWN] += 1
                return _make_decision("reject", _EMPTY, self.unknown_prompt, "unknown_number", None,
                                      province, dialed_n, caller_n, channel, call_id)
        plan = <CPlan>found
        if number is None:
            number = plan.number
        counts = self._counts(plan) if not dry else <int64_t*>self.dry_outcomes.data.as_longlongs

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
            chosen = r
            rule_name = <object>r.name
            break
        if chosen is NULL:
            chosen = &plan.rules[plan.nrules]  # the default
        action = <CAction>chosen.action

        if not action.connects:
            counts[action.outcome] += 1
            return _make_decision(action.kind_name, _EMPTY, action.prompt, action.reason, rule_name,
                                  province, number, caller_n, channel, call_id)

        caller_key = caller_n if caller_n is not None else _ANONYMOUS
        if chosen.ntargets:
            targets = _packed_order(plan, chosen, caller_key, self.rng, not dry)
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
                return _make_decision("reject", _EMPTY, self._applying_cap_prompt(plan, ch, over), "cap_exceeded",
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

    cdef object _applying_cap_prompt(self, CPlan plan, int ch, int index):
        """The prompt of the ``index``-th cap that applies to the channel."""
        cdef int i
        for i in range(plan.ncaps):
            if plan.caps[i].channel == CH_ANY or plan.caps[i].channel == ch:
                if index == 0:
                    return <object>plan.caps[i].prompt
                index -= 1
        raise AssertionError("cap index out of range")

    cdef int _acquire(self, CPlan plan, int ch, str caller_key, LocalTime* lt, bint dry) except -3:
        """-1 admitted and counted, >= 0 the first applying cap at its limit, -2 backend failed (reject).

        ``dry``: checked, not counted (through the backend's Python interface).
        """
        cdef PyObject* keys[MAX_STACK_CAPS]
        cdef Py_hash_t hashes[MAX_STACK_CAPS]
        cdef int64_t periods[MAX_STACK_CAPS]
        cdef int64_t limits[MAX_STACK_CAPS]
        cdef int64_t increments[MAX_STACK_CAPS]
        cdef int64_t ttls[MAX_STACK_CAPS]
        cdef int n = 0, i
        cdef CapC* cap
        cdef list owned = None
        if self.fast_counters is not None and plan.ncaps <= MAX_STACK_CAPS and not dry:
            for i in range(plan.ncaps):
                cap = &plan.caps[i]
                if cap.channel != CH_ANY and cap.channel != ch:
                    continue
                if cap.caller_prefix != NULL:
                    if owned is None:
                        owned = []
                    key = _cap_key(cap, caller_key)
                    owned.append(key)  # keeps the borrowed pointer below alive
                    keys[n] = <PyObject*>key
                    hashes[n] = hash(key)
                else:
                    keys[n] = cap.key
                    hashes[n] = cap.key_hash
                periods[n] = _period(cap.per, lt)
                limits[n] = cap.limit
                increments[n] = cap.increment
                ttls[n] = cap.ttl
                n += 1
            if n == 0:
                return -1
            try:
                return self.fast_counters.c_acquire(keys, hashes, periods, limits, increments, ttls, n)
            except BackendError:
                return self._backend_failed(plan, False)
        checks = []
        for i in range(plan.ncaps):
            cap = &plan.caps[i]
            if cap.channel != CH_ANY and cap.channel != ch:
                continue
            checks.append(CapCheck(_cap_key(cap, caller_key), _period(cap.per, lt), cap.limit, cap.increment, cap.ttl))
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
        cdef CapC* cap
        cdef int i
        charges = ()
        if plan.has_charges:
            kept = []
            for i in range(plan.ncaps):
                cap = &plan.caps[i]
                if cap.metric != M_CALLS and (cap.channel == CH_ANY or cap.channel == ch):
                    kept.append((_METRIC_NAMES[cap.metric], _cap_key(cap, caller_key), _period(cap.per, lt), cap.ttl))
            charges = tuple(kept)
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
        self._set_entry(plan.number, self._compile_plan(plan))
        self.tracers.pop(plan.number, None)  # no longer used (and never for the new entry): free it now

    def put_entry(self, number, entry):
        """Route ``number`` by ``entry``, an entry of this engine's ``by_number``
        taken before (the router's undo).  O(1) amortised."""
        if type(entry) is not CPlan or (<CPlan>entry).number != number:
            raise TypeError(f"put_entry: expected this engine's entry for {number!r}, got {entry!r}")
        self._set_entry(number, entry)

    def drop_entry(self, number):
        """Stop routing ``number``, keeping what is kept for it (the router frees a
        retired engine's entries one at a time with this).  O(1)."""
        self._pop_entry(number)

    def remove(self, number):
        """Stop routing ``number`` (a normalised number; absent: nothing happens).  O(1).

        What is kept for it (round-robin states, PIN checks, statistics) goes too.
        """
        self._pop_entry(number)
        self.tracers.pop(number, None)
        self.compiler.forget(number)

    def _check(self):
        """Assert every packed number's invariants and, when its plan can be read back
        (``shared.plan_source``) and is the one it was compiled from, that it packs
        that plan's description field by field.  Tests call it after every compile.

        Returns how many numbers were compared with their description.  O(plans).
        """
        cdef int64_t key
        cdef PlanSlot* slot
        cdef Py_ssize_t indexed = 0
        assert not self.settings.numbers
        compared = 0
        for number, plan in self.by_number.items():
            assert (<CPlan?>plan).number == number
            key = _index_key(number)
            if key:
                slot = self.index.find(key)
                assert slot != NULL and slot.plan == <PyObject*>plan, f"the index misleads for {number!r}"
                indexed += 1
        assert indexed == self.index.count, f"the index holds {self.index.count} numbers, by_number {indexed}"
        for number, plan in self.by_number.items():
            plan._check()
            described = self._described(<CPlan>plan)
            if type(described) is not str:
                plan._check_against(described)
                compared += 1
        return compared


cdef CAction _new_action(described):
    cdef CAction a = CAction()
    a.kind = _KIND_CODES[described.kind]
    a.kind_name = _KIND_NAMES[a.kind]  # module constants, not each plan's own copy
    a.connects = described.connects
    a.reason = described.reason
    a.outcome = described.outcome
    a.prompt = described.prompt
    a.fixed = described.fixed
    return a


cdef CAction _pack_action(described):
    """The packed form of a compiler action, without its targets: every bridge's is ``_BRIDGE``
    (its targets go into the plan's block); a shared reject, queue or conference action is packed once."""
    cdef CAction a
    if described.selector is not None:
        return _BRIDGE
    a = described.packed
    if a is None:
        a = described.packed = _new_action(described)
    return a


cdef int _pack_cap(CapC* c, described) except -1:
    """Fill a plan's CapC from a CompiledCap (its strings owned by the plan)."""
    key, prefix, prompt = described.key, described.caller_prefix, described.prompt
    if type(key) is not str or (prefix is not None and type(prefix) is not str) or type(prompt) is not str:
        raise TypeError("a compiled cap's key, caller prefix and prompt are strings")
    c.metric = _METRIC_CODES[described.metric]
    c.per = _PER_CODES[described.per]
    c.channel = _CHANNEL_CODES[described.channel]
    c.limit = described.limit
    c.increment = described.increment
    c.ttl = described.ttl_s
    Py_INCREF(key)
    c.key = <PyObject*>key
    c.key_hash = hash(key)
    Py_INCREF(prompt)
    c.prompt = <PyObject*>prompt
    if prefix is not None:
        Py_INCREF(prefix)
        c.caller_prefix = <PyObject*>prefix
    return 0


cdef inline bint _in_slot(int32_t start, int32_t end, int minute) noexcept nogil:
    if start <= end:
        return start <= minute <= end
    return minute >= start or minute <= end


#: What every bridge does (its targets are its plan's): one object for all of them.
cdef CAction _BRIDGE = CAction()
_BRIDGE.kind = K_BRIDGE
_BRIDGE.kind_name = "bridge"
_BRIDGE.connects = True
_BRIDGE.reason = "ok"
_BRIDGE.outcome = OUTCOME_INDEX[("bridge", "ok")]
_BRIDGE.prompt = None
_BRIDGE.fixed = _EMPTY
