# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled twin of ``tel400.compiler.compiled_rules``: a number's rules compiled, typed.

Same contract, same objects: each rule becomes the :class:`CompiledRule`
the reference's ``CompiledRule(rule, mask, action)`` makes, and a bridge
action the :class:`CompiledAction` its ``Compiler._action`` makes (reject,
queue and conference actions, shared between numbers, are asked of the
compiler itself, as the province masks are).  What makes it faster: the
description objects are built as ``tel400._fast._plans`` builds the plan
objects, a blank instance and each slot written directly (a rule's 14 and
an action's 9 attributes through their member descriptors cost ~1.5 µs a
rule in CPython; here ~0.1), and the rule's attributes are read from their
slots.  Both are then untracked by the cyclic GC, as the validator's plan
objects are: a rule holds its plan's (untracked) conditions and its action,
an action strings and its selector, which holds strings, integers and its
round-robin state; no cycle can pass through them (``packed``, set later by
the compiled engine, is a ``no_gc`` object).  Tracked, the two objects a
rule made the young collections ~20% of a compile.  The classes' slots are checked at import, so that an attribute
added to them cannot be missed here silently (the import fails, with one
warning, and the reference is used).  tests/test_compiler.py compares both
builders attribute by attribute.
"""

from ..compiler import ALL_PROVINCES, CompiledAction, CompiledRule, compiled_rules as _reference
from ..outcomes import OUTCOME_INDEX
from ..provinces import INDEX as _PROVINCE_INDEX
from ..plans import Action, Rule, Target

from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New as PyTuple_New_of, PyTuple_SET_ITEM

from ._slots cimport PyObject_GC_UnTrack, PyType_GenericAlloc, get_slot as _get, put_slot as _put, slot_offsets


_RULE_SLOTS = (
    "name", "channel", "province_mask", "provinces", "has_days", "weekdays", "workday", "holiday",
    "slots", "date_ranges", "days", "time", "dates", "action",
)
_ACTION_SLOTS = ("kind", "reason", "outcome", "prompt", "selector", "fixed", "connects", "strategy", "packed")
if CompiledRule.__slots__ != _RULE_SLOTS or CompiledAction.__slots__ != _ACTION_SLOTS:
    raise ImportError("tel400._fast._compile: the description classes' slots changed; update its builders")

cdef Py_ssize_t _OFF_RULE[14]
cdef Py_ssize_t _OFF_ACTION[9]
# Read from the plan classes (attrs slots): rule name, action, provinces, days, time, dates, channel;
# action kind, targets, strategy; target to, weight.
cdef Py_ssize_t _IN_RULE[7]
cdef Py_ssize_t _IN_ACTION[3]
cdef Py_ssize_t _IN_TARGET[2]


cdef _offsets(type cls, names, Py_ssize_t* into):
    slot_offsets("tel400._fast._compile", cls, names, into)


_offsets(CompiledRule, _RULE_SLOTS, _OFF_RULE)
_offsets(CompiledAction, _ACTION_SLOTS, _OFF_ACTION)
_offsets(Rule, ("name", "action", "provinces", "days", "time", "dates", "channel"), _IN_RULE)
_offsets(Action, ("kind", "targets", "strategy"), _IN_ACTION)
_offsets(Target, ("to", "weight"), _IN_TARGET)


cdef object _BRIDGE_OUTCOME = OUTCOME_INDEX["bridge", "ok"]
cdef object _ALL = ALL_PROVINCES
cdef tuple _EMPTY = ()
cdef type _RuleT = Rule
cdef type _ActionT = Action
cdef type _TargetT = Target


cdef dict _INDEX = _PROVINCE_INDEX


cdef object _province_mask(object codes):
    """``Compiler._province_mask`` of a rule naming provinces (indices below 64: ALL_PROVINCES)."""
    cdef unsigned long long mask = 0
    for code in codes:
        mask |= (<unsigned long long>1) << <int>_INDEX[code]
    return mask


cdef object _bridge(compiler, str number, object rule_name, object action, dict rr_states):
    """``Compiler._action`` of a bridge action: its targets' selector (and round-robin state)."""
    cdef list weights = []
    cdef tuple given = _get(action, _IN_ACTION[1])
    cdef Py_ssize_t i, n = len(given)
    cdef tuple targets = PyTuple_New_of(n)
    for i in range(n):
        target = given[i]
        to = _get(target, _IN_TARGET[0])
        Py_INCREF(to)
        PyTuple_SET_ITEM(targets, i, to)
        weights.append(_get(target, _IN_TARGET[1]))
    strategy = _get(action, _IN_ACTION[2])
    state = None
    if strategy == "round_robin":
        state = compiler.shared.round_robin_state((number, rule_name, targets, tuple(weights)), n, rr_states)
    selector = compiler.make_selector(strategy, targets, weights, state)
    compiled = PyType_GenericAlloc(CompiledAction, 0)
    _put(compiled, _OFF_ACTION[0], "bridge")
    _put(compiled, _OFF_ACTION[1], "ok")
    _put(compiled, _OFF_ACTION[2], _BRIDGE_OUTCOME)
    _put(compiled, _OFF_ACTION[3], None)
    _put(compiled, _OFF_ACTION[4], selector)
    _put(compiled, _OFF_ACTION[5], _EMPTY)
    _put(compiled, _OFF_ACTION[6], True)
    _put(compiled, _OFF_ACTION[7], strategy)
    _put(compiled, _OFF_ACTION[8], None)
    PyObject_GC_UnTrack(compiled)
    return compiled


cdef bint _plain(tuple rules):
    """Every rule, action and target of exactly the validator's classes (slots read directly)."""
    for rule in rules:
        if type(rule) is not _RuleT:
            return False
        action = _get(rule, _IN_RULE[1])
        if type(action) is not _ActionT:
            return False
        targets = _get(action, _IN_ACTION[1])
        if type(targets) is not tuple:
            return False
        for target in <tuple>targets:
            if type(target) is not _TargetT:
                return False
    return True


def compiled_rules(compiler, number, rules, prompts, rr_states):
    """A number's rules compiled, in order: what ``tel400.compiler.compiled_rules`` returns.  O(rules).

    What the validator makes (an exact ``str`` number, a ``tuple`` of its
    own classes) is built here; anything else (plans built by hand with a
    list of rules, subclasses) by the reference.
    """
    if type(number) is not str or type(rules) is not tuple or not _plain(<tuple>rules):
        return _reference(compiler, number, rules, prompts, rr_states)
    # A list, made a tuple at the end: Python code runs between two rules (a
    # round-robin state, a shared action), and a tuple is visible to the
    # collector, and to other threads walking it, from its creation.
    cdef list out = []
    for rule in <tuple>rules:
        name = _get(rule, _IN_RULE[0])
        action = _get(rule, _IN_RULE[1])
        codes = _get(rule, _IN_RULE[2])
        mask = _ALL if codes is None else _province_mask(codes)
        if _get(action, _IN_ACTION[0]) == "bridge":
            compiled_action = _bridge(compiler, number, name, action, rr_states)
        else:
            compiled_action = compiler._action(number, action, name, prompts, rr_states)
        days = _get(rule, _IN_RULE[3])
        time = _get(rule, _IN_RULE[4])
        dates = _get(rule, _IN_RULE[5])
        compiled = PyType_GenericAlloc(CompiledRule, 0)
        _put(compiled, _OFF_RULE[0], name)
        _put(compiled, _OFF_RULE[1], _get(rule, _IN_RULE[6]))
        _put(compiled, _OFF_RULE[2], mask)
        _put(compiled, _OFF_RULE[3], codes)
        if days is None:
            _put(compiled, _OFF_RULE[4], False)
            _put(compiled, _OFF_RULE[5], 0)
            _put(compiled, _OFF_RULE[6], False)
            _put(compiled, _OFF_RULE[7], False)
        else:
            _put(compiled, _OFF_RULE[4], True)
            _put(compiled, _OFF_RULE[5], days.weekdays)
            _put(compiled, _OFF_RULE[6], days.workday)
            _put(compiled, _OFF_RULE[7], days.holiday)
        _put(compiled, _OFF_RULE[8], _EMPTY if time is None else time.slots)
        _put(compiled, _OFF_RULE[9], _EMPTY if dates is None else dates.ranges)
        _put(compiled, _OFF_RULE[10], days)
        _put(compiled, _OFF_RULE[11], time)
        _put(compiled, _OFF_RULE[12], dates)
        _put(compiled, _OFF_RULE[13], compiled_action)
        PyObject_GC_UnTrack(compiled)
        out.append(compiled)
    return tuple(out)
