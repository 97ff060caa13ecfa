"""What one number's plan may hold, and the numbers it may carry.

Two kinds of bounds, all enforced when a plan is validated
(:meth:`tel400.PlanSet.from_dict`, so by every loader and store):

* **Sizes** keep the time and memory one plan can cost the service bounded
  (validating, compiling, storing and auditing it, and the ``explain``
  trace of a call to it): rules, targets, caps, blacklist entries, calendar
  days.  A deployment can change them with environment variables of the same
  name (``TEL400_MAX_RULES=2000``), read once at import; every process that
  reads the same store should use the same values, or a plan one accepts
  another quarantines (docs/limits.md).
* **Numbers** (cap limits, tariff rates, weights) are bounded so that every
  value fits every counter backend: the narrowest is ``shm://``, whose slots
  hold 40-bit values (:data:`MAX_COUNTER_UNITS`).  They are not tunable:
  larger values would not be representable.

docs/limits.md ("Plans: what one number's plan may hold") gives each bound
with what happens when it is reached; bench/test_bench_plans.py measures a
plan at every bound.
"""

from __future__ import annotations

import os


def _tunable(name: str, default: int, most: int = 1 << 31) -> int:
    """``default``, or the whole number in the environment variable ``TEL400_<name>``.

    ``most`` is what the compiled engine's structures hold (a count kept in
    16 bits, an offset in 31): a larger value is refused at import rather
    than overflowing when a plan at the bound is compiled.
    """
    raw = os.environ.get(f"TEL400_{name}")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"TEL400_{name}: expected a whole number, got {raw!r}") from None
    if not 1 <= value <= most:
        raise ValueError(f"TEL400_{name}: expected a whole number from 1 to {most}, got {value}")
    return value


# -- sizes (tunable) ---------------------------------------------------------------

#: Rules of one number.  Bounds the rules a call tries, and so the ``explain``
#: trace (one step per rule tried, plus at most a dozen others).
MAX_RULES = _tunable("MAX_RULES", 1_000)
#: Targets of one bridge action (a rule's or the default).
MAX_TARGETS = _tunable("MAX_TARGETS", 64)
#: Caps of one number (the compiled engine checks up to 16 without allocating).
MAX_CAPS = _tunable("MAX_CAPS", 16)
#: Blacklist entries of one number.
MAX_BLACKLIST = _tunable("MAX_BLACKLIST", 10_000)
#: Blacklist entries of the top-level (operator's) blacklist.
MAX_GLOBAL_BLACKLIST = _tunable("MAX_GLOBAL_BLACKLIST", 100_000)
#: Days in one calendar's holidays plus workdays, ranges expanded (ten years
#: of every day; the official calendar adds ~35 a year).
MAX_CALENDAR_DAYS = _tunable("MAX_CALENDAR_DAYS", 3_700)
#: Time slots or date ranges in one rule condition.
MAX_CONDITION_ENTRIES = _tunable("MAX_CONDITION_ENTRIES", 1_000, most=(1 << 16) - 1)  # uint16 counts
#: Entries of any other list in a plan (provinces, calendar years, the
#: items of a days condition).
MAX_LIST_ITEMS = _tunable("MAX_LIST_ITEMS", 400)
#: Bytes of one number's plan as a store keeps it (canonical JSON).  A plan
#: within every bound above stays well under it; it bounds what the audit
#: log keeps per change as well.
MAX_STORED_PLAN_BYTES = _tunable("MAX_STORED_PLAN_BYTES", 1024 * 1024)
#: Bytes of a plan (or the settings) the audit log keeps in full for each
#: change; a larger one is logged as its size and SHA-256.  Bounds the log
#: to 10,000 entries of twice this.
MAX_AUDITED_BYTES = _tunable("MAX_AUDITED_BYTES", 64 * 1024)
#: Versions a store's change log reaches back (SQLite, Redis): a reader
#: whose version is older, or more changes behind than this, is told to read
#: everything again (``Changes.everything``); it also bounds the tombstones
#: of deleted numbers and the Redis log (docs/deploy.md, "The plan store's
#: change log").
CHANGE_LOG_VERSIONS = _tunable("CHANGE_LOG_VERSIONS", 10_000)
#: Numbers whose ``explain`` tracer the compiled engine keeps (a reference
#: engine holding the number's compiled description, some 2 KB for a plan of
#: a few rules; it shares the engine's compiler and calendar): the least
#: recently explained go first, so explaining every number of a million
#: keeps this many, and an explain of a number not kept costs one plan read
#: and one compile (docs/limits.md).
EXPLAIN_TRACERS = _tunable("EXPLAIN_TRACERS", 256)
#: Bytes of one plan file (a typo'd path to a log file should not take the
#: router's memory).
MAX_FILE_BYTES = _tunable("MAX_FILE_BYTES", 64 * 1024 * 1024)
#: Values in one plan file's tree, counted as the validator would walk them
#: (a YAML alias counts each time it is used): a few hundred bytes of
#: aliases cannot expand into billions of values.
MAX_FILE_VALUES = _tunable("MAX_FILE_VALUES", 5_000_000)
#: Entries of each memo of the validator's fast path (rule names, province
#: lists, days, time slots, date ranges, prompt names, targets, time zones:
#: values that thousands of plans share, validated once).  A memo that
#: reaches it is emptied.  ~300 bytes an entry: ~3 MB for a full memo,
#: ~15 MB if the five that can fill up (provinces, days, time slots, dates,
#: targets) all do (docs/performance.md, "Validation").
VALIDATION_CACHE_ENTRIES = _tunable("VALIDATION_CACHE_ENTRIES", 10_000)

#: Auto-replies (``sms_replies``) of one number: the most an incoming
#: message is compared against, and the ``explain`` trace of one.
MAX_SMS_REPLIES = _tunable("MAX_SMS_REPLIES", 200)
#: Keywords of one auto-reply.
MAX_SMS_KEYWORDS = _tunable("MAX_SMS_KEYWORDS", 100)
#: Characters of one keyword, and of one opt-out or opt-in word.
MAX_SMS_KEYWORD_CHARS = _tunable("MAX_SMS_KEYWORD_CHARS", 70)
#: Opt-out words plus opt-in words of one number.
MAX_SMS_WORDS = _tunable("MAX_SMS_WORDS", 50)
#: Characters of one reply template as written (its rendering must also fit
#: in ``tel400.smstext.MAX_PARTS`` parts with every placeholder at its longest).
MAX_SMS_TEMPLATE_CHARS = _tunable("MAX_SMS_TEMPLATE_CHARS", 1_600)
#: Characters of an incoming message that keywords are compared with: the
#: rest is ignored (a concatenated SMS of 255 parts has ~17,000), so one
#: message costs a bounded time to answer.
SMS_MATCH_CHARS = _tunable("SMS_MATCH_CHARS", 2_000)
#: Numbers whose compiled SMS answers a router keeps (what ``answer_sms``
#: needs beyond routing: replies, words, caps), the least recently used
#: dropped first; one not kept costs a plan read and a compile.
SMS_PROGRAMS = _tunable("SMS_PROGRAMS", 4_096)

# A plan's time slots and date ranges share one pool of 32-bit offsets in the
# compiled engine: two values per entry, two conditions per rule.
if MAX_RULES * 4 * MAX_CONDITION_ENTRIES >= 1 << 31:
    raise ValueError(
        f"TEL400_MAX_RULES ({MAX_RULES}) times TEL400_MAX_CONDITION_ENTRIES ({MAX_CONDITION_ENTRIES}) "
        f"is more than the compiled engine can hold: keep their product under {(1 << 31) // 4}"
    )

#: The longest target a plan may name: user (64) @ host (253) :port (5)
#: (``tel400.plans``' target pattern); numbers are shorter.
MAX_TARGET_CHARS = 64 + 1 + 253 + 6

# A plan's bridge targets are packed as text with 32-bit offsets in the
# compiled engine: every rule and the default at the most targets, each at
# the longest.
if (MAX_RULES + 1) * MAX_TARGETS * MAX_TARGET_CHARS >= 1 << 31:
    raise ValueError(
        f"TEL400_MAX_RULES ({MAX_RULES}) times TEL400_MAX_TARGETS ({MAX_TARGETS}) is more than the "
        f"compiled engine can hold: keep (rules + 1) x targets at most {((1 << 31) - 1) // MAX_TARGET_CHARS}"
    )

# -- numbers (what both engines represent; not tunable) ------------------------------

#: Years a plan's calendar additions (holidays, workdays, years) may name.
#: The compiled engine keeps a byte per day from a calendar's first year to
#: its last: two holidays in years 1 and 9999 took 1.7 s to compile and
#: 3.6 MB per calendar.
CALENDAR_FIRST_YEAR = 1970
CALENDAR_LAST_YEAR = 2100

#: The most one counter holds, in its units (calls, seconds, millionths of a
#: currency unit): ``shm://`` keeps 40-bit values in its slots.
MAX_COUNTER_UNITS = (1 << 40) - 1
#: A calls cap's limit.
MAX_CAP_CALLS = 10**12
#: A minutes cap's limit (counted in seconds: 6e10).
MAX_CAP_MINUTES = 10**9
#: A cost cap's limit, in currency units (counted in millionths: 1e12, under
#: MAX_COUNTER_UNITS).
MAX_CAP_COST = 10**6
#: A tariff's rate per minute, in currency units: the longest call (12 h by
#: default) at this rate costs 720,000 units, 7.2e11 millionths, which one
#: counter holds.
MAX_RATE = 1_000
#: Characters of a decimal written as text ("0.35", "1e3").
MAX_DECIMAL_CHARS = 32
#: A target's share weight.
MAX_WEIGHT = 1_000_000
#: A tariff's billing increment, in seconds.
MAX_INCREMENT_S = 3_600
#: An SMS reply limit: replies per sender per window.
MAX_SMS_REPLY_LIMIT = 100
#: An SMS reply window, in seconds (60 s to a day).
MIN_SMS_REPLY_WINDOW_S = 60
MAX_SMS_REPLY_WINDOW_S = 86_400
