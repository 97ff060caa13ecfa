"""Calls in progress and what a finished call costs: records, bills, charges."""

from __future__ import annotations

import json
import math
from decimal import ROUND_CEILING, Decimal

from . import limits, provinces
from ._numbers_py import national_key, normalize_or_none
from .decision import Charge
from .exceptions import BackendError
from .plans import Tariff, to_units


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


#: The smallest amount of money counted (cost caps count millionths).
COST_QUANTUM = Decimal("0.000001")


def round_cost(amount: Decimal) -> Decimal:
    """A cost rounded up to the millionth: a carrier never bills less than the tariff says, and a cost
    cap counts in millionths, so a fraction below one must still count (calls and SMS alike)."""
    return amount.quantize(COST_QUANTUM, rounding=ROUND_CEILING)


def bill_call(record: CallRecord, duration_s: float, target, prefixes) -> tuple[Charge, tuple]:
    """What a finished call costs, and what to add to which counter, changing nothing.

    Returns:
        The :class:`~tel400.Charge` and a tuple of ``(key, period, amount,
        ttl_s)`` for :func:`apply_charges`.

    Raises:
        ValueError: the charge cannot be represented (a duration or tariff
            so large that no counter could hold it).
    """
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
            cost = round_cost(rate * billed / 60)
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
