"""tel400 inside Kamailio: a KEMI script for app_python3.

Load it with::

    loadmodule "app_python3.so"
    modparam("app_python3", "load", "/path/to/tel400_kemi.py")
    cfgengine "python"

and configure it with environment variables, read once at ``mod_init``
(docs/kamailio.md has the full list):

    TEL400_PLANS          plans: a file, sqlite:///path or redis://host/db (required)
    TEL400_COUNTERS       counter backend URL shared by the workers
                          (default shm:///dev/shm/tel400-kamailio.counters)
    TEL400_GATEWAY        host[:port] that number targets are sent to
    TEL400_MEDIA_SERVER   SIP URI for notices, PIN entry, queues, conferences
    TEL400_REPLY_MODE     proxy (default) or redirect
    TEL400_RING_TIMEOUT   seconds a branch may ring before failover (default 20)
    TEL400_CAP_REPLY      486 (default) or 480 for cap_exceeded
    TEL400_ON_ERROR       500 (default) or media: what a failure inside tel400 answers
    TEL400_SITE_PACKAGES  site-packages directories to add (os.pathsep separated)
    TEL400_ROUTER_FACTORY module:function(store, counters) -> Router, to customise
    TEL400_LOG_LEVEL      debug, info (default), warning or error: tel400's log lines
                          (structlog) written through Kamailio's own log
    TEL400_SMS_STORE      the SMS store (tel400.smsstore.SmsStore, an SQLite path):
                          opt-outs and message records of SIP MESSAGEs; without it
                          opt-outs are not kept and no confirmation is sent
    TEL400_SMS_DOMAIN     host[:port] in the From of reply MESSAGEs
                          (sip:<400 number>@<domain>; default: the request URI's host)

Every request gets an answer: a Python exception inside tel400 is logged and
answered (500, or the media server), never left to drop the request.
"""

import logging
import os
import re
import site
import sys
import time
from urllib.parse import urlsplit, urlunsplit

for _path in filter(None, os.environ.get("TEL400_SITE_PACKAGES", "").split(os.pathsep)):
    site.addsitedir(_path)  # addsitedir, not sys.path: editable installs need their .pth files

import KSR  # noqa: E402  (provided by app_python3)

import structlog  # noqa: E402

import tel400  # noqa: E402
from tel400 import sip, smstext  # noqa: E402

RETRY_CODES = frozenset({408, 480, 486})  # and every 5xx
FAILURE_ROUTE = "ksr_tel400_failure"
_log = structlog.get_logger("tel400.kamailio")
DEFAULT_COUNTERS = "shm:///dev/shm/tel400-kamailio.counters"
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}
#: Seconds between two looks (per worker) at the counter backend's failures;
#: at most one counter_backend_failed line per worker per interval.
BACKEND_REPORT_INTERVAL_S = 1.0
# The sanity module's checks before a new request is routed (and counted): a
# request Kamailio could not relay (a From or To without a URI, a broken
# request URI, a CSeq of another method, ...) gets sanity's 400 instead of a
# 500 after its cap place was used.  Bits of sanity_check's first argument
# (Kamailio's sanity module, 5.6); the Via checks "do not work yet" upstream.
SANITY_RURI_SIP_VERSION = 1 << 0
SANITY_RURI_SCHEME = 1 << 1
SANITY_REQUIRED_HEADERS = 1 << 2
SANITY_CSEQ_METHOD = 1 << 5
SANITY_CSEQ_VALUE = 1 << 6
SANITY_CONTENT_LENGTH = 1 << 7
SANITY_EXPIRES_VALUE = 1 << 8
SANITY_PROXY_REQUIRE = 1 << 9
SANITY_PARSE_URIS = 1 << 10
SANITY_DUPLICATE_TAGS = 1 << 12
SANITY_CHECKS = (SANITY_RURI_SIP_VERSION | SANITY_RURI_SCHEME | SANITY_REQUIRED_HEADERS | SANITY_CSEQ_METHOD
                 | SANITY_CSEQ_VALUE | SANITY_CONTENT_LENGTH | SANITY_EXPIRES_VALUE | SANITY_PROXY_REQUIRE
                 | SANITY_PARSE_URIS | SANITY_DUPLICATE_TAGS)
SANITY_URIS = 1 | 2 | 4  # with SANITY_PARSE_URIS: the request URI, From and To
#: A sender a reply MESSAGE may go to: its From user is a phone number (digits,
#: an optional +), nothing a SIP URI could read as syntax.
_REPLY_USER = re.compile(r"\A\+?[0-9]{1,32}\Z")
#: The reply's only header besides the ones uac builds.
REPLY_HEADERS = "Content-Type: text/plain;charset=UTF-8\r\n"


class Settings:
    def __init__(self, env):
        self.plans = env.get("TEL400_PLANS")
        if not self.plans:
            raise RuntimeError("tel400: set TEL400_PLANS to a plan file, sqlite:///path or redis://host/db")
        self.counters = env.get("TEL400_COUNTERS", DEFAULT_COUNTERS)
        self.gateway = env.get("TEL400_GATEWAY") or None
        if self.gateway:
            sip.check_gateway(self.gateway)
        self.media_server = env.get("TEL400_MEDIA_SERVER") or None
        if self.media_server and not self.media_server.startswith(("sip:", "sips:")):
            raise RuntimeError("tel400: TEL400_MEDIA_SERVER must be a SIP URI (sip:host:port)")
        self.mode = env.get("TEL400_REPLY_MODE", "proxy")
        if self.mode not in ("proxy", "redirect"):
            raise RuntimeError("tel400: TEL400_REPLY_MODE is proxy or redirect")
        self.ring_ms = int(float(env.get("TEL400_RING_TIMEOUT", "20")) * 1000)
        self.cap_code = int(env.get("TEL400_CAP_REPLY", "486"))
        if self.cap_code not in (480, 486):
            raise RuntimeError("tel400: TEL400_CAP_REPLY is 486 or 480")
        self.on_error = env.get("TEL400_ON_ERROR", "500")
        self.factory = env.get("TEL400_ROUTER_FACTORY") or None
        self.log_level = env.get("TEL400_LOG_LEVEL", "info")
        if self.log_level not in LOG_LEVELS:
            raise RuntimeError(f"tel400: TEL400_LOG_LEVEL is one of {', '.join(LOG_LEVELS)}")
        self.sms_store = env.get("TEL400_SMS_STORE") or None
        self.sms_domain = env.get("TEL400_SMS_DOMAIN") or None
        if self.sms_domain:
            try:
                sip.check_gateway(self.sms_domain)  # the same host[:port] shape
            except ValueError:
                raise RuntimeError("tel400: TEL400_SMS_DOMAIN must be host[:port]") from None


def _parts_of(text):
    """The SMS parts a received text would take (a text longer than 10 parts counts as 10)."""
    try:
        return smstext.count_parts(text)
    except ValueError:
        return smstext.MAX_PARTS


def reply_uri(user, host, port=None):
    """``sip:user@host[:port]`` for a reply MESSAGE, or None when any part could carry SIP syntax.

    ``user`` must be a phone number (``+`` and digits) and ``host[:port]``
    letters, digits, ``.``, ``-``, ``_`` (tel400.sip.check_gateway): no
    ``;``, ``>``, ``@``, ``?``, space, CR or LF can reach the request URI or
    the To header uac builds from it.
    """
    if not isinstance(user, str) or not _REPLY_USER.match(user):
        return None
    where = f"{host}:{port}" if port else f"{host}"
    try:
        sip.check_gateway(where)
    except ValueError:
        return None
    return f"sip:{user}@{where}"


class KamailioLogger:
    """structlog's output inside Kamailio: each event one line of Kamailio's own log, at its level.

    Without it tel400's lines (plan_change_refused, plans_reloaded, ...) went
    to structlog's default, Python's stdout: block-buffered or closed in a
    Kamailio process, so they showed up late or never, and never in syslog.
    """

    def debug(self, line):
        KSR.dbg(f"tel400: {line}\n")

    def info(self, line):
        KSR.info(f"tel400: {line}\n")

    def warning(self, line):
        KSR.warn(f"tel400: {line}\n")

    def error(self, line):
        KSR.err(f"tel400: {line}\n")

    def critical(self, line):
        KSR.crit(f"tel400: {line}\n")

    msg = info
    warn = warning
    exception = error
    fatal = critical


def configure_logging(level):
    """Send every structlog event, as ``event=... key=value`` (logfmt), to Kamailio's log."""
    logger = KamailioLogger()
    structlog.configure(
        processors=[structlog.processors.format_exc_info,
                    structlog.processors.LogfmtRenderer(key_order=["event"])],
        wrapper_class=structlog.make_filtering_bound_logger(LOG_LEVELS[level]),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=True,
    )


def _pairs(counts):
    """``{"allow": 2, "reject": 1}`` as ``allow:2,reject:1`` (one logfmt value)."""
    return ",".join(f"{name}:{n}" for name, n in sorted(counts.items()))


def without_password(url):
    """A URL fit for a log line: ``redis://:secret@host`` becomes ``redis://:***@host``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _default_factory(store, counters):
    # Streamed: each number is compiled as it is read, and only the compiled form is kept.
    return tel400.Router.from_store(store, counters)


def _load_factory(spec):
    if not spec:
        return _default_factory
    module, _, name = spec.partition(":")
    __import__(module)
    return getattr(sys.modules[module], name)


def _check_modules(settings):
    """Refuse to start on a configuration that lacks a module the script calls."""
    needed = ("sl", "tm", "tmx", "rr", "siputils", "corex", "sanity", "uac")
    if settings.mode == "proxy":
        needed += ("maxfwd", "dialog")
    missing = [name for name in needed if not hasattr(KSR, name)]
    if missing:
        loads = " ".join(f'loadmodule "{name}.so"' for name in missing)
        raise RuntimeError(f"tel400: the Kamailio configuration lacks {loads} (docs/kamailio.md)")


def _first_number_target(plans):
    """(400 number, target) of the first target that is a number, or None.

    ``plans``: NumberPlans (``None`` items are skipped).
    """
    for plan in plans:
        if plan is None:
            continue
        for action in (plan.default, *(rule.action for rule in plan.rules)):
            for target in action.targets:
                if sip.is_number_target(target.to):
                    return plan.number, target.to
    return None


def _spot_number_targets(store, spotted):
    """Make ``store.iter_plans`` (a full reload's stream) note in ``spotted`` its first number target.

    A full reload reads every plan once anyway; looking at each as it
    streams by costs O(its targets) until one is found, where reading the
    plans back afterwards (``router.plans``) cost a store read per number
    (~42 s a worker at a million).  Each stream starts ``spotted`` afresh.
    """
    streamed = store.iter_plans

    def iter_plans(*args, **kwargs):
        spotted.clear()
        for plans in streamed(*args, **kwargs):
            if not spotted:
                found = _first_number_target(plans)
                if found:
                    spotted.append(found)
            yield plans

    store.iter_plans = iter_plans


def _check_gateway(settings, store):
    """Refuse to start when calls would go to numbers and no gateway says where numbers go.

    Without a gateway the store is read once more, streamed (a deployment
    that sends calls to numbers sets TEL400_GATEWAY and skips this).  Plans
    changed later are not checked here: a call to a number target then gets
    500 and a ``tel400: request failed: ... numbers need a gateway`` line.
    """
    if settings.gateway:
        return
    found = _first_number_target(plan for batch in store.iter_plans() for plan in batch)
    if found:
        raise RuntimeError(f"tel400: TEL400_GATEWAY is not set, and {found[0]} sends calls to the number "
                           f"{found[1]}: set TEL400_GATEWAY=host[:port], where numbers are sent")


def mod_init():
    settings = Settings(os.environ)
    configure_logging(settings.log_level)
    _check_modules(settings)
    if settings.sms_store:
        from tel400.smsstore import SmsStore

        SmsStore(settings.sms_store).close()  # created (0600) here, once, before the workers fork
    store = tel400.open_store(settings.plans, create=False)  # a mistyped path: an error, not an empty store
    router = _load_factory(settings.factory)(store, settings.counters)
    _check_gateway(settings, store)
    if router.counters.url.startswith("memory:"):
        KSR.warn("tel400: memory:// counters are per worker; caps will not hold across workers\n")
    KSR.info(f"tel400 {tel400.__version__} ({tel400.IMPLEMENTATION}): {router.number_count} numbers "
             f"from {without_password(store.url)}, counters {without_password(router.counters.url)}, "
             f"mode {settings.mode}\n")
    watcher = tel400.PlanWatcher(router, store)
    return Tel400(settings, router, watcher)


class Tel400:
    """The app_python3 handler: one per Kamailio process (forked after mod_init)."""

    def __init__(self, settings, router, watcher):
        self.s = settings
        self.router = router
        self.watcher = watcher
        self.stateful = settings.mode == "proxy"
        self._branch_cache = {}
        self._uri_cache = {}
        self._backend_errors = router.backend_error_counts()  # as last reported, per process
        #: the first (number, target) a full reload streamed that needs a gateway
        self._spotted = []
        if not settings.gateway:
            _spot_number_targets(watcher.store, self._spotted)
        self._backend_report_due = 0.0
        self._sms_store = None  # opened in each worker (an SQLite connection must not cross a fork)

    def child_init(self, rank):
        self.router.reseed()  # Kamailio forks without Python's fork hooks
        return 0

    @property
    def sms_store(self):
        if self._sms_store is None and self.s.sms_store:
            from tel400.smsstore import SmsStore

            self._sms_store = SmsStore(self.s.sms_store)
        return self._sms_store

    # -- requests -------------------------------------------------------------------

    def ksr_request_route(self, msg):
        try:
            self._request()
        except Exception as exc:  # never let a request go unanswered
            self._failed("request", exc)
        return 1

    def _request(self):
        method = KSR.pv.get("$rm")  # one call instead of an is_X() per method
        if self.stateful and KSR.maxfwd.process_maxfwd(10) < 0:  # a redirect forwards nothing
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return
        if method == "OPTIONS" and KSR.corex.has_ruri_user() < 0:
            KSR.sl.sl_send_reply(200, "OK")
            return
        if method == "CANCEL":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return
        if KSR.siputils.has_totag() > 0:
            self._in_dialog(method)
            return
        if method == "ACK":
            return  # no transaction and no dialog: nothing to do
        if KSR.sanity.sanity_check(SANITY_CHECKS, SANITY_URIS) < 1:
            return  # sanity answered 400: Kamailio could not relay it, so it is neither routed nor counted
        if self.stateful or method == "MESSAGE":
            # Retransmissions of requests we relay are matched to their
            # transaction (or to a worker routing them right now), not routed
            # again.  A redirect server answers statelessly and needs neither.
            if KSR.tmx.t_precheck_trans() > 0:
                KSR.tm.t_check_trans()
                return
            if KSR.tm.t_check_trans() == 0:
                return
        # A clock comparison unless a plan check is due; then one store read and one
        # compile per changed number, between two requests of this worker.
        if self.watcher.poll():
            self._check_reloaded_plans()
        if time.monotonic() >= self._backend_report_due:
            self._report_backend_errors()
        if method == "INVITE":
            self._new_call("voice")
        elif method == "MESSAGE":
            self._new_message()
        else:
            KSR.hdr.append_to_reply("Allow: INVITE, ACK, CANCEL, BYE, MESSAGE, OPTIONS\r\n")
            KSR.sl.sl_send_reply(405, "Method Not Allowed")

    def _in_dialog(self, method):
        if KSR.rr.loose_route() > 0:
            if KSR.tm.t_relay() < 0:
                KSR.sl.sl_reply_error()
            return
        if method == "ACK":
            if self.stateful:
                # An ACK to a negative answer we relayed: tm matches and absorbs it.
                KSR.tm.t_check_trans()
            return  # in redirect mode: the ACK to our stateless 302
        KSR.sl.sl_send_reply(404, "Not Here")

    def _new_call(self, channel):
        dialed = KSR.pv.get("$rU")
        caller = KSR.pv.get("$fU")
        # Calls are tracked (for minutes and cost at their end) only when this
        # proxy stays on the path: a redirected call ends elsewhere.
        tracked = channel == "voice" and self.s.mode == "proxy"
        call_id = KSR.pv.get("$ci") if tracked else None
        decision = self.router.route(dialed, caller, None, channel, None, call_id)
        if decision.action == "bridge":
            if self.s.mode == "redirect" and channel == "voice":
                self._redirect(decision, call_id)
            else:
                self._proxy(decision, call_id)
        elif self.s.media_server and channel == "voice":
            self._to_media_server(decision)
        else:
            self._refuse(decision)

    def _new_message(self):
        """A MESSAGE: answered by tel400 (a reply, an opt-out or -in), relayed onward, or refused.

        The request is answered 200 when it was handled here, relayed as a
        call is when the answer routes it onward, refused as before
        otherwise.  A reply goes back as a new MESSAGE (:meth:`_send_reply`).
        """
        body = self._text_body()
        if body is None:
            # not a text tel400 can read: refused before anything is routed or counted
            KSR.hdr.append_to_reply("Accept: text/plain;charset=UTF-8\r\n")
            KSR.sl.sl_send_reply(415, "Unsupported Media Type")
            return
        # A transaction from here on: a retransmission (our 200 lost) is answered by tm again,
        # never answered, replied to and counted a second time.  Every answer below is stateful.
        KSR.tm.t_newtran()
        dialed = KSR.pv.get("$rU")
        caller = KSR.pv.get("$fU")
        answer = self.router.answer_sms(dialed, caller, body)
        # An unknown number has no tenant: nothing of it is kept (the store refuses what is not a 400 number).
        store = self.sms_store if answer.reason != "unknown_number" else None
        reply = answer.reply
        if store is not None:
            store.record_message(direction="in", number=answer.number, peer=caller or "", text=body,
                                 parts=_parts_of(body),
                                 kind=answer.kind, outcome=answer.reason)
            # The router keeps no opt-out list: the store does, and says whether it changed.
            if answer.kind == "opt_out" and not store.opt_out(answer.number, caller):
                reply = None
            elif answer.kind == "opt_in" and not store.opt_in(answer.number, caller):
                reply = None
            elif answer.kind == "reply" and store.is_opted_out(answer.number, caller):
                reply = None  # an opted-out sender gets no auto-reply
        elif answer.kind in ("opt_out", "opt_in"):
            reply = None  # nowhere to keep the choice: confirming it would be a lie
        if reply:
            self._send_reply(answer, reply, store)
        if answer.route is not None and answer.route.action == "bridge":
            self._proxy(answer.route, None)
        elif answer.kind != "none":
            KSR.sl.send_reply(200, "OK")
        elif answer.route is not None:
            self._refuse(answer.route)
        else:  # unknown number or blacklisted sender: no decision was made
            code, phrase = sip.REPLIES.get(answer.reason, (500, "Server Internal Error"))
            KSR.hdr.append_to_reply(f"X-Tel400-Reason: {sip.header_value(answer.reason)}\r\n")
            KSR.sl.send_reply(code, phrase)

    @staticmethod
    def _text_body():
        """The MESSAGE's text, or None when it is not ``text/plain`` in UTF-8 (no Content-Type: text).

        A charset other than UTF-8 (or its subset US-ASCII) is refused even
        when its bytes happen to decode: UTF-16 "hotel" is valid UTF-8 with NULs.
        """
        media, *params = (KSR.pv.get("$cT") or "text/plain").lower().split(";")
        if media.strip() != "text/plain":
            return None
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "us-ascii"):
                return None
        try:
            return KSR.pv.get("$rb") or ""
        except UnicodeDecodeError:  # app_python3 decodes the body as UTF-8
            return None

    def _send_reply(self, answer, text, store):
        """Send ``text`` to the sender as a new MESSAGE from the 400 number (uac_req_send).

        The target is rebuilt from the From URI's user, host and port, each
        checked (:func:`reply_uri`); the text is only ever the body, whose
        length the plan bounds (10 parts), so nothing a sender wrote becomes SIP.
        """
        to = reply_uri(KSR.pv.get("$fU"), KSR.pv.get("$fd"), KSR.pv.get("$(fu{uri.port})"))
        domain = self.s.sms_domain or KSR.pv.get("$rd")
        outcome = "failed"  # counted as failed in reports: the router had admitted it
        if to is not None and reply_uri(answer.number, domain) is not None:  # the request's host checked too
            KSR.pv.sets("$uac_req(method)", "MESSAGE")
            KSR.pv.sets("$uac_req(ruri)", to)
            KSR.pv.sets("$uac_req(turi)", to)
            KSR.pv.sets("$uac_req(furi)", f"sip:{answer.number}@{domain}")
            KSR.pv.sets("$uac_req(hdrs)", REPLY_HEADERS)
            KSR.pv.sets("$uac_req(body)", text)
            outcome = "sent" if KSR.uac.uac_req_send() >= 0 else "failed"
        else:
            KSR.warn("tel400: no reply MESSAGE: the sender's From is not a phone number at a host\n")
        if store is not None:
            store.record_message(direction="out", number=answer.number, peer=KSR.pv.get("$fU") or "",
                                 text=text, parts=answer.parts, kind=answer.kind, outcome=outcome)

    def _refuse(self, decision):
        code, phrase = sip.reply_for(decision, cap_code=self.s.cap_code)
        KSR.hdr.append_to_reply(f"X-Tel400-Reason: {sip.header_value(decision.reason)}\r\n")
        KSR.sl.send_reply(code, phrase)  # stateful when a transaction exists (a MESSAGE), else stateless

    def _redirect(self, decision, call_id):
        # The targets become branches and sl builds the Contact header from
        # them.  Stateless, as redirect servers are: an INVITE retransmitted
        # because the 302 was lost is routed, and counted, once more (a count
        # can only err high, so a cap is never exceeded).
        for uri, q in self._branches(decision.targets):
            KSR.corex.append_branch_uri_q(uri, q)
        KSR.sl.sl_send_reply(302, "Moved Temporarily")

    def _branches(self, targets):
        """Redirect branches for a target list, computed once per list (plans are finite)."""
        branches = self._branch_cache.get(targets)
        if branches is None:
            if len(self._branch_cache) > 100_000:
                self._branch_cache.clear()
            branches = self._branch_cache[targets] = sip.redirect_branches_of(targets, self.s.gateway)
        return branches

    def _uri(self, target):
        uri = self._uri_cache.get(target)
        if uri is None:
            if len(self._uri_cache) > 100_000:
                self._uri_cache.clear()
            uri = self._uri_cache[target] = sip.target_uri(target, self.s.gateway)
        return uri

    def _proxy(self, decision, call_id):
        first, rest = decision.targets[0], decision.targets[1:]
        if KSR.is_INVITE():
            KSR.rr.record_route()
            KSR.dialog.dlg_manage()
            record = self.router.export_call(call_id)
            if record:
                KSR.pv.sets("$dlg_var(tel400_call)", record)
            KSR.pv.sets("$dlg_var(tel400_target)", first)
        KSR.pv.sets("$avp(tel400_next)", ",".join(rest))
        self._relay_to(first)

    def _relay_to(self, target):
        KSR.pv.sets("$ru", self._uri(target))
        KSR.tm.t_set_fr(self.s.ring_ms, 0)
        KSR.tm.t_on_failure(FAILURE_ROUTE)
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    def _to_media_server(self, decision):
        for name, value in sip.decision_headers(decision):
            KSR.hdr.append(f"{name}: {value}\r\n")
        KSR.rr.record_route()
        KSR.pv.sets("$ru", self.s.media_server)
        KSR.tm.t_set_fr(self.s.ring_ms, 0)
        if KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()

    # -- failover -----------------------------------------------------------------

    def ksr_tel400_failure(self, msg):
        try:
            self._failure()
        except Exception as exc:
            self._failed("failure", exc)
        return 1

    def _failure(self):
        if KSR.tm.t_is_canceled() > 0:
            return
        code = KSR.pv.get("$T_reply_code") or 0
        if code not in RETRY_CODES and not 500 <= code < 600:
            return  # a final answer such as 404 or 603 goes back to the caller
        pending = KSR.pv.get("$avp(tel400_next)") or ""
        if not pending:
            return
        target, _, rest = pending.partition(",")
        KSR.pv.sets("$avp(tel400_next)", rest)
        if KSR.is_INVITE():
            KSR.pv.sets("$dlg_var(tel400_target)", target)
        self._relay_to(target)

    # -- call end -----------------------------------------------------------------------

    def ksr_dialog_event(self, msg, event):
        try:
            if event == "dialog:end":
                self._dialog_end()
        except Exception as exc:
            self._failed("dialog", exc)
        return 1

    def _dialog_end(self):
        record = KSR.pv.get("$dlg_var(tel400_call)")
        if not record:
            return
        started = KSR.pv.get("$dlg(start_ts)") or 0
        duration = max(0, int(time.time()) - int(started)) if started else 0
        # a dialog ended by its timeout (a lost BYE) may run a second past the
        # longest call: charged as the longest call, not refused
        duration = min(duration, self.router.longest_call_s)
        self.router.call_ended(KSR.pv.get("$dlg(callid)"), duration, KSR.pv.get("$dlg_var(tel400_target)"),
                               record=record)

    # -- the rest -------------------------------------------------------------------------

    def _check_reloaded_plans(self):
        """Say in the log when new plans send calls to numbers and no gateway is set.

        At start this stops Kamailio (_check_gateway); a later change cannot,
        so its calls to numbers get 500 and this line says why, once per reload.
        """
        if self.s.gateway:
            return
        applied = self.watcher.applied  # the changed numbers, or None: everything was read again
        if applied is None:  # spotted while the reload streamed the store: never read again here
            found = self._spotted[0] if self._spotted else None
        else:
            found = _first_number_target(self._plan_or_none(n) for n in sorted(applied))
        if found:
            _log.error("number_target_without_gateway", number=found[0], target=found[1],
                       fix="set TEL400_GATEWAY=host[:port]")

    def _plan_or_none(self, number):
        try:
            return self.router.plan_of(number)
        except (tel400.PlanError, tel400.BackendError):
            return None

    def _report_backend_errors(self):
        """One log line for the counter backend failures this process saw since the last one.

        The router counts them (and applies each plan's on_backend_error);
        this says so in Kamailio's log, at most once per interval, so that an
        outage is neither silent nor a line per call.
        """
        self._backend_report_due = time.monotonic() + BACKEND_REPORT_INTERVAL_S
        counts = self.router.backend_error_counts()
        if counts == self._backend_errors:
            return
        new = {policy: n - self._backend_errors.get(policy, 0) for policy, n in counts.items()
               if n != self._backend_errors.get(policy, 0)}
        self._backend_errors = counts
        failures = getattr(self.router.counters, "failures", None) or {}  # by kind, where kept (Redis)
        _log.error("counter_backend_failed", counters=without_password(self.router.counters.url),
                   calls=sum(new.values()), policy=_pairs(new), failures=_pairs(failures) or None)

    def _failed(self, where, exc):
        """Log a failure inside tel400 and, for a request, still answer it."""
        KSR.err(f"tel400: {where} failed: {type(exc).__name__}: {exc}\n")
        if where != "request" or KSR.is_ACK() or KSR.is_CANCEL():
            return  # failure and dialog routes answer nothing themselves; ACK/CANCEL get no answer
        try:
            if self.s.on_error == "media" and self.s.media_server and KSR.is_INVITE():
                KSR.hdr.append("X-Tel400-Action: reject\r\nX-Tel400-Reason: error\r\n")
                KSR.pv.sets("$ru", self.s.media_server)
                if KSR.tm.t_relay() > 0:
                    return
        except Exception as again:
            KSR.err(f"tel400: the error fallback failed too: {again}\n")
        KSR.sl.send_reply(500, "Server Internal Error")  # stateful if a transaction exists

    def ksr_reply_route(self, msg):
        return 1  # Kamailio 5.6 needs it defined (see docs/kamailio.md)

    def ksr_onsend_route(self, msg):
        return 1
