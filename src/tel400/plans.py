"""Routing plans: the schema of design.md as frozen attrs classes.

:meth:`PlanSet.from_dict` validates a plan tree (from TOML, YAML, JSON or
Python) and raises :class:`~tel400.PlanError` naming the file, the 400
number, the rule and the field of the first mistake, with what was expected.
Everything a plan accepts is checked here, once, so that the router can
trust its input: in particular no target, prompt, queue or room can carry
characters that SIP or the Event Socket would read as syntax.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
import msgspec

from . import limits, pins, provinces, smstext
from ._show import show as _show
from ._numbers_py import normalize
from .exceptions import NumberError, PlanError, SegmentError
from .timespec import DateRanges, Days, TimeSlots, parse_date_list, parse_dates, parse_days, parse_time
from .workdays import OfficialCalendar

ACTIONS = ("bridge", "reject", "queue", "conference")
CONNECTING_ACTIONS = frozenset({"bridge", "queue", "conference"})
STRATEGIES = ("weighted", "round_robin", "sequential", "sticky")
CHANNELS = ("voice", "sms", "any")
METRICS = ("calls", "minutes", "cost")
PERIODS = ("hour", "day", "week", "month")
SCOPES = ("number", "caller")
BACKEND_POLICIES = ("allow", "reject")
#: Prompt names a plan's ``prompts`` table may rename, each the default
#: prompt of the decision of the same name (``limit_reached`` for caps,
#: ``enter_pin`` for ``collect_pin``).
PROMPT_KEYS = (
    "unknown_number",
    "blacklisted",
    "bad_caller",
    "enter_pin",
    "bad_pin",
    "pin_locked",
    "closed",
    "limit_reached",
    "backend_error",
)
DEFAULT_TIMEZONE = "Asia/Shanghai"
MAX_WEIGHT = limits.MAX_WEIGHT

# A target is a number (digits, optionally led by + * #) or user@host[:port];
# nothing else, so that no dial string, SIP header or ESL command can be
# smuggled through it (| , { } are FreeSWITCH dial-string syntax).
_NUMBER_TARGET = re.compile(r"\A[+*#]?[0-9*#]{1,32}\Z")
_URI_TARGET = re.compile(r"\A[A-Za-z0-9._-]{1,64}@[A-Za-z0-9._-]{1,253}(?::([0-9]{1,5}))?\Z")
_PROMPT = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
_NAME = re.compile(r"\A[A-Za-z0-9_.@-]{1,64}\Z")  # queues and rooms
_RULE_NAME = re.compile(r"\A[\w.:-]{1,64}\Z")  # \w: letters of any script, digits, _
# An IANA zone name: Area/Location parts, no dots (no ../, no tzdata's
# zone.tab), short (the longest real one has 32 characters).
_ZONE_NAME = re.compile(r"\A[A-Za-z0-9_+-]{1,32}(?:/[A-Za-z0-9_+-]{1,32}){0,2}\Z")

# --- value objects -----------------------------------------------------------


@attrs.frozen
class Target:
    """A destination: a number or ``user@host[:port]``, with a share weight."""

    to: str
    weight: int = 1


@attrs.frozen
class Action:
    """What a rule (or a plan's default) does with a call."""

    kind: str = "reject"
    targets: tuple[Target, ...] = ()
    strategy: str = "weighted"
    queue: str | None = None
    room: str | None = None
    prompt: str | None = None

    @property
    def connects(self) -> bool:
        return self.kind in CONNECTING_ACTIONS


@attrs.frozen
class Rule:
    """Conditions (all must hold; none given matches every call) and an action."""

    name: str
    action: Action
    provinces: frozenset[str] | None = None
    days: Days | None = None
    time: TimeSlots | None = None
    dates: DateRanges | None = None
    channel: str = "any"


@attrs.frozen
class Cap:
    """At most ``limit`` calls, minutes or cost per calendar period."""

    metric: str
    per: str
    limit: Decimal
    scope: str = "number"
    prompt: str | None = None  # None: the plan's limit_reached prompt
    channel: str = "any"

    @property
    def limit_units(self) -> int:
        """The limit in counter units: calls, billed seconds, or micro-units of cost."""
        return to_units(self.metric, self.limit)


def to_units(metric: str, amount: Decimal) -> int:
    """Counter units of an amount: calls as is, minutes in seconds, cost in millionths."""
    if metric == "calls":
        return int(amount)
    if metric == "minutes":
        return int(amount * 60)
    return int(amount * 1_000_000)


def from_units(metric: str, units: int) -> Decimal:
    if metric == "calls":
        return Decimal(units)
    if metric == "minutes":
        return Decimal(units) / 60
    return Decimal(units) / 1_000_000


@attrs.frozen
class Tariff:
    """Per-minute rates (currency units), the billing increment, and the price of one SMS part sent."""

    local: Decimal
    long_distance: Decimal
    increment_s: int = 60
    sms_part: Decimal = Decimal(0)


MATCH_MODES = ("exact", "prefix", "contains")
#: Words that put a sender on a number's SMS opt-out list, unless the plan
#: says otherwise (``[numbers.sms] opt_out_words``); compared after fold.
DEFAULT_OPT_OUT_WORDS = ("TD", "退订", "T", "STOP", "取消")
DEFAULT_OPT_IN_WORDS = ("订阅", "START")
DEFAULT_OPT_OUT_REPLY = "您已退订{number}的短信，不会再收到自动回复。回复“订阅”可恢复。"
DEFAULT_OPT_IN_REPLY = "您已重新订阅{number}的短信。回复“TD”可退订。"


@attrs.frozen
class SmsReply:
    """A keyword auto-reply: keywords (as written; compared after fold), how they match,
    the reply template, the rule conditions it takes, and whether the message also goes onward."""

    name: str
    keywords: tuple[str, ...]
    reply: str
    match: str = "exact"
    provinces: frozenset[str] | None = None
    days: Days | None = None
    time: TimeSlots | None = None
    dates: DateRanges | None = None
    route_onward: bool = False


@attrs.frozen
class SmsSettings:
    """A number's opt-out and opt-in words and confirmations, and its per-sender reply limit."""

    opt_out_words: tuple[str, ...] = DEFAULT_OPT_OUT_WORDS
    opt_in_words: tuple[str, ...] = DEFAULT_OPT_IN_WORDS
    opt_out_reply: str = DEFAULT_OPT_OUT_REPLY
    opt_in_reply: str = DEFAULT_OPT_IN_REPLY
    reply_limit: int = 5
    reply_window_s: int = 600


DEFAULT_SMS = SmsSettings()


@attrs.frozen
class CalendarSpec:
    """An operator's additions to the official calendar."""

    holidays: tuple[_dt.date, ...] = ()
    workdays: tuple[_dt.date, ...] = ()
    #: Years these lists describe completely (a State Council notice copied
    #: in): no fallback warning for them.
    years: tuple[int, ...] = ()

    def merged(self, other: CalendarSpec) -> CalendarSpec:
        return CalendarSpec(
            tuple(sorted(set(self.holidays) | set(other.holidays))),
            tuple(sorted(set(self.workdays) | set(other.workdays))),
            tuple(sorted(set(self.years) | set(other.years))),
        )

    def build(self) -> OfficialCalendar:
        return OfficialCalendar(self.holidays, self.workdays, self.years)


@attrs.frozen
class NumberPlan:
    """Everything about one 400 number."""

    number: str
    rules: tuple[Rule, ...] = ()
    default: Action = Action()
    timezone: str = DEFAULT_TIMEZONE
    pin: str | None = attrs.field(default=None, repr=False)
    pin_hash: str | None = attrs.field(default=None, repr=False)
    blacklist: tuple[str, ...] = ()
    caps: tuple[Cap, ...] = ()
    prompts: tuple[tuple[str, str], ...] = ()
    reject_unknown_callers: bool = False
    on_backend_error: str = "allow"
    tariff: Tariff | None = None
    calendar: CalendarSpec = CalendarSpec()
    sms_replies: tuple[SmsReply, ...] = ()
    sms: SmsSettings = DEFAULT_SMS

    @property
    def has_pin(self) -> bool:
        return self.pin is not None or self.pin_hash is not None


@attrs.frozen
class PlanSet:
    """All numbers a router serves, plus what applies to every number."""

    numbers: tuple[NumberPlan, ...] = ()
    blacklist: tuple[str, ...] = ()
    prompts: tuple[tuple[str, str], ...] = ()
    calendar: CalendarSpec = CalendarSpec()
    segments: str | None = None
    source: str | None = attrs.field(default=None, eq=False)

    def get(self, number: str) -> NumberPlan | None:
        """The plan of a number (any written form), or ``None``.  O(numbers)."""
        try:
            wanted = normalize(number)
        except NumberError:
            return None
        for plan in self.numbers:
            if plan.number == wanted:
                return plan
        return None

    @classmethod
    def from_dict(
        cls, obj: object, *, source: str | None = None, base_dir: str | None = None,
        refused: dict[str, PlanError] | None = None,
    ) -> PlanSet:
        """Validate a plan tree and build the plan set.

        Args:
            obj: a mapping with ``numbers`` (a list of number tables) and
                optionally ``blacklist``, ``prompts``, ``calendar`` and
                ``segments`` that apply to every number.
            source: where the tree came from, for error messages.
            base_dir: directory that a relative ``segments`` path is read from.
            refused: if given, a number whose plan is invalid is left out of
                the plan set and its error put here, keyed by the number (or
                ``numbers[i]`` when the number itself is unreadable), instead
                of failing the whole set: how stores load, so that one bad
                number cannot keep every other from being routed.  Mistakes
                outside the numbers still raise.

        Raises:
            PlanError: on the first mistake, naming where it is.

        Cost: O(size of the tree); every list is bounded (:mod:`tel400.limits`).
        """
        return _Parser(source).plan_set(obj, base_dir, refused)

    def to_dict(self) -> dict[str, Any]:
        """The plan set as a plain tree that :meth:`from_dict` reads back."""
        return _dump_plan_set(self)

    def with_number(self, plan: NumberPlan) -> PlanSet:
        """A copy with ``plan`` added or replacing the plan of the same number."""
        others = tuple(p for p in self.numbers if p.number != plan.number)
        return attrs.evolve(self, numbers=others + (plan,))

    def without_number(self, number: str) -> PlanSet:
        """A copy without the plan of ``number``."""
        wanted = normalize(number)
        return attrs.evolve(self, numbers=tuple(p for p in self.numbers if p.number != wanted))


def validate_number(raw: object, settings: PlanSet, *, source: str | None = None, index: int = 0) -> NumberPlan:
    """Validate one number's plan tree against the settings it will be routed with.

    Args:
        raw: one number table (what ``numbers[i]`` of a plan tree holds).
        settings: the top-level settings (a :class:`PlanSet`; its numbers are
            not looked at): the number's calendar must agree with theirs.
        source: where the tree came from, for error messages.
        index: its place in a list of numbers, for error messages.

    Raises:
        PlanError: naming the number, the rule and the field of the first mistake.

    Cost: O(this plan); nothing else is read.  ~3 µs a rule on the compiled fast
    path (docs/performance.md, "Validation").
    """
    return _Parser(source).checked_number_plan(raw, index, settings.calendar)


def validate_number_json(
    data: bytes | str, settings: PlanSet, *, source: str | None = None, index: int = 0
) -> NumberPlan:
    """:func:`validate_number` of one number's plan as JSON text (how stores keep it).

    Decoded by msgspec (~2x faster than :func:`json.loads`); a text msgspec
    refuses but :func:`json.loads` reads (``NaN``, a lone surrogate escape,
    UTF-16) is read by the latter, so the result is always what
    ``validate_number(json.loads(data), ...)`` gives.

    Raises:
        PlanError: invalid JSON, or the first mistake of the plan, naming where it is.

    Cost: O(len(data)).
    """
    return validate_number(_json_tree(data, source), settings, source=source, index=index)


def blacklist_entry(text: str) -> str:
    """One blacklist entry as plans keep it: a normalised number, a prefix like ``1710*``, or ``anonymous``.

    The same check a plan's ``blacklist`` gets, for one entry typed or
    imported on its own (the web portal's blacklist page).

    Raises:
        PlanError: the entry is neither (its field is ``blacklist[0]``).
    """
    return _Parser(None).blacklist([text], "blacklist", 1)[0]


_JSON = msgspec.json.Decoder()


def _json_tree(data: bytes | str, source: str | None) -> object:
    try:
        return _JSON.decode(data)
    except msgspec.DecodeError:
        pass
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise PlanError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", source=source) from None
    except ValueError as exc:  # undecodable bytes, an integer of over 4300 digits
        raise PlanError(f"invalid JSON: {exc}", source=source) from None


def validate_settings(raw: object, *, source: str | None = None, base_dir: str | None = None) -> PlanSet:
    """Validate the top-level settings of a plan tree (``blacklist``, ``prompts``,
    ``calendar``, ``segments``) into a :class:`PlanSet` with no numbers; a
    ``numbers`` key is ignored.

    Raises:
        PlanError: naming the field of the first mistake.
    """
    if isinstance(raw, Mapping) and "numbers" in raw:
        raw = {k: v for k, v in raw.items() if k != "numbers"}
    return _Parser(source).plan_set(raw, base_dir)


# --- parsing -----------------------------------------------------------------


class _Parser:
    """Walks a plan tree, keeping track of where it is for error messages."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.number: str | None = None
        self.rule: str | None = None

    def error(self, field: str | None, message: str) -> PlanError:
        return PlanError(message, source=self.source, number=self.number, rule=self.rule, field=field)

    def table(self, obj: object, field: str | None, allowed: tuple[str, ...], what: str) -> dict:
        if not isinstance(obj, Mapping):
            raise self.error(field, f"expected {what} as a table, got {_show(obj)}")
        for key in obj:
            if key not in allowed:
                name = key if isinstance(key, str) and len(key) <= 64 else _show(key, 40)
                raise self.error(
                    f"{field}.{name}" if field else name,
                    f"unknown field; expected one of {', '.join(allowed)}",
                )
        return dict(obj)

    def choice(self, value: object, field: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.error(field, f"got {_show(value)}, expected one of {', '.join(options)}")
        return value  # type: ignore[return-value]

    def string(self, value: object, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {_show(value)}")
        return value

    def boolean(self, value: object, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(field, f"expected true or false, got {_show(value)}")
        return value

    def decimal(self, value: object, field: str, *, maximum: int, minimum: Decimal = Decimal(0)) -> Decimal:
        """A decimal from ``minimum`` to ``maximum``, written in at most MAX_DECIMAL_CHARS characters."""
        if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
            raise self.error(field, f"expected a number, got {_show(value)}")
        if isinstance(value, int) and value.bit_length() > 64:
            raise self.error(field, f"expected a number from {minimum} to {maximum}, got {_show(value)}")
        text = str(value).strip() if not isinstance(value, float) else repr(value)
        if len(text) > limits.MAX_DECIMAL_CHARS:
            raise self.error(field, f"expected a number written in at most {limits.MAX_DECIMAL_CHARS} characters, "
                                    f"got {_show(value)}")
        try:
            amount = Decimal(text)
        except InvalidOperation:
            raise self.error(field, f"expected a number, got {_show(value)}") from None
        if not amount.is_finite() or amount < minimum:
            raise self.error(field, f"expected a number of at least {minimum}, got {_show(value)}")
        if amount > maximum:
            raise self.error(field, f"expected a number of at most {maximum}, got {_show(value)}")
        return amount

    def bounded_list(self, value: object, field: str, maximum: int, what: str) -> list:
        """``value`` as a list of at most ``maximum`` items."""
        if not isinstance(value, list):
            raise self.error(field, f"expected a list of {what}, got {_show(value)}")
        if len(value) > maximum:
            raise self.error(field, f"at most {maximum} {what}, got {len(value)}")
        return value

    def whole(self, value: object, field: str, *, minimum: int, maximum: int, hint: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(field, f"expected a whole number, got {_show(value)}{hint}")
        if not minimum <= value <= maximum:
            raise self.error(field, f"expected a whole number from {minimum} to {maximum}, got {_show(value)}")
        return value

    def parsed(self, parse, value: object, field: str):
        try:
            return parse(value)
        except ValueError as exc:
            raise self.error(field, str(exc)) from None

    def prompt(self, value: object, field: str) -> str:
        text = self.string(value, field)
        if not _PROMPT.match(text):
            raise self.error(
                field,
                f"bad prompt name {_show(text)}: expected 1-64 of A-Z a-z 0-9 _ . - "
                "(no spaces, quotes, ; < > or line breaks)",
            )
        return text

    # -- the tree ---------------------------------------------------------

    def plan_set(self, obj: object, base_dir: str | None, refused: dict[str, PlanError] | None = None) -> PlanSet:
        data = self.table(
            obj, None, ("numbers", "blacklist", "prompts", "calendar", "segments"), "a plan set"
        )
        numbers_raw = data.get("numbers", [])
        if not isinstance(numbers_raw, list):
            raise self.error("numbers", f"expected a list of number tables, got {_show(numbers_raw)}")
        blacklist = self.blacklist(data.get("blacklist", []), "blacklist", limits.MAX_GLOBAL_BLACKLIST)
        prompts = self.prompts(data.get("prompts", {}), "prompts")
        calendar = self.calendar(data.get("calendar", {}), "calendar")
        segments = None
        if "segments" in data:
            segments = self.segments(data["segments"], base_dir)
        numbers = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(numbers_raw):
            try:
                plan = self.checked_number_plan(raw, i, calendar)
                if plan.number in seen:
                    raise self.error(
                        "number",
                        f"duplicate number (also numbers[{seen[plan.number]}]); "
                        "each number has one plan",
                    )
            except PlanError as exc:
                if refused is None:
                    raise
                refused[self.number or f"numbers[{i}]"] = exc
            else:
                seen[plan.number] = i
                numbers.append(plan)
            self.number = self.rule = None
        return PlanSet(tuple(numbers), blacklist, prompts, calendar, segments, self.source)

    def segments(self, value: object, base_dir: str | None) -> str:
        from .segments import load_segments_cached

        path = self.string(value, "segments")
        if base_dir and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        try:
            load_segments_cached(path)
        except SegmentError as exc:
            raise self.error("segments", str(exc)) from None
        return path

    def checked_number_plan(self, raw: object, index: int, global_calendar: CalendarSpec) -> NumberPlan:
        """:meth:`number_plan`, by the fast path when it accepts the plan.

        The fast path (:mod:`tel400._plans_fast` or its compiled twin) reports no mistakes: on
        anything it does not accept, this walk runs on the same input and
        raises today's error, with where it is.
        """
        try:
            plan = (_FAST_PATH or _fast_path()).number_plan(raw, self, global_calendar)
        except Exception:
            return self.number_plan(raw, index, global_calendar)
        self.number = plan.number
        return plan

    def number_plan(self, raw: object, index: int, global_calendar: CalendarSpec) -> NumberPlan:
        field = f"numbers[{index}]"
        data = self.table(
            raw,
            field,
            (
                "number", "timezone", "pin", "pin_hash", "blacklist", "default", "caps", "rules",
                "prompts", "reject_unknown_callers", "on_backend_error", "tariff", "calendar",
                "sms_replies", "sms",
            ),
            "a number",
        )
        if "number" not in data:
            raise self.error(f"{field}.number", "missing: every plan names its 400 number")
        number_raw = data["number"]
        if isinstance(number_raw, int) and not isinstance(number_raw, bool):
            number_raw = str(number_raw)
        try:
            number = normalize(self.string(number_raw, "number"))
        except NumberError as exc:
            raise self.error(f"{field}.number", str(exc)) from None
        if number.startswith("+"):
            raise self.error("number", f"{number} is a foreign number; plans route Chinese numbers")
        self.number = number

        timezone = self.timezone(data.get("timezone", DEFAULT_TIMEZONE))

        pin = pin_hash = None
        if "pin" in data and "pin_hash" in data:
            raise self.error("pin", "give pin or pin_hash, not both")
        if "pin" in data:
            pin_raw = data["pin"]
            if isinstance(pin_raw, int) and not isinstance(pin_raw, bool):
                raise self.error("pin", "write the PIN as a string (\"0123\"), so leading zeros survive")
            pin = self.string(pin_raw, "pin")
            if not pins.PIN_RE.match(pin):
                raise self.error("pin", "expected 4 to 8 digits")
        if "pin_hash" in data:
            pin_hash = self.string(data["pin_hash"], "pin_hash")
            self.parsed(pins.check_hash_format, pin_hash, "pin_hash")

        prompts = self.prompts(data.get("prompts", {}), "prompts")
        if any(key == "unknown_number" for key, _ in prompts):
            raise self.error(
                "prompts.unknown_number",
                "a number's own plan never answers unknown_number; set it in the top-level prompts table",
            )
        tariff = self.tariff(data["tariff"]) if "tariff" in data else None
        caps = self.caps(data.get("caps", []), tariff)
        rules = self.rules(data.get("rules", []))
        default = self.action(data.get("default", {"action": "reject"}), "default", default_kind="reject")
        calendar = self.calendar(data.get("calendar", {}), "calendar")
        # Checked here so that a contradiction between the global and this
        # number's calendar is reported against this number.
        self.parsed(lambda spec: spec.build(), global_calendar.merged(calendar), "calendar")
        sms_replies = self.sms_replies(data["sms_replies"]) if "sms_replies" in data else ()
        sms = self.sms_settings(data["sms"]) if "sms" in data else DEFAULT_SMS
        return NumberPlan(
            number=number,
            rules=rules,
            default=default,
            timezone=timezone,
            pin=pin,
            pin_hash=pin_hash,
            blacklist=self.blacklist(data.get("blacklist", []), "blacklist", limits.MAX_BLACKLIST),
            caps=caps,
            prompts=prompts,
            reject_unknown_callers=self.boolean(data.get("reject_unknown_callers", False), "reject_unknown_callers"),
            on_backend_error=self.choice(data.get("on_backend_error", "allow"), "on_backend_error", BACKEND_POLICIES),
            tariff=tariff,
            calendar=calendar,
            sms_replies=sms_replies,
            sms=sms,
        )

    def timezone(self, value: object) -> str:
        """An IANA zone name that zoneinfo can load (not a directory like ``America``)."""
        name = self.string(value, "timezone")
        if _ZONE_NAME.match(name):
            try:
                zoneinfo.ZoneInfo(name)
                return name
            # Every way a name can fail to be a zone: not found, not a TZif
            # file, a directory (IsADirectoryError), too long for the file
            # system (ENAMETOOLONG), unreadable.
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                pass
        raise self.error("timezone", f"unknown time zone {_show(name)}; expected an IANA name like Asia/Shanghai")

    def blacklist(self, value: object, field: str, maximum: int) -> tuple[str, ...]:
        value = self.bounded_list(value, field, maximum, "entries (numbers, prefixes ending in * or anonymous)")
        entries = []
        for i, item in enumerate(value):
            where = f"{field}[{i}]"
            text = self.string(item, where).strip()
            if text.lower() == "anonymous":
                entries.append("anonymous")
                continue
            if text.endswith("*"):
                entries.append(self.blacklist_prefix(text, where))
                continue
            try:
                entries.append(normalize(text))
            except NumberError as exc:
                raise self.error(where, f"{exc}; expected a number, a prefix ending in *, or anonymous") from None
        return tuple(dict.fromkeys(entries))

    def blacklist_prefix(self, text: str, where: str) -> str:
        digits = re.sub(r"[\s()-]", "", text[:-1])
        international = digits.startswith(("+86", "0086"))
        if international:
            digits = digits[3:] if digits.startswith("+") else digits[4:]
        if not (digits and digits.isascii() and digits.isdigit()):
            raise self.error(
                where, f"bad prefix {_show(text)}: expected digits then *, written like a national number (1710*, 0571*)"
            )
        if len(digits) > 18:
            raise self.error(where, f"bad prefix {_show(text)}: at most 18 digits before the *")
        mobile = digits[0] == "1" and (len(digits) == 1 or digits[1] in "3456789")
        if international and not mobile and digits[0] != "0":
            digits = "0" + digits  # +86 21* is the Shanghai area code: 021*, as numbers are normalised
        return digits + "*"

    def prompts(self, value: object, field: str) -> tuple[tuple[str, str], ...]:
        data = self.table(value, field, PROMPT_KEYS, "prompt names")
        return tuple(sorted((key, self.prompt(name, f"{field}.{key}")) for key, name in data.items()))

    def calendar(self, value: object, field: str) -> CalendarSpec:
        data = self.table(value, field, ("holidays", "workdays", "years"), "calendar additions")
        years = data.get("years", [])
        first, last = limits.CALENDAR_FIRST_YEAR, limits.CALENDAR_LAST_YEAR
        if not isinstance(years, list) or len(years) > limits.MAX_LIST_ITEMS or not all(
            isinstance(y, int) and not isinstance(y, bool) and first <= y <= last for y in years
        ):
            raise self.error(f"{field}.years", f"expected a list of years from {first} to {last} like [2027], "
                                               f"got {_show(years)}")
        days = {}
        for key in ("holidays", "workdays"):
            raw = data.get(key)
            ranges = self.parsed(lambda v: parse_date_list(v, key), raw, f"{field}.{key}") if raw else []
            expanded = set()
            for start, end in ranges:
                # The compiled engine keeps a byte per day from the first year to the last.
                if start.year < first or end.year > last:
                    raise self.error(f"{field}.{key}", f"{start}..{end}: expected dates from {first} to {last}")
                if (end - start).days > 366:
                    raise self.error(f"{field}.{key}", f"range {start}..{end} is longer than a year")
                expanded.update(start + _dt.timedelta(days=k) for k in range((end - start).days + 1))
                # Checked as it grows: 9,999 one-year ranges stop after ten, not after 3.6 million days.
                if len(expanded) + sum(map(len, days.values())) > limits.MAX_CALENDAR_DAYS:
                    raise self.error(
                        f"{field}.{key}",
                        f"at most {limits.MAX_CALENDAR_DAYS} days in holidays and workdays together (ranges count "
                        "each day they cover)",
                    )
            days[key] = tuple(sorted(expanded))
        spec = CalendarSpec(days["holidays"], days["workdays"], tuple(sorted(set(years))))
        self.parsed(lambda s: s.build(), spec, field)
        return spec

    def tariff(self, value: object) -> Tariff:
        data = self.table(value, "tariff", ("local", "long_distance", "increment_s", "sms_part"), "a tariff")
        for key in ("local", "long_distance"):
            if key not in data:
                raise self.error(f"tariff.{key}", "missing: a tariff gives local and long_distance rates per minute")
        return Tariff(
            self.decimal(data["local"], "tariff.local", maximum=limits.MAX_RATE),
            self.decimal(data["long_distance"], "tariff.long_distance", maximum=limits.MAX_RATE),
            self.whole(data.get("increment_s", 60), "tariff.increment_s", minimum=1, maximum=limits.MAX_INCREMENT_S),
            self.decimal(data.get("sms_part", 0), "tariff.sms_part", maximum=limits.MAX_RATE),
        )

    def caps(self, value: object, tariff: Tariff | None) -> tuple[Cap, ...]:
        value = self.bounded_list(value, "caps", limits.MAX_CAPS, "caps")
        caps = []
        for i, raw in enumerate(value):
            field = f"caps[{i}]"
            data = self.table(raw, field, ("metric", "per", "limit", "scope", "prompt", "channel"), "a cap")
            for key in ("metric", "per", "limit"):
                if key not in data:
                    raise self.error(f"{field}.{key}", "missing: a cap needs metric, per and limit")
            metric = self.choice(data["metric"], f"{field}.metric", METRICS)
            per = self.choice(data["per"], f"{field}.per", PERIODS)
            if metric == "calls":
                limit = Decimal(self.whole(data["limit"], f"{field}.limit", minimum=0, maximum=limits.MAX_CAP_CALLS))
            else:
                maximum = limits.MAX_CAP_MINUTES if metric == "minutes" else limits.MAX_CAP_COST
                limit = self.decimal(data["limit"], f"{field}.limit", maximum=maximum)
            if metric == "cost" and tariff is None:
                raise self.error(f"{field}.metric", "a cost cap needs the number's tariff (tariff = { local = …, long_distance = … })")
            caps.append(
                Cap(
                    metric=metric,
                    per=per,
                    limit=limit,
                    scope=self.choice(data.get("scope", "number"), f"{field}.scope", SCOPES),
                    prompt=self.prompt(data["prompt"], f"{field}.prompt") if "prompt" in data else None,
                    channel=self.choice(data.get("channel", "any"), f"{field}.channel", CHANNELS),
                )
            )
        return tuple(caps)

    def rules(self, value: object) -> tuple[Rule, ...]:
        value = self.bounded_list(value, "rules", limits.MAX_RULES, "rules")
        rules = []
        names: set[str] = set()
        for i, raw in enumerate(value):
            rule = self.rule_at(raw, i)
            if rule.name in names:
                raise self.error("name", "two rules have this name; rule names are unique per number")
            names.add(rule.name)
            rules.append(rule)
            self.rule = None
        return tuple(rules)

    def rule_at(self, raw: object, index: int) -> Rule:
        field = f"rules[{index}]"
        data = self.table(
            raw,
            field,
            (
                "name", "provinces", "days", "time", "dates", "channel",
                "action", "strategy", "targets", "queue", "room", "prompt",
            ),
            "a rule",
        )
        name = data.get("name", f"rule-{index + 1}")
        # Interned: thousands of plans reuse a few names ("office", "night"),
        # and each decision carries one; shared objects stay in the CPU cache.
        name = sys.intern(str(self.string(name, f"{field}.name")))  # str(): a subclass cannot be interned
        if not _RULE_NAME.match(name):
            raise self.error(f"{field}.name", f"bad rule name {_show(name)}: expected 1-64 letters, digits, _ . : -")
        self.rule = name
        provinces_ = None
        if "provinces" in data:
            provinces_ = self.provinces(data["provinces"])
        days = self.parsed(parse_days, data["days"], "days") if "days" in data else None
        time = self.parsed(parse_time, data["time"], "time") if "time" in data else None
        dates = self.parsed(parse_dates, data["dates"], "dates") if "dates" in data else None
        channel = self.choice(data.get("channel", "any"), "channel", CHANNELS)
        action = self.action(
            {k: data[k] for k in ("action", "strategy", "targets", "queue", "room", "prompt") if k in data},
            None,
            default_kind="bridge",
        )
        return Rule(name, action, provinces_, days, time, dates, channel)

    # -- SMS ----------------------------------------------------------------

    def sms_replies(self, value: object) -> tuple[SmsReply, ...]:
        value = self.bounded_list(value, "sms_replies", limits.MAX_SMS_REPLIES, "SMS replies")
        replies: list[SmsReply] = []
        names: set[str] = set()
        for i, raw in enumerate(value):
            reply = self.sms_reply_at(raw, i)
            if reply.name in names:
                raise self.error(f"sms_replies[{i}].name",
                                 f"two SMS replies are named {reply.name!r}; names are unique per number")
            names.add(reply.name)
            replies.append(reply)
        return tuple(replies)

    def sms_reply_at(self, raw: object, index: int) -> SmsReply:
        field = f"sms_replies[{index}]"
        data = self.table(
            raw, field,
            ("name", "keywords", "match", "reply", "provinces", "days", "time", "dates", "route_onward"),
            "an SMS reply",
        )
        name = self.string(data.get("name", f"reply-{index + 1}"), f"{field}.name")
        if not _RULE_NAME.match(name):
            raise self.error(f"{field}.name", f"bad reply name {_show(name)}: expected 1-64 letters, digits, _ . : -")
        name = sys.intern(str(name))
        if "keywords" not in data:
            raise self.error(f"{field}.keywords", "missing: an SMS reply needs keywords (a string or a list)")
        keywords = self.sms_words(data["keywords"], f"{field}.keywords", limits.MAX_SMS_KEYWORDS, "keywords")
        match = self.choice(data.get("match", "exact"), f"{field}.match", MATCH_MODES)
        if "reply" not in data:
            raise self.error(f"{field}.reply", "missing: an SMS reply needs the reply text")
        reply = self.sms_template(data["reply"], f"{field}.reply")
        provinces_ = None
        if "provinces" in data:
            provinces_ = self.provinces(data["provinces"], f"{field}.provinces")
        days = self.parsed(parse_days, data["days"], f"{field}.days") if "days" in data else None
        time = self.parsed(parse_time, data["time"], f"{field}.time") if "time" in data else None
        dates = self.parsed(parse_dates, data["dates"], f"{field}.dates") if "dates" in data else None
        route_onward = self.boolean(data.get("route_onward", False), f"{field}.route_onward")
        return SmsReply(name, keywords, reply, match, provinces_, days, time, dates, route_onward)

    def sms_words(self, value: object, field: str, maximum: int, what: str) -> tuple[str, ...]:
        """Keywords or opt words: a string or a list; each non-empty after fold and short."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.error(field, f"expected a string or a non-empty list of {what}, got {_show(value)}")
        if len(items) > maximum:
            raise self.error(field, f"at most {maximum} {what}, got {len(items)}")
        words = []
        for i, item in enumerate(items):
            where = f"{field}[{i}]" if isinstance(value, list) else field
            word = self.string(item, where)
            if len(word) > limits.MAX_SMS_KEYWORD_CHARS:
                raise self.error(where, f"at most {limits.MAX_SMS_KEYWORD_CHARS} characters, got {len(word)}")
            if not smstext.fold(word):
                raise self.error(where, f"{_show(word)} is empty once spaces and punctuation are ignored")
            words.append(word)
        return tuple(dict.fromkeys(words))

    def sms_template(self, value: object, field: str) -> str:
        text = self.string(value, field)
        if len(text) > limits.MAX_SMS_TEMPLATE_CHARS:
            raise self.error(field, f"at most {limits.MAX_SMS_TEMPLATE_CHARS} characters, got {len(text)}")
        if not text.strip():
            raise self.error(field, "the text is empty; a reply needs something to say")
        try:
            smstext.worst_case_parts(text)
        except ValueError as exc:
            raise self.error(field, f"{exc} (counted with every placeholder at its longest)" if "parts" in str(exc)
                             else str(exc)) from None
        return text

    def sms_settings(self, value: object) -> SmsSettings:
        data = self.table(
            value, "sms",
            ("opt_out_words", "opt_in_words", "opt_out_reply", "opt_in_reply", "reply_limit", "reply_window_s"),
            "SMS settings",
        )
        out_words = (self.sms_words(data["opt_out_words"], "sms.opt_out_words", limits.MAX_SMS_WORDS, "words")
                     if "opt_out_words" in data else DEFAULT_OPT_OUT_WORDS)
        in_words = (self.sms_words(data["opt_in_words"], "sms.opt_in_words", limits.MAX_SMS_WORDS, "words")
                    if "opt_in_words" in data else DEFAULT_OPT_IN_WORDS)
        if len(out_words) + len(in_words) > limits.MAX_SMS_WORDS:
            raise self.error("sms", f"at most {limits.MAX_SMS_WORDS} opt-out and opt-in words together")
        both = {smstext.fold(w) for w in out_words} & {smstext.fold(w) for w in in_words}
        if both:
            raise self.error("sms.opt_in_words", f"{sorted(both)[0]!r} is both an opt-out and an opt-in word")
        return SmsSettings(
            out_words,
            in_words,
            self.sms_template(data["opt_out_reply"], "sms.opt_out_reply") if "opt_out_reply" in data
            else DEFAULT_OPT_OUT_REPLY,
            self.sms_template(data["opt_in_reply"], "sms.opt_in_reply") if "opt_in_reply" in data
            else DEFAULT_OPT_IN_REPLY,
            self.whole(data.get("reply_limit", 5), "sms.reply_limit", minimum=1, maximum=limits.MAX_SMS_REPLY_LIMIT),
            self.whole(data.get("reply_window_s", 600), "sms.reply_window_s",
                       minimum=limits.MIN_SMS_REPLY_WINDOW_S, maximum=limits.MAX_SMS_REPLY_WINDOW_S),
        )

    def provinces(self, value: object, field: str = "provinces") -> frozenset[str]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.error(field, f"expected a list of provinces, got {_show(value)}")
        if len(items) > limits.MAX_LIST_ITEMS:
            raise self.error(field, f"at most {limits.MAX_LIST_ITEMS} provinces, got {len(items)}")
        codes = set()
        for item in items:
            code = provinces.resolve(item) if isinstance(item, str) else None
            if code is None:
                raise self.error(
                    field,
                    f"unknown province {_show(item)}; expected an ISO 3166-2:CN code (CN-BJ), "
                    "a Chinese name (北京) or an English name (Beijing)",
                )
            codes.add(code)
        return frozenset(codes)

    def action(self, value: object, field: str | None, *, default_kind: str) -> Action:
        def at(key: str) -> str:
            return f"{field}.{key}" if field else key

        data = self.table(
            value, field, ("action", "strategy", "targets", "queue", "room", "prompt"), "an action"
        )
        kind = self.choice(data.get("action", default_kind), at("action"), ACTIONS)
        allowed = {
            "bridge": {"action", "strategy", "targets"},
            "reject": {"action", "prompt"},
            "queue": {"action", "queue"},
            "conference": {"action", "room"},
        }[kind]
        for key in data:
            if key not in allowed:
                raise self.error(at(key), f"does not apply to action {kind!r} (it takes {', '.join(sorted(allowed - {'action'})) or 'nothing more'})")
        if kind == "bridge":
            strategy = self.choice(data.get("strategy", "weighted"), at("strategy"), STRATEGIES)
            if "targets" not in data:
                raise self.error(at("targets"), "missing: a bridge needs at least one target")
            return Action("bridge", self.targets(data["targets"], at("targets")), strategy)
        if kind == "reject":
            prompt = self.prompt(data["prompt"], at("prompt")) if "prompt" in data else None
            return Action("reject", prompt=prompt)
        key = "queue" if kind == "queue" else "room"
        if key not in data:
            raise self.error(at(key), f"missing: action {kind!r} needs {key} = \"…\"")
        name = data[key]
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        name = self.string(name, at(key))
        if not _NAME.match(name):
            raise self.error(at(key), f"bad {key} name {_show(name)}: expected 1-64 of A-Z a-z 0-9 _ . @ -")
        return Action(kind, **{key: name})

    def targets(self, value: object, field: str) -> tuple[Target, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(field, f"expected a non-empty list of targets, got {_show(value)}")
        if len(value) > limits.MAX_TARGETS:
            raise self.error(field, f"at most {limits.MAX_TARGETS} targets, got {len(value)}")
        targets = []
        for i, raw in enumerate(value):
            where = f"{field}[{i}]"
            if isinstance(raw, str):
                to, weight = raw, 1
            else:
                data = self.table(raw, where, ("to", "weight"), "a target")
                if "to" not in data:
                    raise self.error(f"{where}.to", "missing: a target says where to send the call")
                to = self.string(data["to"], f"{where}.to")
                weight_raw = data.get("weight", 1)
                if isinstance(weight_raw, int) and not isinstance(weight_raw, bool) and weight_raw < 0:
                    raise self.error(
                        f"{where}.weight", "a weight cannot be negative (0 keeps a target for failover only)"
                    )
                weight = self.whole(
                    weight_raw, f"{where}.weight", minimum=0, maximum=MAX_WEIGHT,
                    hint=" (weights are whole numbers: 30 and 70 for a 30/70 split)",
                )
            self.check_target(to, where)
            if any(t.to == to for t in targets):
                raise self.error(where, f"target {to} is listed twice")
            targets.append(Target(to, weight))
        if not any(t.weight for t in targets):
            raise self.error(field, "all weights are zero; at least one target must take calls")
        return tuple(targets)

    def check_target(self, to: str, field: str) -> None:
        if _NUMBER_TARGET.match(to):
            return
        m = _URI_TARGET.match(to)
        if m and (m.group(1) is None or 0 < int(m.group(1)) < 65536):
            return
        raise self.error(
            field,
            f"bad target {_show(to)}: expected a number (digits, optionally led by + * #) or "
            "user@host[:port] of A-Z a-z 0-9 . _ - (no spaces, quotes, ; < > | , { } or line breaks)",
        )


_FAST_PATH = None


def _fast_path():
    """The validator's fast path: the compiled twin when the compiled hot path
    is in use (tel400._impl decides), else the reference module.  Imported on
    first use: both build this module's classes, and _impl imports the engines,
    which import this module."""
    global _FAST_PATH
    from . import _impl, _plans_fast

    _FAST_PATH = _impl.compiled_twin("_plans", None, _plans_fast, "the compiled validator")
    return _FAST_PATH


# --- dumping -------------------------------------------------------------------


def _dump_action(action: Action) -> dict[str, Any]:
    kind = action.kind
    if kind == "bridge":
        return {"action": kind, "strategy": action.strategy,
                "targets": [{"to": t.to, "weight": t.weight} for t in action.targets]}
    if kind == "queue":
        return {"action": kind, "queue": action.queue}
    if kind == "conference":
        return {"action": kind, "room": action.room}
    if action.prompt is not None:
        return {"action": kind, "prompt": action.prompt}
    return {"action": kind}


def _dump_calendar(spec: CalendarSpec) -> dict[str, Any]:
    out = {}
    if spec.holidays:
        out["holidays"] = [d.isoformat() for d in spec.holidays]
    if spec.workdays:
        out["workdays"] = [d.isoformat() for d in spec.workdays]
    if spec.years:
        out["years"] = list(spec.years)
    return out


def _dump_cap(cap: Cap) -> dict[str, Any]:
    out = {"metric": cap.metric, "per": cap.per, "limit": int(cap.limit) if cap.metric == "calls" else str(cap.limit),
           "scope": cap.scope, "channel": cap.channel}
    if cap.prompt is not None:
        out["prompt"] = cap.prompt
    return out


def _dump_rule(rule: Rule) -> dict[str, Any]:
    r: dict[str, Any] = {"name": rule.name}
    if rule.provinces is not None:
        r["provinces"] = sorted(rule.provinces)
    if rule.days is not None:
        r["days"] = rule.days.text
    if rule.time is not None:
        r["time"] = rule.time.text
    if rule.dates is not None:
        r["dates"] = rule.dates.text
    if rule.channel != "any":
        r["channel"] = rule.channel
    r.update(_dump_action(rule.action))
    return r


def _dump_plan(plan: NumberPlan) -> dict[str, Any]:
    """A number's plan as the tree :func:`validate_number` reads back (what stores keep).  O(this plan).

    Written for speed (an import of a million numbers dumps each once): a
    field at its default is skipped by testing the field, not by comparing
    objects (``plan.calendar != CalendarSpec()`` made an object and an
    attrs comparison per number).
    """
    out: dict[str, Any] = {"number": plan.number, "timezone": plan.timezone}
    if plan.pin is not None:
        out["pin"] = plan.pin
    if plan.pin_hash is not None:
        out["pin_hash"] = plan.pin_hash
    if plan.blacklist:
        out["blacklist"] = list(plan.blacklist)
    if plan.reject_unknown_callers:
        out["reject_unknown_callers"] = True
    if plan.on_backend_error != "allow":
        out["on_backend_error"] = plan.on_backend_error
    if plan.prompts:
        out["prompts"] = dict(plan.prompts)
    if plan.tariff is not None:
        out["tariff"] = {
            "local": str(plan.tariff.local),
            "long_distance": str(plan.tariff.long_distance),
            "increment_s": plan.tariff.increment_s,
        }
        if plan.tariff.sms_part:
            out["tariff"]["sms_part"] = str(plan.tariff.sms_part)
    calendar = plan.calendar
    if calendar.holidays or calendar.workdays or calendar.years:
        out["calendar"] = _dump_calendar(calendar)
    out["default"] = _dump_action(plan.default)
    if plan.caps:
        out["caps"] = [_dump_cap(c) for c in plan.caps]
    out["rules"] = [_dump_rule(rule) for rule in plan.rules]
    if plan.sms_replies:
        out["sms_replies"] = [_dump_sms_reply(reply) for reply in plan.sms_replies]
    if plan.sms != DEFAULT_SMS:
        out["sms"] = _dump_sms(plan.sms)
    return out


def _dump_sms_reply(reply: SmsReply) -> dict[str, Any]:
    r: dict[str, Any] = {"name": reply.name, "keywords": list(reply.keywords), "match": reply.match,
                         "reply": reply.reply}
    if reply.provinces is not None:
        r["provinces"] = sorted(reply.provinces)
    if reply.days is not None:
        r["days"] = reply.days.text
    if reply.time is not None:
        r["time"] = reply.time.text
    if reply.dates is not None:
        r["dates"] = reply.dates.text
    if reply.route_onward:
        r["route_onward"] = True
    return r


def _dump_sms(sms: SmsSettings) -> dict[str, Any]:
    """The SMS settings that differ from the defaults."""
    out: dict[str, Any] = {}
    for field in attrs.fields(SmsSettings):
        value = getattr(sms, field.name)
        if value != field.default:
            out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


def dumped_plan(plan: NumberPlan) -> dict[str, Any]:
    """:func:`_dump_plan`, by the validator's compiled twin when it is in use (``dump_plan``,
    ~3x faster: a store import dumps every number once).  O(this plan)."""
    dump = getattr(_FAST_PATH or _fast_path(), "dump_plan", None)
    return _dump_plan(plan) if dump is None else dump(plan, _dump_plan)


def _dump_plan_set(plans: PlanSet) -> dict[str, Any]:
    out: dict[str, Any] = {"numbers": [dumped_plan(p) for p in plans.numbers]}
    if plans.blacklist:
        out["blacklist"] = list(plans.blacklist)
    if plans.prompts:
        out["prompts"] = dict(plans.prompts)
    if plans.calendar != CalendarSpec():
        out["calendar"] = _dump_calendar(plans.calendar)
    if plans.segments is not None:
        out["segments"] = plans.segments
    return out
