"""What FreeSWITCH does for a tel400 decision: one place for both ways of wiring it.

The Event Socket session (:mod:`tel400_freeswitch.session`) runs these
steps one by one; the mod_xml_curl answer (``tel400_http.switches``) writes
them as dialplan ``<action>`` lines.  So the applications, their arguments,
the hangup causes and the PIN re-ask rule are written once:

* ``bridge`` — :data:`BRIDGE_OPTIONS` (``continue_on_fail`` so that a failed
  bridge comes back, ``hangup_after_bridge``), then ``bridge`` with
  :meth:`Settings.dial_string`; if no target answers, :func:`fallback`;
* ``reject`` (and anything else that refuses) — :func:`notice`: ``answer``,
  ``playback`` of the prompt, a hangup with :data:`HANGUP_CAUSES`;
* ``collect_pin`` and a wrong PIN — :func:`ask_pin` while
  :func:`asks_for_pin` says so, with :func:`pin_digits_arg`;
* ``queue`` — ``answer``, ``callcenter``, hangup; ``conference`` —
  ``answer``, ``conference``, hangup.

A :class:`Step` whose ``app`` is :data:`HANGUP` is a hangup with the cause
in ``arg`` (an Event Socket ``call-command: hangup``, a dialplan ``hangup``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import tel400

#: FreeSWITCH hangup cause for each refusal.
HANGUP_CAUSES = {
    "unknown_number": "UNALLOCATED_NUMBER",
    "blacklisted": "CALL_REJECTED",
    "bad_caller": "CALL_REJECTED",
    "bad_pin": "CALL_REJECTED",
    "pin_locked": "CALL_REJECTED",
    "closed": "NORMAL_CLEARING",
    "rule_reject": "NORMAL_CLEARING",
    "cap_exceeded": "USER_BUSY",
    "backend_error": "NORMAL_TEMPORARY_FAILURE",
    "pin_required": "CALL_REJECTED",
}
#: the channel variable ``play_and_get_digits`` stores the PIN in
PIN_VARIABLE = "tel400_pin"
#: set before ``bridge``: a failed bridge comes back to us; an answered one ends the call with it
BRIDGE_OPTIONS = ("continue_on_fail=true", "hangup_after_bridge=true")
#: the step that hangs the channel up (``arg`` is the cause), not an application
HANGUP = "hangup"
#: what ends a call tel400 could not carry out (a failed bridge, a failure inside tel400)
FAILURE_CAUSE = "NORMAL_TEMPORARY_FAILURE"

_NUMBER = re.compile(r"\A[+*#]?[0-9*#]{1,32}\Z")
#: target lists whose dial-string legs Settings.legs() keeps
LEGS_KEPT = 4096


class Step(NamedTuple):
    """One application to run (or :data:`HANGUP`), with its argument."""

    app: str
    arg: str = ""


class Settings:
    """What FreeSWITCH does with decisions; every field has a ``tel400-esl`` option."""

    def __init__(self, *, gateway: str = "gw1", number_template: str = "sofia/gateway/{gateway}/{target}",
                 uri_template: str = "sofia/external/{target}", prompt_dir: str = "/usr/share/freeswitch/sounds/tel400",
                 prompt_ext: str = "wav", ring_timeout_s: int = 20, pin_attempts: int = 3, pin_timeout_ms: int = 5000,
                 queue_template: str = "{queue}@default", conference_template: str = "{room}@default",
                 caller_id: str = "caller", fallback_prompt: str = "unavailable", reply_timeout_s: float = 10.0,
                 app_timeout_s: float = 60.0, max_call_s: float = 4 * 3600) -> None:
        self.gateway = gateway
        self.number_template = number_template
        self.uri_template = uri_template
        self.prompt_dir = prompt_dir.rstrip("/")
        self.prompt_ext = prompt_ext
        self.ring_timeout_s = ring_timeout_s
        self.pin_attempts = pin_attempts
        self.pin_timeout_ms = pin_timeout_ms
        self.queue_template = queue_template
        self.conference_template = conference_template
        if caller_id not in ("caller", "number"):
            raise ValueError("caller_id: 'caller' (the caller's number) or 'number' (the 400 number)")
        self.caller_id = caller_id
        self.fallback_prompt = fallback_prompt
        for name, value in (("reply_timeout_s", reply_timeout_s), ("app_timeout_s", app_timeout_s),
                            ("max_call_s", max_call_s)):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
        self.reply_timeout_s = reply_timeout_s
        self.app_timeout_s = app_timeout_s
        self.max_call_s = max_call_s
        self._legs: dict[tuple[str, ...], str] = {}  # dial_string's legs by targets: see legs()

    def sound(self, prompt: str) -> str:
        """The sound file of a prompt name (names are [A-Za-z0-9_.-], checked by the plans)."""
        return f"{self.prompt_dir}/{prompt}.{self.prompt_ext}"

    def leg(self, target: str) -> str:
        template = self.number_template if _NUMBER.match(target) else self.uri_template
        return f"[leg_timeout={int(self.ring_timeout_s)}]" + template.format(gateway=self.gateway, target=target)

    def dial_string(self, decision: tel400.Decision) -> str:
        """The bridge argument: every target, ``|`` for failover, the caller ID in ``{}``."""
        if self.caller_id == "caller" and decision.caller and _NUMBER.match(decision.caller):
            shown = decision.caller
        else:
            shown = decision.number or ""
        head = f"{{origination_caller_id_number={shown}}}" if _NUMBER.match(shown) else ""
        return head + self.legs(decision.targets)

    def legs(self, targets: tuple[str, ...]) -> str:
        """The targets' legs joined by ``|`` (failover).

        Remembered by targets: a number's rules give the same few target
        lists call after call, and formatting them was most of a bridge's
        dial string (about 4 µs of 3 targets).  At most :data:`LEGS_KEPT`
        lists are kept; then the memory starts again.
        """
        legs = self._legs.get(targets)
        if legs is None:
            if len(self._legs) >= LEGS_KEPT:
                self._legs.clear()
            legs = self._legs[targets] = "|".join(self.leg(t) for t in targets)
        return legs


def pin_digits_arg(settings: Settings, prompt: str | None) -> str:
    """``play_and_get_digits``'s argument: 4–8 digits, 3 tries, into :data:`PIN_VARIABLE`."""
    s = settings
    return (f"4 8 3 {s.pin_timeout_ms} # {s.sound(prompt or 'enter_pin')} {s.sound('bad_pin_format')} "
            f"{PIN_VARIABLE} \\d{{4,8}}")


def asks_for_pin(decision: tel400.Decision, rounds_done: int, settings: Settings) -> bool:
    """The re-ask rule: a PIN is wanted (or was wrong) and the call has rounds left."""
    return (decision.action == "collect_pin" or decision.reason == "bad_pin") and rounds_done < settings.pin_attempts


def ask_pin(decision: tel400.Decision, settings: Settings) -> list[Step]:
    """Ask (again) for the PIN: after a wrong one its notice, then ``play_and_get_digits``."""
    steps = [Step("answer")]
    if decision.reason == "bad_pin" and decision.prompt:
        steps.append(Step("playback", settings.sound(decision.prompt)))  # wrong: say so, then ask again
    ask = decision.prompt if decision.action == "collect_pin" else "enter_pin"
    steps.append(Step("play_and_get_digits", pin_digits_arg(settings, ask)))
    return steps


def notice(settings: Settings, prompt: str | None, cause: str) -> list[Step]:
    """Answer, play the prompt (if any), hang up with ``cause``."""
    steps = [Step("answer")]
    if prompt:
        steps.append(Step("playback", settings.sound(prompt)))
    steps.append(Step(HANGUP, cause))
    return steps


def fallback(settings: Settings) -> list[Step]:
    """What a call hears when tel400 cannot carry it out: the fallback notice and a hangup."""
    return notice(settings, settings.fallback_prompt, FAILURE_CAUSE)


def refusal(decision: tel400.Decision, settings: Settings) -> list[Step]:
    """A decision that does not connect: its notice (``bad_pin`` for a PIN round without one) and its cause."""
    prompt = decision.prompt if decision.action == "reject" else (decision.prompt or "bad_pin")
    return notice(settings, prompt, HANGUP_CAUSES.get(decision.reason, "CALL_REJECTED"))


def carry_out(decision: tel400.Decision, settings: Settings, *, pin_rounds: int = 0) -> list[Step]:
    """The steps for ``decision``, ``pin_rounds`` PIN rounds into the call.

    A bridge's steps end with ``bridge``: what follows a failed bridge is
    :func:`fallback` (the session runs it when the bridge comes back
    unanswered; the dialplan lists it after ``bridge``).  PIN steps end with
    ``play_and_get_digits``: then the decision is made again with the PIN.
    """
    s = settings
    if decision.action == "bridge":
        return [Step("multiset", " ".join(BRIDGE_OPTIONS)), Step("bridge", s.dial_string(decision))]
    if asks_for_pin(decision, pin_rounds, s):
        return ask_pin(decision, s)
    if decision.action == "queue" and decision.targets:
        return [Step("answer"), Step("callcenter", s.queue_template.format(queue=decision.targets[0])),
                Step(HANGUP, "NORMAL_CLEARING")]
    if decision.action == "conference" and decision.targets:
        return [Step("answer"), Step("conference", s.conference_template.format(room=decision.targets[0])),
                Step(HANGUP, "NORMAL_CLEARING")]
    return refusal(decision, s)
