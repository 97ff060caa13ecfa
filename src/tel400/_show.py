"""A value as error messages show it: ``repr``-like, never longer than asked.

``repr()`` then truncate costs what the whole value costs: a YAML "billion
laughs" tree (lists sharing lists, 10**9 strings from 376 bytes) took 53 s
and 3 GB for one message.  :func:`show` renders only what it will show, so it
costs O(width) whatever the value.
"""

from __future__ import annotations

from collections.abc import Mapping

_ELLIPSIS = "..."
#: Integers longer than this many bits are not converted to text (Python
#: refuses beyond 4300 digits, and converting is quadratic before that).
_INT_BITS = 256


def show(value: object, width: int = 60) -> str:
    """``repr(value)``, cut to ``width`` characters (``...`` marks the cut).  O(width)."""
    parts: list[str] = []
    _render(value, parts, [width + 1])
    text = "".join(parts)
    return text if len(text) <= width else text[: width - len(_ELLIPSIS)] + _ELLIPSIS


def _render(value: object, out: list[str], budget: list[int]) -> None:
    """Append pieces of ``repr(value)`` to ``out`` until ``budget[0]`` characters are spent."""
    if budget[0] <= 0:
        return
    if isinstance(value, (str, bytes)):
        _emit(repr(value[: budget[0]]) if len(value) > budget[0] else repr(value), out, budget)
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > _INT_BITS:
        _emit(f"<a {value.bit_length()}-bit integer>", out, budget)
    elif isinstance(value, (list, tuple, set, frozenset)):
        opening, closing = {list: "[]", tuple: "()"}.get(type(value), "{}")
        _emit(opening, out, budget)
        for i, item in enumerate(value):
            if budget[0] <= 0:
                return
            if i:
                _emit(", ", out, budget)
            _render(item, out, budget)
        _emit(closing, out, budget)
    elif isinstance(value, Mapping):
        _emit("{", out, budget)
        for i, (key, item) in enumerate(value.items()):
            if budget[0] <= 0:
                return
            if i:
                _emit(", ", out, budget)
            _render(key, out, budget)
            _emit(": ", out, budget)
            _render(item, out, budget)
        _emit("}", out, budget)
    else:
        _emit(repr(value)[: budget[0]], out, budget)


def _emit(text: str, out: list[str], budget: list[int]) -> None:
    out.append(text)
    budget[0] -= len(text)
