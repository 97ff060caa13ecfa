"""Counter backends: where caps and PIN failures are counted.

A backend keeps integer counters keyed by a string and a period id (calls,
billed seconds, or millionths of a currency unit) and answers one question
atomically: *do all of these caps still have room, and if so count the call
in all of them* (:meth:`CounterBackend.acquire`).  The router builds the keys;
backends know nothing of plans.

This module has the interface, the one-process ``memory://`` backend and
:func:`open_counters`, which also opens ``shm:///path`` (processes on one
host, :mod:`tel400._fast._shm`) and ``redis://`` (a cluster of hosts,
:mod:`tel400.redis_counters`).
Backends that fail or time out raise :class:`~tel400.BackendError`; the
router then applies the plan's ``on_backend_error`` policy.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import urlsplit

from sortedcontainers import SortedList

from .exceptions import BackendError

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


class MemoryCounters(CounterBackend):
    """Counters in this process's memory (``memory://``).

    Exact within one process and thread-safe; processes do not share them
    (use ``shm://`` or ``redis://`` for that).  Entries expire a period's
    lifetime after their first write; expired entries are evicted a few at
    a time on every write, in expiry order, so per-caller caps do not grow
    memory without bound and no call ever waits for a full sweep.
    """

    url = "memory://"
    _EVICT_PER_WRITE = 2

    def __init__(self, *, clock=time.time) -> None:
        self._lock = threading.Lock()
        # key -> [period, value, expires_at]
        self._counters: dict[str, list] = {}
        # key -> [window_opened_at, failures, expires_at]
        self._pins: dict[str, list] = {}
        # (expires_at, table, key) in expiry order; an item whose entry has
        # since been replaced (a new period, a new window) is skipped.
        self._expiry: SortedList = SortedList()
        self._clock = clock

    def _current(self, key: str, period: int) -> int:
        entry = self._counters.get(key)
        if entry is None or entry[0] != period:
            return 0
        return entry[1]

    def acquire(self, checks: Sequence[CapCheck], *, dry_run: bool = False) -> int:
        with self._lock:
            for i, check in enumerate(checks):
                if self._current(check.key, check.period) >= check.limit:
                    return i
            if not dry_run:
                now = self._clock()
                for check in checks:
                    if check.increment:
                        self._bump(check.key, check.period, check.increment, now, check.ttl_s)
            return -1

    def _bump(self, key: str, period: int, amount: int, now: float, ttl_s: int) -> int:
        entry = self._counters.get(key)
        if entry is None or entry[0] != period:
            entry = self._counters[key] = [period, 0, now + ttl_s]
            self._expiry.add((now + ttl_s, 0, key))
        entry[1] += amount
        self._evict(now)
        return entry[1]

    def _evict(self, now: float) -> None:
        expiry = self._expiry
        for _ in range(self._EVICT_PER_WRITE):
            if not expiry or expiry[0][0] > now:
                return
            expires, table, key = expiry.pop(0)
            entries = self._counters if table == 0 else self._pins
            entry = entries.get(key)
            if entry is not None and entry[2] == expires:
                del entries[key]

    def add(self, key: str, period: int, amount: int, ttl_s: int) -> int:
        with self._lock:
            return self._bump(key, period, amount, self._clock(), ttl_s)

    def value(self, key: str, period: int) -> int:
        with self._lock:
            return self._current(key, period)

    def pin_failures(self, key: str, now: float, window_s: int) -> int:
        with self._lock:
            entry = self._pins.get(key)
            if entry is None or now - entry[0] >= window_s:
                return 0
            return entry[1]

    def add_pin_failure(self, key: str, now: float, window_s: int) -> int:
        with self._lock:
            entry = self._pins.get(key)
            if entry is None or now - entry[0] >= window_s:
                expires = self._clock() + window_s
                entry = self._pins[key] = [now, 0, expires]
                self._expiry.add((expires, 1, key))
            entry[1] += 1
            self._evict(self._clock())
            return entry[1]

    def clear_pin_failures(self, key: str) -> None:
        with self._lock:
            self._pins.pop(key, None)

    def __len__(self) -> int:
        return len(self._counters) + len(self._pins)


def open_counters(spec: CounterBackend | str | None, *, memory=None) -> CounterBackend:
    """A counter backend from an object or a URL (``None`` means ``memory://``).

    Args:
        spec: a backend, a URL, or ``None``.
        memory: the class that serves ``memory://`` (default: the active
            implementation's, compiled when available).

    Raises:
        ValueError: for a URL this version cannot open.
    """
    if memory is None:
        from ._impl import MemoryCounters as memory
    if spec is None:
        return memory()
    if isinstance(spec, CounterBackend):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"counters: expected a backend or a URL, got {type(spec).__name__}")
    parts = urlsplit(spec)
    scheme = parts.scheme
    if scheme == "memory":
        return memory()
    if scheme == "shm":
        return _open_shm(parts)
    if scheme in ("redis", "rediss", "unix"):
        from .redis_counters import RedisCounters

        return RedisCounters(spec)
    raise ValueError(f"counters: unsupported URL {spec!r}; expected memory://, shm:///path or redis://host:port/db")


def _open_shm(parts) -> CounterBackend:
    from urllib.parse import parse_qs

    try:
        from ._fast._shm import DEFAULT_SLOTS, ShmCounters
    except ImportError:
        raise ValueError(
            "counters: shm:// needs tel400's compiled extension (atomic operations on shared memory), "
            "which is not built here; use redis:// or install tel400 with a C compiler"
        ) from None
    if not parts.path:
        raise ValueError("counters: shm:// needs a file path, e.g. shm:///dev/shm/tel400.counters")
    query = parse_qs(parts.query)
    try:
        slots = int(query.get("slots", [DEFAULT_SLOTS])[0])
    except ValueError:
        raise ValueError(f"counters: shm:// slots must be a whole number, got {query['slots'][0]!r}") from None
    return ShmCounters(parts.path, slots)


__all__ = ["BackendError", "CapCheck", "CounterBackend", "MemoryCounters", "PERIOD_TTL_S", "open_counters"]
