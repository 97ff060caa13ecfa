"""SMS text helpers (placeholder: the sms-core branch owns this module; the merge takes theirs)."""

from __future__ import annotations

import attrs

# The GSM 03.38 default alphabet (basic set; the extension characters count 2 septets).
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = "^{}\\[~]|€\f"
_GSM = frozenset(_GSM_BASIC + _GSM_EXTENSION)


def encoding_of(text: str) -> str:
    """``"gsm7"`` when every character is in the GSM 7-bit alphabet, else ``"ucs2"``."""
    return "gsm7" if all(ch in _GSM for ch in text) else "ucs2"


@attrs.frozen
class OutgoingSms:
    """One message to send."""

    message_id: str
    number: str
    sender: str
    to: str
    text: str
    parts: int
    kind: str
