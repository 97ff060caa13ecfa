"""Synthetic plan sets of N numbers x R rules, streamed: one number at a time.

    python -m bench.generate --numbers 1000000 --rules 5 --out plans.jsonl
    python bench/generate.py --numbers 10000 --rules 5 --out - | head -1

The output is JSON Lines, one number's plan tree per line: the same tree as
an entry of a plan file's ``numbers`` list, which is the form
``tel400 store import plans.jsonl sqlite:///plans.db`` loads in bulk.  The
plans are those of ``bench/_inputs.py`` ``many_plans`` in shape (each rule:
three provinces, a time slot, a day set, two weighted targets; each number:
one daily calls cap out of reach, optionally a second cap on minutes), but
nothing is ever held for more than one number, so a million numbers cost
the memory of one.

Deterministic: number ``i``'s plan depends only on ``(i, rules, caps,
seed)``, never on how many numbers are generated or in what order, so a
benchmark can rebuild one number's plan (:func:`number_plan`) to edit it,
and a 1,000-number file is the first 1,000 lines of a 1,000,000-number file.

Cost: O(rules) per number; ~15 µs per rule here (the JSON encoding included): 1,000,000
numbers x 5 rules took 69 s, 921 MB of disk and 35 MB resident (measured).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from typing import IO

from tel400 import provinces

#: A 400 number's ten digits: "400" and seven more, so at most 10,000,000 numbers.
MAX_NUMBERS = 10**7
_CODES = tuple(c for c in provinces.CODES if c)
_DAYS = ("mon-fri", "workday", "sat,sun", "any")
#: The caps a number may carry, in order (``caps=2`` takes both); limits out of reach.
_CAPS = (
    {"metric": "calls", "per": "day", "limit": 10**12},
    {"metric": "minutes", "per": "day", "limit": 10**9},
)


def number_of(i: int) -> str:
    """The ``i``-th generated number: ``400`` and ``i`` in seven digits."""
    if not 0 <= i < MAX_NUMBERS:
        raise ValueError(f"number index {i} out of range (0..{MAX_NUMBERS - 1})")
    return f"400{i:07d}"


def number_plan(i: int, rules: int = 5, *, caps: int = 1, seed: int = 1, rng: random.Random | None = None) -> dict:
    """The plan tree of the ``i``-th number (O(rules)).

    Args:
        rng: a generator to reseed and reuse (saves building one per number).
    """
    if not 0 <= caps <= len(_CAPS):
        raise ValueError(f"caps: 0 to {len(_CAPS)}, got {caps}")
    rng = rng or random.Random()
    rng.seed(seed * MAX_NUMBERS + i)  # an int seed: the same stream on every Python
    plan_rules = [random_rule(rng, k) for k in range(rules)]
    return {"number": number_of(i), "rules": plan_rules, "caps": [dict(c) for c in _CAPS[:caps]]}


def random_rule(rng: random.Random, k: int) -> dict:
    """Rule ``r{k}``: 3 provinces, a time slot, days and 2 weighted targets, drawn from ``rng``
    (the shape of every benchmark's plans; bench/_inputs.py draws its plans with it too)."""
    start, end = rng.randrange(1440), rng.randrange(1440)
    return {
        "name": f"r{k}",
        "provinces": rng.sample(_CODES, 3),
        "time": f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}",
        "days": rng.choice(_DAYS),
        "targets": [{"to": f"139{rng.randrange(10**8):08d}", "weight": rng.randrange(1, 10)} for _ in range(2)],
    }


def iter_plans(numbers: int, rules: int = 5, *, caps: int = 1, seed: int = 1, start: int = 0) -> Iterator[dict]:
    """Plans of numbers ``start .. start + numbers - 1``, one at a time."""
    if numbers < 0 or start < 0 or start + numbers > MAX_NUMBERS:
        raise ValueError(f"numbers: {start}..{start + numbers} is outside 0..{MAX_NUMBERS}")
    rng = random.Random()
    for i in range(start, start + numbers):
        yield number_plan(i, rules, caps=caps, seed=seed, rng=rng)


def write_jsonl(out: IO[str], numbers: int, rules: int = 5, *, caps: int = 1, seed: int = 1) -> int:
    """Write one plan per line to ``out``; return the number of lines."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    written = 0
    for plan in iter_plans(numbers, rules, caps=caps, seed=seed):
        out.write(dumps(plan))
        out.write("\n")
        written += 1
    return written


def write_jsonl_file(path: str, numbers: int, rules: int = 5, *, caps: int = 1, seed: int = 1) -> int:
    """:func:`write_jsonl` into a file (``-``: standard output)."""
    if path == "-":
        return write_jsonl(sys.stdout, numbers, rules, caps=caps, seed=seed)
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as out:
        return write_jsonl(out, numbers, rules, caps=caps, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numbers", type=int, required=True, help="how many numbers (400xxxxxxx)")
    parser.add_argument("--rules", type=int, default=5, help="rules per number (default 5)")
    parser.add_argument("--caps", type=int, default=1, choices=range(len(_CAPS) + 1),
                        help="caps per number: 1 a daily calls cap (default), 2 also daily minutes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="the .jsonl file to write, - for standard output")
    args = parser.parse_args(argv)
    try:
        written = write_jsonl_file(args.out, args.numbers, args.rules, caps=args.caps, seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    if args.out != "-":
        print(f"wrote {written} numbers x {args.rules} rules to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
