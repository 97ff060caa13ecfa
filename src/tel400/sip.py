"""SIP renderings of a decision, shared by the SIP-facing adapters.

The Kamailio adapter (KEMI) and the HTTP service's Kamailio rtjson endpoint
both turn a :class:`~tel400.Decision` into SIP: where to send the call
(request URIs), what to answer when it is refused (status codes), what to
tell a media server (``X-Tel400-*`` headers).  This module is that
translation and nothing else; the decision itself comes from the router.

Plan validation already keeps targets, prompts, queues and rooms free of
anything SIP could read as syntax; the functions here check again, so that a
value that did not come from a plan (a number a caller sent) cannot inject a
header either.
"""

from __future__ import annotations

import re

from .decision import Decision

#: Status code and reason phrase for each refusal (``cap_exceeded`` can be
#: answered 480 instead, see :func:`reply_for`).
REPLIES: dict[str, tuple[int, str]] = {
    "unknown_number": (404, "Not Found"),
    "blacklisted": (403, "Forbidden"),
    "bad_caller": (403, "Forbidden"),
    "bad_pin": (403, "Forbidden"),
    "pin_locked": (403, "Forbidden"),
    "pin_required": (480, "Temporarily Unavailable"),  # only when no media server can collect the PIN
    "closed": (480, "Temporarily Unavailable"),
    "rule_reject": (480, "Temporarily Unavailable"),
    "cap_exceeded": (486, "Busy Here"),
    "backend_error": (503, "Service Unavailable"),
    "ok": (480, "Temporarily Unavailable"),  # a queue or conference with no media server to host it
}

_NUMBER = re.compile(r"\A[+*#]?[0-9*#]{1,32}\Z")
_USER_AT_HOST = re.compile(r"\A[A-Za-z0-9._-]{1,64}@[A-Za-z0-9._-]{1,253}(?::[0-9]{1,5})?\Z")
_HOST = re.compile(r"\A[A-Za-z0-9._-]{1,253}(?::[0-9]{1,5})?\Z")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def check_gateway(gateway: str) -> str:
    """A gateway as ``host[:port]``; raises ``ValueError`` for anything else."""
    if not _HOST.match(gateway or ""):
        raise ValueError(f"gateway: expected host[:port], got {gateway!r}")
    return gateway


def is_number_target(target: str) -> bool:
    """Whether a target is a number (sent to a gateway), not ``user@host``."""
    return bool(_NUMBER.match(target))


def target_uri(target: str, gateway: str | None) -> str:
    """The request URI for a target: numbers go to the gateway, ``user@host`` as is.

    ``#`` is escaped (``%23``): it is not allowed in a SIP URI's user part.
    """
    if is_number_target(target):
        if not gateway:
            raise ValueError(f"target {target}: numbers need a gateway to be sent to")
        return f"sip:{target.replace('#', '%23')}@{gateway}"
    if _USER_AT_HOST.match(target):
        return f"sip:{target}"
    raise ValueError(f"target {target!r} is not a number or user@host")


def reply_for(decision: Decision, *, cap_code: int = 486) -> tuple[int, str]:
    """Status code and reason phrase that refuse a call for this decision."""
    if decision.reason == "cap_exceeded" and cap_code == 480:
        return 480, "Temporarily Unavailable"
    return REPLIES.get(decision.reason, (500, "Server Internal Error"))


def redirect_branches_of(targets: tuple[str, ...], gateway: str | None) -> list[tuple[str, str]]:
    """(URI, q) of each target for a 302, q falling in failover order (1.0, 0.9, … 0.1)."""
    return [(target_uri(target, gateway), f"{max(1.0 - 0.1 * i, 0.1):.1f}") for i, target in enumerate(targets)]


def redirect_branches(decision: Decision, gateway: str | None) -> list[tuple[str, str]]:
    """:func:`redirect_branches_of` a decision's targets."""
    return redirect_branches_of(decision.targets, gateway)


def contacts(decision: Decision, gateway: str | None) -> str:
    """A 302's Contact header value: every target, q-values in failover order."""
    return ", ".join(f"<{uri}>;q={q}" for uri, q in redirect_branches(decision, gateway))


def header_value(value: object) -> str:
    """A value safe inside one header line (control characters removed)."""
    return _UNSAFE.sub("", str(value))


def decision_headers(decision: Decision) -> list[tuple[str, str]]:
    """``X-Tel400-*`` headers that tell a media server what to do and why."""
    headers = [
        ("X-Tel400-Action", decision.action),
        ("X-Tel400-Reason", decision.reason),
    ]
    if decision.prompt:
        headers.append(("X-Tel400-Prompt", decision.prompt))
    if decision.action in ("queue", "conference") and decision.targets:
        headers.append(("X-Tel400-Target", decision.targets[0]))
    if decision.rule:
        headers.append(("X-Tel400-Rule", decision.rule))
    if decision.number:
        headers.append(("X-Tel400-Number", decision.number))
    if decision.province:
        headers.append(("X-Tel400-Province", decision.province))
    return [(name, header_value(value)) for name, value in headers]


def rtjson(decision: Decision, gateway: str | None, *, ring_timeout_ms: int = 30000,
           media_server: str | None = None) -> dict:
    """A Kamailio rtjson routing document for a decision.

    Bridges become serial routes, one per target in failover order; anything
    else goes to the media server (with the decision in headers) when there
    is one.  Refusals without a media server have no routes: the caller
    answers with :func:`reply_for`.
    """
    routes = []
    if decision.action == "bridge":
        for target in decision.targets:
            routes.append({"uri": target_uri(target, gateway), "fr_inv_timer": ring_timeout_ms})
    elif media_server:
        extra = "".join(f"{name}: {value}\r\n" for name, value in decision_headers(decision))
        routes.append({"uri": media_server, "headers": {"extra": extra}, "fr_inv_timer": ring_timeout_ms})
    return {"version": "1.0", "routing": "serial", "routes": routes}
