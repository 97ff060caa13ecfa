"""SMS text: keyword folding, encodings and parts, reply templates, the outgoing message value.

Everything here is pure and bounded by its input: no I/O, no state.

* :func:`fold` is how a keyword and an incoming text are compared: full-width
  forms (``ＨＥＬＬＯ``) as half-width, Latin case ignored, punctuation and
  spaces around the text ignored (``"  hello？！"``), inner spaces as one.
* :func:`encoding_of`, :func:`split_parts`, :func:`count_parts`: how a text
  travels as concatenated SMS parts (GSM 03.38 7-bit: 160 septets in one
  part, 153 per part of a split text; UCS-2: 70 UTF-16 units, 67 per part),
  never cutting a GSM-7 escape pair or a UTF-16 surrogate pair.
* :func:`render` and :func:`check_template`: ``{field}`` placeholders and
  ``{{``/``}}`` braces, and nothing else.  Deliberately not
  :meth:`str.format`: a template comes from a tenant, and ``{0.__class__}``
  or ``{x!r:>99999999}`` must be refused, not evaluated.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping

import attrs

#: Parts of one concatenated SMS tel400 will send; a longer text is refused
#: (ValueError).  Ten parts is 670 Chinese characters or 1,530 GSM-7 ones.
MAX_PARTS = 10

#: Placeholders a reply template may use (docs/sms.md, "Auto-replies").
REPLY_FIELDS = ("number", "caller", "province", "date", "time", "weekday")

#: The longest value each reply placeholder can take, in characters: the
#: 400 number, a normalised sender (a service code has up to 20 digits),
#: a province's short Chinese name (内蒙古), YYYY-MM-DD, HH:MM, 周一.
REPLY_FIELD_MAX_CHARS = {"number": 10, "caller": 20, "province": 3, "date": 10, "time": 5, "weekday": 2}

# GSM 03.38 default alphabet (basic table, without the escape code itself).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: Characters of the GSM-7 extension table: each is sent as ESC + a code, two septets.
GSM7_EXTENSION = frozenset("^{}\\[~]|€")

_GSM7_SINGLE, _GSM7_MULTI = 160, 153
_UCS2_SINGLE, _UCS2_MULTI = 70, 67

_FIELD = re.compile(r"[a-z_][a-z0-9_]{0,31}\Z")


def is_field_name(name: object) -> bool:
    """Whether ``name`` can be a ``{placeholder}``: lower-case letters, digits and ``_``, at most 32.

    The one rule for field names: templates check placeholders with it and
    the address book checks a contact's extra fields with it, so a field a
    contact can hold is always one a template can name.
    """
    return isinstance(name, str) and _FIELD.match(name) is not None


# -- folding ---------------------------------------------------------------------


def _is_edge(ch: str) -> bool:
    """A character :func:`fold` strips from the ends: punctuation, symbols, spaces, controls.

    By Unicode category, so CJK punctuation (？！。，、；：“”‘’（）【】《》…) and
    full-width forms are covered with the ASCII ones.
    """
    return unicodedata.category(ch)[0] in "PSZC"


def fold(text: str) -> str:
    """``text`` as keywords are compared: NFKC, case-folded, ends stripped, inner spaces as one.

    NFKC turns full-width letters and digits (``ＨＥＬＬＯ``, ``１２３``) and
    ideographic spaces into their plain forms; ``casefold`` ignores Latin
    case; punctuation, symbols, spaces and controls at either end are
    stripped (``" 你的酒店在哪？"`` -> ``"你的酒店在哪"``); runs of inner
    whitespace become one space.  Idempotent: ``fold(fold(t)) == fold(t)``.

    Raises:
        TypeError: ``text`` is not a string.

    Cost: O(len(text)).
    """
    if not isinstance(text, str):
        raise TypeError(f"fold: expected a string, got {type(text).__name__}")
    # NFKC again after casefold: casefold can leave a decomposed form (ǰ).
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    start, end = 0, len(folded)
    while start < end and _is_edge(folded[start]):
        start += 1
    while end > start and _is_edge(folded[end - 1]):
        end -= 1
    return " ".join(folded[start:end].split())


# -- encodings and parts -----------------------------------------------------------


def encoding_of(text: str) -> str:
    """``"gsm7"`` when every character is in the GSM 03.38 alphabet (basic or extension), else ``"ucs2"``.

    Cost: O(len(text)).
    """
    for ch in text:
        if ch not in _GSM7_BASIC and ch not in GSM7_EXTENSION:
            return "ucs2"
    return "gsm7"


def _units(text: str, encoding: str) -> list[int]:
    """What each character costs: septets (GSM-7) or UTF-16 code units (UCS-2)."""
    if encoding == "gsm7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _split(text: str) -> tuple[str, ...]:
    encoding = encoding_of(text)
    single, multi = (_GSM7_SINGLE, _GSM7_MULTI) if encoding == "gsm7" else (_UCS2_SINGLE, _UCS2_MULTI)
    units = _units(text, encoding)
    if sum(units) <= single:
        return (text,)
    parts, start, used = [], 0, 0
    for i, cost in enumerate(units):
        # A character never straddles two parts: an escape pair or a surrogate pair moves whole.
        if used + cost > multi:
            parts.append(text[start:i])
            if len(parts) >= MAX_PARTS:
                raise ValueError(f"the text needs more than {MAX_PARTS} SMS parts ({encoding}); shorten it")
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return tuple(parts)


def split_parts(text: str) -> tuple[str, ...]:
    """The parts ``text`` is sent in, in order; ``"".join`` of them is ``text``.

    GSM-7: up to 160 septets in one part, else 153 per part; an extension
    character (``^{}\\[~]|€``) counts two and is never split from its escape.
    UCS-2: up to 70 UTF-16 units in one part, else 67 per part; a character
    outside the BMP (a surrogate pair) counts two and is never split.
    The empty text is one (empty) part.

    Raises:
        ValueError: more than :data:`MAX_PARTS` parts.
        TypeError: ``text`` is not a string.

    Cost: O(len(text)); a text is refused as soon as it passes the bound.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_parts: expected a string, got {type(text).__name__}")
    return _split(text)


def count_parts(text: str) -> int:
    """How many parts :func:`split_parts` gives (ValueError over :data:`MAX_PARTS`).  O(len(text))."""
    return len(split_parts(text))


# -- templates ---------------------------------------------------------------------


def _pieces(template: str) -> list[tuple[str, bool]]:
    """The template as (literal text, False) and (field name, True) pieces; ValueError on bad syntax."""
    if not isinstance(template, str):
        raise ValueError(f"a template is a string, got {type(template).__name__}")
    pieces: list[tuple[str, bool]] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        ch = template[i]
        if ch == "{":
            if template.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            close = template.find("}", i + 1)
            if close < 0:
                raise ValueError(f"unbalanced '{{' at character {i + 1}; write {{{{ for a literal brace")
            name = template[i + 1:close]
            if not is_field_name(name):
                shown = name if len(name) <= 40 else name[:40] + "…"
                raise ValueError(
                    f"bad placeholder {{{shown}}} at character {i + 1}: a placeholder is a plain field name "
                    "like {date} (no attributes, indexes, conversions or format specs)"
                )
            if literal:
                pieces.append(("".join(literal), False))
                literal = []
            pieces.append((name, True))
            i = close + 1
        elif ch == "}":
            if template.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise ValueError(f"unbalanced '}}' at character {i + 1}; write }}}} for a literal brace")
        else:
            literal.append(ch)
            i += 1
    if literal:
        pieces.append(("".join(literal), False))
    return pieces


def check_template(template: str, allowed: Collection[str]) -> None:
    """Refuse a template :func:`render` could not fill from ``allowed`` fields.

    Raises:
        ValueError: naming an unknown placeholder or an unbalanced brace.

    Cost: O(len(template)).
    """
    for text, is_field in _pieces(template):
        if is_field and text not in allowed:
            raise ValueError(f"unknown placeholder {{{text}}}; expected one of "
                             + ", ".join("{" + f + "}" for f in allowed))


def render(template: str, values: Mapping[str, str]) -> str:
    """``template`` with each ``{field}`` replaced by ``values[field]`` and ``{{``/``}}`` as braces.

    Values are inserted as they are (never read as template syntax).

    Raises:
        ValueError: bad template syntax, or a placeholder ``values`` lacks.

    Cost: O(len(template) + len of the values inserted).
    """
    out = []
    for text, is_field in _pieces(template):
        if not is_field:
            out.append(text)
            continue
        try:
            value = values[text]
        except KeyError:
            raise ValueError(f"unknown placeholder {{{text}}}") from None
        out.append(str(value))
    return "".join(out)


def worst_case_parts(template: str) -> int:
    """Parts of ``template`` rendered with every reply placeholder at its longest (in Chinese characters).

    UCS-2 at the longest values bounds every rendering: a GSM-7 text of the
    same characters takes fewer parts, even with escape characters.

    Raises:
        ValueError: bad syntax or unknown placeholders (as :func:`check_template`),
            or over :data:`MAX_PARTS` parts.
    """
    check_template(template, REPLY_FIELDS)
    longest = {field: "字" * chars for field, chars in REPLY_FIELD_MAX_CHARS.items()}
    return count_parts(render(template, longest))


# -- the outgoing message --------------------------------------------------------------

#: What an outgoing message is: an auto-reply, an opt-out or opt-in
#: confirmation, a group send's message, a forwarded message.
OUTGOING_KINDS = ("reply", "opt_out", "opt_in", "job", "forward")


@attrs.frozen
class OutgoingSms:
    """One message tel400 hands to a gateway (``tel400.smsjobs.SmsGateway.submit``).

    ``sender`` is the number's SMS access code (``10657`` + the 400 number);
    ``to`` the normalised recipient; ``parts`` what :func:`count_parts` gives
    for ``text``; ``message_id`` is unique and idempotent (a retry reuses it).
    """

    message_id: str
    number: str
    sender: str
    to: str
    text: str
    parts: int
    kind: str
