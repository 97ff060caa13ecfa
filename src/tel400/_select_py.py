"""Reference implementation of target selection (one selector per bridge rule).

Every selector answers ``order(caller_key, rng, advance)``: all of the rule's
targets once, the pick first, then failover order.  Orders are tuples built
once per plan load, so a call only chooses which one to return.

* ``weighted``: a random pick in proportion to weight (stateless, so equally
  right in every process); failover by descending weight, ties in listed order.
* ``round_robin``: smooth weighted round robin (nginx's algorithm): 30/70
  gives exactly 3 of every 10 calls to the first target, interleaved.
* ``sequential``: the listed order, always.
* ``sticky``: weighted rendezvous hashing of the caller, so a caller keeps its
  target while the list stands and losing a target moves only its callers.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections.abc import Sequence

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits: a fixed, process-independent hash (``hash()`` is salted)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def mix64(x: int) -> int:
    """SplitMix64's finaliser: spreads every input bit over the output."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK64
    return x ^ (x >> 31)


def unit_interval(x: int) -> float:
    """A 64-bit hash as a float strictly between 0 and 1."""
    return ((x >> 11) + 0.5) / 9007199254740992.0  # 2**53


def failover_rank(weights: Sequence[int]) -> list[int]:
    """Target indexes by descending weight, ties in listed order."""
    return sorted(range(len(weights)), key=lambda i: (-weights[i], i))


def orders_by_pick(targets: Sequence[str], weights: Sequence[int]) -> tuple[tuple[str, ...], ...]:
    """For each possible pick, the full order: that pick, then the failover rank.

    Built once per bridge rule when a plan compiles: one and two targets
    (most rules) take a shortcut, since the rest of the order is then fixed.
    """
    n = len(targets)
    if n == 1:
        return (tuple(targets),)
    if n == 2:
        first, second = targets
        return ((first, second), (second, first))
    rank = failover_rank(weights)
    return tuple([(targets[pick],) + tuple([targets[i] for i in rank if i != pick]) for pick in range(n)])


class Sequential:
    __slots__ = ("_order",)
    strategy = "sequential"

    def __init__(self, targets: Sequence[str], weights: Sequence[int]) -> None:
        # Listed order; a zero weight means failover only, so those go last.
        self._order = tuple(t for t, w in zip(targets, weights) if w) + tuple(
            t for t, w in zip(targets, weights) if not w
        )

    def order(self, caller_key: str, rng, advance: bool = True) -> tuple[str, ...]:
        return self._order


class Weighted:
    __slots__ = ("_orders", "_cumulative", "_indexes", "_total")
    strategy = "weighted"

    def __init__(self, targets: Sequence[str], weights: Sequence[int]) -> None:
        self._orders = orders_by_pick(targets, weights)
        self._cumulative: list[int] = []
        self._indexes: list[int] = []
        total = 0
        for i, w in enumerate(weights):
            if w:
                total += w
                self._cumulative.append(total)
                self._indexes.append(i)
        self._total = total

    def order(self, caller_key: str, rng, advance: bool = True) -> tuple[str, ...]:
        """O(log targets): one random integer and a binary search."""
        r = rng.randrange(self._total)
        return self._orders[self._indexes[bisect_right(self._cumulative, r)]]


class RoundRobin:
    """Smooth weighted round robin; the state is per process and per plan load
    (carried over a reload when the rule's targets are unchanged)."""

    __slots__ = ("_orders", "_weights", "_current", "_total", "_lock")
    strategy = "round_robin"

    def __init__(self, targets: Sequence[str], weights: Sequence[int], state: list[int] | None = None) -> None:
        self._orders = orders_by_pick(targets, weights)
        self._weights = tuple(weights)
        self._total = sum(weights)
        self._current = state if state is not None else [0] * len(weights)
        self._lock = threading.Lock()

    @property
    def state(self) -> list[int]:
        return self._current

    def order(self, caller_key: str, rng, advance: bool = True) -> tuple[str, ...]:
        """O(targets): add each weight, take the largest, subtract the total."""
        with self._lock:
            current = self._current if advance else list(self._current)
            best = 0
            best_value = None
            for i, w in enumerate(self._weights):
                current[i] += w
                if w and (best_value is None or current[i] > best_value):
                    best, best_value = i, current[i]
            current[best] -= self._total
            return self._orders[best]


class Sticky:
    """Weighted rendezvous (highest random weight) hashing of the caller."""

    __slots__ = ("_targets", "_weights", "_seeds", "_zero")
    strategy = "sticky"

    def __init__(self, targets: Sequence[str], weights: Sequence[int]) -> None:
        self._targets = tuple(targets)
        self._weights = tuple(weights)
        self._seeds = tuple(fnv1a64(t.encode()) for t in targets)
        # Zero-weight targets never win; they follow in listed order.
        self._zero = tuple(t for t, w in zip(targets, weights) if not w)

    def order(self, caller_key: str, rng, advance: bool = True) -> tuple[str, ...]:
        """O(targets log targets): a score per target, sorted."""
        h = fnv1a64(caller_key.encode())
        scored = []
        for i, (w, seed) in enumerate(zip(self._weights, self._seeds)):
            if w:
                u = unit_interval(mix64(h ^ seed))
                scored.append((-w / math.log(u), i))
        scored.sort(key=lambda s: (-s[0], s[1]))
        return tuple(self._targets[i] for _, i in scored) + self._zero


SELECTORS = {cls.strategy: cls for cls in (Weighted, RoundRobin, Sequential, Sticky)}


def make_selector(strategy: str, targets: Sequence[str], weights: Sequence[int], state=None):
    if strategy == "round_robin":
        return RoundRobin(targets, weights, state)
    return SELECTORS[strategy](targets, weights)
