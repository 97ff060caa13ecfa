"""Former home of what both engines share; kept so that existing imports work.

The pieces now live in modules named for what they hold:
:mod:`tel400.outcomes` (outcomes, standard prompts), :mod:`tel400.shared`
(router state kept over reloads), :mod:`tel400.calltime` (the times a call
may carry), :mod:`tel400.billing` (call records, bills, charges) and
:mod:`tel400.compiler` (cap keys and the rest of a number's compilation).
"""

from __future__ import annotations

from . import pins
from .billing import MAX_CHARGE_UNITS, CallRecord, apply_charges, bill_call
from .calltime import AT_FIRST_YEAR, AT_LAST_YEAR, AT_MAX, AT_MIN, check_at
from .compiler import cap_key
from .outcomes import OUTCOME_INDEX, OUTCOMES, SMS_ACCESS_PREFIX, STANDARD_PROMPTS, UNKNOWN_LABEL
from .shared import Shared

pin_key = pins.caller_key  # the key format has one author, next to the lockout rules

__all__ = [
    "AT_FIRST_YEAR", "AT_LAST_YEAR", "AT_MAX", "AT_MIN", "MAX_CHARGE_UNITS", "OUTCOMES", "OUTCOME_INDEX",
    "SMS_ACCESS_PREFIX", "STANDARD_PROMPTS", "UNKNOWN_LABEL", "CallRecord", "Shared", "apply_charges",
    "bill_call", "cap_key", "check_at", "pin_key",
]
