"""The times a call may carry, checked alike by both engines."""

from __future__ import annotations

import datetime as _dt
import math

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
