"""Reference implementation of the routing engine.

An :class:`Engine` is one immutable compilation of a :class:`~tel400.PlanSet`
(everything a call needs, looked up by the dialed number) plus references to
the router's shared, mutable state (:class:`tel400._common.Shared`).
:meth:`tel400.Router.reload` compiles a new engine and swaps one reference,
so a call sees either the old plans or the new ones, never a mixture.

The order of checks is design.md's "Decision order"; docs/routing.md
documents each step.  ``tel400._fast._engine`` is the compiled twin; it
hands ``explain`` and dry runs to this one, so the trace has one author.
"""

from __future__ import annotations

import datetime as _dt
import time
import zoneinfo
from collections import Counter

from . import pins, provinces
from ._common import (
    OUTCOME_INDEX, SMS_ACCESS_PREFIX, STANDARD_PROMPTS, UNKNOWN_LABEL, CallRecord, cap_key, check_at,
)
from ._numbers_py import national_key, normalize_or_none
from ._select_py import make_selector
from .counters import PERIOD_TTL_S, CapCheck
from .decision import Decision, Step
from .exceptions import BackendError
from .plans import Action, Cap, NumberPlan, PlanSet, Rule

_EMPTY: tuple[str, ...] = ()
_new_decision = tuple.__new__  # Decision(...) without the keyword-argument machinery
_CHANNELS = ("voice", "sms")
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Moment:
    """The call's local time in one plan's zone (fields computed once)."""

    __slots__ = ("ts", "ordinal", "weekday", "minute", "hour", "year", "month", "_workday", "_calendar")

    def __init__(self, at, zone: zoneinfo.ZoneInfo, calendar) -> None:
        if at is None:
            ts = time.time()
            local = _dt.datetime.fromtimestamp(ts, zone)
        elif isinstance(at, _dt.datetime):
            if at.tzinfo is None:
                local = at  # a naive time is read in the plan's zone
                ts = at.replace(tzinfo=zone).timestamp()
            else:
                ts = at.timestamp()
                local = at.astimezone(zone)
        else:  # a POSIX time, checked by check_at
            ts = float(at)
            local = _dt.datetime.fromtimestamp(ts, zone)
        self.ts = ts
        self.ordinal = local.toordinal()
        self.weekday = local.weekday()
        self.minute = local.hour * 60 + local.minute
        self.hour = local.hour
        self.year = local.year
        self.month = local.month
        self._calendar = calendar
        self._workday = None

    @property
    def workday(self) -> bool:
        if self._workday is None:
            self._workday = self._calendar.is_workday(self.ordinal)
        return self._workday

    def period(self, per: str) -> int:
        """The id of the calendar period (hour, day, ISO week, month) this moment is in."""
        if per == "day":
            return self.ordinal
        if per == "hour":
            return self.ordinal * 24 + self.hour
        if per == "week":
            return self.ordinal - self.weekday  # the Monday
        return self.year * 12 + self.month - 1

    def describe(self) -> str:
        day = _dt.date.fromordinal(self.ordinal)
        return f"{day.isoformat()} {_DAY_NAMES[self.weekday].title()} {self.minute // 60:02d}:{self.minute % 60:02d}"


class CompiledAction:
    __slots__ = ("kind", "reason", "prompt", "selector", "fixed", "connects", "strategy")

    def __init__(self, action: Action, *, reason: str, prompt: str | None, selector=None) -> None:
        self.kind = action.kind
        self.reason = reason
        self.prompt = prompt
        self.selector = selector
        self.strategy = action.strategy if action.kind == "bridge" else None
        self.connects = action.connects
        if action.kind == "queue":
            self.fixed = (action.queue,)
        elif action.kind == "conference":
            self.fixed = (action.room,)
        else:
            self.fixed = _EMPTY


class CompiledRule:
    __slots__ = ("name", "provinces", "days", "time", "dates", "channel", "action", "uses_calendar")

    def __init__(self, rule: Rule, action: CompiledAction) -> None:
        self.name = rule.name
        self.provinces = (
            frozenset(provinces.INDEX[c] for c in rule.provinces) if rule.provinces is not None else None
        )
        self.days = rule.days
        self.time = rule.time
        self.dates = rule.dates
        self.channel = rule.channel
        self.action = action
        self.uses_calendar = rule.days is not None and rule.days.needs_calendar

    def first_failure(self, channel: str, province: int, moment: Moment) -> str | None:
        """The first condition that does not hold (``None``: the rule matches).

        Conditions are checked in a fixed order, cheapest first:
        channel, province, date, day, time.
        """
        if self.channel != "any" and self.channel != channel:
            return "channel"
        if self.provinces is not None and province not in self.provinces:
            return "province"
        if self.dates is not None and not self.dates.matches(moment.ordinal):
            return "date"
        days = self.days
        if days is not None and not days.weekdays >> moment.weekday & 1:
            # The calendar is consulted only when the weekday alone does not
            # decide (each lookup in an uncovered year counts as a fallback).
            if not days.needs_calendar or not (days.workday if moment.workday else days.holiday):
                return "day"
        if self.time is not None and not self.time.matches(moment.minute):
            return "time"
        return None


class CompiledCap:
    __slots__ = ("key", "metric", "per", "limit", "scope", "prompt", "channel", "label", "ttl_s")

    def __init__(self, number: str, cap: Cap, occurrence: int, prompt: str) -> None:
        self.key = cap_key(number, cap, occurrence)
        self.metric = cap.metric
        self.per = cap.per
        self.limit = cap.limit_units
        self.scope = cap.scope
        self.prompt = prompt
        self.channel = cap.channel
        self.ttl_s = PERIOD_TTL_S[cap.per]
        self.label = f"{cap.metric}/{cap.per}/{cap.scope}" + (f"/{cap.channel}" if cap.channel != "any" else "")

    def applies(self, channel: str) -> bool:
        return self.channel == "any" or self.channel == channel

    def key_for(self, scope_key: str) -> str:
        return self.key if self.scope == "number" else f"{self.key}:{scope_key}"

    def check(self, moment: Moment, scope_key: str) -> CapCheck:
        return CapCheck(
            self.key_for(scope_key), moment.period(self.per), self.limit,
            1 if self.metric == "calls" else 0, self.ttl_s,
        )


class Blacklist:
    """Exact numbers, prefixes (``1710*``) and ``anonymous``; normalised entries."""

    __slots__ = ("exact", "prefixes", "lengths", "anonymous")

    def __init__(self, entries) -> None:
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


def plan_prompts(plans: PlanSet, plan: NumberPlan) -> dict[str, str]:
    """A number's prompt names: standard, renamed globally, renamed by the number."""
    prompts = {key: key for key in STANDARD_PROMPTS}
    prompts.update(plans.prompts)
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
    (:meth:`tel400._common.Shared.pin_check`); ``carried_pins`` collects
    this engine's, for the router to adopt once the engine is compiled.
    """
    if not plan.has_pin:
        return None
    check = shared.pin_check(plan.number, plan.pin, plan.pin_hash, carried_pins)
    return pins.PinGate(plan.number, check, plan.on_backend_error == "allow", shared)


class CompiledPlan:
    __slots__ = (
        "number", "zone", "calendar", "blacklist", "reject_unknown", "pin_gate", "rules",
        "default", "caps", "prompts", "fail_open", "tariff", "outcomes",
    )

    def __init__(self, plan: NumberPlan, plans: PlanSet, shared, carried_rr: dict, carried_pins: dict) -> None:
        self.number = plan.number
        self.zone = zoneinfo.ZoneInfo(plan.timezone)
        self.calendar = plans.calendar.merged(plan.calendar).build()
        self.blacklist = Blacklist(plans.blacklist + plan.blacklist)
        self.reject_unknown = plan.reject_unknown_callers
        self.prompts = prompts = plan_prompts(plans, plan)
        self.fail_open = plan.on_backend_error == "allow"
        self.pin_gate = pin_gate(plan, shared, carried_pins)
        self.tariff = plan.tariff
        self.outcomes = shared.outcome_counts(plan.number)
        self.rules = tuple(
            CompiledRule(rule, self._action(plan, rule.action, rule.name, shared, carried_rr)) for rule in plan.rules
        )
        self.default = self._action(plan, plan.default, None, shared, carried_rr)
        seen: Counter[tuple] = Counter()
        caps = []
        for cap in plan.caps:
            ident = (cap.metric, cap.per, cap.scope, cap.channel)
            seen[ident] += 1
            prompt = prompts["limit_reached"] if cap.prompt is None else cap.prompt
            caps.append(CompiledCap(plan.number, cap, seen[ident], prompt))
        self.caps = tuple(caps)

    def _action(self, plan: NumberPlan, action: Action, rule: str | None, shared, carried_rr: dict) -> CompiledAction:
        if action.kind == "reject":
            reason = "closed" if rule is None else "rule_reject"
            return CompiledAction(action, reason=reason, prompt=action_prompt(action, self.prompts))
        selector = None
        if action.kind == "bridge":
            targets = [t.to for t in action.targets]
            weights = [t.weight for t in action.targets]
            state = None
            if action.strategy == "round_robin":
                ident = (plan.number, rule, tuple(targets), tuple(weights))
                state = shared.round_robin_state(ident, len(targets), carried_rr)
            selector = make_selector(action.strategy, targets, weights, state)
        return CompiledAction(action, reason="ok", prompt=None, selector=selector)


class Engine:
    """A compiled plan set that routes calls."""

    def __init__(self, plans: PlanSet, prefixes, shared) -> None:
        self.plans = plans
        self.prefixes = prefixes
        self.shared = shared
        #: round-robin states of this plan set; the router adopts them once
        #: the engine is in service, so a failed compile keeps the old ones.
        self.rr_states: dict[tuple, object] = {}
        #: PIN checks of this plan set, adopted likewise (Shared.pin_checks).
        self.pin_checks: dict[tuple, pins.PinCheck] = {}
        compiled: dict[str, CompiledPlan] = {}
        for plan in plans.numbers:
            compiled[plan.number] = CompiledPlan(plan, plans, shared, self.rr_states, self.pin_checks)
        self.by_number = compiled
        self.unknown_prompt = dict(plans.prompts).get("unknown_number", "unknown_number")
        self.unknown_outcomes = shared.outcome_counts(UNKNOWN_LABEL)

    def plan_for(self, dialed_n: str | None) -> CompiledPlan | None:
        """The plan of a normalised dialed number; SMS arrive as 10657 + the number."""
        if dialed_n is None:
            return None
        plan = self.by_number.get(dialed_n)
        if plan is None and dialed_n.startswith(SMS_ACCESS_PREFIX):
            plan = self.by_number.get(dialed_n[len(SMS_ACCESS_PREFIX):])
        return plan

    # -- the decision ---------------------------------------------------------

    def route(self, dialed, caller, at=None, channel="voice", pin=None, call_id=None,
              explain=False, dry_run=False) -> Decision:
        if channel not in _CHANNELS:
            raise ValueError(f"channel: expected 'voice' or 'sms', got {channel!r}")
        check_at(at)
        trace: list[Step] | None = [] if (explain or dry_run) else None
        caller_n = normalize_or_none(caller)
        province_index = self.prefixes.index_of_key(national_key(caller_n)) if caller_n else 0
        province = provinces.CODES[province_index]
        dialed_n = normalize_or_none(dialed)
        plan = self.plan_for(dialed_n)
        shared = self.shared

        def done(action, targets, prompt, reason, rule):
            if not dry_run:
                counts = plan.outcomes if plan is not None else self.unknown_outcomes
                counts[OUTCOME_INDEX[(action, reason)]] += 1
            number = plan.number if plan is not None else dialed_n
            return _new_decision(Decision, (action, targets, prompt, reason, rule, province, number, caller_n,
                                            channel, call_id, tuple(trace) if trace is not None else None))

        if plan is None:
            if trace is not None:
                trace.append(Step("number", None, False, f"no plan for {dialed!r}"))
            return done("reject", _EMPTY, self.unknown_prompt, "unknown_number", None)
        if trace is not None:
            trace.append(Step("number", None, True, f"plan {plan.number}; caller {caller_n or 'withheld'} in {province or 'unknown province'}"))

        blocked = plan.blacklist.matches(caller_n)
        if blocked is not None:
            if trace is not None:
                trace.append(Step("blacklist", None, False, f"caller matches {blocked}"))
            return done("reject", _EMPTY, plan.prompts["blacklisted"], "blacklisted", None)
        if caller_n is None and plan.reject_unknown:
            if trace is not None:
                trace.append(Step("caller", None, False, f"no usable caller number ({caller!r}) and reject_unknown_callers"))
            return done("reject", _EMPTY, plan.prompts["bad_caller"], "bad_caller", None)

        moment = Moment(at, plan.zone, plan.calendar)

        if plan.pin_gate is not None:
            reason = plan.pin_gate.decide(caller_n, pin, moment.ts, trace, dry_run)
            if reason == "pin_required":
                return done("collect_pin", _EMPTY, plan.prompts["enter_pin"], reason, None)
            if reason is not None:
                return done("reject", _EMPTY, plan.prompts[reason], reason, None)

        chosen = None
        for rule in plan.rules:
            failed = rule.first_failure(channel, province_index, moment)
            if failed is None:
                chosen = rule
                if trace is not None:
                    trace.append(Step("rule", rule.name, True, f"matched at {moment.describe()}"))
                break
            if trace is not None:
                trace.append(Step("rule", rule.name, False, _describe_failure(rule, failed, channel, province, moment)))
        if chosen is not None:
            action, rule_name = chosen.action, chosen.name
        else:
            action, rule_name = plan.default, None
            if trace is not None:
                trace.append(Step("default", None, True, f"no rule matched: default {action.kind}"))

        if not action.connects:
            return done(action.kind, _EMPTY, action.prompt, action.reason, rule_name)

        caller_key = caller_n or "anonymous"
        if action.selector is not None:
            targets = action.selector.order(caller_key, shared.rng, not dry_run)
            if trace is not None:
                trace.append(Step("select", rule_name, True, f"{action.strategy}: {', '.join(targets)}"))
        else:
            targets = action.fixed

        if plan.caps:
            checks, caps = [], []
            for cap in plan.caps:
                if cap.applies(channel):
                    checks.append(cap.check(moment, caller_key))
                    caps.append(cap)
            if checks:
                try:
                    over = shared.counters.acquire(checks, dry_run=dry_run)
                except BackendError as exc:
                    over = self._backend_failed(plan, exc, trace, dry_run)
                    if over == -2:
                        return done("reject", _EMPTY, plan.prompts["backend_error"], "backend_error", rule_name)
                if trace is not None:
                    self._trace_caps(trace, caps, checks, over)
                if over >= 0:
                    return done("reject", _EMPTY, caps[over].prompt, "cap_exceeded", rule_name)

        if call_id is not None and not dry_run:
            charges = tuple(
                (cap.metric, cap.key_for(caller_key), moment.period(cap.per), cap.ttl_s)
                for cap in plan.caps
                if cap.metric != "calls" and cap.applies(channel)
            )
            shared.calls.remember(CallRecord(
                str(call_id), plan.number, caller_n, province_index, targets, channel, moment.ts,
                plan.tariff, charges, plan.fail_open,
            ))
        return done(action.kind, targets, None, "ok", rule_name)

    def _backend_failed(self, plan: CompiledPlan, exc: Exception, trace, dry_run) -> int:
        """Apply the plan's policy: -1 (allow, uncounted) or -2 (reject)."""
        policy = "allow" if plan.fail_open else "reject"
        if not dry_run:
            self.shared.backend_errors[policy] += 1
        if trace is not None:
            trace.append(Step("backend", None, plan.fail_open, f"counter backend failed ({exc}); on_backend_error = {policy}"))
        return -1 if plan.fail_open else -2

    def _trace_caps(self, trace: list[Step], caps, checks, over: int) -> None:
        counters = self.shared.counters
        for i, (cap, check) in enumerate(zip(caps, checks)):
            try:
                value = counters.value(check.key, check.period)
            except BackendError:
                value = None
            shown = "?" if value is None else _show_units(cap.metric, value)
            limit = _show_units(cap.metric, cap.limit)
            if over >= 0 and i == over:
                trace.append(Step("cap", cap.label, False, f"{shown} of {limit}: limit reached"))
            else:
                trace.append(Step("cap", cap.label, True, f"{shown} of {limit}"))

    # -- one number at a time (Router.update, Router.from_store) ---------------

    def put(self, plan: NumberPlan) -> None:
        """Compile ``plan`` with this engine's settings and route its number by it.

        The entry is replaced only once compiled: a call routed meanwhile
        sees the old entry or the new one.  O(this plan).
        """
        self.by_number[plan.number] = CompiledPlan(plan, self.plans, self.shared, self.rr_states, self.pin_checks)

    def remove(self, number: str) -> None:
        """Stop routing ``number`` (nothing if it had no entry).  O(1)."""
        self.by_number.pop(number, None)


def _show_units(metric: str, units: int) -> str:
    if metric == "calls":
        return str(units)
    if metric == "minutes":
        return f"{units / 60:g} min"
    return f"{units / 1_000_000:g}"


def _describe_failure(rule: CompiledRule, failed: str, channel: str, province: str | None, moment: Moment) -> str:
    if failed == "channel":
        return f"channel {channel} is not {rule.channel}"
    if failed == "province":
        wanted = ",".join(sorted(provinces.CODES[i] for i in rule.provinces))
        return f"province {province or 'unknown'} not in {wanted}"
    if failed == "date":
        return f"date {_dt.date.fromordinal(moment.ordinal).isoformat()} not in {rule.dates.text}"
    if failed == "day":
        day = _DAY_NAMES[moment.weekday]
        # Only a rule that asked the calendar has an answer to show (and
        # asking it again here must not count a second fallback lookup).
        extra = f" ({'workday' if moment.workday else 'holiday'})" if rule.uses_calendar else ""
        return f"day {day}{extra} not in {rule.days.text}"
    return f"time {moment.minute // 60:02d}:{moment.minute % 60:02d} not in {rule.time.text}"
