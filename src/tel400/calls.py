"""Calls in progress, remembered from routing until their end is reported.

Minutes and cost are charged when a call ends, to the period in which it
was routed; the router keeps what it needs (see
:class:`tel400.billing.CallRecord`) under the call's id.

Two bounds keep memory finite, and neither may lose a charge silently:

* **age** — a record older than ``max_age_s`` (12 h by default) is dropped:
  its end was lost (a missed BYE), or the call outlived the longest call
  tel400 accepts, which is the same number (:meth:`tel400.Router.call_ended`
  refuses longer durations).  Counted in :attr:`CallRegistry.dropped`.
* **size** — at ``max_calls`` (200,000 by default) records, the expired ones
  go first; if none has expired, the *new* call is not remembered: it was
  admitted, but its end will be unknown and its minutes and cost will not be
  charged.  Counted in :attr:`CallRegistry.refused`.  A flood of fresh call
  ids therefore cannot push out a real call that is still talking.

Both are logged, at most once per ``log_interval_s``, with the counts since
the last line.

A call leaves only once its charge is added: an end claims it
(:meth:`CallRegistry.claim`), and :meth:`CallRegistry.settle` forgets it or,
when the counter backend refused part of the charge, leaves in its place a
record of what is left, which keeps the call's age, so a retry charges the
rest and a charge that never succeeds expires with the call.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import structlog

_log = structlog.get_logger("tel400.calls")

#: How long a call is remembered by default, and so the longest call accepted.
DEFAULT_MAX_AGE_S = 12 * 3600

#: The most ``max_age_s`` may be: a week.  No call lasts that long, and it
#: keeps every duration, bill and call record far inside 64-bit integers.
MAX_AGE_S = 7 * 86400


def check_bounds(max_calls, max_age_s) -> None:
    """Refuse bounds no registry can keep (every registry checks its own the same way)."""
    if isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1:
        raise ValueError(f"max_calls: expected a whole number >= 1, got {max_calls!r}")
    if isinstance(max_age_s, bool) or not isinstance(max_age_s, (int, float)) \
            or not 0 < max_age_s <= MAX_AGE_S:
        raise ValueError(f"max_age_s: expected seconds > 0, at most {MAX_AGE_S} (a week), got {max_age_s!r}")


def log_forgotten(unlogged: dict, logged_at: float | None, now: float, interval_s: float, **fields):
    """Log the calls forgotten since the last line, at most once per ``interval_s``.

    One line per interval whatever the rate: a flood must not flood the log
    too.  ``unlogged`` counts ``expired`` and ``refused`` (and, for the
    shared registries, ``failed``) since the last line.

    Returns:
        The new ``(unlogged, logged_at)``: the counts are emptied when a
        line was written.
    """
    if logged_at is not None and now - logged_at < interval_s:
        return unlogged, logged_at
    _log.warning("calls_forgotten", **unlogged, **fields)
    return dict.fromkeys(unlogged, 0), now


class CallRegistry:
    """Thread-safe map of call id → call record, bounded in size and age.

    Args:
        max_calls: the most calls remembered at once (see the module notes
            for what happens beyond).
        max_age_s: how long a call is remembered; also the longest duration
            :meth:`tel400.Router.call_ended` accepts.  At most a week.
        clock: a monotonic clock (tests).
        log_interval_s: at most one log line per this many seconds for
            dropped and refused calls.

    Every operation is O(1) amortised (an ordered dict under one lock).
    """

    #: whether the calls are shared with other processes (each operation is then I/O:
    #: an asyncio server runs call ends in a thread).  See :mod:`tel400.callstores`.
    shared = False

    def __init__(self, *, max_calls: int = 200_000, max_age_s: float = DEFAULT_MAX_AGE_S, clock=time.monotonic,
                 log_interval_s: float = 60.0) -> None:
        check_bounds(max_calls, max_age_s)
        self._calls: OrderedDict = OrderedDict()
        self._ending: set[str] = set()  # calls whose end is being charged (claim .. settle)
        self._lock = threading.Lock()
        self.max_calls = max_calls
        self.max_age_s = max_age_s
        self._clock = clock
        self._log_interval_s = log_interval_s
        self._logged_at: float | None = None
        self._unlogged = {"expired": 0, "refused": 0}
        #: records dropped unended because they were older than ``max_age_s``.
        self.dropped = 0
        #: calls not remembered because ``max_calls`` unexpired calls were in progress.
        self.refused = 0

    def remember(self, record) -> bool:
        """Keep ``record`` until its end; ``False`` if the registry is full (counted, logged)."""
        now = self._clock()
        record.remembered_at = now
        call_id = record.call_id
        with self._lock:
            calls = self._calls
            expired = self._drop_expired(now)
            stored = call_id in calls or len(calls) < self.max_calls
            if stored:
                calls.pop(call_id, None)  # the same id routed again (a PIN round): the latest wins
                calls[call_id] = record
            else:
                self.refused += 1
                self._unlogged["refused"] += 1
            if expired or not stored:
                self._log(now, record.number)
        return stored

    def _drop_expired(self, now: float) -> int:
        calls, dropped = self._calls, 0
        while calls:
            oldest = next(iter(calls.values()))
            if now - oldest.remembered_at < self.max_age_s:
                break
            calls.popitem(last=False)
            dropped += 1
        self.dropped += dropped
        self._unlogged["expired"] += dropped
        return dropped

    def _log(self, now: float, number: str) -> None:
        self._unlogged, self._logged_at = log_forgotten(
            self._unlogged, self._logged_at, now, self._log_interval_s, last_number=number,
            in_progress=len(self._calls), max_calls=self.max_calls, max_age_s=self.max_age_s)

    def get(self, call_id):
        """The record of ``call_id``, left in place; ``None`` if unknown.

        Records older than ``max_age_s`` are dropped first (counted, logged),
        so that a call whose charge keeps failing is forgotten at its age
        even when no new call is routed.
        """
        now = self._clock()
        with self._lock:
            if self._drop_expired(now):
                self._log(now, "")
            return self._calls.get(str(call_id))

    def claim(self, call_id, record) -> bool:
        """Reserve the end of ``call_id`` for one report, leaving its record in place.

        Returns:
            ``False`` if the call no longer holds ``record`` or another
            report of its end holds the claim: two reports charge once.
        """
        key = str(call_id)
        with self._lock:
            if self._calls.get(key) is not record or key in self._ending:
                return False
            self._ending.add(key)
            return True

    def settle(self, call_id, record, rest=None) -> None:
        """End a :meth:`claim`: forget the call, or keep ``rest``, what is left to charge.

        ``rest`` takes ``record``'s place, so it keeps the call's age and
        expires with it: a charge that can never be applied does not keep a
        call forever.  Nothing changes if the call was routed again or
        expired meanwhile.
        """
        key = str(call_id)
        with self._lock:
            self._ending.discard(key)
            if self._calls.get(key) is not record:
                return
            if rest is None:
                del self._calls[key]
            else:
                self._calls[key] = rest  # an existing key keeps its place in the age order

    def pop(self, call_id):
        with self._lock:
            return self._calls.pop(str(call_id), None)

    def close(self) -> None:
        """Nothing to release (the shared registries close their connections)."""

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id) -> bool:
        return str(call_id) in self._calls


def open_calls(spec=None, *, max_calls: int = 200_000, max_age_s: float = DEFAULT_MAX_AGE_S):
    """A call registry from an object or a URL (``None`` means ``memory://``).

    Args:
        spec: a registry (returned as is, its own bounds kept), ``None`` or
            ``"memory://"`` (a :class:`CallRegistry` of this process),
            ``"sqlite:///path/calls.db"`` (the processes of one host:
            :class:`tel400.callstores.SqliteCallRegistry`), or a Redis URL
            in any form :mod:`tel400.redis_clients` reads (``redis://``,
            ``redis+cluster://``, ``redis+sentinel://``: processes on any
            host, :class:`tel400.callstores.RedisCallRegistry`).  The shared
            forms take ``?claim_lease_s=`` (and Redis ``?timeout_ms=``,
            ``?prefix=``); docs/limits.md, "Calls in progress shared between
            processes".
        max_calls, max_age_s: the bounds of a registry made here.

    Raises:
        ValueError: a URL of another scheme, without a path (sqlite), or with
            a query parameter that is unknown or not a positive number; bounds
            out of range.
        TypeError: ``spec`` is neither a registry nor a string.
    """
    if spec is None:
        return CallRegistry(max_calls=max_calls, max_age_s=max_age_s)
    if not isinstance(spec, str):
        if all(hasattr(spec, name) for name in ("remember", "get", "claim", "settle", "pop")):
            return spec
        raise TypeError(f"calls: expected a call registry or a URL, got {type(spec).__name__}")
    from . import callstores

    return callstores.open_url(spec, max_calls=max_calls, max_age_s=max_age_s)
