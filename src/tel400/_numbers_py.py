"""Reference implementation of number normalisation (the hot path's first step).

Normal forms, as design.md settles them:

* mobiles: 11 digits, ``13901012345``;
* fixed lines: trunk ``0`` + area code + subscriber, ``02112345678``;
* 400/800 numbers: their 10 digits;
* short and service codes (``10086``, ``95588``, ``106574001012345``) and
  local numbers without an area code: their digits;
* foreign numbers (``+1 415 …``, ``001415…``): ``+`` and their E.164 digits.

Everything else raises :class:`~tel400.NumberError`.
"""

from __future__ import annotations

import unicodedata

from .exceptions import NumberError

#: Width, in digits, of the key space prefix tables live in: a national
#: significant number (no trunk 0) padded on the right with zeros.
KEY_WIDTH = 11

_SEPARATORS = str.maketrans("", "", " -()\t.\u00a0")
_MOBILE_SECOND = frozenset("3456789")
_MAX_SERVICE_DIGITS = 20


def _digits_only(s: str) -> bool:
    return bool(s) and s.isascii() and s.isdigit()


def _fail(raw: object, why: str) -> NumberError:
    return NumberError(f"not a telephone number: {raw!r} ({why})")


def _is_mobile(s: str) -> bool:
    return len(s) == 11 and s[0] == "1" and s[1] in _MOBILE_SECOND


def _is_fixed_nsn(s: str) -> bool:
    """A fixed line written without its trunk 0: ``2112345678``, ``1012345678``."""
    if not 9 <= len(s) <= 11:
        return False
    return s[0] in "23456789" or s.startswith("10")


def _is_toll_free(s: str) -> bool:
    return s.startswith(("400", "800"))


def _after_country_code(s: str, raw: object) -> str:
    """The national part of a number dialled with +86."""
    if s.startswith("0") and len(s) > 1 and s[1] != "0":
        s = s[1:]  # "+86 (0)21 …": a trunk 0 written after the country code
    if _is_mobile(s):
        return s
    if _is_toll_free(s) and len(s) == 10:
        return s
    if _is_fixed_nsn(s):
        return "0" + s
    raise _fail(raw, "not a Chinese mobile, fixed-line or 400/800 number after +86")


def normalize(raw: object) -> str:
    """Bring a telephone number into tel400's normal form.

    Args:
        raw: the number as a switch or a person wrote it: ``"+86 139-0101-2345"``,
            ``"008613901012345"``, ``"013901012345"`` (roaming 0),
            ``"(021) 1234 5678"``, ``"4001-012-345"``.  An ``int`` is read as
            its digits.

    Returns:
        The normal form (see the module docstring).

    Raises:
        NumberError: for anything that is not a number: words such as
            ``"anonymous"``, empty strings, letters, impossible lengths.

    Cost: O(length of the input).
    """
    if isinstance(raw, str):
        s = raw
    elif isinstance(raw, int) and not isinstance(raw, bool):
        s = str(raw)
    else:
        raise _fail(raw, f"expected a string, got {type(raw).__name__}")
    s = s.translate(_SEPARATORS)
    if not s.isascii():
        # Full-width digits and ideographic spaces from Chinese input methods.
        s = unicodedata.normalize("NFKC", s).translate(_SEPARATORS)
    international = False
    if s.startswith("+"):
        international, s = True, s[1:]
    elif s.startswith("00"):
        international, s = True, s[2:]
    if not _digits_only(s):
        raise _fail(raw, "expected digits, optionally after + or 00")
    if international:
        if s.startswith("86"):
            return _after_country_code(s[2:], raw)
        if s[0] == "0" or not 7 <= len(s) <= 15:
            raise _fail(raw, "an international number has 7 to 15 digits")
        return "+" + s
    return _national(s, raw)


def _national(s: str, raw: object) -> str:
    n = len(s)
    first = s[0]
    if first == "1":
        if n > 1 and s[1] in _MOBILE_SECOND:
            if n == 11:
                return s
            raise _fail(raw, "a mobile number has 11 digits")
        if 3 <= n <= _MAX_SERVICE_DIGITS:
            return s  # 10086, 12345, 106574001012345 …
        raise _fail(raw, "too short or too long for a service number")
    if first == "0":
        if n == 12 and s[1] == "1" and s[2] in _MOBILE_SECOND:
            return s[1:]  # a roaming 0 before a mobile
        if 10 <= n <= 12 and s[1] != "0":
            return s
        raise _fail(raw, "a fixed-line number is 0 + area code + 7 or 8 digits")
    if s.startswith("86") and n >= 11:
        rest = s[2:]
        if _is_mobile(rest) or (_is_toll_free(rest) and len(rest) == 10) or _is_fixed_nsn(rest):
            return _after_country_code(rest, raw)
    if _is_toll_free(s):
        if n == 10:
            return s
        raise _fail(raw, "a 400/800 number has 10 digits")
    if 3 <= n <= 8:
        return s  # short codes (95588) and local numbers without an area code
    raise _fail(raw, "unexpected length for a number of this kind")


def normalize_or_none(raw: object) -> str | None:
    """:func:`normalize`, with ``None`` instead of an exception (callers)."""
    if raw is None:
        return None
    try:
        return normalize(raw)
    except NumberError:
        return None


def national_key(number: str) -> int:
    """The prefix-table key of a normalised number, or -1 if it has no province.

    Mobiles and fixed lines are located; 400/800, service codes, local
    numbers without an area code and foreign numbers are not.
    Cost: O(1) (numbers are at most 12 digits here).
    """
    n = len(number)
    if n == 11 and number[0] == "1" and number[1] in _MOBILE_SECOND:
        nsn = number
    elif 10 <= n <= 12 and number[0] == "0":
        nsn = number[1:]
    else:
        return -1
    return int(nsn.ljust(KEY_WIDTH, "0"))
