"""Numbers: normalisation and the caller's province."""

from __future__ import annotations

import os
import threading

from . import provinces
from ._impl import normalize
from .segments import PrefixTable, load_segments

_default: PrefixTable | None = None
_default_lock = threading.Lock()


def default_segments() -> PrefixTable:
    """The process's default prefix table: built-in unless :func:`use_segments` changed it."""
    global _default
    table = _default
    if table is None:
        with _default_lock:
            if _default is None:
                _default = PrefixTable.builtin()
            table = _default
    return table


def use_segments(table: PrefixTable | str | os.PathLike[str] | None) -> PrefixTable:
    """Set the prefix table :func:`locate` and new routers use by default.

    Args:
        table: a :class:`PrefixTable`, the path of an operator's segment CSV
            (laid over the built-in table), or ``None`` for the built-in table.

    Returns:
        The table now in use.
    """
    global _default
    if table is not None and not isinstance(table, PrefixTable):
        table = load_segments(table)
    with _default_lock:
        _default = table  # None: the built-in table, loaded on next use
    return default_segments()


def locate(number: object, table: PrefixTable | None = None) -> str | None:
    """The ISO 3166-2:CN code of a number's province, or ``None``.

    Args:
        number: a number in any form :func:`normalize` reads.
        table: the prefix table to use (default: :func:`default_segments`).

    Returns:
        ``"CN-BJ"`` and the like; ``None`` for input that is not a number and
        for numbers with no province (foreign, 400/800, short codes, segments
        no table knows).  Never raises.

    Cost: O(length of the number) to normalise, plus one binary search.
    """
    return provinces.CODES[(table or default_segments()).lookup.index_of_number(number)]


__all__ = ["default_segments", "locate", "normalize", "use_segments"]
