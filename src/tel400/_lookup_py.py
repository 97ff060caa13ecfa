"""Reference implementation of the prefix-partition lookup (a binary search)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from ._numbers_py import national_key, normalize_or_none


class IntervalLookup:
    """Province index by key, over a partition given as starts and codes."""

    __slots__ = ("_starts", "_codes")

    def __init__(self, starts: Sequence[int], codes: Sequence[int]) -> None:
        if not starts or len(codes) != len(starts):
            raise ValueError("a partition needs one code per start, and at least one")
        self._starts = list(starts)
        self._codes = bytes(codes)

    def index_of_key(self, key: int) -> int:
        """Province index for a key (0: unknown).  O(log n)."""
        if key < 0:
            return 0
        return self._codes[bisect_right(self._starts, key) - 1]

    def index_of_number(self, number: object) -> int:
        """Province index of a number in any written form (0: unknown or not a number)."""
        normal = normalize_or_none(number)
        return 0 if normal is None else self.index_of_key(national_key(normal))

    @property
    def nbytes(self) -> int:
        return len(self._starts) * 9
