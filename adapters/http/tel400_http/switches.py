"""Decisions in the formats switches read, so that a switch needs no glue code.

* FreeSWITCH mod_xml_curl asks for a dialplan (a form POST) and runs the XML
  it gets back: :func:`freeswitch_request` reads the form, :func:`freeswitch_xml`
  writes the extension.  The steps come from :func:`tel400_freeswitch.actions.carry_out`,
  the same function the Event Socket session runs, so both ways of wiring
  FreeSWITCH behave alike.
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
from tel400_freeswitch import actions as fs
from tel400_freeswitch.actions import Settings as FreeSwitchSettings

from .asgi import HttpError

XML = b"text/xml; charset=utf-8"
NOT_FOUND = (b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
             b'<document type="freeswitch/xml"><section name="result"><result status="not found"/></section></document>\n')
_CONTEXT = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
_DIGITS = re.compile(r"\A[0-9]{4,8}\Z")
_UUID = re.compile(r"\A[A-Za-z0-9-]{1,64}\Z")
PIN_VARIABLE = fs.PIN_VARIABLE
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
    if request.context is None and fs.asks_for_pin(decision, request.pin_round, s):
        steps = fs.refusal(decision, s)  # no context to transfer back to: no second round
    else:
        steps = fs.carry_out(decision, s, pin_rounds=request.pin_round)
    actions: list[str] = []
    for step in steps:
        if step.app == "multiset":  # the bridge options, one set each
            actions.extend(_action("set", option) for option in step.arg.split())
            if end_url and request.uuid:
                hook = f"curl {end_url}/v1/calls/{request.uuid}/end post duration=${{billsec}}"
                actions.append(_action("set", f"api_reporting_hook={hook}"))
        elif step.app == "play_and_get_digits":  # count the round, ask, and route again with the PIN
            actions.append(_action("set", f"{PIN_ROUND_VARIABLE}={request.pin_round + 1}"))
            actions.append(_action(step.app, step.arg))
            actions.append(_action("transfer", f"{decision.number} XML {request.context}"))
        else:
            actions.append(_action(step.app, step.arg or None))
        if step.app == "bridge":  # continue_on_fail: the dialplan goes on here when no target answers
            actions.extend(_action(f.app, f.arg or None) for f in fs.fallback(s))

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
