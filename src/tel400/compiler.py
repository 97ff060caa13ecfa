"""The one compile step of both engines: a validated number plan in, its compiled description out.

:class:`Compiler` turns one :class:`~tel400.plans.NumberPlan` (with the
router's settings: global blacklist, prompts, calendar) into a
:class:`CompiledPlan`: prompts, cap keys and labels, the blacklist, PIN gate,
round-robin state, outcome counters, and each rule's conditions as plain data
(province bit mask, weekday mask, workday/holiday flags, minute slots, date
ranges) with its action (kind, reason, outcome index, prompt, selector or
fixed targets).

The reference engine (:mod:`tel400._engine_py`) executes a ``CompiledPlan``
directly; the compiled engine (``tel400._fast._engine``) packs it into C
structs.  Every decision about *what* a plan means is taken here, once:
adding a rule condition touches the schema (:mod:`tel400.plans`), this
module, and one branch in each executor.

What many numbers have alike is built once per compiler and shared: the
merged calendar of each distinct calendar spec, the zone, the prompt dict
of each distinct prompt renaming, the blacklist of each distinct number
blacklist.  Shared pieces are never mutated.

A number's rules are built by :func:`compiled_rules` or, in the compiled
build, by its twin ``tel400._fast._compile`` (the same objects, made slot
by slot; tests/test_compiler.py compares them).
"""

from __future__ import annotations

import array
import zoneinfo
from collections.abc import Callable
from typing import Any

from . import pins, provinces
from .counters import PERIOD_TTL_S
from .outcomes import OUTCOME_INDEX, OUTCOMES, SMS_ACCESS_PREFIX, STANDARD_PROMPTS
from . import smstext
from .plans import Action, CalendarSpec, Cap, NumberPlan, PlanSet, Rule

_EMPTY: tuple[str, ...] = ()
_OUTCOME_OF = OUTCOME_INDEX
#: A rule without a province condition matches every province index.
ALL_PROVINCES = (1 << 64) - 1
#: Minutes of a day: slots hold 0 to 1439.
MINUTES_PER_DAY = 1440
CHANNELS = ("any", "voice", "sms")
KINDS = ("bridge", "reject", "queue", "conference")
METRICS = ("calls", "minutes", "cost")
PERIODS = ("hour", "day", "week", "month")


def cap_key(number: str, cap: Cap, occurrence: int) -> str:
    """The counter key of a cap.

    Caps are named by what they count, not by their place in the list, so a
    reload that leaves a cap alone keeps its count.  The number is in braces,
    Redis Cluster's hash tag: every key of one number's calls lands in one
    slot, so one script can count them together.
    """
    return f"tel400:{{{number}}}:cap:{cap.metric}:{cap.per}:{cap.scope}:{cap.channel}:{occurrence}"


def cap_label(metric: str, per: str, scope: str, channel: str) -> str:
    """How explain and reports name a cap: ``metric/per/scope[/channel]``."""
    return f"{metric}/{per}/{scope}" + (f"/{channel}" if channel != "any" else "")


def numbered_caps(caps) -> list[tuple[Cap, int]]:
    """Each cap with its occurrence among caps of the same (metric, per, scope, channel), from 1:
    the last part of its :func:`cap_key`."""
    seen: dict[tuple, int] = {}
    out = []
    for cap in caps:
        ident = (cap.metric, cap.per, cap.scope, cap.channel)
        seen[ident] = occurrence = seen.get(ident, 0) + 1
        out.append((cap, occurrence))
    return out


def plan_prompts(settings: PlanSet, plan: NumberPlan) -> dict[str, str]:
    """A number's prompt names: standard, renamed globally, renamed by the number."""
    prompts = {key: key for key in STANDARD_PROMPTS}
    prompts.update(settings.prompts)
    prompts.update(plan.prompts)
    return prompts


def action_prompt(action: Action, prompts: dict[str, str]) -> str | None:
    """The prompt a reject action plays: as written, else the plan's ``closed``."""
    if action.kind != "reject":
        return None
    return action.prompt or prompts["closed"]


def pin_gate(plan: NumberPlan, shared, carried_pins: dict) -> pins.PinGate | None:
    """A number's PIN step (both engines run this one), or ``None`` without a PIN.

    The check is the one kept over reloads if the PIN is unchanged
    (:meth:`tel400.shared.Shared.pin_check`); ``carried_pins`` collects
    this number's (ident -> check).
    """
    if not plan.has_pin:
        return None
    check = shared.pin_check(plan.number, plan.pin, plan.pin_hash, carried_pins)
    return pins.PinGate(plan.number, check, plan.on_backend_error == "allow", shared)


def _replace_entry(by_number: dict, number: str, entries: dict) -> None:
    """Make ``entries`` (ident -> state) what ``number`` keeps; none: drop the number.  O(1)."""
    if entries:
        by_number[number] = entries
    else:
        by_number.pop(number, None)


def lookup_plan(by_number: dict, dialed_n: str | None):
    """The compiled plan of a normalised dialed number; SMS arrive as 10657 + the number.  O(1)."""
    if dialed_n is None:
        return None
    plan = by_number.get(dialed_n)
    if plan is None and dialed_n.startswith(SMS_ACCESS_PREFIX):
        plan = by_number.get(dialed_n[len(SMS_ACCESS_PREFIX):])
    return plan


def compiled_rules(compiler: Compiler, number: str, rules: tuple[Rule, ...], prompts: dict,
                   rr_states: dict) -> tuple[CompiledRule, ...]:
    """A number's rules compiled, in order (the reference; ``tel400._fast._compile`` is its twin).

    Each rule is its :class:`CompiledRule` with the province mask and action
    the compiler gives it.  O(rules).
    """
    return tuple([
        CompiledRule(rule, compiler._province_mask(rule.provinces),
                     compiler._action(number, rule.action, rule.name, prompts, rr_states))
        for rule in rules
    ])


_RULES_BUILDER = None


def _rules_builder() -> Callable[..., tuple]:
    """What builds a number's rules: the compiled twin of :func:`compiled_rules` when the compiled
    hot path is in use (:mod:`tel400._impl` decides; it builds the same objects without their
    ``__init__``: 1.4 instead of 2.8 µs a rule), else the reference.  Imported on first use: the
    twin imports this module's classes."""
    global _RULES_BUILDER
    if _RULES_BUILDER is None:
        from . import _impl

        _RULES_BUILDER = _impl.compiled_twin("_compile", "compiled_rules", compiled_rules, "the compiled rule builder")
    return _RULES_BUILDER


class Blacklist:
    """Exact numbers, prefixes (``1710*``) and ``anonymous``; normalised entries.

    ``groups`` holds the prefixes by length, as sorted integers: the compiled
    engine copies them into C arrays.
    """

    __slots__ = ("exact", "prefixes", "lengths", "anonymous", "groups", "packed")

    def __init__(self, entries) -> None:
        #: the compiled engine's packed form, made once for all numbers sharing this blacklist
        self.packed = None
        exact, prefixes = set(), set()
        self.anonymous = False
        for entry in entries:
            if entry == "anonymous":
                self.anonymous = True
            elif entry.endswith("*"):
                prefixes.add(entry[:-1])
            else:
                exact.add(entry)
        self.exact = frozenset(exact)
        self.prefixes = frozenset(prefixes)
        self.lengths = tuple(sorted({len(p) for p in prefixes}))
        self.groups = tuple(
            (n, tuple(sorted(int(p) for p in prefixes if len(p) == n))) for n in self.lengths
        )

    def matches(self, caller: str | None) -> str | None:
        """The entry that blocks a caller, or ``None``.  O(distinct prefix lengths)."""
        if caller is None:
            return "anonymous" if self.anonymous else None
        if caller in self.exact:
            return caller
        for n in self.lengths:
            if caller[:n] in self.prefixes:
                return caller[:n] + "*"
        return None


class CompiledAction:
    """What a rule or the default does: kind, reason and outcome index, prompt, selector or fixed targets."""

    __slots__ = ("kind", "reason", "outcome", "prompt", "selector", "fixed", "connects", "strategy", "packed")

    def __init__(self, kind: str, reason: str, prompt: str | None, selector, fixed: tuple, strategy) -> None:
        #: the compiled engine's packed form, made once for all the rules sharing this action
        self.packed = None
        self.kind = kind
        self.reason = reason
        self.outcome = _OUTCOME_OF[kind, reason]
        self.prompt = prompt
        self.selector = selector
        self.fixed = fixed
        self.connects = kind != "reject"
        self.strategy = strategy


class CompiledRule:
    """A rule's conditions as plain data, and its action.

    ``province_mask`` has a bit per province index (every bit when the rule
    names none); ``weekdays`` a bit per weekday (Monday = bit 0) and
    ``workday``/``holiday`` ask the calendar when the weekday alone does not
    match (``has_days`` False: no day condition); ``slots`` are minute
    ranges of the day (a range may wrap midnight), ``date_ranges`` ordinal
    ranges, both ends included, empty for no condition.  ``days``, ``time``
    and ``dates`` are the validated conditions, kept for explain's text.
    """

    __slots__ = (
        "name", "channel", "province_mask", "provinces", "has_days", "weekdays", "workday", "holiday",
        "slots", "date_ranges", "days", "time", "dates", "action",
    )

    def __init__(self, rule: Rule, province_mask: int, action: CompiledAction) -> None:
        self.name = rule.name
        self.channel = rule.channel
        self.province_mask = province_mask
        self.provinces = rule.provinces
        days = rule.days
        self.has_days = days is not None
        self.weekdays = days.weekdays if days is not None else 0
        self.workday = days is not None and days.workday
        self.holiday = days is not None and days.holiday
        self.slots = rule.time.slots if rule.time is not None else ()
        self.date_ranges = rule.dates.ranges if rule.dates is not None else ()
        self.days = days
        self.time = rule.time
        self.dates = rule.dates
        self.action = action

    @property
    def uses_calendar(self) -> bool:
        return self.workday or self.holiday


class CompiledCap:
    """A cap's counter key (and the per-caller key prefix), label, limit in units, period and prompt."""

    __slots__ = ("key", "caller_prefix", "metric", "per", "limit", "scope", "prompt", "channel", "ttl_s", "increment")

    def __init__(self, number: str, cap: Cap, occurrence: int, prompt: str) -> None:
        self.key = cap_key(number, cap, occurrence)
        #: None for a number-wide cap; else the key of a caller is this + the caller
        self.caller_prefix = self.key + ":" if cap.scope == "caller" else None
        self.metric = cap.metric
        self.per = cap.per
        self.limit = cap.limit_units
        self.scope = cap.scope
        self.prompt = prompt
        self.channel = cap.channel
        self.ttl_s = PERIOD_TTL_S[cap.per]
        self.increment = 1 if cap.metric == "calls" else 0  # minutes and cost are added at the call's end

    @property
    def label(self) -> str:
        """How explain names the cap (made when asked: only traces read it)."""
        return cap_label(self.metric, self.per, self.scope, self.channel)

    def applies(self, channel: str) -> bool:
        return self.channel == "any" or self.channel == channel

    def key_for(self, caller_key: str) -> str:
        """The counter key of a call from ``caller_key`` (the caller, or ``anonymous``)."""
        return self.key if self.caller_prefix is None else self.caller_prefix + caller_key


class CompiledPlan:
    """One number compiled: what both engines route by (the reference executes it, the compiled engine packs it)."""

    __slots__ = (
        "number", "timezone", "zone", "calendar", "blacklist", "reject_unknown", "pin_gate", "rules",
        "default", "caps", "has_charges", "prompts", "fail_open", "tariff", "outcomes",
    )

    def _check(self) -> None:
        """Assert the invariants both executors rely on (tests call it after every compile).  O(this plan)."""
        assert isinstance(self.number, str) and self.number
        assert isinstance(self.zone, zoneinfo.ZoneInfo) and self.zone.key == self.timezone
        assert all(self.prompts[key] for key in STANDARD_PROMPTS)
        assert isinstance(self.blacklist, Blacklist)
        for n, values in self.blacklist.groups:
            assert n in self.blacklist.lengths and list(values) == sorted(values)
        assert self.outcomes is None or (isinstance(self.outcomes, array.array) and len(self.outcomes) == len(OUTCOMES))
        assert isinstance(self.rules, tuple)
        for rule in self.rules:
            assert isinstance(rule, CompiledRule) and rule.channel in CHANNELS
            assert 0 <= rule.province_mask <= ALL_PROVINCES
            assert (rule.provinces is None) == (rule.province_mask == ALL_PROVINCES)
            assert 0 <= rule.weekdays < 128 and (rule.has_days or not (rule.weekdays or rule.workday or rule.holiday))
            assert all(0 <= s < MINUTES_PER_DAY and 0 <= e < MINUTES_PER_DAY for s, e in rule.slots)
            assert all(s <= e for s, e in rule.date_ranges)
            _check_action(rule.action, self.prompts, is_default=False)
        _check_action(self.default, self.prompts, is_default=True)
        keys = [cap.key for cap in self.caps]
        assert len(set(keys)) == len(keys), "cap keys must be distinct"
        for cap in self.caps:
            assert cap.key.startswith(f"tel400:{{{self.number}}}:cap:") and cap.prompt
            assert (cap.caller_prefix is None) == (cap.scope == "number")
            assert cap.per in PERIODS and cap.metric in METRICS and cap.limit >= 0
        assert self.has_charges == any(cap.metric != "calls" for cap in self.caps)
        assert self.pin_gate is None or self.pin_gate.number == self.number


def _check_action(action: CompiledAction, prompts: dict, *, is_default: bool) -> None:
    assert action.kind in KINDS
    assert action.outcome == OUTCOME_INDEX[(action.kind, action.reason)]
    assert action.connects == (action.kind != "reject")
    if action.kind == "reject":
        assert action.reason == ("closed" if is_default else "rule_reject") and action.prompt
        assert action.selector is None and action.fixed == ()
    else:
        assert action.reason == "ok" and action.prompt is None
        assert (action.selector is not None) == (action.kind == "bridge")
        assert action.kind == "bridge" or len(action.fixed) == 1


class CompiledReply:
    """An auto-reply: folded keywords, match mode, template, its conditions as a :class:`CompiledRule`
    (so that the rules' own condition check, ``tel400._engine_py.first_failure``, decides them)."""

    __slots__ = ("name", "keywords", "match", "template", "conditions", "route_onward")

    def __init__(self, name: str, keywords: tuple[str, ...], match: str, template: str,
                 conditions: CompiledRule, route_onward: bool) -> None:
        self.name = name
        self.keywords = keywords
        self.match = match
        self.template = template
        self.conditions = conditions
        self.route_onward = route_onward

    def matches(self, folded: str) -> str | None:
        """The keyword a folded text matches, or ``None``.  O(keywords x text)."""
        match = self.match
        for keyword in self.keywords:
            if (folded == keyword if match == "exact" else
                    folded.startswith(keyword) if match == "prefix" else keyword in folded):
                return keyword
        return None


class CompiledSms:
    """What answering an SMS to one number needs: its replies and words, and the pieces of its
    routing it shares (zone, calendar, blacklist, caps on channel ``sms``, backend policy, SMS tariff).

    Built by :meth:`Compiler.compile_sms` for both engines (the router keeps a bounded
    cache of them: ``tel400.limits.SMS_PROGRAMS``).
    """

    __slots__ = ("number", "zone", "calendar", "blacklist", "caps", "fail_open", "sms_part", "replies",
                 "opt_out", "opt_in", "opt_out_reply", "opt_in_reply", "reply_limit", "reply_window_s")

    def _check(self) -> None:
        """Assert the invariants the answering code relies on (tests).  O(this plan's SMS part)."""
        assert all(cap.channel == "sms" for cap in self.caps)
        assert not (self.opt_out & self.opt_in)
        assert 1 <= self.reply_limit and 60 <= self.reply_window_s
        names = [r.name for r in self.replies]
        assert len(set(names)) == len(names)
        for reply in self.replies:
            assert reply.keywords and all(k == smstext.fold(k) and k for k in reply.keywords)
            assert reply.match in ("exact", "prefix", "contains")
            assert reply.conditions.channel == "any"


_NO_ACTION = Action()


class Compiler:
    """Compiles numbers for one engine, with the router's settings; shares what numbers have alike.

    Shared pieces (merged calendars, prompt dicts, blacklists) are kept in
    caches of at most :attr:`SHARED_PIECES` entries each; a full cache is
    emptied (later numbers then build their own until it fills again), so a
    stream of edits over a long life cannot grow them without bound.

    Args:
        settings: the plan set whose top-level settings apply (its numbers
            are not read).
        shared: the router's :class:`~tel400.shared.Shared` (outcome
            counters, round-robin states and PIN checks kept over reloads).
        make_selector: the engine's selector factory
            (``make_selector(strategy, targets, weights, state)``).
        rr_states, pin_checks: the engine's own, by number (number ->
            {ident: state}), filled as numbers compile (the router adopts
            them once the engine is in service).  Compiling a number
            replaces its entry there, so an edited number's old round-robin
            positions and PIN checks go with its old plan: O(that number's).
    """

    #: Entries of each cache of shared pieces (tunable; see the class docstring).
    SHARED_PIECES = 4096

    def __init__(self, settings: PlanSet, shared, make_selector: Callable[..., Any],
                 rr_states: dict, pin_checks: dict) -> None:
        self.settings = settings
        self.shared = shared
        self.make_selector = make_selector
        self.rr_states = rr_states
        self.pin_checks = pin_checks
        self._calendars: dict = {}
        self._prompts: dict = {}
        self._blacklists: dict = {}
        self._zones: dict = {}
        self._actions: dict = {}
        #: builds a number's rules: :func:`compiled_rules`, or its compiled twin (:func:`_rules_builder`)
        self._compiled_rules = _rules_builder()
        # What a number without a calendar, prompts or blacklist of its own gets (most numbers).
        self._plain_calendar = settings.calendar.merged(CalendarSpec()).build()
        self._plain_prompts = plan_prompts(settings, NumberPlan("0"))
        self._plain_blacklist = Blacklist(settings.blacklist)

    def compile(self, plan: NumberPlan, *, carry: bool = True) -> CompiledPlan:
        """The compiled description of one number.  O(this plan); shared pieces are built once.

        ``carry``: make this number's round-robin states and PIN checks in
        ``rr_states``/``pin_checks`` the ones of this plan (False: leave them
        as they are: explain compiling a plan again to trace it).
        """
        cp = CompiledPlan()
        number = cp.number = plan.number
        rr_states: dict = {}
        pin_checks: dict = {}
        timezone = cp.timezone = plan.timezone
        zone = self._zones.get(timezone)
        cp.zone = zone if zone is not None else self._zone(timezone)
        cp.calendar = self._calendar(plan.calendar)
        cp.blacklist = self._blacklist(plan.blacklist)
        cp.reject_unknown = plan.reject_unknown_callers
        prompts = cp.prompts = self._prompt_names(plan)
        cp.fail_open = plan.on_backend_error == "allow"
        cp.pin_gate = pin_gate(plan, self.shared, pin_checks)
        cp.tariff = plan.tariff
        cp.outcomes = None  # made at the number's first counted decision (Shared.outcome_counts)
        cp.rules = self._compiled_rules(self, number, plan.rules, prompts, rr_states)
        cp.default = self._action(number, plan.default, None, prompts, rr_states)
        caps = cp.caps = self._caps(number, plan.caps, prompts) if plan.caps else ()
        cp.has_charges = False
        for cap in caps:
            if cap.metric != "calls":
                cp.has_charges = True
        if carry:  # (most numbers have neither, and had none: nothing to replace)
            if rr_states or number in self.rr_states:
                _replace_entry(self.rr_states, number, rr_states)
            if pin_checks or number in self.pin_checks:
                _replace_entry(self.pin_checks, number, pin_checks)
        return cp

    def compile_sms(self, plan: NumberPlan) -> CompiledSms:
        """What answering an SMS to ``plan``'s number needs (see :class:`CompiledSms`).  O(its replies).

        Its zone, calendar and blacklist are the shared pieces its calls use;
        its caps are those on channel ``sms`` (the ones parts sent count against).
        """
        out = CompiledSms()
        out.number = plan.number
        out.zone = self._zone(plan.timezone)
        out.calendar = self._calendar(plan.calendar)
        out.blacklist = self._blacklist(plan.blacklist)
        prompts = self._prompt_names(plan)
        out.caps = tuple(cap for cap in (self._caps(plan.number, plan.caps, prompts) if plan.caps else ())
                         if cap.channel == "sms")
        out.fail_open = plan.on_backend_error == "allow"
        out.sms_part = plan.tariff.sms_part if plan.tariff is not None else None
        fold = smstext.fold
        out.replies = tuple(
            CompiledReply(
                reply.name, tuple(dict.fromkeys(fold(k) for k in reply.keywords)), reply.match, reply.reply,
                CompiledRule(Rule(reply.name, _NO_ACTION, reply.provinces, reply.days, reply.time, reply.dates),
                             self._province_mask(reply.provinces), None),
                reply.route_onward,
            )
            for reply in plan.sms_replies
        )
        sms = plan.sms
        out.opt_out = frozenset(fold(w) for w in sms.opt_out_words)
        out.opt_in = frozenset(fold(w) for w in sms.opt_in_words)
        out.opt_out_reply = sms.opt_out_reply
        out.opt_in_reply = sms.opt_in_reply
        out.reply_limit = sms.reply_limit
        out.reply_window_s = sms.reply_window_s
        return out

    def forget(self, number: str) -> None:
        """Drop what is kept for a number its engine no longer routes.  O(that number's).

        Its round-robin states and PIN checks, and its statistics
        (``shared.outcomes``): a tenant adding and removing numbers in a
        loop must not grow the process.  A call still routed by the old
        entry counts into the dropped array, which nothing reads again.
        """
        self.rr_states.pop(number, None)
        self.pin_checks.pop(number, None)
        self.shared.outcomes.pop(number, None)

    # -- what numbers share ---------------------------------------------------

    def _shared_piece(self, cache: dict, key, build: Callable[[], Any]):
        piece = cache.get(key)
        if piece is None:
            if len(cache) >= self.SHARED_PIECES:
                cache.clear()
            piece = cache[key] = build()
        return piece

    def _zone(self, name: str) -> zoneinfo.ZoneInfo:
        zone = self._zones.get(name)
        if zone is None:
            zone = self._shared_piece(self._zones, name, lambda: zoneinfo.ZoneInfo(name))
        return zone

    def _calendar(self, spec: CalendarSpec):
        """The settings' calendar merged with a number's additions: built once per distinct spec."""
        if not (spec.holidays or spec.workdays or spec.years):
            return self._plain_calendar
        return self._shared_piece(self._calendars, spec, lambda: self.settings.calendar.merged(spec).build())

    def _prompt_names(self, plan: NumberPlan) -> dict[str, str]:
        if not plan.prompts:
            return self._plain_prompts
        return self._shared_piece(self._prompts, plan.prompts, lambda: plan_prompts(self.settings, plan))

    def _blacklist(self, own: tuple[str, ...]) -> Blacklist:
        if not own:
            return self._plain_blacklist
        return self._shared_piece(self._blacklists, own, lambda: Blacklist(self.settings.blacklist + own))

    @staticmethod
    def _province_mask(codes) -> int:
        """A rule's province bit mask (every bit for no condition).  O(provinces named)."""
        if codes is None:
            return ALL_PROVINCES
        mask = 0
        for code in codes:
            mask |= 1 << provinces.INDEX[code]
        return mask

    # -- a number's own -------------------------------------------------------

    def _action(self, number: str, action: Action, rule: str | None, prompts: dict, rr_states: dict) -> CompiledAction:
        kind = action.kind
        if kind == "reject":  # shared: a reject, queue or conference action holds nothing of its own
            reason, prompt = "closed" if rule is None else "rule_reject", action.prompt or prompts["closed"]
            shared = self._actions.get((reason, prompt))  # (every number's default, most often)
            if shared is not None:
                return shared
            return self._shared_piece(self._actions, (reason, prompt),
                                      lambda: CompiledAction(kind, reason, prompt, None, _EMPTY, None))
        if kind == "queue" or kind == "conference":
            fixed = (action.queue if kind == "queue" else action.room,)
            return self._shared_piece(self._actions, (kind, fixed),
                                      lambda: CompiledAction(kind, "ok", None, None, fixed, None))
        targets, weights = [], []
        for target in action.targets:
            targets.append(target.to)
            weights.append(target.weight)
        targets = tuple(targets)
        state = None
        if action.strategy == "round_robin":
            ident = (number, rule, targets, tuple(weights))
            state = self.shared.round_robin_state(ident, len(targets), rr_states)
        selector = self.make_selector(action.strategy, targets, weights, state)
        return CompiledAction(kind, "ok", None, selector, _EMPTY, action.strategy)

    def _caps(self, number: str, caps: tuple[Cap, ...], prompts: dict) -> tuple[CompiledCap, ...]:
        """Caps numbered by occurrence of (metric, per, scope, channel): a reordered list keeps its counts."""
        if len(caps) == 1:
            cap = caps[0]
            return (CompiledCap(number, cap, 1, prompts["limit_reached"] if cap.prompt is None else cap.prompt),)
        out = []
        for cap, occurrence in numbered_caps(caps):
            prompt = prompts["limit_reached"] if cap.prompt is None else cap.prompt
            out.append(CompiledCap(number, cap, occurrence, prompt))
        return tuple(out)
