"""Numbers: normalisation and the caller's province."""

from __future__ import annotations

import os
import threading

from . import provinces
from ._impl import normalize
from .exceptions import NumberError
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


#: What :func:`kind_of` answers.
NUMBER_KINDS = ("mobile", "fixed", "toll_free", "service", "local", "foreign")


def kind_of(number: object) -> str | None:
    """What kind of number this is, from its normal form; ``None`` when it is not a number.

    ``mobile`` (``13901012345``), ``fixed`` (``02112345678``), ``toll_free``
    (400/800 numbers), ``service`` (codes of the 1 range that are not
    mobiles: ``10086``, ``12345``, the ``106…``/``10657…`` SMS service numbers),
    ``local`` (3–8 digits without an area code: ``95588``, ``12345678``),
    ``foreign`` (``+1…``).  Mobiles and fixed lines are people's numbers;
    an automatic SMS reply goes only to those (docs/sms.md).

    Cost: O(length of the number).  Never raises.
    """
    try:
        n = normalize(number)
    except NumberError:
        return None
    if n.startswith("+"):
        return "foreign"
    if len(n) == 11 and n[0] == "1" and n[1] in "3456789":
        return "mobile"
    if n[0] == "0":
        return "fixed"
    if len(n) == 10 and n.startswith(("400", "800")):
        return "toll_free"
    if n[0] == "1":
        return "service"
    return "local"


__all__ = ["NUMBER_KINDS", "default_segments", "kind_of", "locate", "normalize", "use_segments"]
