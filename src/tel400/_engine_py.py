"""Reference implementation of the routing engine.

An :class:`Engine` holds the compiled descriptions of a plan set's numbers
(:class:`tel400.compiler.CompiledPlan`, made by the compile step both engines
share), looked up by the dialed number, and executes them; plus references to
the router's shared, mutable state (:class:`tel400.shared.Shared`).
:meth:`tel400.Router.reload` compiles a new engine and swaps one reference,
so a call sees either the old plans or the new ones, never a mixture;
:meth:`Engine.put` and :meth:`Engine.remove` change one number's entry.

The order of checks is design.md's "Decision order"; docs/routing.md
documents each step.  ``tel400._fast._engine`` is the compiled twin; it
hands ``explain`` and dry runs to this one, so the trace has one author.
"""

from __future__ import annotations

import datetime as _dt
import time
import zoneinfo

import attrs

from . import pins, provinces
from ._numbers_py import national_key, normalize_or_none
from ._select_py import make_selector
from .billing import CallRecord
from .calltime import check_at
from .compiler import CompiledPlan, CompiledRule, Compiler, lookup_plan
from .counters import CapCheck
from .decision import Decision, Step
from .exceptions import BackendError
from .outcomes import OUTCOME_INDEX, UNKNOWN_LABEL
from .plans import NumberPlan, PlanSet

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


def first_failure(rule: CompiledRule, channel: str, province: int, moment: Moment) -> str | None:
    """The first condition of a compiled rule that does not hold (``None``: the rule matches).

    Conditions are checked in a fixed order, cheapest first:
    channel, province, date, day, time.
    """
    if rule.channel != "any" and rule.channel != channel:
        return "channel"
    if not rule.province_mask >> province & 1:
        return "province"
    if rule.date_ranges and not any(start <= moment.ordinal <= end for start, end in rule.date_ranges):
        return "date"
    if rule.has_days and not rule.weekdays >> moment.weekday & 1:
        # The calendar is consulted only when the weekday alone does not
        # decide (each lookup in an uncovered year counts as a fallback).
        if not (rule.workday or rule.holiday) or not (rule.workday if moment.workday else rule.holiday):
            return "day"
    if rule.slots and not any(
        (start <= moment.minute <= end) if start <= end else (moment.minute >= start or moment.minute <= end)
        for start, end in rule.slots
    ):
        return "time"
    return None


class Engine:
    """A compiled plan set that routes calls."""

    def __init__(self, plans: PlanSet, prefixes, shared, *, compiler: Compiler | None = None) -> None:
        """``compiler``: compile with this one (and keep its round-robin states and PIN
        checks) instead of a new one: the compiled engine's tracers share its compiler."""
        #: the plan set's settings (global blacklist, prompts, calendar), without its numbers
        self.settings = settings_of(plans)
        self.prefixes = prefixes
        self.shared = shared
        #: round-robin states of this plan set, by number; the router adopts
        #: them once the engine is in service, so a failed compile keeps the old ones.
        self.rr_states: dict[str, dict[tuple, object]] = {}
        #: PIN checks of this plan set, by number, adopted likewise (Shared.pin_checks).
        self.pin_checks: dict[str, dict[tuple, pins.PinCheck]] = {}
        if compiler is None:
            compiler = Compiler(self.settings, shared, make_selector, self.rr_states, self.pin_checks)
        else:
            self.rr_states, self.pin_checks = compiler.rr_states, compiler.pin_checks
        self.compiler = compiler
        compile_number = self.compiler.compile
        self.by_number: dict[str, CompiledPlan] = {plan.number: compile_number(plan) for plan in plans.numbers}
        self.unknown_prompt = dict(plans.prompts).get("unknown_number", "unknown_number")
        self.unknown_outcomes = shared.outcome_counts(UNKNOWN_LABEL)

    def plan_for(self, dialed_n: str | None) -> CompiledPlan | None:
        """The plan of a normalised dialed number; SMS arrive as 10657 + the number."""
        return lookup_plan(self.by_number, dialed_n)

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
                if plan is None:
                    counts = self.unknown_outcomes
                else:
                    counts = plan.outcomes
                    if counts is None:  # the number's first counted decision (kept over reloads in shared)
                        counts = plan.outcomes = shared.outcome_counts(plan.number)
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
            failed = first_failure(rule, channel, province_index, moment)
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
                    checks.append(CapCheck(cap.key_for(caller_key), moment.period(cap.per), cap.limit, cap.increment,
                                           cap.ttl_s))
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
            charges = () if not plan.has_charges else tuple(
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

    # -- one number at a time ----------------------------------------------

    def put(self, plan: NumberPlan) -> None:
        """Compile one number with this engine's settings and route it by that from now on.  O(this plan)."""
        self.by_number[plan.number] = self.compiler.compile(plan)

    def put_entry(self, number: str, entry: CompiledPlan) -> None:
        """Route ``number`` by ``entry``, an entry of this engine's ``by_number``
        taken before (the router's undo).  O(1)."""
        if not isinstance(entry, CompiledPlan) or entry.number != number:
            raise TypeError(f"put_entry: expected this engine's entry for {number!r}, got {entry!r}")
        self.by_number[number] = entry

    def drop_entry(self, number: str) -> None:
        """Stop routing ``number``, keeping what is kept for it (the router frees a
        retired engine's entries one at a time with this).  O(1)."""
        self.by_number.pop(number, None)

    def remove(self, number: str) -> None:
        """Stop routing ``number`` (a normalised number; absent: nothing happens).  O(1).

        What is kept for it (round-robin states, PIN checks, statistics) goes too.
        """
        self.by_number.pop(number, None)
        self.compiler.forget(number)

    def _check(self) -> None:
        """Assert every compiled number's invariants (tests call it after every compile).  O(plans)."""
        assert not self.settings.numbers
        for number, plan in self.by_number.items():
            assert plan.number == number
            plan._check()


def settings_of(plans: PlanSet) -> PlanSet:
    """The settings part of a plan set (its numbers left out): what an engine keeps."""
    return plans if not plans.numbers else attrs.evolve(plans, numbers=())


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
        wanted = ",".join(sorted(rule.provinces))
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
