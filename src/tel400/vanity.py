"""Vanity numbers (自由选号): letters to keypad digits, the patterns sellers grade, search.

A 400 number is ``400`` + seven digits; the seven are what a company
chooses, so they are what is graded.  The table below is the whole grading
(docs/portal.md, "Operator: vanity numbers", explains it to operators):

====================  ==================================================  ===============
pattern name          what it is                                          points
====================  ==================================================  ===============
``AAA`` … ``AAAAAAA`` the longest run of one digit, 3 or more             3: 30; 4: 100,
                                                                          doubling per
                                                                          extra digit
``AABB``              two pairs (1122)                                    40
``ABAB``              a pair repeated (1212)                              40
``ABCABC``            three different digits repeated (123123)            80
``AAABBB``            two triples (111222)                                120
``ascending``         the longest run counting up by one, 4 or more       4: 50, doubling
                      (1234)                                              per extra digit
``descending``        the same counting down (4321)                       as ascending
``tail:888`` …        a lucky ending (:data:`LUCKY_TAILS`), the best one  the table's
``no4``               no 4 (四, "death") among the seven digits            15
====================  ==================================================  ===============

Where a pattern sits matters: one that ends on the last digit counts in
full, one anywhere else counts half (buyers read a number from its end:
4001-234-888 is worth more than 4008-882-341).  Each pattern counts once,
where it is worth most.  The score is the sum; a grade is deterministic and
depends only on the digits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

import attrs
import phonenumbers

#: Lucky endings and their points; only the best one that ends the number counts.
#: 8 (发, fortune), 6 (六六大顺, smooth), 9 (久, lasting); 168 (一路发), 518 (我要发), 1688, 520 (我爱你).
LUCKY_TAILS: dict[str, int] = {
    "8888": 120, "6666": 100, "1688": 70, "888": 60, "666": 50, "999": 40, "168": 40, "518": 40,
    "520": 20, "88": 20, "66": 15, "8": 10, "6": 5, "9": 5,
}
NO_FOUR = 15
#: The digits graded: those after the 3-digit prefix (400, 800).
PREFIX_DIGITS = 3
#: The longest query :func:`search` takes (characters).
QUERY_MAX = 40

_SHAPES = (  # (name, size, points, test of a slice of that size)
    ("AABB", 4, 40, lambda s: s[0] == s[1] != s[2] == s[3]),
    ("ABAB", 4, 40, lambda s: s[0] == s[2] != s[1] == s[3]),
    ("ABCABC", 6, 80, lambda s: s[:3] == s[3:] and len(set(s[:3])) == 3),
    ("AAABBB", 6, 120, lambda s: s[0] == s[1] == s[2] != s[3] == s[4] == s[5]),
)
#: The words :func:`search` reads as a pattern rather than as letters to dial.
PATTERN_WORDS = frozenset({"AAA", "AAAA", "AAAAA", "AAAAAA", "AAAAAAA", "ascending", "descending", "no4",
                           *(name for name, *_ in _SHAPES)})
_NOT_DIALABLE = re.compile(r"[^0-9]")


@attrs.frozen
class Grade:
    """How much sellers would ask for a number: ``score`` (higher is better) and the ``patterns`` found."""

    score: int
    patterns: tuple[str, ...]


class Found(NamedTuple):
    """One search result."""

    number: str
    grade: Grade


def to_digits(text: str) -> str:
    """Letters to keypad digits, everything but digits dropped: ``"4001-KFC-KFC"`` → ``"4001532532"``.

    Uses :func:`phonenumbers.convert_alpha_characters_in_number` (the ITU
    E.161 keypad).  Idempotent on digits.  O(length of the text).
    """
    return _NOT_DIALABLE.sub("", phonenumbers.convert_alpha_characters_in_number(text))


def grade(number: str) -> Grade:
    """The :class:`Grade` of ``number`` (any text :func:`to_digits` reads), by the module's table.

    O(length of the number²) at worst; a 400 number's seven digits are a few µs.
    """
    body = to_digits(number)[PREFIX_DIGITS:]
    found: list[tuple[str, int]] = []
    run, end = _longest(body, lambda a, b: a == b)
    if run >= 3:
        found.append(("A" * run, _at(30 if run == 3 else 100 << (run - 4), end, body)))
    for name, step in (("ascending", 1), ("descending", -1)):
        run, end = _longest(body, lambda a, b, step=step: int(b) - int(a) == step)
        if run >= 4:
            found.append((name, _at(50 << (run - 4), end, body)))
    for name, size, points, test in _SHAPES:
        ends = [i + size for i in range(len(body) - size + 1) if test(body[i:i + size])]
        if ends:
            found.append((name, max(_at(points, e, body) for e in ends)))
    tails = [(points, tail) for tail, points in LUCKY_TAILS.items() if body.endswith(tail)]
    if tails:
        points, tail = max(tails)
        found.append((f"tail:{tail}", points))
    if body and "4" not in body:
        found.append(("no4", NO_FOUR))
    return Grade(sum(points for _, points in found), tuple(name for name, _ in found))


def _at(points: int, end: int, body: str) -> int:
    """Full points for a pattern ending on the last digit, half elsewhere."""
    return points if end == len(body) else points // 2


def _longest(body: str, follows) -> tuple[int, int]:
    """The longest run of digits each of which ``follows`` the one before: (length, end); the last one wins ties."""
    best, best_end, run = (1, 1, 1) if body else (0, 0, 0)
    for i in range(1, len(body)):
        run = run + 1 if follows(body[i - 1], body[i]) else 1
        if run >= best:
            best, best_end = run, i + 1
    return best, best_end


def _has(g: Grade, pattern: str) -> bool:
    if set(pattern) == {"A"}:  # a run of one digit: AAAA finds AAAAA too
        return any(set(p) == {"A"} and len(p) >= len(pattern) for p in g.patterns)
    return pattern in g.patterns


def search(numbers: Iterable[str], query: str | None = None, *, limit: int = 50) -> list[Found]:
    """The numbers matching ``query``, best first: at most ``limit`` :class:`Found`.

    ``query`` is one of:

    * a pattern word (:data:`PATTERN_WORDS`: ``AABB``, ``AAAA``, ``ascending``…):
      the numbers that have it;
    * letters and digits, as dialled (``KFC``, ``4001-KFC-KFC``, ``888``): the
      digits :func:`to_digits` makes of it.  Digits starting with 400 or 800
      and longer than that are the start of the number; any other digits are
      looked for after the 3-digit prefix;
    * empty or ``None``: every number.

    Ranked by: the query ending the number first (tail preferred), then
    grade (score, highest first), then the number.  Numbers that are not
    digits are skipped.  O(numbers × length) plus the sort.

    Raises:
        ValueError: a query longer than :data:`QUERY_MAX`, or one with no digit
            and no pattern (``"-"``).
    """
    query = (query or "").strip()
    if len(query) > QUERY_MAX:
        raise ValueError(f"query: at most {QUERY_MAX} characters")
    pattern = digits = None
    if query in PATTERN_WORDS:
        pattern = query
    elif query:
        digits = to_digits(query)
        if not digits:
            raise ValueError(f"query: {query!r} has no letter or digit to dial and is no pattern "
                             f"({', '.join(sorted(PATTERN_WORDS))})")
    whole = digits is not None and len(digits) > PREFIX_DIGITS and digits[:PREFIX_DIGITS] in ("400", "800")
    ranked = []
    for number in numbers:
        if not number.isascii() or not number.isdigit():
            continue
        tail = False
        if digits is not None:
            if whole:
                if not number.startswith(digits):
                    continue
                tail = len(number) == len(digits)
            else:
                body = number[PREFIX_DIGITS:]
                if digits not in body:
                    continue
                tail = body.endswith(digits)
        g = grade(number)
        if pattern is not None and not _has(g, pattern):
            continue
        ranked.append((not tail, -g.score, number, g))
    ranked.sort(key=lambda r: r[:3])
    return [Found(number, g) for _, _, number, g in ranked[:max(limit, 0)]]
