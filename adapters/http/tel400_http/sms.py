"""SMS in tel400-http: the endpoints smsbox and SMS platforms call, and the group-send runner.

Endpoints (switch endpoints: :class:`~tel400_http.auth.SwitchAuth` guards
them like ``/v1/route``; smsbox cannot add a header, so either the address
allow-list (``--switch-allow``) or a secret as basic auth's password in the
URL, ``http://kannel:SECRET@host:8400/v1/sms/kannel?…``, which smsbox sends):

===========================  =========================================================
``GET /v1/sms/kannel``       smsbox's get-url: the answer's body is the reply
``GET /v1/sms/dlr``          smsbox's dlr-url: a delivery report
``POST /v1/sms/incoming``    a JSON webhook for SMS platforms; the answer says what to reply
===========================  =========================================================

Every message is answered by :meth:`tel400.Router.answer_sms` and its effects
carried out in one place (:meth:`Sms.handle`): opt-outs and opt-ins recorded
(the confirmation sent only when the state changed), the message recorded,
and a message routed onward forwarded through the gateway to the decision's
first phone-number target.

smsbox retries any answer but 2xx (``http-request-retry`` times) and then
texts the phone an error, so ``/v1/sms/kannel`` and ``/v1/sms/dlr`` answer
garbage with 200 and an empty body, logged and counted
(``tel400_sms_refused_total``): a retried bad request is still bad.

With a gateway (``--kannel-sendsms``), :class:`tel400.smsjobs.JobRunner`
runs in the service's lifespan and sends the jobs any process put in the
store; a clean stop lets every message handed to the gateway finish.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
import time
import uuid

import msgspec
import structlog
from prometheus_client.core import CounterMetricFamily

import tel400
from tel400.smsjobs import SENDER_PREFIX, GatewayError, JobRunner
from tel400.smstext import MAX_PARTS, OutgoingSms, count_parts

from .asgi import HttpError, Request, encode_json
from .schemas import SmsIncoming
from .kannel import parse_dlr, parse_incoming, reply_headers

_log = structlog.get_logger("tel400.http.sms")

#: The largest body of ``POST /v1/sms/incoming``: a 1,600-character text in JSON escapes, and the rest.
INCOMING_BODY = 16 * 1024
#: Forwarded messages still being handed to the gateway at most; beyond, a forward is refused (recorded).
MAX_FORWARDS_IN_FLIGHT = 256
_EMPTY_200 = (200, b"", b"text/plain; charset=UTF-8", None)


def forward_text(sender: str, text: str) -> str:
    """What a forwarded message says: the sender first, so the company can answer them.

    ``"13901012345: 你好"``, cut so that it fits in ``MAX_PARTS`` parts
    (the sender is never cut; the text is, with nothing marking the cut).
    """
    full = f"{sender}: {text}"
    low, high = len(sender) + 2, len(full)  # the longest prefix that fits: binary search, O(log n) counts
    while low < high:
        middle = (low + high + 1) // 2
        if _fits(full[:middle]):
            low = middle
        else:
            high = middle - 1
    return full[:low]


def _fits(text: str) -> bool:
    try:
        return count_parts(text) <= MAX_PARTS
    except ValueError:
        return False


class _CountingGateway:
    """A gateway that counts what it was given: the runner's sends on /metrics."""

    def __init__(self, gateway, counts: dict) -> None:
        self.gateway = gateway
        self._counts = counts

    async def submit(self, sms: OutgoingSms) -> None:
        try:
            await self.gateway.submit(sms)
        except GatewayError:
            _bump(self._counts, ("job", "refused"))
            raise
        _bump(self._counts, ("job", "submitted"))


_counts_lock = threading.Lock()


def _bump(counts: dict, key) -> None:
    with _counts_lock:  # bumped from worker threads too
        counts[key] = counts.get(key, 0) + 1


class Sms:
    """The SMS side of a :class:`~tel400_http.app.Service`.

    Args:
        service: the service (its router, its ``sms_store``, its clock checks).
        gateway: where forwarded messages and group sends go (an
            :class:`tel400.smsjobs.SmsGateway`, a
            :class:`~tel400_http.kannel.KannelGateway`); ``None``: nothing is
            forwarded and no group send runs.
        runner_options: more :class:`~tel400.smsjobs.JobRunner` arguments
            (``per_number_rate``, ``indoubt_wait_s``, ``poll_s``…).
    """

    def __init__(self, service, gateway=None, runner_options: dict | None = None) -> None:
        self.service = service
        self.gateway = gateway
        self.runner_options = dict(runner_options or {})
        self.runner: JobRunner | None = None
        self._runner_task: asyncio.Task | None = None
        self._forwards: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # where forwards run (handle() runs in threads)
        self.incoming: dict[tuple[str, str], int] = {}   # (endpoint, reason) -> messages
        self.outgoing: dict[tuple[str, str], int] = {}   # (kind, outcome) -> messages
        self.reports: dict[tuple[str, str], int] = {}    # (state, known) -> delivery reports
        self.refused: dict[tuple[str, str], int] = {}    # (endpoint, why) -> requests answered with nothing

    def routes(self) -> dict:
        return {
            ("GET", "/v1/sms/kannel"): ("sms.kannel", self.h_kannel),
            ("GET", "/v1/sms/dlr"): ("sms.dlr", self.h_dlr),
            ("POST", "/v1/sms/incoming"): ("sms.incoming", self.h_incoming),
        }

    # -- lifespan ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the group-send runner (with a gateway and a store)."""
        if self.gateway is None or self.service.sms_store is None or self._runner_task is not None:
            return
        router = self.service.router
        self.runner = JobRunner(self.service.sms_store, _CountingGateway(self.gateway, self.outgoing),
                                admit=router.admit_sms, zone_of=self.service._zone_of, **self.runner_options)
        self._runner_task = asyncio.create_task(self.runner.run())

    async def stop(self) -> None:
        """Stop the runner (messages with the gateway finish), finish forwards, close the gateway."""
        if self.runner is not None:
            self.runner.stop()
            await asyncio.gather(self._runner_task, return_exceptions=True)
            self.runner = self._runner_task = None
        await asyncio.gather(*self._forwards, return_exceptions=True)
        if self.gateway is not None and hasattr(self.gateway, "aclose"):
            await self.gateway.aclose()

    # -- endpoints --------------------------------------------------------------------------

    def _store(self):
        store = self.service.sms_store
        if store is None:
            raise HttpError(503, "sms_disabled", "this service keeps no SMS store (tel400-http --sms-db)")
        return store

    def _refuse(self, endpoint: str, why: str, req: Request, message: str):
        _bump(self.refused, (endpoint, why))
        _log.warning("sms_request_refused", endpoint=endpoint, why=why, message=message,
                     client=(req.scope.get("client") or ("?",))[0])
        return _EMPTY_200

    async def h_kannel(self, req: Request):
        self._store()
        try:
            sms = parse_incoming(req.query)
        except ValueError as exc:
            return self._refuse("kannel", "bad_request", req, str(exc))
        at = self._near_now(sms.at)
        self._loop = asyncio.get_running_loop()
        answer, reply = await asyncio.to_thread(self.handle, "kannel", sms.to, sms.sender, sms.text, at)
        if reply is None:
            return _EMPTY_200
        headers = reply_headers(reply)
        content_type = next(value for name, value in headers if name == b"content-type")
        return 200, reply.encode("utf-8"), content_type, [(n, v) for n, v in headers if n != b"content-type"]

    async def h_dlr(self, req: Request):
        store = self._store()
        try:
            dlr = parse_dlr(req.query)
        except ValueError as exc:
            return self._refuse("dlr", "bad_request", req, str(exc))
        known = await asyncio.to_thread(store.set_delivery, dlr.message_id, dlr.state, dlr.at)
        _bump(self.reports, (dlr.state, "true" if known else "false"))
        return _EMPTY_200

    async def h_incoming(self, req: Request):
        self._store()
        body = await req.read(INCOMING_BODY)
        if not body:
            raise HttpError(400, "bad_json", "expected a JSON object in the body, got nothing")
        try:  # the body's declaration (patterns, lengths) is schemas.SmsIncoming's
            data = msgspec.json.decode(body, type=SmsIncoming)
        except msgspec.ValidationError as exc:
            raise HttpError(422, "bad_request", str(exc)) from None
        except msgspec.DecodeError as exc:
            raise HttpError(400, "bad_json", f"the body is not JSON: {exc}") from None
        when = data.time.isoformat() if isinstance(data.time, dt.datetime) else data.time
        at = self.service._switch_at(when, data.to)
        self._loop = asyncio.get_running_loop()
        answer, reply = await asyncio.to_thread(self.handle, "incoming", data.to, data.phone, data.content, at)
        return 200, encode_json({"reply": reply, "parts": count_parts(reply) if reply is not None else 0,
                                 "kind": answer.kind, "reason": answer.reason, "number": answer.number}), \
            b"application/json", None

    def _near_now(self, at: float | None) -> float | None:
        """smsbox's %T when near this clock; else now (a retried request arrives late, a bad clock anywhen)."""
        tolerance = self.service.at_tolerance_s
        if at is None or (tolerance != math.inf and abs(at - time.time()) > tolerance):
            return None
        return at

    # -- one message ------------------------------------------------------------------------

    def handle(self, endpoint: str, to: str, sender: str, text: str, at) -> tuple[tel400.SmsAnswer, str | None]:
        """Answer one incoming message and carry out what the answer says; returns it and the reply to send.

        Runs in a worker thread: the router may wait on Redis, the store on SQLite.
        """
        store = self.service.sms_store
        answer = self.service.router.answer_sms(to, sender, text, at)
        _bump(self.incoming, (endpoint, answer.reason if answer.kind in ("none", "reply") else answer.kind))
        if answer.reason == "unknown_number":  # no tenant: nothing to record, nothing to send
            return answer, None
        when = _timestamp(at, self.service._zone_of(answer.number))
        peer = _normal(sender) or sender
        store.record_message(direction="in", number=answer.number, peer=peer, text=text,
                             parts=_parts_of(text), kind=answer.kind, outcome=answer.reason, at=when)
        reply = answer.reply
        kind = "reply"
        if answer.kind in ("opt_out", "opt_in"):
            kind = answer.kind
            changed = (store.opt_out(answer.number, peer, when) if kind == "opt_out"
                       else store.opt_in(answer.number, peer))
            if not changed:
                reply = None  # one confirmation: a second TD changes nothing and says nothing
        if reply is not None:
            store.record_message(direction="out", number=answer.number, peer=peer, text=reply, parts=answer.parts,
                                 kind=kind, outcome="answered", message_id=_new_id("r"), at=when)
            _bump(self.outgoing, (kind, "answered"))
        if answer.route is not None:
            self._forward(answer, peer, text, when)
        return answer, reply

    def _forward(self, answer: tel400.SmsAnswer, sender: str, text: str, when: float) -> None:
        """The message routed onward goes to the decision's first phone-number target, through the gateway."""
        decision = answer.route
        if decision.action != "bridge":
            return
        target = next((t for t in decision.targets if _normal(t) is not None), None)
        store = self.service.sms_store
        if target is None:  # SIP URIs only: Kannel cannot reach them (Kamailio's MESSAGE does)
            outcome = "not_forwarded_sip"
        elif self.gateway is None:
            outcome = "no_gateway"
        else:
            body = forward_text(sender, text)
            parts = count_parts(body)
            admission = self.service.router.admit_sms(answer.number, target, parts)
            if not admission.admitted:
                outcome = f"skipped_{admission.reason}"
            else:
                msg = OutgoingSms(message_id=_new_id("f"), number=answer.number, sender=SENDER_PREFIX + answer.number,
                                  to=_normal(target), text=body, parts=parts, kind="forward")
                self._submit_soon(msg)
                return
        store.record_message(direction="out", number=answer.number,
                             peer=target or (decision.targets[0] if decision.targets else ""), text=text,
                             parts=_parts_of(text), kind="forward", outcome=outcome, at=when)
        _bump(self.outgoing, ("forward", outcome))

    def _submit_soon(self, msg: OutgoingSms) -> None:
        # Called from the worker thread: the submit runs on the event loop, and the
        # answer to smsbox does not wait for it.
        self._loop.call_soon_threadsafe(self._start_forward, msg)

    def _start_forward(self, msg: OutgoingSms) -> None:
        if len(self._forwards) >= MAX_FORWARDS_IN_FLIGHT:
            self._record_forward(msg, "refused_busy")
            return
        task = asyncio.create_task(self._send_forward(msg))
        self._forwards.add(task)
        task.add_done_callback(self._forwards.discard)

    async def _send_forward(self, msg: OutgoingSms) -> None:
        try:
            await self.gateway.submit(msg)
            outcome = "sent"
        except (GatewayError, ValueError) as exc:
            _log.warning("sms_forward_failed", message_id=msg.message_id, error=str(exc))
            outcome = "failed"
        await asyncio.to_thread(self._record_forward, msg, outcome)

    def _record_forward(self, msg: OutgoingSms, outcome: str) -> None:
        self.service.sms_store.record_message(msg, outcome=outcome)
        _bump(self.outgoing, ("forward", outcome))

    # -- metrics ----------------------------------------------------------------------------

    def collect(self):
        incoming = CounterMetricFamily("tel400_sms_incoming", "Incoming SMS by endpoint and what became of them "
                                       "(the answer's reason; opt_out/opt_in).", labels=["endpoint", "result"])
        for (endpoint, result), n in sorted(self.incoming.items()):
            incoming.add_metric([endpoint, result], n)
        yield incoming
        outgoing = CounterMetricFamily("tel400_sms_outgoing", "Outgoing SMS by kind (reply, opt_out, opt_in, "
                                       "forward, job) and outcome.", labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(self.outgoing.items()):
            outgoing.add_metric([kind, outcome], n)
        yield outgoing
        reports = CounterMetricFamily("tel400_sms_delivery_reports", "Delivery reports by state, and whether "
                                      "they named a known message.", labels=["state", "known"])
        for (state, known), n in sorted(self.reports.items()):
            reports.add_metric([state, known], n)
        yield reports
        refused = CounterMetricFamily("tel400_sms_refused", "Requests from smsbox answered with nothing: "
                                      "garbage (answered 200 so that smsbox does not retry it).",
                                      labels=["endpoint", "why"])
        for (endpoint, why), n in sorted(self.refused.items()):
            refused.add_metric([endpoint, why], n)
        yield refused


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:16]


def _normal(phone: str) -> str | None:
    try:
        return tel400.normalize(phone)
    except tel400.NumberError:
        return None


def _parts_of(text: str) -> int:
    try:
        return count_parts(text)
    except ValueError:  # an incoming text over ten parts (a UCS-2 text of 1,600 characters is 24)
        return math.ceil(len(text) / 67)


def _timestamp(at, zone) -> float:
    if at is None:
        return time.time()
    if isinstance(at, dt.datetime):
        return (at if at.tzinfo is not None else at.replace(tzinfo=zone)).timestamp()
    return float(at)
