"""What a decision can come to: outcomes (statistics are arrays by their position), standard prompts."""

from __future__ import annotations

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
