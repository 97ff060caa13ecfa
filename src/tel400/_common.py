"""What both engine implementations share: router state, outcomes, billing.

Nothing here runs per call except through the engines; keeping it in one
place is what makes the reference and the compiled engine agree on keys,
statistics and charges by construction.
"""

from __future__ import annotations

import array
import datetime as _dt
import json
import math
import threading
from collections import Counter
from decimal import ROUND_CEILING, Decimal

from . import limits, pins, provinces
from .decision import Charge
from .exceptions import BackendError
from .plans import Cap, Tariff, to_units

#: The SMS access code: messages to a 400 number arrive as 10657 + number.
SMS_ACCESS_PREFIX = "10657"

#: Prompts a plan may rename, each defaulting to its own name.
STANDARD_PROMPTS = (
    "unknown_number", "blacklisted", "bad_caller", "enter_pin", "bad_pin",
    "pin_locked", "closed", "limit_reached", "backend_error",
)

#: Every (action, reason) a decision can have, in a fixed order: statistics
#: are arrays indexed by position here.
OUTCOMES = (
    ("bridge", "ok"),
    ("queue", "ok"),
    ("conference", "ok"),
    ("collect_pin", "pin_required"),
    ("reject", "unknown_number"),
    ("reject", "blacklisted"),
    ("reject", "bad_caller"),
    ("reject", "bad_pin"),
    ("reject", "pin_locked"),
    ("reject", "closed"),
    ("reject", "rule_reject"),
    ("reject", "cap_exceeded"),
    ("reject", "backend_error"),
)
OUTCOME_INDEX = {outcome: i for i, outcome in enumerate(OUTCOMES)}
UNKNOWN_LABEL = "unknown"  # statistics label for dialed numbers without a plan


class Shared:
    """Router state that outlives a reload: counters, randomness, statistics."""

    def __init__(self, counters, rng, calls, pin_policy: pins.PinPolicy | None = None) -> None:
        self.counters = counters
        self.rng = rng
        #: The compiled engine's generator, seeded from ``rng`` when first needed.
        self.fast_rng = None
        self.calls = calls
        #: number -> array('q') of decisions by OUTCOMES position.
        self.outcomes: dict[str, array.array] = {}
        #: backend failures, by the policy that was applied.
        self.backend_errors: Counter[str] = Counter()
        #: round-robin state by (number, rule, targets, weights), kept over reloads.
        self.round_robin: dict[tuple, array.array] = {}
        #: PIN checks by (number, pin, pin_hash), kept over reloads with the PINs
        #: they verified: a reload must not make every right PIN derive again.
        #: Like ``round_robin``, the engine in service's: only its plans' numbers.
        self.pin_checks: dict[tuple, pins.PinCheck] = {}
        #: the PIN rules, the key derivations they allow at a time, and what
        #: they did: "busy" (no derivation slot) and ("number_locked", number).
        self.pin_policy = pin_policy or pins.PinPolicy()
        self.pin_slots = threading.BoundedSemaphore(self.pin_policy.derivations)
        self.pin_events: Counter = Counter()
        #: wrong PINs per number the counter backend could not count (pins.LocalWindows)
        self.pin_fallback = pins.LocalWindows()
        #: number -> its NumberPlan, or None: where explain and dry runs get a
        #: number's plan when the router does not hold it (Router(plan_source=)).
        self.plan_source = None

    def outcome_counts(self, label: str) -> array.array:
        counts = self.outcomes.get(label)
        if counts is None:
            counts = self.outcomes.setdefault(label, array.array("q", bytes(8 * len(OUTCOMES))))
        return counts

    def decision_counts(self) -> dict[tuple[str, str, str], int]:
        out = {}
        for label, counts in list(self.outcomes.items()):
            for (action, reason), count in zip(OUTCOMES, counts):
                if count:
                    out[(label, action, reason)] = count
        return out

    def round_robin_state(self, ident: tuple, n: int, carried: dict) -> array.array:
        """The state of a round-robin rule: kept if the rule is unchanged."""
        state = self.round_robin.get(ident)
        if state is None or len(state) != n:
            state = array.array("q", bytes(8 * n))
        carried[ident] = state
        return state

    def pin_check(self, number: str, pin: str | None, pin_hash: str | None, carried: dict) -> pins.PinCheck:
        """The PIN check of a number: the kept one, with what it verified, if its PIN is unchanged.

        Like :meth:`round_robin_state`, it changes nothing here: ``carried``
        (the new engine's) is adopted only once the engine is compiled.
        """
        ident = (number, pin, pin_hash)
        check = self.pin_checks.get(ident)
        if check is None:
            check = pins.PinCheck(pin, pin_hash)
        carried[ident] = check
        return check


#: The times a call may carry: years 1901 to 9998 in UTC.  A day's margin
#: on each side keeps every zone's local date inside what ``datetime``
#: (and so every calendar computation) can hold: 9999-12-31 16:00 UTC is
#: already the year 10000 in Shanghai.
AT_MIN = -2177452800  # 1901-01-01T00:00:00Z
AT_MAX = 253370764800  # 9999-01-01T00:00:00Z, excluded
AT_FIRST_YEAR, AT_LAST_YEAR = 1901, 9998
_AT_RANGE = f"at: expected a time from {AT_FIRST_YEAR} to {AT_LAST_YEAR}"


def check_at(at) -> None:
    """Refuse an ``at`` that is not a time in the supported years, whatever the rest of the call.

    Raises:
        TypeError: ``at`` is neither ``None``, a ``datetime`` nor a POSIX time.
        ValueError: ``at`` is not finite, or outside the years 1901 to 9998.
    """
    if at is None:
        return
    if isinstance(at, _dt.datetime):
        if not AT_FIRST_YEAR <= at.year <= AT_LAST_YEAR:
            raise ValueError(f"{_AT_RANGE}, got {at.isoformat()}")
        return
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        if isinstance(at, float) and not math.isfinite(at):
            raise ValueError(f"at: expected a finite POSIX time, got {at!r}")
        if not AT_MIN <= at < AT_MAX:
            raise ValueError(f"{_AT_RANGE} (POSIX {AT_MIN} to {AT_MAX}), got {at!r}")
        return
    raise TypeError(f"at: expected a datetime, a POSIX time or None, got {type(at).__name__}")


def cap_key(number: str, cap: Cap, occurrence: int) -> str:
    """The counter key of a cap.

    Caps are named by what they count, not by their place in the list, so a
    reload that leaves a cap alone keeps its count.  The number is in braces,
    Redis Cluster's hash tag: every key of one number's calls lands in one
    slot, so one script can count them together.
    """
    return f"tel400:{{{number}}}:cap:{cap.metric}:{cap.per}:{cap.scope}:{cap.channel}:{occurrence}"


pin_key = pins.caller_key  # the key format has one author, next to the lockout rules


class CallRecord:
    """A routed call, remembered until its end is reported."""

    __slots__ = (
        "call_id", "number", "caller", "province", "targets", "channel", "ts",
        "tariff", "charges", "fail_open", "remembered_at",
    )

    def __init__(self, call_id, number, caller, province, targets, channel, ts, tariff, charges, fail_open):
        self.call_id = call_id
        self.number = number
        self.caller = caller
        self.province = province  # index into provinces.CODES
        self.targets = targets
        self.channel = channel
        self.ts = ts
        self.tariff = tariff
        #: (metric, key, period, ttl_s) for each minutes or cost cap of the call
        self.charges = charges
        self.fail_open = fail_open
        self.remembered_at = 0.0

    def with_charges(self, charges: tuple) -> CallRecord:
        """A copy left with only ``charges`` to apply (those a failed end did not add), of the same age."""
        copy = CallRecord(self.call_id, self.number, self.caller, self.province, self.targets, self.channel,
                          self.ts, self.tariff, charges, self.fail_open)
        copy.remembered_at = self.remembered_at
        return copy

    def to_token(self) -> str:
        """The record as compact JSON (see :meth:`tel400.Router.export_call`)."""
        tariff = self.tariff
        return json.dumps(
            {
                "v": 1, "id": self.call_id, "n": self.number, "c": self.caller, "p": self.province,
                "t": list(self.targets), "ch": self.channel, "ts": self.ts, "fo": self.fail_open,
                "tar": None if tariff is None else [str(tariff.local), str(tariff.long_distance), tariff.increment_s],
                "k": [list(c) for c in self.charges],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_token(cls, token: str) -> CallRecord:
        try:
            data = json.loads(token)
            if data.get("v") != 1:
                raise ValueError("unknown version")
            tariff = None
            if data["tar"] is not None:
                local, long_distance, increment = data["tar"]
                tariff = Tariff(Decimal(local), Decimal(long_distance), int(increment))
            charges = tuple(
                (str(metric), str(key), int(period), int(ttl)) for metric, key, period, ttl in data["k"]
                if metric in ("minutes", "cost")
            )
            province = int(data["p"])
            if not 0 <= province < len(provinces.CODES):
                raise ValueError("province out of range")
            return cls(
                str(data["id"]), str(data["n"]), data["c"], province, tuple(str(t) for t in data["t"]),
                str(data["ch"]), float(data["ts"]), tariff, charges, bool(data["fo"]),
            )
        except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
            raise ValueError(f"record: not a call record ({exc})") from None


#: The most one call may add to one counter (units: seconds, or millionths of
#: a currency unit): what the narrowest backend (``shm://``, 40-bit values)
#: holds.  A charge beyond it is refused before anything is counted.
MAX_CHARGE_UNITS = limits.MAX_COUNTER_UNITS


def bill_call(record: CallRecord, duration_s: float, target, prefixes) -> tuple[Charge, tuple]:
    """What a finished call costs, and what to add to which counter, changing nothing.

    Returns:
        The :class:`~tel400.Charge` and a tuple of ``(key, period, amount,
        ttl_s)`` for :func:`apply_charges`.

    Raises:
        ValueError: the charge cannot be represented (a duration or tariff
            so large that no counter could hold it).
    """
    from ._impl import national_key, normalize_or_none

    tariff = record.tariff
    increment = tariff.increment_s if tariff is not None else 60
    billed = math.ceil(duration_s / increment) * increment if duration_s > 0 else 0
    if target is None or target not in record.targets:
        target = record.targets[0] if record.targets else None
    target_n = normalize_or_none(target) if target is not None else None
    target_province = prefixes.index_of_key(national_key(target_n)) if target_n else 0
    long_distance = record.province == 0 or target_province != record.province
    cost = None
    try:
        if tariff is not None:
            rate = tariff.long_distance if long_distance else tariff.local
            cost = (rate * billed / 60).quantize(Decimal("0.000001"), rounding=ROUND_CEILING)
        adds = []
        for metric, key, period, ttl_s in record.charges:
            amount = billed if metric == "minutes" else to_units("cost", cost)
            if amount:
                adds.append((key, period, int(amount), ttl_s))
    except (ArithmeticError, TypeError) as exc:  # Decimal's InvalidOperation is an ArithmeticError
        raise ValueError(f"duration_s: the charge of {duration_s!r} s cannot be computed ({exc!r})") from None
    if any(amount > MAX_CHARGE_UNITS for _, _, amount, _ in adds):
        raise ValueError(f"duration_s: the charge of {duration_s!r} s is beyond what a counter holds")
    charge = Charge(
        record.call_id, record.number, record.caller, provinces.CODES[record.province],
        target, record.ts, duration_s, billed, cost, long_distance,
    )
    return charge, tuple(adds)


def apply_charges(adds: tuple, counters) -> tuple:
    """Add what :func:`bill_call` computed, each add on its own.

    Returns:
        The keys whose add the backend refused (:class:`BackendError`):
        empty when everything was added.  The caller keeps the call for a
        retry of those alone, so that nothing is added twice.
    """
    failed = []
    for key, period, amount, ttl_s in adds:
        try:
            counters.add(key, period, amount, ttl_s)
        except BackendError:
            failed.append(key)
    return tuple(failed)
