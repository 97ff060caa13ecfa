"""Prefix tables: which province a number belongs to.

A table is a partition of the key space (national significant numbers,
padded on the right to :data:`KEY_WIDTH` digits) into intervals, each with a
province index (:data:`tel400.provinces.CODES`; 0 is "unknown").  Prefixes
nest (``139`` contains ``1390101``), and the longest prefix wins, so a set of
prefixes flattens into such a partition with one sweep; adjacent intervals of
the same province merge.  The built-in province-level table for all of China
is about 24,000 intervals, and a lookup is one binary search.

Segment files are CSV, one ``prefix,province`` per line, prefixes written the
way numbers are normalised: mobiles from their first digits (``1390101``),
fixed lines with their trunk 0 (``010``, ``0571``).  ``#`` starts a comment.
A province may be a code, a Chinese or an English name; ``-`` or an empty
field marks the prefix as explicitly unknown.
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources

from . import provinces
from ._lookup_py import IntervalLookup as _PyLookup
from ._numbers_py import KEY_WIDTH
from .exceptions import SegmentError

KEY_SPACE = 10**KEY_WIDTH

#: The searchable form tables build: the reference here; :mod:`tel400._impl`
#: (which imports this module) installs the active implementation's with
#: :func:`use_lookup_class`, so this low-level module never imports upward.
_lookup_class = _PyLookup


def use_lookup_class(cls) -> None:
    """Make ``cls`` the class of :attr:`PrefixTable.lookup` of tables built from now on (``tel400._impl``)."""
    global _lookup_class
    _lookup_class = cls
_TRANSPARENT = -1  # in an overlay: "no opinion here, keep what is below"

#: Where the built-in table comes from; regenerate with tools/build_segments.py.
BUILTIN_RESOURCE = "segments.csv"


def prefix_interval(prefix: str) -> tuple[int, int]:
    """The key interval ``[start, end)`` covered by a normalised-form prefix."""
    nsn = prefix[1:] if prefix.startswith("0") else prefix
    if not nsn or len(nsn) > KEY_WIDTH or not (nsn.isascii() and nsn.isdigit()):
        raise SegmentError(
            f"bad prefix {prefix!r}: expected 1 to {KEY_WIDTH} digits "
            "(mobile segments like 1390101, area codes like 0571)"
        )
    scale = 10 ** (KEY_WIDTH - len(nsn))
    start = int(nsn) * scale
    return start, start + scale


def _flatten(items: Iterable[tuple[int, int, int]], background: int) -> tuple[list[int], list[int]]:
    """Flatten nested-or-disjoint intervals into a partition (longest prefix wins).

    Prefix intervals form a laminar family (two are disjoint or one contains
    the other), so a sweep with a stack of the enclosing intervals suffices.
    """
    ordered = sorted(items, key=lambda it: (it[0], -it[1]))
    starts: list[int] = []
    codes: list[int] = []

    def emit(pos: int, code: int) -> None:
        if starts and starts[-1] == pos:
            codes[-1] = code
            if len(codes) > 1 and codes[-2] == code:
                starts.pop()
                codes.pop()
        elif not codes or codes[-1] != code:
            starts.append(pos)
            codes.append(code)

    stack: list[tuple[int, int]] = [(KEY_SPACE, background)]  # (end, code)
    emit(0, background)
    for start, end, code in ordered:
        while stack[-1][0] <= start:
            closed_end, _ = stack.pop()
            emit(closed_end, stack[-1][1])
        stack.append((end, code))
        emit(start, code)
    while len(stack) > 1:
        closed_end, _ = stack.pop()
        if closed_end < KEY_SPACE:
            emit(closed_end, stack[-1][1])
    return starts, codes


def _merge(starts: list[int], codes: list[int]) -> tuple[list[int], list[int]]:
    out_s: list[int] = []
    out_c: list[int] = []
    for s, c in zip(starts, codes):
        if out_c and out_c[-1] == c:
            continue
        out_s.append(s)
        out_c.append(c)
    return out_s, out_c


def _province_index(name: str, where: str) -> int:
    name = name.strip()
    if name in ("", "-"):
        return 0
    code = provinces.resolve(name)
    if code is None:
        raise SegmentError(f"{where}: unknown province {name!r}")
    return provinces.INDEX[code]


def _read_rows(text: str, source: str) -> Iterator[tuple[str, str, str]]:
    """(prefix, province, where) rows of a segment CSV, comments and header skipped."""
    reader = csv.reader(io.StringIO(text))
    for lineno, row in enumerate(reader, start=1):
        if not row or row[0].lstrip().startswith("#"):
            continue
        where = f"{source}:{lineno}"
        if len(row) != 2:
            raise SegmentError(f"{where}: expected 'prefix,province', got {','.join(row)!r}")
        prefix = row[0].strip()
        if prefix.lower() == "prefix":
            continue  # the header
        yield prefix, row[1], where


def _items_from_rows(rows: Iterable[tuple[str, str, str]]) -> list[tuple[int, int, int]]:
    seen: dict[str, tuple[int, str]] = {}
    items = []
    for prefix, province, where in rows:
        try:
            start, end = prefix_interval(prefix)
        except SegmentError as exc:
            raise SegmentError(f"{where}: {exc}") from None
        code = _province_index(province, where)
        previous = seen.get(prefix)
        if previous is not None:
            if previous[0] != code:
                raise SegmentError(
                    f"{where}: prefix {prefix} appears again with another province "
                    f"(first at {previous[1]})"
                )
            continue
        seen[prefix] = (code, where)
        items.append((start, end, code))
    return items


class PrefixTable:
    """Prefix → province, immutable.

    Build one with :meth:`builtin`, :meth:`from_csv` or :meth:`from_prefixes`;
    lay an operator's table over another with :meth:`overlay`.
    """

    __slots__ = ("_starts", "_codes", "source", "lookup")

    def __init__(self, starts: Sequence[int], codes: Sequence[int], source: str = "") -> None:
        self._starts = tuple(starts)
        self._codes = tuple(codes)
        self.source = source
        self._check()
        #: The searchable form (C arrays when compiled); engines use it directly.
        self.lookup = _lookup_class(self._starts, self._codes)

    # -- building ---------------------------------------------------------

    @classmethod
    def from_prefixes(
        cls, prefixes: Iterable[tuple[str, str | None]], *, source: str = "<prefixes>"
    ) -> PrefixTable:
        """A table from ``(prefix, province)`` pairs; elsewhere unknown.

        Cost: O(n log n) in the number of prefixes.
        """
        rows = ((p, prov or "", f"{source}[{i}]") for i, (p, prov) in enumerate(prefixes))
        starts, codes = _flatten(_items_from_rows(rows), 0)
        return cls(starts, codes, source)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> PrefixTable:
        """A table from a segment CSV file alone (unknown where it says nothing)."""
        text = _read_text(path)
        starts, codes = _flatten(_items_from_rows(_read_rows(text, os.fspath(path))), 0)
        return cls(starts, codes, os.fspath(path))

    @classmethod
    def builtin(cls) -> PrefixTable:
        """The table shipped with tel400 (libphonenumber's China data, with the
        newer mobile segments filled in; see ``docs/numbers.md``).  Cached."""
        return _builtin()

    def overlay(self, path_or_rows: str | os.PathLike[str] | Iterable[tuple[str, str | None]]) -> PrefixTable:
        """This table with an operator's segments laid over it.

        Wherever the operator's table has a prefix, its province wins (an
        explicit ``-`` makes the range unknown); elsewhere this table stands.
        """
        if isinstance(path_or_rows, (str, os.PathLike)):
            source = os.fspath(path_or_rows)
            rows: Iterable[tuple[str, str, str]] = _read_rows(_read_text(path_or_rows), source)
        else:
            source = "<prefixes>"
            rows = ((p, prov or "", f"{source}[{i}]") for i, (p, prov) in enumerate(path_or_rows))
        top_starts, top_codes = _flatten(_items_from_rows(rows), _TRANSPARENT)
        starts, codes = _merge(*_paint(self._starts, self._codes, top_starts, top_codes))
        return PrefixTable(starts, codes, f"{self.source}+{source}")

    # -- lookups ----------------------------------------------------------

    def index_of_key(self, key: int) -> int:
        """Province index for a key from :func:`national_key`; 0 if unknown.

        Cost: O(log n), one binary search over the intervals.
        """
        return self.lookup.index_of_key(key)

    def locate(self, number: object) -> str | None:
        """ISO code of a number's province (any written form), or ``None``."""
        return provinces.CODES[self.lookup.index_of_number(number)]

    # -- inspection -------------------------------------------------------

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def starts(self) -> tuple[int, ...]:
        return self._starts

    @property
    def codes(self) -> tuple[int, ...]:
        return self._codes

    def prefixes(self) -> Iterator[tuple[str, str]]:
        """The fewest ``(prefix, ISO code)`` pairs describing this table.

        Each interval splits into aligned decimal blocks, like a CIDR range
        into networks; unknown ranges are left out.  Writing these as CSV and
        reading it back gives an equal table.
        """
        bounds = self._starts[1:] + (KEY_SPACE,)
        for start, end, code in zip(self._starts, bounds, self._codes):
            if code == 0:
                continue
            pos = start
            while pos < end:
                size = 1
                while pos % (size * 10) == 0 and pos + size * 10 <= end:
                    size *= 10
                digits = KEY_WIDTH - (len(str(size)) - 1)
                nsn = str(pos // size).rjust(digits, "0")
                yield _display_prefix(nsn), provinces.CODES[code]
                pos += size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrefixTable):
            return NotImplemented
        return self._starts == other._starts and self._codes == other._codes

    def __hash__(self) -> int:
        return hash((self._starts, self._codes))

    def __repr__(self) -> str:
        return f"<PrefixTable {len(self)} intervals from {self.source or '?'}>"

    def _check(self) -> None:
        """Assert the partition invariants (tests call this after every build)."""
        starts, codes = self._starts, self._codes
        if not starts or starts[0] != 0 or len(starts) != len(codes):
            raise SegmentError("prefix table must start at key 0 with one code per interval")
        for i in range(1, len(starts)):
            if starts[i] <= starts[i - 1]:
                raise SegmentError(f"prefix table starts not increasing at {i}")
            if codes[i] == codes[i - 1]:
                raise SegmentError(f"prefix table not merged at {i}")
        if starts[-1] >= KEY_SPACE:
            raise SegmentError("prefix table key out of range")
        if not all(0 <= c < len(provinces.CODES) for c in codes):
            raise SegmentError("prefix table has a province index out of range")


def _display_prefix(nsn: str) -> str:
    """A key-space prefix in the form numbers are normalised to."""
    if nsn[0] == "1" and (len(nsn) == 1 or nsn[1] != "0"):
        return nsn  # mobile segment
    return "0" + nsn  # fixed line: trunk 0 + area code


def _paint(
    base_s: Sequence[int], base_c: Sequence[int], top_s: Sequence[int], top_c: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Merge two partitions; the top one wins where it is not transparent."""
    bounds = sorted(set(base_s) | set(top_s))
    out_c = []
    bi = ti = 0
    for pos in bounds:
        while bi + 1 < len(base_s) and base_s[bi + 1] <= pos:
            bi += 1
        while ti + 1 < len(top_s) and top_s[ti + 1] <= pos:
            ti += 1
        top = top_c[ti]
        out_c.append(base_c[bi] if top == _TRANSPARENT else top)
    return bounds, out_c


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    except OSError as exc:
        raise SegmentError(f"{os.fspath(path)}: cannot read segment table: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SegmentError(f"{os.fspath(path)}: segment table is not UTF-8 text") from None


@functools.lru_cache(maxsize=1)
def _builtin() -> PrefixTable:
    text = resources.files("tel400.data").joinpath(BUILTIN_RESOURCE).read_text("utf-8")
    partition = _sorted_disjoint_partition(text)
    if partition is None:  # not in the generator's form: take the general path
        partition = _flatten(_items_from_rows(_read_rows(text, "tel400:segments.csv")), 0)
    return PrefixTable(*partition, "builtin")


def _sorted_disjoint_partition(text: str) -> tuple[list[int], list[int]] | None:
    """The partition of a segment file whose prefixes are sorted and disjoint.

    tools/build_segments.py writes the built-in table that way, and reading it
    in one pass (no sorting, no nesting) keeps the load under 0.1 s.  Returns
    ``None`` for anything else.
    """
    index = provinces.INDEX
    scales = [10 ** (KEY_WIDTH - n) for n in range(KEY_WIDTH + 1)]
    starts: list[int] = [0]
    codes: list[int] = [0]
    covered_to = 0
    for line in text.splitlines():
        if not line or line[0] == "#" or line.startswith("prefix"):
            continue
        prefix, _, name = line.partition(",")
        nsn = prefix[1:] if prefix[0] == "0" else prefix
        code = index.get(name)
        if code is None or not (nsn.isascii() and nsn.isdigit()) or len(nsn) > KEY_WIDTH:
            return None
        start = int(nsn) * scales[len(nsn)]
        if start < covered_to:
            return None
        if start > covered_to and codes[-1] != 0:
            starts.append(covered_to)
            codes.append(0)
        if codes[-1] != code:
            if starts[-1] == start:
                codes[-1] = code
            else:
                starts.append(start)
                codes.append(code)
        covered_to = start + scales[len(nsn)]
    if covered_to < KEY_SPACE and codes[-1] != 0:
        starts.append(covered_to)
        codes.append(0)
    return _merge(starts, codes)


def load_segments(path: str | os.PathLike[str], *, replace: bool = False) -> PrefixTable:
    """An operator's segment table (CSV ``prefix,province``).

    Args:
        path: the CSV file.
        replace: use the file alone instead of laying it over the built-in
            table (numbers it does not cover then have no province).

    Raises:
        SegmentError: naming the file and line of the first bad row.

    Cost: O(n log n) in the rows of the file plus the built-in intervals.
    """
    if replace:
        return PrefixTable.from_csv(path)
    return PrefixTable.builtin().overlay(path)


@functools.lru_cache(maxsize=16)
def _overlay_for(path: str, mtime_ns: int, size: int) -> PrefixTable:
    return load_segments(path)


def load_segments_cached(path: str | os.PathLike[str]) -> PrefixTable:
    """:func:`load_segments`, reusing the table while the file is unchanged."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SegmentError(f"{os.fspath(path)}: cannot read segment table: {exc.strerror}") from None
    return _overlay_for(os.fspath(path), st.st_mtime_ns, st.st_size)
