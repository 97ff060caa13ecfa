"""Reference implementation of the routing engine.

An :class:`Engine` is one immutable compilation of a :class:`~tel400.PlanSet`
(everything a call needs, looked up by the dialed number) plus references to
the router's shared, mutable state (counters, random source, statistics,
the calls in progress).  :meth:`tel400.Router.reload` compiles a new engine
and swaps one reference, so a call sees either the old plans or the new ones,
never a mixture.

The order of checks is design.md's "Decision order"; each step's choices
are documented there and in docs/routing.md.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
import zoneinfo
from collections import Counter
from decimal import ROUND_CEILING, Decimal

from . import pins, provinces
from ._numbers_py import national_key, normalize_or_none
from ._select_py import make_selector
from .counters import PERIOD_TTL_S, CapCheck
from .decision import Charge, Decision, Step
from .exceptions import BackendError
from .plans import Action, Cap, NumberPlan, PlanSet, Rule, to_units
from .segments import PrefixTable

_EMPTY: tuple[str, ...] = ()
_new_decision = tuple.__new__  # Decision(...) without the keyword-argument machinery
_CHANNELS = ("voice", "sms")
#: The SMS access code: messages to a 400 number arrive as 10657 + number.
SMS_ACCESS_PREFIX = "10657"


class Shared:
    """Router state that outlives a reload: counters, randomness, statistics."""

    def __init__(self, counters, rng, calls) -> None:
        self.counters = counters
        self.rng = rng
        self.calls = calls
        #: (number, action, reason) -> decisions, read by the metrics collector.
        self.decisions: Counter[tuple[str, str, str]] = Counter()
        #: backend failures by kind, and the policy applied.
        self.backend_errors: Counter[str] = Counter()
        #: round-robin state by (number, rule, targets, weights), kept over reloads.
        self.round_robin: dict[tuple, list[int]] = {}


def check_at(at) -> None:
    """Refuse an ``at`` that is not a time, whatever the rest of the call."""
    if at is None or isinstance(at, _dt.datetime):
        return
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        if not math.isfinite(at):
            raise ValueError(f"at: expected a finite POSIX time, got {at!r}")
        return
    raise TypeError(f"at: expected a datetime, a POSIX time or None, got {type(at).__name__}")


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
        return f"{day.isoformat()} {('Mon','Tue','Wed','Thu','Fri','Sat','Sun')[self.weekday]} {self.minute // 60:02d}:{self.minute % 60:02d}"


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
        if self.days is not None:
            workday = moment.workday if self.uses_calendar else False
            if not self.days.matches(moment.weekday, workday):
                return "day"
        if self.time is not None and not self.time.matches(moment.minute):
            return "time"
        return None


class CompiledCap:
    __slots__ = ("key", "metric", "per", "limit", "scope", "prompt", "channel", "label")

    def __init__(self, number: str, cap: Cap, occurrence: int, prompt: str) -> None:
        # Keys name the cap by what it counts, not by its place in the list, so
        # a reload that leaves a cap alone keeps its count.
        self.key = f"tel400:cap:{number}:{cap.metric}:{cap.per}:{cap.scope}:{cap.channel}:{occurrence}"
        self.metric = cap.metric
        self.per = cap.per
        self.limit = cap.limit_units
        self.scope = cap.scope
        self.prompt = prompt
        self.channel = cap.channel
        self.label = f"{cap.metric}/{cap.per}/{cap.scope}" + (f"/{cap.channel}" if cap.channel != "any" else "")

    def applies(self, channel: str) -> bool:
        return self.channel == "any" or self.channel == channel

    def check(self, moment: Moment, scope_key: str) -> CapCheck:
        key = self.key if self.scope == "number" else f"{self.key}:{scope_key}"
        return CapCheck(key, moment.period(self.per), self.limit, 1 if self.metric == "calls" else 0, PERIOD_TTL_S[self.per])


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


class CompiledPlan:
    __slots__ = (
        "number", "zone", "calendar", "blacklist", "reject_unknown", "pin_check", "rules",
        "default", "caps", "prompts", "fail_open", "tariff", "pin_key",
    )

    def __init__(self, plan: NumberPlan, plans: PlanSet, old_rr: dict, new_rr: dict) -> None:
        self.number = plan.number
        self.zone = zoneinfo.ZoneInfo(plan.timezone)
        self.calendar = plans.calendar.merged(plan.calendar).build()
        self.blacklist = Blacklist(plans.blacklist + plan.blacklist)
        self.reject_unknown = plan.reject_unknown_callers
        self.pin_check = pins.PinCheck(plan.pin, plan.pin_hash) if plan.has_pin else None
        self.pin_key = f"tel400:pin:{plan.number}:"
        prompts = {key: key for key in ("unknown_number", "blacklisted", "bad_caller", "enter_pin", "bad_pin", "pin_locked", "closed", "limit_reached", "backend_error")}
        prompts.update(plans.prompts)
        prompts.update(plan.prompts)
        self.prompts = prompts
        self.fail_open = plan.on_backend_error == "allow"
        self.tariff = plan.tariff
        self.rules = tuple(
            CompiledRule(rule, self._action(plan, rule.action, rule.name, old_rr, new_rr))
            for rule in plan.rules
        )
        self.default = self._action(plan, plan.default, None, old_rr, new_rr)
        seen: Counter[tuple] = Counter()
        caps = []
        for cap in plan.caps:
            ident = (cap.metric, cap.per, cap.scope, cap.channel)
            seen[ident] += 1
            prompt = prompts["limit_reached"] if cap.prompt is None else cap.prompt
            caps.append(CompiledCap(plan.number, cap, seen[ident], prompt))
        self.caps = tuple(caps)

    def _action(self, plan: NumberPlan, action: Action, rule: str | None, old_rr: dict, new_rr: dict) -> CompiledAction:
        if action.kind == "reject":
            if rule is None:
                reason, prompt = "closed", action.prompt or self.prompts["closed"]
            else:
                reason, prompt = "rule_reject", action.prompt or self.prompts["closed"]
            return CompiledAction(action, reason=reason, prompt=prompt)
        selector = None
        if action.kind == "bridge":
            targets = [t.to for t in action.targets]
            weights = [t.weight for t in action.targets]
            state = None
            if action.strategy == "round_robin":
                ident = (plan.number, rule, tuple(targets), tuple(weights))
                state = old_rr.get(ident) or [0] * len(targets)
                new_rr[ident] = state
            selector = make_selector(action.strategy, targets, weights, state)
        return CompiledAction(action, reason="ok", prompt=None, selector=selector)


class Engine:
    """A compiled plan set that routes calls.  Build with :func:`compile_engine`."""

    def __init__(self, plans: PlanSet, prefixes: PrefixTable, shared: Shared) -> None:
        self.plans = plans
        self.prefixes = prefixes
        self.shared = shared
        carried_rr: dict[tuple, list[int]] = {}
        compiled: dict[str, CompiledPlan] = {}
        for plan in plans.numbers:
            compiled[plan.number] = CompiledPlan(plan, plans, shared.round_robin, carried_rr)
        # SMS to a 400 number arrives as 10657 + the number.
        for number, cp in list(compiled.items()):
            compiled.setdefault(SMS_ACCESS_PREFIX + number, cp)
        self.by_number = compiled
        global_prompts = {"unknown_number": "unknown_number"}
        global_prompts.update(plans.prompts)
        self.unknown_prompt = global_prompts["unknown_number"]
        # Only now that every plan compiled: a failed reload keeps the old state.
        shared.round_robin = carried_rr

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
        plan = self.by_number.get(dialed_n) if dialed_n else None
        shared = self.shared

        def done(action, targets, prompt, reason, rule, number_label):
            if not dry_run:
                shared.decisions[(number_label, action, reason)] += 1
            number = plan.number if plan is not None else dialed_n
            return _new_decision(Decision, (action, targets, prompt, reason, rule, province, number, caller_n,
                                            channel, call_id, tuple(trace) if trace is not None else None))

        if plan is None:
            if trace is not None:
                trace.append(Step("number", None, False, f"no plan for {dialed!r}"))
            return done("reject", _EMPTY, self.unknown_prompt, "unknown_number", None, "unknown")
        number = plan.number
        if trace is not None:
            trace.append(Step("number", None, True, f"plan {number}; caller {caller_n or 'withheld'} in {province or 'unknown province'}"))

        blocked = plan.blacklist.matches(caller_n)
        if blocked is not None:
            if trace is not None:
                trace.append(Step("blacklist", None, False, f"caller matches {blocked}"))
            return done("reject", _EMPTY, plan.prompts["blacklisted"], "blacklisted", None, number)
        if caller_n is None and plan.reject_unknown:
            if trace is not None:
                trace.append(Step("caller", None, False, f"no usable caller number ({caller!r}) and reject_unknown_callers"))
            return done("reject", _EMPTY, plan.prompts["bad_caller"], "bad_caller", None, number)

        moment = Moment(at, plan.zone, plan.calendar)

        if plan.pin_check is not None:
            outcome = self._pin(plan, caller_n, pin, moment, trace, dry_run)
            if outcome is not None:
                reason, action = outcome
                prompt = plan.prompts["enter_pin" if action == "collect_pin" else reason]
                return done(action, _EMPTY, prompt, reason, None, number)

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
            return done(action.kind, _EMPTY, action.prompt, action.reason, rule_name, number)

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
                        return done("reject", _EMPTY, plan.prompts["backend_error"], "backend_error", rule_name, number)
                if trace is not None:
                    self._trace_caps(trace, caps, checks, over)
                if over >= 0:
                    return done("reject", _EMPTY, caps[over].prompt, "cap_exceeded", rule_name, number)

        if call_id is not None and not dry_run:
            shared.calls.remember(call_id, plan, caller_n, province_index, targets, moment, channel)
        return done(action.kind, targets, None, "ok", rule_name, number)

    def _pin(self, plan: CompiledPlan, caller_n, pin, moment: Moment, trace, dry_run):
        """None when the caller may go on; else (reason, action)."""
        counters = self.shared.counters
        key = plan.pin_key + (caller_n or "anonymous")
        window = pins.LOCKOUT_WINDOW_S
        try:
            failures = counters.pin_failures(key, moment.ts, window)
        except BackendError as exc:
            # Without the failure count a lockout cannot be enforced; the
            # PIN itself is still checked, so fail open or closed by policy.
            if self._backend_failed(plan, exc, trace, dry_run) == -2:
                return ("backend_error", "reject")
            failures = 0
        if failures >= pins.LOCKOUT_FAILURES:
            if trace is not None:
                trace.append(Step("pin", None, False, f"locked: {failures} wrong PINs within the hour"))
            return ("pin_locked", "reject")
        if pin is None:
            if trace is not None:
                trace.append(Step("pin", None, False, "PIN required"))
            return ("pin_required", "collect_pin")
        if plan.pin_check(pin):
            if failures and not dry_run:
                try:
                    counters.clear_pin_failures(key)
                except BackendError as exc:
                    self._backend_failed(plan, exc, trace, dry_run)
            if trace is not None:
                trace.append(Step("pin", None, True, "PIN accepted"))
            return None
        if dry_run:
            failures += 1
        else:
            try:
                failures = counters.add_pin_failure(key, moment.ts, window)
            except BackendError as exc:
                # The failure could not be counted towards a lockout.
                if self._backend_failed(plan, exc, trace, dry_run) == -2:
                    return ("backend_error", "reject")
                failures += 1
        if failures >= pins.LOCKOUT_FAILURES:
            if trace is not None:
                trace.append(Step("pin", None, False, f"wrong PIN ({failures}); caller locked out for the hour"))
            return ("pin_locked", "reject")
        if trace is not None:
            trace.append(Step("pin", None, False, f"wrong PIN ({failures} of {pins.LOCKOUT_FAILURES})"))
        return ("bad_pin", "reject")

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

    # -- call end ---------------------------------------------------------

    def charge(self, record, duration_s: float, target: str | None) -> Charge:
        """Charge a finished call's minutes and cost to its routing period."""
        plan: CompiledPlan = record.plan
        tariff = plan.tariff
        increment = tariff.increment_s if tariff is not None else 60
        billed = math.ceil(duration_s / increment) * increment if duration_s > 0 else 0
        if target is None or target not in record.targets:
            target = record.targets[0] if record.targets else None
        target_n = normalize_or_none(target) if target is not None else None
        target_province = self.prefixes.index_of_key(national_key(target_n)) if target_n else 0
        long_distance = record.province == 0 or target_province != record.province
        cost = None
        if tariff is not None:
            rate = tariff.long_distance if long_distance else tariff.local
            cost = (rate * billed / 60).quantize(Decimal("0.000001"), rounding=ROUND_CEILING)
        counters = self.shared.counters
        for cap in plan.caps:
            if cap.metric == "calls" or not cap.applies(record.channel):
                continue
            amount = billed if cap.metric == "minutes" else to_units("cost", cost)
            if amount:
                check = cap.check(record.moment, record.caller or "anonymous")
                try:
                    counters.add(check.key, check.period, amount, check.ttl_s)
                except BackendError as exc:
                    self._backend_failed(plan, exc, None, False)
        return Charge(
            record.call_id, plan.number, record.caller, provinces.CODES[record.province],
            target, record.moment.ts, duration_s, billed, cost, long_distance,
        )


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
        day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[moment.weekday]
        # Only a rule that asked the calendar has an answer to show (and
        # asking it again here must not count a second fallback lookup).
        extra = f" ({'workday' if moment.workday else 'holiday'})" if rule.uses_calendar else ""
        return f"day {day}{extra} not in {rule.days.text}"
    return f"time {moment.minute // 60:02d}:{moment.minute % 60:02d} not in {rule.time.text}"
