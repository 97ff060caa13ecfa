"""Answering an incoming SMS: opt-out words, keyword auto-replies, their guards; admitting parts sent.

One implementation for both engines: an engine supplies the compiled entry
of the dialed number (to find it, and to know when it changed) and
``route()``; what answering needs beyond routing is compiled once per
number by :meth:`tel400.compiler.Compiler.compile_sms` and kept in a
bounded cache (:class:`SmsPrograms`).  :meth:`tel400.Router.answer_sms` and
:meth:`tel400.Router.admit_sms` call :func:`answer` and :func:`admit`.

The order of an answer (docs/sms.md, "Auto-replies"):

1. dialed number unknown -> ``unknown_number``;
2. sender on the number's or the global blacklist -> ``blacklisted``, nothing sent;
3. an opt-out or opt-in word (exactly, after :func:`tel400.smstext.fold`)
   -> kind ``opt_out``/``opt_in`` with the rendered confirmation;
4. the first auto-reply whose keyword matches and whose conditions hold ->
   kind ``reply`` (and the message routed onward too when it says so);
   none -> kind ``none``, ``no_match``, the message routed onward as today;
5. a reply is then guarded: none to a sender that is not a person's number
   (``not_replied``), at most ``reply_limit`` per sender per
   ``reply_window_s`` (``flood_limited``), and its parts within the number's
   SMS caps (``cap_exceeded``).  The flood guard and the caps are checked and
   counted in one atomic step of the counter backend: a reply refused by a
   cap does not use up the sender's allowance.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections import OrderedDict
from decimal import Decimal

import attrs

from . import limits, provinces, smstext
from ._engine_py import Moment, _describe_failure, first_failure
from ._numbers_py import national_key, normalize_or_none
from .billing import round_cost
from .calltime import check_at
from .compiler import CompiledSms, lookup_plan
from .counters import CapCheck
from .decision import Decision
from .exceptions import BackendError
from .numbers import kind_of
from .outcomes import SMS_ACCESS_PREFIX
from .plans import to_units

#: What an answer asks the adapter to do.
SMS_KINDS = ("reply", "opt_out", "opt_in", "none")
#: Why an answer is what it is (``ok``: a reply to send).
SMS_REASONS = ("ok", "unknown_number", "blacklisted", "no_match", "not_replied", "flood_limited",
               "cap_exceeded", "backend_error")
#: Why parts were or were not admitted.
ADMISSION_REASONS = ("ok", "cap_exceeded", "unknown_number", "backend_error")
#: Senders an automatic message may go to (tel400.numbers.kind_of): people's numbers.
REPLYABLE_KINDS = frozenset(("mobile", "fixed"))
WEEKDAYS_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")


@attrs.frozen
class SmsAnswer:
    """What to do with one incoming SMS (:meth:`tel400.Router.answer_sms`).

    ``kind``: what the message asked (``reply``, ``opt_out``, ``opt_in``,
    ``none``); ``reply``: the text to send back, ``None`` for nothing (a
    guard may stop a reply: ``reason`` says which); ``parts``: the reply's
    SMS parts (0 without a reply); ``rule``: the auto-reply's name;
    ``route``: the :class:`~tel400.Decision` of routing the message onward
    (``route(channel="sms")``), ``None`` when it does not go onward;
    ``province``: the sender's; ``trace``: readable lines when explained.
    """

    number: str | None
    kind: str
    reply: str | None
    parts: int
    rule: str | None
    reason: str
    route: Decision | None
    province: str | None
    trace: tuple[str, ...] = ()


@attrs.frozen
class SmsAdmission:
    """Whether parts to send were admitted by the number's SMS caps (:meth:`tel400.Router.admit_sms`).

    ``cost`` is what they cost at the tariff's ``sms_part`` (0 without one).
    """

    admitted: bool
    reason: str
    cost: Decimal


class SmsPrograms:
    """Compiled SMS programs by number, for the engine entry each was made from; at most ``size``.

    An entry is current while the engine routes the number by the same entry
    object (a reload or update replaces it), so a plan change is seen at
    once.  The least recently used is dropped first.  Thread-safe.
    """

    def __init__(self, size: int = limits.SMS_PROGRAMS) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._by_number: OrderedDict[str, tuple[object, CompiledSms]] = OrderedDict()

    def get(self, engine, entry, plan_source) -> CompiledSms | None:
        """The program of ``entry`` (an entry of ``engine.by_number``), compiled from the plan
        ``plan_source`` gives when not kept; ``None`` if the plan is gone."""
        number = entry.number
        with self._lock:
            kept = self._by_number.get(number)
            if kept is not None and kept[0] is entry:
                self._by_number.move_to_end(number)
                return kept[1]
        plan = plan_source(number)
        if plan is None:
            return None
        program = engine.compiler.compile_sms(plan)
        with self._lock:
            self._by_number[number] = (entry, program)
            self._by_number.move_to_end(number)
            while len(self._by_number) > self.size:
                self._by_number.popitem(last=False)
        return program

    def __len__(self) -> int:
        return len(self._by_number)


# -- admitting parts ----------------------------------------------------------------


def check_parts(parts) -> int:
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= smstext.MAX_PARTS:
        raise ValueError(f"parts: expected a whole number from 1 to {smstext.MAX_PARTS}, got {parts!r}")
    return parts


def part_checks(program: CompiledSms, recipient_key: str, parts: int, moment: Moment) -> list[CapCheck]:
    """The counter checks of ``parts`` sent to ``recipient_key``: every ``sms`` cap but minutes.

    A calls cap counts each part as one, a cost cap the parts at the
    tariff's ``sms_part`` (a free part checks nothing).  The checks admit
    while the count plus what is added stays within the limit, so a cap of
    N admits N parts, never N + parts - 1.
    """
    checks = []
    for cap in program.caps:
        if cap.metric == "calls":
            amount = parts
        elif cap.metric == "cost" and program.sms_part:
            amount = to_units("cost", cost_of(program, parts))
        else:
            continue  # minutes caps ignore SMS; a free part costs nothing
        checks.append(CapCheck(cap.key_for(recipient_key), moment.period(cap.per), max(cap.limit - amount + 1, 0),
                               amount, cap.ttl_s))
    return checks


def cost_of(program: CompiledSms, parts: int) -> Decimal:
    """What ``parts`` cost, rounded up to the millionth as a call's cost is (tel400.billing.round_cost)."""
    return round_cost(program.sms_part * parts) if program.sms_part else Decimal(0)


def admit(router, number, recipient, parts, at=None) -> SmsAdmission:
    """:meth:`tel400.Router.admit_sms` (its docstring says what)."""
    check_parts(parts)
    check_at(at)
    program = _program(router, normalize_or_none(number))
    if program is None:
        return SmsAdmission(False, "unknown_number", Decimal(0))
    moment = Moment(at, program.zone, program.calendar)
    checks = part_checks(program, normalize_or_none(recipient) or "anonymous", parts, moment)
    cost = cost_of(program, parts)
    if not checks:
        return SmsAdmission(True, "ok", cost)
    try:
        over = router.counters.acquire(checks)
    except BackendError:
        return _backend_failed(router, program, cost, dry_run=False)
    return SmsAdmission(True, "ok", cost) if over < 0 else SmsAdmission(False, "cap_exceeded", cost)


def _backend_failed(router, program: CompiledSms, cost: Decimal, *, dry_run: bool) -> SmsAdmission:
    policy = "allow" if program.fail_open else "reject"
    if not dry_run:
        router._shared.backend_errors[policy] += 1
    return SmsAdmission(True, "ok", cost) if program.fail_open else SmsAdmission(False, "backend_error", cost)


def _program(router, number_n: str | None) -> CompiledSms | None:
    engine = router._engine
    entry = lookup_plan(engine.by_number, number_n)
    if entry is None:
        return None
    return router._sms_programs.get(engine, entry, router._shared.plan_source)


# -- answering ----------------------------------------------------------------------


def reply_values(number: str, sender_n: str | None, province: str | None, moment: Moment) -> dict[str, str]:
    """The values of :data:`tel400.smstext.REPLY_FIELDS` for one message."""
    day = _dt.date.fromordinal(moment.ordinal)
    return {
        "number": number,
        "caller": sender_n or "",
        "province": provinces.CHINESE_NAMES.get(province, "") if province else "",
        "date": day.isoformat(),
        "time": f"{moment.minute // 60:02d}:{moment.minute % 60:02d}",
        "weekday": WEEKDAYS_ZH[moment.weekday],
    }


def flood_check(program: CompiledSms, sender_n: str, moment: Moment) -> CapCheck:
    """The per-sender reply allowance: ``reply_limit`` replies per fixed window of ``reply_window_s``."""
    window = program.reply_window_s
    key = f"tel400:{{{program.number}}}:smsreply:{window}:{sender_n}"
    return CapCheck(key, int(moment.ts // window), program.reply_limit, 1, window + 60)


def answer(router, dialed, sender, text, at=None, explain=False) -> SmsAnswer:
    """:meth:`tel400.Router.answer_sms` (its docstring says what)."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string, got {type(text).__name__}")
    check_at(at)
    trace: list[str] | None = [] if explain else None
    sender_n = normalize_or_none(sender)
    province = provinces.CODES[router.prefixes.index_of_key(national_key(sender_n))] if sender_n else None
    province_index = provinces.INDEX.get(province, 0) if province else 0
    dialed_n = normalize_or_none(dialed)
    program = _program(router, dialed_n)

    def done(kind, reply, parts, rule, reason, route):
        if not explain:
            router._sms_counts[reason] = router._sms_counts.get(reason, 0) + 1
        number = program.number if program is not None else dialed_n
        return SmsAnswer(number, kind, reply, parts, rule, reason, route, province,
                         tuple(trace) if trace is not None else ())

    def onward():
        if explain:
            return router.explain(dialed, sender, at, channel="sms")
        return router.route(dialed, sender, at, channel="sms")

    if program is None:
        if trace is not None:
            trace.append(f"no plan for {dialed!r}")
        return done("none", None, 0, None, "unknown_number", None)
    number = program.number
    if trace is not None:
        trace.append(f"number {number}; sender {sender_n or 'withheld'} in {province or 'unknown province'}")
    blocked = program.blacklist.matches(sender_n)
    if blocked is not None:
        if trace is not None:
            trace.append(f"sender matches blacklist entry {blocked}: no answer, not routed")
        return done("none", None, 0, None, "blacklisted", None)

    folded = smstext.fold(text[:limits.SMS_MATCH_CHARS])
    if trace is not None:
        trace.append(f"text folded to {folded!r}")
    moment = Moment(at, program.zone, program.calendar)
    route = None
    rule = None
    if folded in program.opt_out or folded in program.opt_in:
        kind = "opt_out" if folded in program.opt_out else "opt_in"
        template = program.opt_out_reply if kind == "opt_out" else program.opt_in_reply
        if trace is not None:
            trace.append(f"{kind.replace('_', '-')} word {folded!r}: the adapter records it and confirms "
                         "only when its store says the state changed")
    else:
        chosen = None
        for reply in program.replies:
            keyword = reply.matches(folded)
            if keyword is None:
                if trace is not None:
                    trace.append(f"reply {reply.name!r}: no keyword matches ({reply.match})")
                continue
            failed = first_failure(reply.conditions, "sms", province_index, moment)
            if failed is None:
                chosen = reply
                if trace is not None:
                    trace.append(f"reply {reply.name!r}: keyword {keyword!r} ({reply.match}) matched "
                                 f"at {moment.describe()}")
                break
            if trace is not None:
                trace.append(f"reply {reply.name!r}: keyword {keyword!r} matched but "
                             + _describe_failure(reply.conditions, failed, "sms", province, moment))
        if chosen is None:
            if trace is not None:
                trace.append("no auto-reply matched: the message is routed onward")
            return done("none", None, 0, None, "no_match", onward())
        kind, template, rule = "reply", chosen.template, chosen.name
        if chosen.route_onward:
            route = onward()
            if trace is not None:
                trace.append("route_onward: the message is routed onward too")

    text_out = smstext.render(template, reply_values(number, sender_n, province, moment))
    parts = smstext.count_parts(text_out)

    sender_kind = kind_of(sender_n) if sender_n else None
    if (sender_kind not in REPLYABLE_KINDS or sender_n == number
            or sender_n == SMS_ACCESS_PREFIX + number):
        if trace is not None:
            trace.append(f"sender {sender_n or repr(sender)} is not a person's number "
                         f"({sender_kind or 'not a number'}): no reply")
        return done(kind, None, 0, rule, "not_replied", route)

    checks = [flood_check(program, sender_n, moment)] + part_checks(program, sender_n, parts, moment)
    try:
        over = router.counters.acquire(checks, dry_run=explain)
    except BackendError as exc:
        # The flood guard fails closed whatever on_backend_error says: a
        # counter backend that is down or full must not let a bot draw
        # unlimited replies (the policy governs the caps of admit_sms only).
        # The reply is one of the guarded things, so it is not sent.
        if not explain:
            router._shared.backend_errors["reject"] += 1
        if trace is not None:
            trace.append(f"counter backend failed ({exc}): the flood guard cannot count, so no reply "
                         f"(whatever on_backend_error says)")
        return done(kind, None, 0, rule, "backend_error", route)
    if over == 0:
        if trace is not None:
            trace.append(f"flood guard: {program.reply_limit} replies to this sender in this "
                         f"{program.reply_window_s} s window already: no reply (and no notice)")
        return done(kind, None, 0, rule, "flood_limited", route)
    if over > 0:
        if trace is not None:
            trace.append(f"the reply's {parts} part(s) would pass an sms cap: no reply")
        return done(kind, None, 0, rule, "cap_exceeded", route)
    if trace is not None:
        trace.append(f"reply of {parts} part(s){' (counted)' if not explain else ' (dry run: nothing counted)'}")
    return done(kind, text_out, parts, rule, "ok", route)
