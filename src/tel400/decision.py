"""What the router answers: a :class:`Decision`, and why: :class:`Step`."""

from __future__ import annotations

from typing import NamedTuple

import attrs

#: Every reason a decision can carry (design.md, plus ``backend_error``).
REASONS = (
    "ok",
    "unknown_number",
    "blacklisted",
    "pin_required",
    "bad_pin",
    "pin_locked",
    "closed",
    "cap_exceeded",
    "bad_caller",
    "rule_reject",
    "backend_error",
)


@attrs.frozen(slots=True)
class Step:
    """One line of a decision's explanation.

    Attributes:
        check: what was looked at: ``number``, ``blacklist``, ``caller``,
            ``pin``, ``rule``, ``default``, ``select``, ``cap`` or ``backend``.
        subject: the rule or cap concerned, if any.
        passed: whether the call got past this check (a rule: matched).
        detail: human-readable specifics, e.g. ``time 12:05 not in 08:00-11:59``.
    """

    check: str
    subject: str | None
    passed: bool
    detail: str

    def __str__(self) -> str:
        mark = "✓" if self.passed else "✗"
        subject = f" {self.subject}" if self.subject else ""
        return f"{mark} {self.check}{subject}: {self.detail}"


class Decision(NamedTuple):
    """The router's answer for one call.

    An immutable named tuple (a decision is built for every call, and a
    tuple is the cheapest immutable object Python makes).  Two decisions
    are equal when everything but ``explain`` is.

    Attributes:
        action: ``bridge``, ``reject``, ``collect_pin``, ``queue`` or ``conference``.
        targets: every destination of the matched rule once, the pick first
            then failover order; the queue or room for ``queue``/``conference``;
            empty otherwise.
        prompt: the announcement to play for ``reject``/``collect_pin``, else ``None``.
        reason: why (see :data:`REASONS`).
        rule: the matching rule's name (also when a cap then rejects), or ``None``.
        province: the caller's ISO 3166-2:CN code, or ``None``.
        number: the 400 number whose plan decided (an SMS to ``10657`` + number
            gives the number itself); without a plan, the dialed number
            normalised, or ``None`` if it was not a number.
        caller: the caller, normalised (``None`` when withheld or unusable).
        channel: ``voice`` or ``sms``.
        call_id: as given to :meth:`Router.route`.
        explain: the trace of checks when asked for, else ``None``.
    """

    action: str
    targets: tuple[str, ...]
    prompt: str | None
    reason: str
    rule: str | None
    province: str | None
    number: str | None = None
    caller: str | None = None
    channel: str = "voice"
    call_id: str | None = None
    explain: tuple[Step, ...] | None = None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Decision):
            return self[:10] == other[:10]
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        if isinstance(other, Decision):
            return self[:10] != other[:10]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self[:10])

    @property
    def connects(self) -> bool:
        """Whether the call goes somewhere (bridge, queue or conference)."""
        return self.action in ("bridge", "queue", "conference")

    def explain_text(self) -> str:
        """The explanation as lines of text (empty if none was asked for)."""
        return "\n".join(str(step) for step in self.explain or ())

    def as_dict(self) -> dict:
        """A JSON-ready dict of the decision (with ``explain`` as text lines)."""
        out = {
            "action": self.action,
            "targets": list(self.targets),
            "prompt": self.prompt,
            "reason": self.reason,
            "rule": self.rule,
            "province": self.province,
            "number": self.number,
            "caller": self.caller,
            "channel": self.channel,
            "call_id": self.call_id,
        }
        if self.explain is not None:
            out["explain"] = [str(step) for step in self.explain]
        return out


@attrs.frozen(slots=True)
class Charge:
    """What :meth:`Router.call_ended` charged for one call.

    Attributes:
        call_id, number, caller, province, target: the call as it was routed.
        started: POSIX time the call was routed.
        duration_s: the duration reported.
        billed_s: duration rounded up to whole billing increments.
        cost: the call's cost by the plan's tariff, or ``None`` without one.
        long_distance: whether the tariff's long-distance rate applied.
    """

    call_id: str
    number: str
    caller: str | None
    province: str | None
    target: str | None
    started: float
    duration_s: float
    billed_s: int
    cost: object  # decimal.Decimal | None; object keeps attrs from importing decimal here
    long_distance: bool

    @property
    def minutes(self):
        from decimal import Decimal

        return Decimal(self.billed_s) / 60
