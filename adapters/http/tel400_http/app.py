"""The service: one :class:`Service` per process, an ASGI application.

Every decision comes from :meth:`tel400.Router.route`; this module only reads
requests, checks who may do what, and writes answers.  Endpoints:

========================================  =====================================================
``POST /v1/route``                        a decision as JSON
``POST /v1/calls/{call_id}/end``          a call's end: charges minutes and cost caps
``POST /freeswitch/dialplan``             mod_xml_curl: the extension that carries it out
``POST /kamailio/rtjson``                 an rtjson routing document
``GET /v1/sms/kannel``, ``/v1/sms/dlr``   smsbox's get-url and dlr-url (:mod:`tel400_http.sms`)
``POST /v1/sms/incoming``                 an SMS platform's JSON webhook
``GET /v1/numbers``                       the numbers a token may manage           (token)
``GET|PUT|DELETE /v1/numbers/{n}``        one number's plan                         (token)
``GET /v1/numbers/{n}/blacklist``         its blacklist; ``PUT|DELETE …/{entry}``   (token)
``PUT|DELETE /v1/numbers/{n}/pin``        its PIN                                   (token)
``GET /v1/numbers/{n}/audit``             who changed what, when                    (token)
``GET /v1/numbers/{n}/report?month=``     the month's calls, minutes and cost       (token)
``GET /v1/numbers/{n}/calls``             the latest call records                   (token)
``GET /metrics /healthz /readyz``         operations
``GET /openapi.json /v1/ping``            the API description; a trivial endpoint
``/portal/…``                             the web portal, when mounted (:meth:`Service.mount`)
========================================  =====================================================

The switch endpoints, the SMS endpoints and the operations endpoints are
answered here, on raw ASGI, checked first; then the apps given to
:meth:`Service.mount`; every other request goes to the admin API, a Starlette
app (:mod:`tel400_http.admin`, bodies declared once in
:mod:`tel400_http.schemas`, which also generates ``/openapi.json``).

The switch endpoints (the first four, and the SMS ones) answer only the callers
:class:`~tel400_http.auth.SwitchAuth` lets in (a shared secret, an address
allow-list), take ``at`` only near this server's clock, and a call's end only
for a duration a call can last.

Routing runs on the event loop when it cannot block (memory and shm
counters, no PIN to check); with Redis counters it runs in a worker thread
so that a slow backend never holds other requests; with a PIN, on threads
of its own (:func:`tel400.pins.check_executor`), so that a flood of guesses
waiting on key derivations never holds the threads everything else uses.
Admin writes always run in a thread (SQLite, scrypt).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import math
import os
import re
import threading
import time
import zoneinfo

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

import tel400
from tel400 import pins
from tel400.metrics import RouterCollector
from tel400.sip import check_gateway
from tel400.stores import WritableStore
from tel400_freeswitch.server import Settings as FreeSwitchSettings

from . import switches
from .admin import create_admin
from .asgi import ClientGone, HttpError, Request, encode_json, field, send
from .auth import SwitchAuth, Tokens
from .records import CallRecords, plan_zones
from .sms import Sms

_log = structlog.get_logger("tel400.http")

_CALL_ID = re.compile(r"\A[\x21-\x7e]{1,128}\Z")  # printable ASCII, no spaces: safe in logs and URLs
_ROUTE_FIELDS = frozenset({"dialed", "caller", "at", "channel", "pin", "call_id", "explain"})
_COMMON_ROUTE_FIELDS = frozenset({"dialed", "caller"})
_KAMAILIO_FIELDS = frozenset({"dialed", "caller", "call_id", "method", "at"})
_END_FIELDS = frozenset({"duration", "target"})
#: Retry-After of a call end whose charge the counter backend refused: the
#: least whole second (Redis' breaker probes every 250 ms by default); the
#: call waits up to --max-call-duration from its routing for a retry.
CHARGE_RETRY_AFTER_S = b"1"
_SWITCH_ENDPOINTS = frozenset({"route", "freeswitch", "kamailio", "calls.end",
                               "sms.kannel", "sms.dlr", "sms.incoming"})


class Service:
    """tel400 over HTTP.

    Args:
        router: the :class:`tel400.Router` that decides.
        store: where plans live; admin writes need a writable one (SQLite,
            Redis).  ``None``: the admin API only reads the router's plans.
        watcher: a :class:`tel400.PlanWatcher` of ``store``: started with the
            service, polled at once after each admin write.
        records: :class:`~tel400_http.records.CallRecords`, or ``None`` (no
            records, no reports).
        tokens: who may use the admin API (:class:`~tel400_http.auth.Tokens`);
            ``None`` refuses every admin request.
        freeswitch: how decisions become FreeSWITCH applications.
        gateway, media_server, ring_timeout_ms, cap_code: for Kamailio rtjson.
        end_url: this service's URL as FreeSWITCH reaches it; set, bridges
            report their end to it.
        max_body: the largest body accepted (plans); decision requests are
            held to 16 KiB.
        offload: route in a worker thread (default: when the counters are
            Redis, whose calls may wait on the network, or the router's
            call registry is shared: SQLite or Redis, ``tel400-http
            --workers``).
        switch_auth: who may use the switch endpoints
            (:class:`~tel400_http.auth.SwitchAuth`); ``None`` lets anyone
            (``tel400-http`` sets it: loopback only, or a shared secret).
        at_tolerance_s: how far from this server's clock a switch's ``at``
            may be (seconds; ``math.inf`` accepts any time, for a test bed).
        apply_wait_s: how long an admin write waits for a poll the watcher's
            background thread is making before polling itself (so that this
            process routes by the change when the write answers); past it
            the change arrives with the next poll.
    """

    ROUTE_BODY = 16 * 1024

    def __init__(self, router: tel400.Router, *, store=None, watcher=None, records: CallRecords | None = None,
                 tokens: Tokens | None = None, freeswitch: FreeSwitchSettings | None = None,
                 gateway: str | None = None, media_server: str | None = None, ring_timeout_ms: int = 30000,
                 cap_code: int = 486, end_url: str | None = None, max_body: int = 1 << 20,
                 offload: bool | None = None, switch_auth: SwitchAuth | None = None,
                 at_tolerance_s: float = 300.0, apply_wait_s: float = 5.0, sms_store=None, sms_gateway=None,
                 sms_runner: dict | None = None) -> None:
        self.router = router
        self.apply_wait_s = apply_wait_s
        self.store = store
        self.watcher = watcher
        self.records = records
        self.tokens = tokens or Tokens([])
        self.freeswitch = freeswitch or FreeSwitchSettings()
        self.gateway = check_gateway(gateway) if gateway else None
        self.media_server = media_server
        self.ring_timeout_ms = ring_timeout_ms
        self.cap_code = cap_code
        self.end_url = end_url.rstrip("/") if end_url else None
        self.max_body = max_body
        if offload is None:  # what waits on I/O (Redis, a shared call registry's SQLite or Redis) runs in a thread
            offload = router.waits_on_io
        self.offload = offload
        self.switch_auth = switch_auth
        if not at_tolerance_s >= 0:  # NaN too: it would let every time through
            raise ValueError(f"at tolerance: expected seconds >= 0 (or inf), got {at_tolerance_s!r}")
        self.at_tolerance_s = at_tolerance_s
        self._pin_threads = pins.check_executor(router.pin_policy)
        #: The SMS store (tel400.smsstore.SmsStore; tel400-http --sms-db): opt-outs, messages, contacts,
        #: group sends; ``None``: SMS off.
        self.sms_store = sms_store
        #: The SMS endpoints and the group-send runner (:mod:`tel400_http.sms`).
        self.sms = Sms(self, sms_gateway, sms_runner)
        self.draining = False
        self.started = False
        #: This process's worker id under ``tel400-http --workers N`` (/healthz tells it); ``None``: none.
        self.worker: int | None = None
        self._write_lock = threading.Lock()
        self._number_listeners: list = []
        self.requests: dict[tuple[str, int], int] = {}
        self.registry = CollectorRegistry()
        self.registry.register(RouterCollector(router, watcher))
        self.registry.register(_ServiceCollector(self))
        self.registry.register(self.sms)
        ProcessCollector(registry=self.registry)
        self.latency = {name: Latency() for name in ("route", "freeswitch", "kamailio")}
        self._zones = plan_zones(router)
        self._static = {
            ("POST", "/v1/route"): ("route", self.h_route),
            ("POST", "/freeswitch/dialplan"): ("freeswitch", self.h_freeswitch),
            ("POST", "/kamailio/rtjson"): ("kamailio", self.h_kamailio),
            ("GET", "/v1/ping"): ("ping", self.h_ping),
            ("GET", "/healthz"): ("healthz", self.h_healthz),
            ("GET", "/readyz"): ("readyz", self.h_readyz),
            ("GET", "/metrics"): ("metrics", self.h_metrics),
            **self.sms.routes(),
        }
        self._patterns = [
            (re.compile(r"\A/v1/calls/(?P<call_id>[^/]+)/end\Z"), {"POST": ("calls.end", self.h_call_end)}),
        ]
        self._mounts: list[tuple[str, object]] = []
        #: The admin API: every request the raw table and the mounted apps leave.
        self.admin = create_admin(self)

    def mount(self, prefix: str, app) -> None:
        """Serve ``prefix`` and every path under ``prefix + "/"`` by the ASGI ``app``.

        The app gets the full path (per the ASGI spec) with ``root_path``
        extended by ``prefix``; Starlette strips it to route.  The switch and
        operations endpoints are matched first, so a mount never slows them.
        """
        if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
            raise ValueError(f"mount prefix: expected /name without a trailing slash, got {prefix!r}")
        self._mounts.append((prefix, app))

    def on_number(self, callback) -> None:
        """Call ``callback(number, event, actor)`` when this service creates or deletes a number's plan.

        ``event`` is ``"created"`` (a plan stored where there was none) or
        ``"deleted"``; ``actor`` is who did it.  The callback runs in the
        writing thread, under the write lock, after the store has the change;
        what it raises reaches the writer.  The portal forgets a number's
        company login with it, so a number given to a new company never opens
        to the old one.  A number another process creates or deletes (the
        CLI, another instance on the same store) calls nothing here.
        """
        self._number_listeners.append(callback)

    def _number_event(self, number: str, event: str, actor: str) -> None:
        for callback in list(self._number_listeners):
            callback(number, event, actor)

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send_) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send_)
        elif kind == "lifespan":
            await self._lifespan(receive, send_)

    async def _lifespan(self, receive, send_) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                await self.sms.start()
                await send_({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.sms.stop()  # before the records and the watcher: a last send is still recorded
                await asyncio.to_thread(self.stop)
                await send_({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> None:
        """Start the plan watcher (once)."""
        if not self.started:
            self.started = True
            if self.watcher is not None:
                self.watcher.start()

    def stop(self) -> None:
        """Stop watching plans and write the call records still queued."""
        self.draining = True
        self._pin_threads.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop()
        if self.records is not None:
            self.records.close()

    async def _http(self, scope, receive, send_) -> None:
        method, path = scope["method"], scope["path"]
        found = self._static.get((method, path))
        params = None
        if found is None:
            found, params = self._match(method, path)
            if found is None:
                for prefix, app in self._mounts:
                    if path == prefix or path.startswith(prefix + "/"):
                        return await app(dict(scope, root_path=scope.get("root_path", "") + prefix), receive, send_)
                return await self.admin(scope, receive, send_)
        name, handler = found
        req = Request(scope, receive, params)
        try:
            if name in _SWITCH_ENDPOINTS and self.switch_auth is not None:
                self.switch_auth.check(scope)
            status, body, content_type, headers = await handler(req)
        except HttpError as exc:
            status, body, content_type, headers = exc.status, encode_json(exc.body()), b"application/json", exc.headers
        except ClientGone:
            return
        except Exception:
            _log.exception("request_failed", endpoint=name, method=method, path=path)
            status, content_type, headers = 500, b"application/json", None
            body = encode_json({"error": "internal_error", "message": "tel400 failed on this request; see its log"})
        key = (name, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        await send(send_, status, body, content_type, headers)

    def _match(self, method: str, path: str):
        allowed: list[str] = []
        for pattern, methods in self._patterns:
            m = pattern.match(path)
            if m:
                if method in methods:
                    return methods[method], m.groupdict()
                allowed = list(methods)
                break
        if not allowed:
            allowed = [meth for meth, p in self._static if p == path]
        if allowed:
            return ("method_not_allowed", _refuse(405, "method_not_allowed", f"{method} is not allowed on {path}",
                                                  headers=[(b"allow", ", ".join(allowed).encode())])), None
        return None, None  # not a raw endpoint: a mounted app's or the admin API's

    # -- deciding ----------------------------------------------------------------------------

    def _decide(self, endpoint, dialed, caller, at, channel, pin, call_id, explain=False) -> tel400.Decision:
        t0 = time.perf_counter()
        try:
            decision = self.router.route(dialed, caller, at, channel, pin, call_id, explain)
        except ValueError as exc:  # a bad channel or time: the request's mistake
            raise HttpError(422, "bad_request", str(exc)) from None
        if self.records is not None:
            self.records.decision(decision, self._started(decision, at))
        self.latency[endpoint].observe(time.perf_counter() - t0)
        return decision

    async def _decide_async(self, endpoint, dialed, caller, at, channel, pin, call_id, explain=False):
        if pin is not None:
            return await self._decide_pin(endpoint, dialed, caller, at, channel, pin, call_id, explain)
        if self.offload:
            return await asyncio.to_thread(self._decide, endpoint, dialed, caller, at, channel, pin, call_id, explain)
        return self._decide(endpoint, dialed, caller, at, channel, pin, call_id, explain)

    def _decide_pin(self, *args):
        """A decision with a PIN, on the PIN threads (the router bounds the derivations in flight)."""
        return asyncio.get_running_loop().run_in_executor(self._pin_threads, self._decide, *args)

    def _started(self, decision, at) -> float:
        if at is None:
            return time.time()
        if isinstance(at, dt.datetime):
            if at.tzinfo is None:
                at = at.replace(tzinfo=self._zone_of(decision.number))
            return at.timestamp()
        return float(at)

    def _zone_of(self, number):
        return self._zones(number) or zoneinfo.ZoneInfo("Asia/Shanghai")

    @staticmethod
    def _at(value):
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                raise HttpError(422, "wrong_type", f"at: expected an ISO 8601 time, got {value!r}",
                                field="at") from None
        elif value < 0:
            raise HttpError(422, "wrong_type", "at: expected a POSIX time from 1970", field="at")
        try:
            tel400.check_at(value)  # the years a calendar holds in every zone
        except ValueError as exc:
            raise HttpError(422, "wrong_type", str(exc), field="at") from None
        return value

    def _switch_at(self, value, dialed: str):
        """A switch's ``at``: a call happening now, so near this server's clock (422 otherwise).

        Any other time would let a caller pick the period its caps count in
        (one day per request dodges a daily cap); other times are for
        ``tel400 route --at`` and ``tel400 simulate``.
        """
        at = self._at(value)
        if at is None or self.at_tolerance_s == math.inf:
            return at
        if isinstance(at, dt.datetime):
            if at.tzinfo is None:
                at_ts = at.replace(tzinfo=self._zone_of(_normalized(dialed))).timestamp()
            else:
                at_ts = at.timestamp()
        else:
            at_ts = at
        off = at_ts - time.time()
        if abs(off) > self.at_tolerance_s:
            raise HttpError(422, "at_out_of_range",
                            f"at: {value!r} is {abs(off):.0f} s {'ahead of' if off > 0 else 'behind'} this server's "
                            f"clock; a switch reports calls as they happen (within {self.at_tolerance_s:g} s, "
                            "tel400-http --at-tolerance); other times are for tel400 route --at and tel400 simulate",
                            field="at")
        return at

    async def h_route(self, req: Request):
        # The service's hot path: the common request ({"dialed", "caller"}, both
        # strings) is checked with a few type() tests; anything else takes the
        # general checks, which name the field at fault.
        await req.read(self.ROUTE_BODY)
        data = req.json()
        dialed = data.get("dialed")
        caller = data.get("caller")
        at = pin = call_id = None
        channel, explain = "voice", False
        if type(dialed) is not str or (caller is not None and type(caller) is not str) \
                or not data.keys() <= _COMMON_ROUTE_FIELDS:
            _only(data, _ROUTE_FIELDS)
            dialed = field(data, "dialed", str, required=True)
            caller = field(data, "caller", str)
            at = self._switch_at(field(data, "at", (str, int, float)), dialed)
            channel = field(data, "channel", str, default="voice")
            pin = field(data, "pin", str)
            call_id = _call_id(field(data, "call_id", str))
            explain = field(data, "explain", bool, default=False)
        # _decide_async, inlined: one coroutine less per decision on this path
        if pin is not None:
            decision = await self._decide_pin("route", dialed, caller, at, channel, pin, call_id, explain)
        elif self.offload:
            decision = await asyncio.to_thread(self._decide, "route", dialed, caller, at, channel, pin, call_id,
                                               explain)
        else:
            decision = self._decide("route", dialed, caller, at, channel, pin, call_id, explain)
        return 200, encode_json(decision.as_dict()), b"application/json", None

    async def h_call_end(self, req: Request):
        call_id = _call_id(req.params["call_id"])
        body = await req.read(self.ROUTE_BODY)
        # FreeSWITCH's curl posts a form; `curl -d '{…}'` labels JSON as a form too
        if req.is_form() and not body.lstrip().startswith(b"{"):
            data = req.form()
            _only(data, _END_FIELDS)
            try:
                duration = float(data["duration"])
            except KeyError:
                raise HttpError(422, "missing_field", "duration: required", field="duration") from None
            except ValueError:
                raise HttpError(422, "wrong_type", "duration: expected seconds", field="duration") from None
            target = data.get("target") or None
        else:
            data = req.json()
            _only(data, _END_FIELDS)
            duration = field(data, "duration", (int, float), required=True)
            target = field(data, "target", str)
        try:  # a refused duration leaves the call waiting: a corrected retry charges it
            if self.offload:
                charge = await asyncio.to_thread(self.router.call_ended, call_id, duration, target)
            else:
                charge = self.router.call_ended(call_id, duration, target)
        except ValueError as exc:
            raise HttpError(422, "bad_request", str(exc).replace("duration_s", "duration", 1),
                            field="duration") from None
        except tel400.BackendError as exc:  # the call waits, with what is left to charge, for this retry
            raise HttpError(503, "charge_unavailable", str(exc),
                            headers=[(b"retry-after", CHARGE_RETRY_AFTER_S)]) from None
        if charge is None:
            raise HttpError(404, "unknown_call", f"no routed call {call_id!r} is waiting for its end "
                                                 "(never routed with this call_id, already ended, expired, or "
                                                 "not remembered: --max-calls calls were in progress)")
        if self.records is not None:
            self.records.ended(charge)
        return 200, encode_json({
            "call_id": charge.call_id, "number": charge.number, "target": charge.target,
            "duration_s": charge.duration_s, "billed_s": charge.billed_s,
            "cost": None if charge.cost is None else str(charge.cost), "long_distance": charge.long_distance,
        }), b"application/json", None

    async def h_freeswitch(self, req: Request):
        await req.read(self.ROUTE_BODY)
        fs = switches.freeswitch_request(req.form())
        if fs.section != "dialplan" or not fs.dialed:
            return 200, switches.NOT_FOUND, switches.XML, None
        decision = await self._decide_async("freeswitch", fs.dialed, fs.caller, None, "voice", fs.pin, fs.uuid)
        if decision.reason == "unknown_number":
            return 200, switches.NOT_FOUND, switches.XML, None  # FreeSWITCH goes on with its own dialplan
        return 200, switches.freeswitch_xml(decision, fs, self.freeswitch, end_url=self.end_url), switches.XML, None

    async def h_kamailio(self, req: Request):
        await req.read(self.ROUTE_BODY)
        data = req.json()
        _only(data, _KAMAILIO_FIELDS)
        dialed = field(data, "dialed", str, required=True)
        caller = field(data, "caller", str)
        call_id = _call_id(field(data, "call_id", str))
        method = field(data, "method", str, default="INVITE").upper()
        if method not in ("INVITE", "MESSAGE"):
            raise HttpError(422, "bad_request", f"method: expected INVITE or MESSAGE, got {method!r}", field="method")
        at = self._switch_at(field(data, "at", (str, int, float)), dialed)
        channel = "sms" if method == "MESSAGE" else "voice"
        decision = await self._decide_async("kamailio", dialed, caller, at, channel, None, call_id)
        doc = switches.kamailio_rtjson(decision, gateway=self.gateway, media_server=self.media_server,
                                       ring_timeout_ms=self.ring_timeout_ms, cap_code=self.cap_code)
        return 200, encode_json(doc), b"application/json", None

    # -- operations --------------------------------------------------------------------------

    async def h_ping(self, req: Request):
        return 200, b'{"pong":true}', b"application/json", None

    async def h_healthz(self, req: Request):
        if self.worker is None:
            return 200, b'{"status":"ok"}', b"application/json", None
        # which worker answered (tel400-http --workers): a check that all serve, and where to look in the logs
        return (200, encode_json({"status": "ok", "worker": self.worker, "pid": os.getpid(),
                                  "numbers": self.router.number_count}), b"application/json",
                [(b"x-tel400-worker", str(self.worker).encode())])

    async def h_readyz(self, req: Request):
        problems = []
        if self.draining:
            problems.append("shutting down")
        if self.records is not None and not self.records.alive:
            problems.append("the call record writer stopped")
        # A number whose stored plan is invalid does not make the process unready: it routes every
        # other number, and taking it out of service would take them all down.  It is listed here.
        body = {"status": "not ready" if problems else "ready", "problems": problems,
                "numbers": self.router.number_count, "implementation": self.router.implementation,
                "quarantined": sorted(self._quarantined())}
        return (503 if problems else 200), encode_json(body), b"application/json", None

    async def h_metrics(self, req: Request):
        return 200, generate_latest(self.registry), b"text/plain; version=0.0.4; charset=utf-8", None

    # -- the admin API -----------------------------------------------------------------------

    # -- what the admin API and the portal share ------------------------------------------

    def _writable(self) -> WritableStore:
        if not isinstance(self.store, WritableStore):
            source = getattr(self.store, "url", None) or self.router.settings.source or "their source"
            raise HttpError(409, "read_only", f"plans come from {source}, which this service does not write; "
                                              "run it with --plans sqlite:///… or redis://… to manage them here")
        return self.store

    def _plan_tree(self, number: str) -> dict | None:
        if isinstance(self.store, WritableStore):
            return self.store.get_number(number)
        plan = self.router.plan_of(number)
        return None if plan is None else tel400.PlanSet(numbers=(plan,)).to_dict()["numbers"][0]

    def _applied(self, number: str, stored: tel400.PlanSet | None = None) -> None:
        """This process routes by the change at once; the others within their watcher's interval.

        ``stored``: what ``put_number`` returned (the number's validated
        plan); ``None`` for a deletion.  One number is applied, never the set.
        """
        if self.watcher is not None:
            # takes the numbers changed since its version: this one; waits for
            # a poll the background thread is making (it may predate the write)
            self.watcher.poll(force=True, wait_s=self.apply_wait_s)
        elif isinstance(self.store, WritableStore):
            plan = stored.get(number) if stored is not None else None
            if plan is None:
                self.router.update(removed=[number])
            else:
                self.router.update([plan])

    def _quarantined(self) -> dict[str, str]:
        """Numbers the store holds whose plan is invalid (see tel400.PlanWatcher.quarantined)."""
        source = self.watcher if self.watcher is not None else self.store
        return dict(getattr(source, "quarantined", None) or {})


class Latency:
    """A latency histogram kept as plain counts.

    ``observe`` is a binary search and two additions; prometheus_client's
    Histogram takes a lock and costs several times more, on a path whose
    whole budget is a few microseconds.  Scrapes read the counts.
    """

    BOUNDS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative counts by upper bound, ``+Inf`` last, as Prometheus wants them."""
        out, total = [], 0
        for bound, count in zip((*map(str, self.BOUNDS), "+Inf"), self.counts):
            total += count
            out.append((bound, total))
        return out


class _ServiceCollector:
    """Requests by endpoint and status, and the call record writer's state."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self):
        s = self._service
        requests = CounterMetricFamily("tel400_http_requests", "HTTP requests by endpoint and status.",
                                       labels=["endpoint", "status"])
        for (endpoint, status), count in sorted(s.requests.items()):
            requests.add_metric([endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily("tel400_http_route_seconds",
                                        "Time to decide one call (router.route and recording), by endpoint.",
                                        labels=["endpoint"])
        for endpoint, histogram in s.latency.items():
            latency.add_metric([endpoint], histogram.buckets(), histogram.sum)
        yield latency
        if s.records is not None:
            r = s.records
            yield CounterMetricFamily("tel400_http_records_dropped", "Call records dropped: the writer fell behind.",
                                      value=r.dropped)
            yield CounterMetricFamily("tel400_http_record_errors", "Call record writes that failed.", value=r.errors)
            yield CounterMetricFamily("tel400_http_record_ends_unmatched",
                                      "Call ends not written: their call's record never came (end_wait_s).",
                                      value=r.ends_unmatched)
            yield GaugeMetricFamily("tel400_http_records_pending", "Call records waiting to be written.",
                                    value=r.pending)


def create_app(router: tel400.Router, **options) -> Service:
    """The ASGI application for ``router`` (see :class:`Service` for the options)."""
    return Service(router, **options)


# -- helpers ----------------------------------------------------------------------------------


def _refuse(status: int, code: str, message: str, headers=None):
    async def handler(req: Request):
        raise HttpError(status, code, message, headers=headers)

    return handler


def _only(data: dict, allowed: frozenset) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise HttpError(422, "unknown_field", f"unknown fields {sorted(unknown)}; expected {', '.join(sorted(allowed))}",
                        field=sorted(unknown)[0])


def _call_id(value: str | None) -> str | None:
    if value is not None and not _CALL_ID.match(value):
        raise HttpError(422, "bad_request", "call_id: expected 1 to 128 printable ASCII characters without spaces",
                        field="call_id")
    return value


def _normalized(dialed: str) -> str | None:
    try:
        return tel400.normalize(dialed)
    except tel400.NumberError:
        return None
