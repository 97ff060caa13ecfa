"""SMS text helpers: encodings, concatenated parts, templates, the outgoing message value.

A minimal version written by the sms-store branch so the group-send runner
has its interface; the sms-core branch owns this module and its version
replaces this one at merge (same names and signatures: ``OutgoingSms``,
``encoding_of``, ``split_parts``, ``count_parts``, ``MAX_PARTS``,
``render``, ``check_template``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import attrs

#: A text needing more parts than this is refused (ValueError).
MAX_PARTS = 10

# GSM 03.38 default alphabet (one septet) and its extension table (two: escape + char).
_GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = frozenset("^{}\\[~]|€\f")


@attrs.frozen
class OutgoingSms:
    """One message tel400 sends (an auto-reply, an opt-out confirmation, a group send's message)."""

    message_id: str
    number: str  #: the 400 number it is sent for
    sender: str  #: "10657" + number
    to: str  #: the normalized recipient
    text: str
    parts: int
    kind: str  #: "reply" | "opt_out" | "opt_in" | "job" | "forward"


def encoding_of(text: str) -> str:
    """``"gsm7"`` when every character is in the GSM 03.38 alphabet, else ``"ucs2"``.  O(len)."""
    return "gsm7" if all(c in _GSM_BASIC or c in _GSM_EXTENSION for c in text) else "ucs2"


def _units(text: str, encoding: str) -> list[tuple[str, int]]:
    # Each indivisible piece of the text with what it costs in its encoding.
    if encoding == "gsm7":
        return [(c, 2 if c in _GSM_EXTENSION else 1) for c in text]
    return [(c, 2 if ord(c) > 0xFFFF else 1) for c in text]  # a surrogate pair stays whole


def split_parts(text: str) -> tuple[str, ...]:
    """The text cut into the parts of a concatenated SMS (one part when it fits).

    GSM-7: 160 septets in one part, 153 per part when split; UCS-2: 70
    UTF-16 units, 67 per part.  An extension character or a surrogate pair
    is never cut.  An empty text is one (empty) part.

    Raises:
        ValueError: more than :data:`MAX_PARTS` parts.
    """
    encoding = encoding_of(text)
    single, per_part = (160, 153) if encoding == "gsm7" else (70, 67)
    units = _units(text, encoding)
    if sum(cost for _, cost in units) <= single:
        return (text,)
    parts, current, used = [], [], 0
    for char, cost in units:
        if used + cost > per_part:
            parts.append("".join(current))
            current, used = [], 0
        current.append(char)
        used += cost
    parts.append("".join(current))
    if len(parts) > MAX_PARTS:
        raise ValueError(f"the text needs {len(parts)} SMS parts; at most {MAX_PARTS}")
    return tuple(parts)


def count_parts(text: str) -> int:
    """How many SMS parts the text takes (see :func:`split_parts`).  Raises ValueError over MAX_PARTS."""
    return len(split_parts(text))


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


def _pieces(template: str):
    for m in _PLACEHOLDER.finditer(template):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        if m.group(1) is None:
            raise ValueError(f"unbalanced brace at position {m.start()} of the template (write {{{{ or }}}})")
        yield m.group(1)


def check_template(template: str, allowed: Collection[str]) -> None:
    """Raise ValueError naming an unknown placeholder or an unbalanced brace."""
    for name in _pieces(template):
        if name not in allowed:
            raise ValueError(f"unknown placeholder {{{name}}} (known: {', '.join(sorted(allowed))})")


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill ``{field}`` placeholders from ``values``; ``{{`` and ``}}`` are literal braces.

    Not ``str.format``: no attribute or index access, no format specs.
    Raises ValueError on an unbalanced brace, KeyError on a missing value.
    """
    def fill(m: re.Match) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        if m.group(1) is None:
            raise ValueError(f"unbalanced brace at position {m.start()} of the template")
        return str(values[m.group(1)])

    return _PLACEHOLDER.sub(fill, template)
