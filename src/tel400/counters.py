"""Counter backends: where caps and PIN failures are counted.

A backend keeps integer counters keyed by a string and a period id (calls,
billed seconds, or millionths of a currency unit), every (key, period) a
counter of its own, so that a call dated in another period never disturbs
the current one, and answers one question
atomically: *do all of these caps still have room, and if so count the call
in all of them* (:meth:`CounterBackend.acquire`).  The router builds the keys;
backends know nothing of plans.

This module has the interface, the one-process ``memory://`` backend and
:func:`open_counters`, which also opens ``shm:///path`` (processes on one
host, :mod:`tel400._fast._shm`) and ``redis://`` (a cluster of hosts,
:mod:`tel400.redis_counters`; also ``redis+cluster://`` and
``redis+sentinel://``, :mod:`tel400.redis_clients`).
Backends that fail or time out raise :class:`~tel400.BackendError`; the
router then applies the plan's ``on_backend_error`` policy.
"""

from __future__ import annotations

import abc
import heapq
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

import structlog

from . import redis_clients
from .exceptions import BackendError

_log = structlog.get_logger("tel400.counters")

#: How long a period's counter must outlive its first write, by period: the
#: longest such period plus an hour (DST) — keys carry the period id, so a
#: generous lifetime never mixes periods.
PERIOD_TTL_S = {"hour": 2 * 3600, "day": 25 * 3600 + 3600, "week": 8 * 86400, "month": 32 * 86400}


class CapCheck(NamedTuple):
    """One cap of a call: admitted while ``value < limit``; then ``+increment``."""

    key: str
    period: int
    limit: int
    increment: int
    ttl_s: int


class CounterBackend(abc.ABC):
    """What the router needs from a counter store."""

    url: str = ""
    #: Its operations wait on the network (Redis): a server with an event
    #: loop then decides off the loop (:attr:`tel400.Router.waits_on_io`).
    waits_on_io: bool = False

    @abc.abstractmethod
    def acquire(self, checks: Sequence[CapCheck], *, dry_run: bool = False) -> int:
        """Check every cap and, if all have room, count them all; atomically.

        Returns:
            -1 if every check had room (and, unless ``dry_run``, each was
            incremented); else the index of the first check at its limit, and
            nothing was counted.

        Raises:
            BackendError: the store failed or did not answer in time.
        """

    @abc.abstractmethod
    def add(self, key: str, period: int, amount: int, ttl_s: int) -> int:
        """Add ``amount`` to one counter (minutes and cost at call end); return the new value."""

    @abc.abstractmethod
    def value(self, key: str, period: int) -> int:
        """The current value of a counter (0 if never counted)."""

    @abc.abstractmethod
    def pin_failures(self, key: str, now: float, window_s: int) -> int:
        """Wrong PINs under ``key`` since the window opened (0 once it has passed)."""

    @abc.abstractmethod
    def add_pin_failure(self, key: str, now: float, window_s: int) -> int:
        """Record a wrong PIN; the window opens at the first failure.  Returns the count."""

    @abc.abstractmethod
    def clear_pin_failures(self, key: str) -> None:
        """Forget the wrong PINs under ``key`` (a right PIN was entered)."""

    def close(self) -> None:
        """Release connections or mappings."""


#: ``memory://``'s default bound on counters plus PIN windows of keys not held
#: yet (new periods of held keys may take twice that): about 330 bytes each
#: compiled (510 in the reference) with a per-caller key, so at most ~130 MB
#: (~200 MB); ``memory://?max_keys=N`` changes it.
DEFAULT_MAX_KEYS = 200_000

#: Kinds of entries refused at the bound, as :class:`MemoryCounters` counts them:
#: a cap of a call being routed, a charge at a call's end, a wrong PIN.
REFUSAL_KINDS = ("cap", "charge", "pin")


class RefusalLog:
    """A warning when counters are refused at a table's bound, at most once per interval.

    Shared by every backend with a bound (both ``memory://`` twins, ``shm://``):
    a flood of refusals costs one log line per ``interval_s``, which says how
    many were refused since the previous line.  Cost: O(1) per refusal.
    """

    def __init__(self, backend: str, bound: str, interval_s: float = 60.0, *, clock=time.monotonic) -> None:
        self._backend = backend
        self._bound = bound
        self._interval_s = interval_s
        self._clock = clock
        self._last = -float("inf")
        self._unlogged: dict[str, int] = dict.fromkeys(REFUSAL_KINDS, 0)

    def note(self, kind: str) -> None:
        self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
        now = self._clock()
        if now - self._last < self._interval_s:
            return
        self._last = now
        refused, self._unlogged = self._unlogged, dict.fromkeys(REFUSAL_KINDS, 0)
        _log.warning(
            "counter_keys_refused", backend=self._backend, bound=self._bound,
            **{kind: count for kind, count in refused.items() if count},
            effect="the plan's on_backend_error applied to each (uncounted or rejected)",
            fix="raise the bound, or shorten what is counted per caller",
        )


def check_max_keys(max_keys) -> int:
    """``max_keys`` as a whole number of at least 1 (ValueError otherwise)."""
    if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
        raise ValueError(f"counters: max_keys must be a whole number of at least 1, got {max_keys!r}")
    return max_keys


class MemoryCounters(CounterBackend):
    """Counters in this process's memory (``memory://``).

    Exact within one process and thread-safe; processes do not share them
    (use ``shm://`` or ``redis://`` for that).

    Every (key, period) is a counter of its own, as on ``redis://``: a call
    dated in another period (``at``) is counted there and never resets or
    disturbs the current period's count; a charge at a call's end lands in
    the period the call was routed in, whatever period it is now.

    Entries (counters and PIN windows) expire a period's lifetime after
    their first write (the backend's clock); expired entries are evicted in
    expiry order, two per write, so no call waits for a full sweep.

    The bound: a key not held yet (a new caller, a new PIN window) gets an
    entry only while fewer than ``max_keys`` entries are held; a new period
    of a key already held (a number's cap at midnight, a late charge) also
    beyond that, up to ``2 * max_keys``, so that strangers filling the table
    cannot stop the counting of the caps they did not create.  A write that
    finds no room first evicts every expired entry; if there is still none,
    nothing is counted or evicted, the refusal is counted (:attr:`refused`,
    ``tel400_counter_keys_refused``) and logged (at most once a minute), and
    :class:`~tel400.BackendError` is raised so that the plan's
    ``on_backend_error`` policy decides.  A count already held is never
    dropped to make room.

    Args:
        clock: the time source for expiry (tests pass a fake one).
        max_keys: the bound on entries of keys not held yet (:data:`DEFAULT_MAX_KEYS`);
            all entries stay within twice that.

    Cost: O(caps) per acquire, O(log entries) per new entry.
    """

    _EVICT_PER_WRITE = 2

    def __init__(self, *, clock=time.time, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.max_keys = check_max_keys(max_keys)
        self.url = "memory://" if max_keys == DEFAULT_MAX_KEYS else f"memory://?max_keys={max_keys}"
        #: New entries refused at the bound, by kind (:data:`REFUSAL_KINDS`).
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_KINDS, 0)
        self._lock = threading.Lock()
        # (key, period) -> [value, expires_at]
        self._counters: dict[tuple[str, int], list] = {}
        # key -> how many periods of it are held
        self._held: dict[str, int] = {}
        # key -> [failures, expires_at, window_opened_at]
        self._pins: dict[str, list] = {}
        # A heap of (expires_at, seq, table, dict key, entry): one item per
        # entry; an item whose entry has gone is skipped, one whose entry
        # now expires later is pushed again with the later time.
        self._expiry: list = []
        self._seq = 0
        self._refusal_log = RefusalLog("memory", f"max_keys={max_keys}")
        self._clock = clock

    # -- entries ------------------------------------------------------------

    def _value(self, key: str, period: int) -> int:
        entry = self._counters.get((key, period))
        return 0 if entry is None else entry[0]

    def _push_expiry(self, expires: float, table: int, dict_key, entry: list) -> None:
        self._seq += 1
        heapq.heappush(self._expiry, (expires, self._seq, table, dict_key, entry))

    def _compact_expiry(self) -> None:
        """Drop the items of entries that have gone (cleared PIN windows), when they pile up."""
        if len(self._expiry) > 2 * len(self) + 64:
            live = [item for item in self._expiry if self._holds(item)]
            heapq.heapify(live)
            self._expiry = live

    def _holds(self, item) -> bool:
        entries = self._counters if item[2] == 0 else self._pins
        return entries.get(item[3]) is item[4]

    def _evict(self, now: float, limit: int) -> None:
        """Evict up to ``limit`` expired entries (heap items looked at), in expiry order."""
        expiry = self._expiry
        while limit and expiry and expiry[0][0] <= now:
            limit -= 1
            expires, _, table, dict_key, entry = heapq.heappop(expiry)
            entries = self._counters if table == 0 else self._pins
            if entries.get(dict_key) is not entry:
                continue
            if entry[1] > expires:  # renewed since: wait for its new time
                self._push_expiry(entry[1], table, dict_key, entry)
            else:
                del entries[dict_key]
                if table == 0:
                    self._forget_period(dict_key[0])

    def _forget_period(self, key: str) -> None:
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]

    def _has_room(self, new_keys: int, new_periods: int) -> bool:
        """Room for entries of keys not held yet, and for new periods of held keys."""
        size = len(self)
        if new_keys and size + new_keys > self.max_keys:
            return False
        return size + new_keys + new_periods <= 2 * self.max_keys

    def _make_room(self, new_keys: int, new_periods: int, now: float, kind: str) -> None:
        """Room for new entries, evicting expired ones first; else BackendError."""
        if self._has_room(new_keys, new_periods):
            return
        self._evict(now, -1)
        if not self._has_room(new_keys, new_periods):
            self._refuse(kind)

    def _refuse(self, kind: str):
        self.refused[kind] += 1
        self._refusal_log.note(kind)
        raise BackendError(
            f"memory counters: full (max_keys={self.max_keys}; raise it with memory://?max_keys=N)"
        )

    def _new_counter(self, key: str, period: int, now: float, ttl_s: int) -> list:
        entry = self._counters[(key, period)] = [0, now + ttl_s]
        self._held[key] = self._held.get(key, 0) + 1
        self._push_expiry(now + ttl_s, 0, (key, period), entry)
        return entry

    # -- the interface ----------------------------------------------------------

    def acquire(self, checks: Sequence[CapCheck], *, dry_run: bool = False) -> int:
        with self._lock:
            if not dry_run:
                now = self._clock()
                if len(self) + len(checks) > self.max_keys:
                    self._evict(now, -1)  # near the bound: expired entries go first
            new_keys = new_periods = 0
            for i, check in enumerate(checks):
                entry = self._counters.get((check.key, check.period))
                if (0 if entry is None else entry[0]) >= check.limit:
                    return i
                if entry is None and check.increment:
                    if check.key in self._held:
                        new_periods += 1
                    else:
                        new_keys += 1
            if dry_run:
                return -1
            if (new_keys or new_periods) and not self._has_room(new_keys, new_periods):
                self._refuse("cap")
            for check in checks:
                if check.increment:
                    entry = self._counters.get((check.key, check.period))
                    if entry is None:
                        entry = self._new_counter(check.key, check.period, now, check.ttl_s)
                    entry[0] += check.increment
            self._evict(now, self._EVICT_PER_WRITE)
            return -1

    def add(self, key: str, period: int, amount: int, ttl_s: int) -> int:
        with self._lock:
            now = self._clock()
            entry = self._counters.get((key, period))
            if entry is None:
                held = key in self._held
                self._make_room(0 if held else 1, 1 if held else 0, now, "charge")
                entry = self._new_counter(key, period, now, ttl_s)
            entry[0] += amount
            self._evict(now, self._EVICT_PER_WRITE)
            return entry[0]

    def value(self, key: str, period: int) -> int:
        with self._lock:
            return self._value(key, period)

    def pin_failures(self, key: str, now: float, window_s: int) -> int:
        with self._lock:
            entry = self._pins.get(key)
            if entry is None or now - entry[2] >= window_s:
                return 0
            return entry[0]

    def add_pin_failure(self, key: str, now: float, window_s: int) -> int:
        with self._lock:
            clock_now = self._clock()
            entry = self._pins.get(key)
            if entry is None:
                self._make_room(1, 0, clock_now, "pin")
                entry = self._pins[key] = [0, clock_now + window_s, now]
                self._push_expiry(clock_now + window_s, 1, key, entry)
                self._compact_expiry()
            elif now - entry[2] >= window_s:  # a new window, in the same entry
                entry[0], entry[1], entry[2] = 0, clock_now + window_s, now
            entry[0] += 1
            self._evict(clock_now, self._EVICT_PER_WRITE)
            return entry[0]

    def clear_pin_failures(self, key: str) -> None:
        with self._lock:
            self._pins.pop(key, None)
            self._compact_expiry()

    def usage(self) -> dict:
        """Entries held, the bound, and new entries refused at it by kind (for metrics)."""
        with self._lock:
            return {"keys": len(self), "max_keys": self.max_keys, "refused": dict(self.refused)}

    def _check(self) -> None:
        """Assert the invariants: within the bound, one expiry item per entry, a bounded queue."""
        assert len(self) <= 2 * self.max_keys
        assert sum(self._held.values()) == len(self._counters)
        held = [item for item in self._expiry if self._holds(item)]
        assert len(held) == len(self), (len(held), len(self))
        assert len(self._expiry) <= 2 * len(self) + 64

    def __len__(self) -> int:
        return len(self._counters) + len(self._pins)


def open_counters(spec: CounterBackend | str | None, *, memory=None) -> CounterBackend:
    """A counter backend from an object or a URL (``None`` means ``memory://``).

    Args:
        spec: a backend, a URL, or ``None``.  ``memory://?max_keys=N`` bounds
            the entries held in memory (:data:`DEFAULT_MAX_KEYS`);
            ``shm:///path?slots=N`` sizes the shared table; ``redis://``,
            ``redis+cluster://`` and ``redis+sentinel://`` URLs are read by
            :mod:`tel400.redis_clients` (:class:`~tel400.redis_counters.RedisCounters`).
        memory: the class that serves ``memory://`` (default: the active
            implementation's, compiled when available).

    Raises:
        ValueError: for a URL this version cannot open, or a query value
            that is not a whole number of at least 1.
    """
    if memory is None:
        memory = _memory_class
    if spec is None:
        return memory()
    if isinstance(spec, CounterBackend):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"counters: expected a backend or a URL, got {type(spec).__name__}")
    parts = urlsplit(spec)
    scheme = parts.scheme
    if scheme == "memory":
        return memory(max_keys=_whole_query_number(parts, "max_keys", DEFAULT_MAX_KEYS))
    if scheme == "shm":
        return _open_shm(parts)
    if scheme in redis_clients.SCHEMES:
        from .redis_counters import RedisCounters

        return RedisCounters(spec)
    raise ValueError(
        f"counters: unsupported URL {spec!r}; expected memory://, shm:///path, redis://host:port/db, "
        "redis+cluster://host:port,host:port/ or redis+sentinel://host:port/service/db"
    )


def _whole_query_number(parts, name: str, default: int) -> int:
    """A query parameter of a counters URL that must be a whole number of at least 1."""
    from urllib.parse import parse_qs

    values = parse_qs(parts.query).get(name)
    if not values:
        return default
    raw = values[0]
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ValueError(
            f"counters: {parts.scheme}:// {name} must be a whole number of at least 1, got {raw!r}"
        )
    return int(raw)


def _open_shm(parts) -> CounterBackend:
    try:
        from ._fast._shm import ShmCounters
    except ImportError:
        raise ValueError(
            "counters: shm:// needs tel400's compiled extension (atomic operations on shared memory), "
            "which is not built here; use redis:// or install tel400 with a C compiler"
        ) from None
    if not parts.path:
        raise ValueError("counters: shm:// needs a file path, e.g. shm:///dev/shm/tel400.counters")
    # No slots= in the URL: the table already in the file, whatever its size, or a new default one.
    return ShmCounters(parts.path, _whole_query_number(parts, "slots", None))


#: The class ``memory://`` opens when the caller names none: the reference
#: here; :mod:`tel400._impl` (the implementation selector, which imports
#: this module) installs the active implementation's with :func:`use_memory_class`.
_memory_class = MemoryCounters


def use_memory_class(cls) -> None:
    """Make ``cls`` the default class of ``memory://`` (called by :mod:`tel400._impl`)."""
    global _memory_class
    _memory_class = cls


__all__ = [
    "BackendError", "CapCheck", "CounterBackend", "DEFAULT_MAX_KEYS", "MemoryCounters", "PERIOD_TTL_S",
    "open_counters",
]
