"""Decisions in the formats switches read, so that a switch needs no glue code.

* FreeSWITCH mod_xml_curl asks for a dialplan (a form POST) and runs the XML
  it gets back: :func:`freeswitch_request` reads the form, :func:`freeswitch_xml`
  writes the extension.  The applications and sound files are those of the
  Event Socket adapter (:class:`tel400_freeswitch.server.Settings`), so both
  ways of wiring FreeSWITCH behave alike.
* Kamailio's rtjson module applies a routing document: :func:`kamailio_rtjson`
  is :func:`tel400.sip.rtjson` plus what the script needs to answer a refusal.

Nothing a caller sent is written unescaped: the XML is built with every
attribute escaped, and only values that passed tel400's own checks (the
normalised caller, plan targets and prompt names) reach FreeSWITCH
application data, where ``${…}`` would otherwise be expanded.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import quoteattr

import tel400
from tel400 import sip
from tel400_freeswitch.server import HANGUP_CAUSES, Settings as FreeSwitchSettings

from .asgi import HttpError

XML = b"text/xml; charset=utf-8"
NOT_FOUND = (b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
             b'<document type="freeswitch/xml"><section name="result"><result status="not found"/></section></document>\n')
_CONTEXT = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
_DIGITS = re.compile(r"\A[0-9]{4,8}\Z")
_UUID = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")
PIN_VARIABLE = "tel400_pin"
PIN_ROUND_VARIABLE = "tel400_pin_round"


class FreeSwitchRequest:
    """The fields of a mod_xml_curl dialplan request that routing needs."""

    __slots__ = ("section", "dialed", "caller", "context", "uuid", "pin", "pin_round")

    def __init__(self, form: dict[str, str]) -> None:
        self.section = form.get("section", "")
        self.dialed = form.get("Caller-Destination-Number") or form.get("Hunt-Destination-Number") or ""
        self.caller = form.get("Caller-Caller-ID-Number") or form.get("Caller-ANI") or None
        context = form.get("Caller-Context") or form.get("Hunt-Context") or "public"
        self.context = context if _CONTEXT.match(context) else None
        uuid = form.get("Unique-ID") or ""
        self.uuid = uuid if _UUID.match(uuid) else None
        pin = form.get(f"variable_{PIN_VARIABLE}") or ""
        self.pin = pin if _DIGITS.match(pin) else None
        rounds = form.get(f"variable_{PIN_ROUND_VARIABLE}") or "0"
        self.pin_round = int(rounds) if rounds.isascii() and rounds.isdigit() and len(rounds) < 4 else 0


def freeswitch_request(form: dict[str, str]) -> FreeSwitchRequest:
    return FreeSwitchRequest(form)


def _action(app: str, data: str | None = None) -> str:
    if data is None:
        return f"        <action application={quoteattr(app)}/>"
    return f"        <action application={quoteattr(app)} data={quoteattr(data)}/>"


def freeswitch_xml(decision: tel400.Decision, request: FreeSwitchRequest, settings: FreeSwitchSettings, *,
                   end_url: str | None = None) -> bytes:
    """The dialplan extension that carries out ``decision``.

    * bridge — failover dial string, ``continue_on_fail`` so that a failed
      bridge falls through to the fallback notice, ``hangup_after_bridge``;
      with ``end_url`` the call's end is reported there (an
      ``api_reporting_hook`` running ``curl … post duration=${billsec}``);
    * reject — answer, play the prompt, hang up with a fitting cause;
    * collect_pin (and a wrong PIN) — ``play_and_get_digits`` into
      ``tel400_pin`` and a transfer back to the same number, so that
      FreeSWITCH asks again with the PIN; a round counter ends the call with
      the notice after ``pin_attempts`` rounds, the router's lockout after
      its own limit;
    * queue — ``callcenter``; conference — ``conference``.
    """
    s = settings
    actions: list[str] = []
    if decision.action == "bridge":
        actions.append(_action("set", "continue_on_fail=true"))
        actions.append(_action("set", "hangup_after_bridge=true"))
        if end_url and request.uuid:
            hook = f"curl {end_url}/v1/calls/{request.uuid}/end post duration=${{billsec}}"
            actions.append(_action("set", f"api_reporting_hook={hook}"))
        actions.append(_action("bridge", s.dial_string(decision)))
        actions.append(_action("answer"))
        actions.append(_action("playback", s.sound(s.fallback_prompt)))
        actions.append(_action("hangup", "NORMAL_TEMPORARY_FAILURE"))
    elif (decision.action == "collect_pin" or decision.reason == "bad_pin") \
            and request.pin_round < s.pin_attempts and request.context:
        ask = decision.prompt if decision.action == "collect_pin" else "enter_pin"
        arg = (f"4 8 3 {s.pin_timeout_ms} # {s.sound(ask or 'enter_pin')} {s.sound('bad_pin_format')} "
               f"{PIN_VARIABLE} \\d{{4,8}}")
        actions.append(_action("answer"))
        if decision.reason == "bad_pin" and decision.prompt:
            actions.append(_action("playback", s.sound(decision.prompt)))  # wrong: say so, then ask again
        actions.append(_action("set", f"{PIN_ROUND_VARIABLE}={request.pin_round + 1}"))
        actions.append(_action("play_and_get_digits", arg))
        actions.append(_action("transfer", f"{decision.number} XML {request.context}"))
    elif decision.action == "queue" and decision.targets:
        actions.append(_action("answer"))
        actions.append(_action("callcenter", s.queue_template.format(queue=decision.targets[0])))
        actions.append(_action("hangup", "NORMAL_CLEARING"))
    elif decision.action == "conference" and decision.targets:
        actions.append(_action("answer"))
        actions.append(_action("conference", s.conference_template.format(room=decision.targets[0])))
        actions.append(_action("hangup", "NORMAL_CLEARING"))
    else:
        prompt = decision.prompt if decision.action == "reject" else (decision.prompt or "bad_pin")
        actions.append(_action("answer"))
        if prompt:
            actions.append(_action("playback", s.sound(prompt)))
        actions.append(_action("hangup", HANGUP_CAUSES.get(decision.reason, "CALL_REJECTED")))

    expression = "^" + re.escape(request.dialed) + "$"
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
        '<document type="freeswitch/xml">',
        '  <section name="dialplan">',
        f"    <context name={quoteattr(request.context or 'public')}>",
        '      <extension name="tel400">',
        f'        <condition field="destination_number" expression={quoteattr(expression)}>',
        *("  " + a for a in actions),
        "        </condition>",
        "      </extension>",
        "    </context>",
        "  </section>",
        "</document>",
        "",
    ]
    return "\n".join(lines).encode()


def kamailio_rtjson(decision: tel400.Decision, *, gateway: str | None, media_server: str | None,
                    ring_timeout_ms: int, cap_code: int) -> dict:
    """An rtjson document, plus ``tel400`` with the decision and the reply for a refusal.

    rtjson reads ``version``, ``routing`` and ``routes`` and ignores other
    members, so the script can read ``tel400.reply`` with the jansson module
    when ``routes`` is empty.
    """
    try:
        doc = sip.rtjson(decision, gateway, ring_timeout_ms=ring_timeout_ms, media_server=media_server)
    except ValueError as exc:  # a user@host target without a gateway for numbers: the plan, not the client
        raise HttpError(409, "unroutable", str(exc)) from None
    info = decision.as_dict()
    info.pop("explain", None)
    if not doc["routes"]:
        code, reason = sip.reply_for(decision, cap_code=cap_code)
        info["reply"] = {"code": code, "reason": reason}
    doc["tel400"] = info
    return doc
