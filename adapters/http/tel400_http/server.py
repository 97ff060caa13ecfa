"""``tel400-http``: the HTTP microservice on uvicorn.

    tel400-http                                   # embedded defaults, see below
    tel400-http --plans plans.toml --port 8400    # plans from a file (the admin API reads them only)
    tel400-http --plans sqlite:///plans.db --tokens tokens.toml --counters shm:///dev/shm/tel400

Embedded defaults, for a first look on a fresh machine: a data directory
(``./tel400-data``) with an SQLite plan store seeded with the carrier manual's
example plan, the call records, and an operator token (``admin-token``, made
on first start); memory counters; the switch endpoints answer this host only
(``--switch-secrets`` and ``--switch-allow`` let switches elsewhere in).  The
command prints where to send requests.

uvicorn with httptools and uvloop serves the raw ASGI application; SIGTERM or
SIGINT stops accepting connections, finishes the requests in flight (up to
``--grace`` seconds), writes the queued call records and exits.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import os
import pathlib
import secrets
import sys

import structlog
from tel400_freeswitch.server import Settings as FreeSwitchSettings

import tel400
from tel400 import pins, redis_clients, redis_counters
from tel400.addresses import ANY, LOOPBACK, AllowList
from tel400 import workers
from tel400.calls import DEFAULT_MAX_AGE_S
from tel400.listener import raise_descriptor_limit
from tel400.loglines import stderr_logger
from tel400.server_options import (add_pin_options, add_worker_options, open_call_registry, pin_policy,
                                   worker_policy)

from .app import Service
from .auth import SwitchAuth, Tokens, hash_token, new_token
from .pool import NumberPool
from .portal import accounts
from .portal.web import UPLOAD_BYTES
from .portal.web import PLAN_WRITES_PER_MINUTE
from .records import CallRecords, plan_zones

DEFAULT_PORT = 8400


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tel400-http", description="tel400's HTTP microservice")
    p.add_argument("--plans", help="a plan file, sqlite:///path or redis://host/db (default: an SQLite store in "
                                   "--data, seeded with the carrier manual's example plan)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--counters", default="memory://", help="counter backend URL (shm:///path, redis://host/db)")
    p.add_argument("--data", default="tel400-data", help="directory for the embedded defaults (plans, records, token)")
    p.add_argument("--records", default=None,
                   help="call records database (default: DATA/records.db); 'none' keeps no records")
    p.add_argument("--retention-days", type=float, default=180, help="call records older than this are deleted")
    p.add_argument("--max-records", type=int, default=5_000_000, help="at most this many call records are kept")
    p.add_argument("--tokens", help="admin API tokens (TOML, see docs/http.md); default: DATA/admin-token, "
                                    "one operator token made on first start")
    p.add_argument("--gateway", default="gw1",
                   help="where number targets go: a sofia gateway name (FreeSWITCH) and host[:port] (Kamailio)")
    p.add_argument("--media-server", help="Kamailio rtjson: SIP URI of the media server for notices and PINs")
    p.add_argument("--ring-timeout", type=int, default=20, help="seconds per target before failover")
    p.add_argument("--cap-code", type=int, choices=(480, 486), default=486, help="SIP code for cap_exceeded")
    p.add_argument("--prompt-dir", default="/usr/share/freeswitch/sounds/tel400")
    p.add_argument("--prompt-ext", default="wav")
    p.add_argument("--end-url", help="this service's URL as FreeSWITCH reaches it: bridges then report their end")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes")
    p.add_argument("--grace", type=float, default=30, help="seconds to finish requests in flight on shutdown")
    p.add_argument("--max-connections", type=int, default=4096,
                   help="connections open at most; beyond, new ones wait in the listen backlog until one closes")
    p.add_argument("--max-per-address", type=int, default=256,
                   help="connections open from one client address at most; beyond, new ones get a 503 and are closed")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds for a complete request head, from the connection's start or the previous "
                        "response's end; then the connection is closed")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds for a complete request body after its head; then the connection is closed")
    p.add_argument("--idle-timeout", type=float, default=5.0,
                   help="seconds a kept-alive connection may wait for the next request's first byte")
    p.add_argument("--switch-secrets", metavar="FILE",
                   help="SHA-256 digests of the switch secrets, one per line (--hash-token SECRET): the switch "
                        "endpoints then need one (Authorization: Bearer, or basic auth's password)")
    p.add_argument("--switch-allow", metavar="NETS",
                   help="comma-separated addresses or networks the switch endpoints answer, or 'any' "
                        "(default: 127.0.0.0/8,::1 without --switch-secrets, any with them)")
    p.add_argument("--at-tolerance", type=float, default=300, metavar="SECONDS",
                   help="how far a switch's 'at' may be from this server's clock ('inf': any time, a test bed)")
    p.add_argument("--max-calls", type=int, default=200_000,
                   help="calls in progress remembered for their end at most; beyond, new calls are not remembered")
    p.add_argument("--max-call-duration", type=float, default=DEFAULT_MAX_AGE_S, metavar="SECONDS",
                   help="the longest call: a longer reported duration is refused, an older call forgotten")
    add_pin_options(p)
    add_worker_options(p)
    add_sms_options(p)
    add_portal_options(p)
    p.add_argument("--forwarded-allow-ips", metavar="ADDRESSES",
                   help="believe X-Forwarded-For and X-Forwarded-Proto from these proxy addresses (comma-separated; "
                        "default: from none, so a client cannot pick the address the lockout and --switch-allow see)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--hash-token", metavar="SECRET", help="print the sha256 of a token for a tokens file, and exit")
    return p


def add_sms_options(p: argparse.ArgumentParser) -> None:
    """SMS: the store, the Kannel gateway and the group-send runner (docs/sms.md)."""
    g = p.add_argument_group("SMS (docs/sms.md)")
    g.add_argument("--sms-db", help="the SMS store: opt-outs, messages, address books, group sends "
                                    "(default: DATA/sms.db); 'none': no SMS endpoints")
    g.add_argument("--kannel-sendsms", metavar="URL",
                   help="smsbox's sendsms URL (http://127.0.0.1:13013/cgi-bin/sendsms): messages routed onward "
                        "are forwarded and group sends run; without it neither happens")
    g.add_argument("--kannel-user", default="tel400", help="the sendsms-user's username")
    g.add_argument("--kannel-password", help="its password; visible in ps: prefer --kannel-password-file or "
                                             f"${KANNEL_PASSWORD_ENV}")
    g.add_argument("--kannel-password-file", metavar="FILE", help="the sendsms password, the first line of FILE")
    g.add_argument("--kannel-smsc", help="the smsc-id to send through (default: bearerbox's routing)")
    g.add_argument("--sms-dlr-url", metavar="URL",
                   help="this service's /v1/sms/dlr as smsbox reaches it (default: from --host and --port)")
    g.add_argument("--sms-rate-per-number", type=float, default=10.0, metavar="PER_SECOND",
                   help="group-send messages per second of one number, all its jobs together")
    g.add_argument("--sms-indoubt-wait", type=float, default=30.0, metavar="SECONDS",
                   help="after a restart, how long a message perhaps sent waits for its delivery report "
                        "before it is sent again")


#: The environment variable that may hold the sendsms password (kept out of ``ps``).
KANNEL_PASSWORD_ENV = "TEL400_KANNEL_PASSWORD"


def kannel_password(args) -> str:
    """The sendsms password: --kannel-password, else --kannel-password-file, else the environment."""
    if args.kannel_password is not None:
        return args.kannel_password
    if args.kannel_password_file is not None:
        lines = pathlib.Path(args.kannel_password_file).read_text().splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"--kannel-password-file {args.kannel_password_file}: its first line is empty")
        return lines[0]
    password = os.environ.get(KANNEL_PASSWORD_ENV)
    if not password:
        raise ValueError(f"--kannel-sendsms needs a password: --kannel-password-file FILE or ${KANNEL_PASSWORD_ENV}")
    return password


def sms_parts(args, data: pathlib.Path) -> dict:
    """The Service's SMS options: the store, the Kannel gateway, the runner's settings."""
    if (args.sms_db or "").lower() == "none":
        if args.kannel_sendsms:
            raise ValueError("--kannel-sendsms needs an SMS store (--sms-db)")
        return {}
    from tel400.smsstore import SmsStore

    if not (args.sms_rate_per_number > 0 and args.sms_indoubt_wait >= 0):
        raise ValueError("--sms-rate-per-number: expected > 0; --sms-indoubt-wait: expected >= 0 seconds")
    data.mkdir(parents=True, exist_ok=True)
    parts = {"sms_store": SmsStore(args.sms_db or str(data / "sms.db"))}
    if args.kannel_sendsms:
        from .kannel import KannelGateway

        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        dlr_url = args.sms_dlr_url or f"http://{host}:{args.port}/v1/sms/dlr"
        parts["sms_gateway"] = KannelGateway(args.kannel_sendsms, username=args.kannel_user,
                                             password=kannel_password(args), dlr_url=dlr_url, smsc=args.kannel_smsc)
        parts["sms_runner"] = {"per_number_rate": args.sms_rate_per_number,
                               "indoubt_wait_s": args.sms_indoubt_wait}
    return parts


def add_portal_options(p: argparse.ArgumentParser) -> None:
    """The web portal's options (docs/portal.md)."""
    g = p.add_argument_group("web portal (docs/portal.md)")
    g.add_argument("--no-portal", action="store_true", help="do not serve the web portal at /portal/")
    g.add_argument("--portal-db", help="the portal's accounts and sessions (default: DATA/portal.db)")
    g.add_argument("--portal-secret", metavar="FILE",
                   help="a file holding the key that signs portal cookies (default: DATA/portal-secret, "
                        "made on first start)")
    g.add_argument("--portal-https", action="store_true",
                   help="the portal is reached over https (through a TLS proxy): its cookies are then Secure")
    g.add_argument("--operator", default="operator",
                   help="the operator account made on first start (choose your own: a name nobody guesses "
                        "cannot be locked out by others' bad logins)")
    g.add_argument("--operator-password",
                   help="set the operator account's password (else one is made and printed on first start); "
                        "visible to every user in ps: prefer $TEL400_OPERATOR_PASSWORD or --operator-password-file")
    g.add_argument("--operator-password-file", metavar="FILE",
                   help="set the operator account's password from the first line of FILE")
    g.add_argument("--login-failures", type=int, default=accounts.LOGIN_FAILURES,
                   help="failed logins for one login within --lockout-window before it is locked")
    g.add_argument("--address-failures", type=int, default=accounts.ADDRESS_FAILURES,
                   help="failed logins from one client address within --lockout-window before it is locked")
    g.add_argument("--lockout-window", type=float, default=accounts.LOCKOUT_WINDOW_S, metavar="SECONDS",
                   help="how long failed logins count (and so how long a lockout lasts at most)")
    g.add_argument("--portal-max-upload", type=int, default=UPLOAD_BYTES, metavar="BYTES",
                   help="the largest blacklist list a portal page imports (pasted or uploaded)")
    g.add_argument("--portal-plan-writes", type=int, default=PLAN_WRITES_PER_MINUTE, metavar="PER_MINUTE",
                   help="plan changes one number takes from the portal per minute (past it: a 429 page)")
    g.add_argument("--session-hours", type=float, default=accounts.SESSION_TTL_S / 3600,
                   help="how long a portal login lasts")


def configure_logging(level: str) -> None:
    """JSON lines on stderr: one object per event, with its level and an ISO timestamp."""
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer(ensure_ascii=False)],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=stderr_logger,
        cache_logger_on_first_use=True,
    )


def example_plans() -> tel400.PlanSet:
    """The carrier manual's example plan, shipped with the package."""
    resource = importlib.resources.files("tel400.data") / "manual.toml"
    with importlib.resources.as_file(resource) as path:
        return tel400.load_plans(path)


def seed(store, plans: tel400.PlanSet) -> None:
    """Store ``plans`` with every clear PIN replaced by its hash."""
    tree = plans.to_dict()
    for plan in tree["numbers"]:
        if "pin" in plan:
            plan["pin_hash"] = pins.make_hash(plan.pop("pin"))
    store.replace_all(tel400.PlanSet.from_dict(tree, source=store.url), actor="tel400-http (seed)")


def admin_token(data: pathlib.Path) -> str:
    """The operator token kept in ``DATA/admin-token`` (made, readable by its owner only, on first start)."""
    path = data / "admin-token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_token() + "\n")
    return path.read_text().strip()


#: The company whose password is made and printed on first start on the embedded defaults.
EXAMPLE_COMPANY = "4001012345"


def secret_file(path: pathlib.Path) -> bytes:
    """The key in ``path`` (hex), made (32 random bytes, readable by its owner only) when missing."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = text.encode()
    if len(key) < 16:
        raise ValueError(f"{path}: the portal secret needs at least 16 bytes (32 hex digits)")
    return key


#: The environment variable that may hold the operator's password (kept out of ``ps``).
OPERATOR_PASSWORD_ENV = "TEL400_OPERATOR_PASSWORD"


def operator_password(args) -> str | None:
    """The operator password given: --operator-password, else --operator-password-file, else the environment."""
    if args.operator_password is not None:
        return args.operator_password
    if args.operator_password_file is not None:
        lines = pathlib.Path(args.operator_password_file).read_text().splitlines()
        if not lines or not lines[0]:
            raise ValueError(f"--operator-password-file {args.operator_password_file}: its first line is empty")
        return lines[0]
    return os.environ.get(OPERATOR_PASSWORD_ENV) or None


def build_portal(service: Service, args, data: pathlib.Path, first_start: bool,
                 accounts_setup: bool = True) -> list[str]:
    """Mount the web portal on ``service``; the lines the banner adds (passwords made now, printed once).

    ``accounts_setup``: make the operator account (or set its given password) and the example company's;
    off in --workers' workers, where the first start did it (setting a password ends the account's sessions).
    """
    from .portal import create_portal

    data.mkdir(parents=True, exist_ok=True)
    accs = accounts.Accounts(args.portal_db or str(data / "portal.db"), login_failures=args.login_failures,
                             address_failures=args.address_failures, window_s=args.lockout_window,
                             session_ttl_s=args.session_hours * 3600)
    key = secret_file(pathlib.Path(args.portal_secret) if args.portal_secret else data / "portal-secret")
    notes = []
    made = accs.ensure_operator(args.operator, operator_password(args)) if accounts_setup else None
    if made:
        hint = "; --operator NAME: a login of your own" if args.operator == "operator" else ""
        notes.append(f"  portal:  operator {args.operator!r}, password {made}  (printed once; "
                     f"--operator-password-file sets another{hint})")
    if accounts_setup and first_start and not accs.has_account("company", EXAMPLE_COMPANY):
        password = secrets.token_urlsafe(9)
        accs.set_company_password(EXAMPLE_COMPANY, password, actor="tel400-http (seed)")
        notes.append(f"  portal:  company {EXAMPLE_COMPANY}, password {password}  (printed once; the operator "
                     "resets it)")
    service.mount("/portal", create_portal(service, accounts=accs, secret_key=key, https=args.portal_https,
                                                  max_upload=args.portal_max_upload, pool=NumberPool(accs.path),
                                                  plan_writes_per_minute=args.portal_plan_writes))
    service.portal_accounts = accs
    return notes


def build_service(args, *, setup: bool = True) -> Service:
    """The service the options describe; ``setup``: also the first-start work (seeding, portal accounts)."""
    data = pathlib.Path(args.data)
    if args.plans is None or args.records is None or args.tokens is None:
        data.mkdir(parents=True, exist_ok=True)
    store = tel400.open_store(args.plans or f"sqlite:///{data / 'plans.db'}")
    first_start = setup and args.plans is None and not store.count()
    if first_start:
        seed(store, example_plans())
    calls = open_call_registry(calls_url(args, data), max_calls=args.max_calls,
                               max_age_s=args.max_call_duration)
    # Streamed: each number is compiled as it is read, and only the compiled form is kept.
    router = tel400.Router.from_store(store, args.counters, calls=calls, pin_policy=pin_policy(args))
    watcher = tel400.PlanWatcher(router, store, version=router.plans_version)
    if args.tokens:
        tokens = Tokens.from_file(args.tokens)
    else:
        tokens = Tokens.single(admin_token(data))
    records = None
    if (args.records or "").lower() != "none":
        records = CallRecords(args.records or str(data / "records.db"), zone_of=plan_zones(router),
                              retention_days=args.retention_days, max_rows=args.max_records)
    freeswitch = FreeSwitchSettings(gateway=args.gateway, prompt_dir=args.prompt_dir, prompt_ext=args.prompt_ext,
                                    ring_timeout_s=args.ring_timeout)
    service = Service(router, store=store, watcher=watcher, records=records, tokens=tokens, freeswitch=freeswitch,
                      gateway=args.gateway, media_server=args.media_server, ring_timeout_ms=args.ring_timeout * 1000,
                      cap_code=args.cap_code, end_url=args.end_url, max_body=args.max_body,
                      switch_auth=switch_auth(args), at_tolerance_s=args.at_tolerance, **sms_parts(args, data))
    service.portal_notes = [] if args.no_portal else build_portal(service, args, data, first_start, setup)
    return service


def calls_url(args, data: pathlib.Path) -> str | None:
    """Where calls in progress are kept: --calls, else shared by the workers when there are several
    (the Redis of the counters, or DATA/calls.db), else this process's memory (``None``)."""
    if args.calls:
        return args.calls
    if args.workers == 1:
        return None
    counters = str(args.counters)
    if redis_clients.url_kind(counters) is not None:
        # the same server, reached the same way; the counters' own options are not the registry's
        return redis_counters.connection_url(counters)
    data.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data / 'calls.db').resolve()}"


def switch_auth(args) -> SwitchAuth:
    """The switch endpoints' guard: secrets from --switch-secrets, addresses from --switch-allow."""
    if args.switch_allow is None:
        networks = ANY if args.switch_secrets else LOOPBACK
    else:
        try:
            networks = AllowList.parse(args.switch_allow)
        except ValueError as exc:
            raise ValueError(f"--switch-allow: {exc}") from None
    if args.switch_secrets:
        return SwitchAuth.from_file(args.switch_secrets, networks)
    return SwitchAuth((), networks)


def banner(service: Service, url: str, args) -> str:
    numbers = service.router.number_count
    token = (f'"Authorization: Bearer $(cat {pathlib.Path(args.data) / "admin-token"})"' if not args.tokens
             else '"Authorization: Bearer $TOKEN"')
    workers_note = f", {args.workers} workers" if args.workers > 1 else ""
    return "\n".join([
        f"tel400-http {tel400.__version__}: {numbers} numbers from {service.store.url} "
        f"({service.router.implementation}{workers_note}), listening on {url}",
        *_portal_lines(service, url, args),  # first: what a person opens in a browser
        f"  route:   curl -s {url}/v1/route -d '{{\"dialed\": \"4001012345\", \"caller\": \"13901012345\"}}'",
        f"  admin:   curl -s -H {token} {url}/v1/numbers",
        f"  report:  curl -s -H {token} {url}/v1/numbers/4001012345/report",
        f"  switch:  {_switch_note(service.switch_auth)}",
        f"  sms:     {_sms_note(service, url)}",
        f"  also:    {url}/metrics  {url}/readyz  {url}/openapi.json   (docs/http.md)",
    ])


def _portal_lines(service: Service, url: str, args) -> list[str]:
    if args.no_portal:
        return []
    where = (f"  portal:  {url}/portal/  (companies: 400 number and password; the operator: "
             f"{url}/portal/login/operator)")
    return [where, *getattr(service, "portal_notes", [])]


def _sms_note(service: Service, url: str) -> str:
    store = service.sms_store
    if store is None:
        return "off (--sms-db none)"
    gateway = service.sms.gateway
    sending = (f"sending through {gateway.sendsms_url}, group sends on" if gateway is not None
               else "no gateway: no forwards, no group sends (--kannel-sendsms)")
    return f"get-url {url}/v1/sms/kannel, store {store.path}; {sending}"


def _switch_note(auth: SwitchAuth | None) -> str:
    if auth is None:
        return "open to anyone"
    where = "any address" if auth.allow.anyone else str(auth.allow)
    return f"{where}, {'with' if auth.asks_secret else 'without'} a secret (--switch-secrets, --switch-allow)"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.hash_token is not None:
        print(hash_token(args.hash_token))
        return 0
    configure_logging(args.log_level)
    from .connections import Deadlines

    try:
        check_limits(args)
        deadlines = Deadlines(args.header_timeout, args.body_timeout)
        policy = worker_policy(args, args.grace)
        if args.workers > 1 and args.calls and args.calls.strip().lower().startswith("memory:"):
            raise ValueError(f"--calls memory:// with --workers {args.workers}: a call's end reaching another "
                             "worker than the one that routed it would be unknown there and never charged; "
                             "leave --calls out (the workers then share DATA/calls.db) or name sqlite:// or redis://")
        if args.workers > 1:
            return serve_workers(args, deadlines, policy)
        service = build_service(args)
    except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
        print(f"tel400-http: {exc}", file=sys.stderr)
        return 2
    make_server(args, service, deadlines, announce=True).run()
    return 0


def make_server(args, service: Service, deadlines, *, announce: bool):
    """The uvicorn server of ``service``; ``announce``: print the banner once it listens."""
    import uvicorn  # not at import: --hash-token stays quick

    from .connections import ConnectionCollector, LimitedServer

    class Server(LimitedServer):
        def handle_exit(self, sig, frame) -> None:
            service.draining = True  # /readyz answers 503 while requests in flight finish
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown, so the
            # process would die "killed by SIGTERM"; a clean stop exits 0.
            getattr(self, "_captured_signals", []).clear()

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if announce and not self.should_exit:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                print(banner(service, f"http://{host}:{port}", args), flush=True)

    # ws="none": no WebSocket upgrade may swap the protocol that gives a connection's place back
    config = uvicorn.Config(service, host=args.host, port=args.port, lifespan="on", access_log=False,
                            log_level="warning", timeout_graceful_shutdown=args.grace, server_header=False,
                            date_header=False, timeout_keep_alive=args.idle_timeout, ws="none", backlog=BACKLOG,
                            # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told: a client on this
                            # host (or behind a proxy here) could then choose its address
                            proxy_headers=args.forwarded_allow_ips is not None,
                            forwarded_allow_ips=args.forwarded_allow_ips or "")
    raise_descriptor_limit(args.max_connections + 256, name="tel400-http")
    server = Server(config, deadlines=deadlines, max_connections=args.max_connections,
                    max_per_address=args.max_per_address)
    service.registry.register(ConnectionCollector(server))
    return server


#: The listen backlog: connections the kernel holds until a worker accepts them.
BACKLOG = 2048


def serve_workers(args, deadlines, policy: workers.Policy) -> int:
    """--workers N: bind once, do the first start once, then N processes serve (:mod:`tel400.workers`)."""
    try:
        socks = workers.listening_sockets(args.host, args.port, args.workers, BACKLOG)
    except OSError as exc:
        raise OSError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = socks[0].getsockname()[:2]
    url = f"http://{host}:{port}"

    def first_start() -> int:
        # data directory, seeded plans, token, portal passwords: made (and printed) here, once
        try:
            service = build_service(args)
        except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
            print(f"tel400-http: {exc}", file=sys.stderr)
            return 2
        print(banner(service, url, args), flush=True)
        return 0

    def serve(worker: int) -> int:
        structlog.contextvars.bind_contextvars(worker=worker)
        try:
            service = build_service(args, setup=False)  # after the fork: its own connections, threads, router
        except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
            sys.stderr.write(f"tel400-http: worker {worker}: {exc}\n")  # one write: the workers share stderr
            return 2
        service.worker = worker
        make_server(args, service, deadlines, announce=False).run(sockets=[workers.own_socket(socks, worker)])
        return 0

    return workers.run("tel400-http", socks, first_start, serve, policy=policy)


def check_limits(args) -> None:
    """Refuse connection limits and timeouts that would serve nobody (ValueError, reported before starting)."""
    if args.max_connections < 1 or args.max_per_address < 1:
        raise ValueError("--max-connections and --max-per-address: expected at least 1")
    for option in ("header_timeout", "body_timeout", "idle_timeout"):
        value = getattr(args, option)
        if not 0 < value < float("inf"):
            raise ValueError(f"--{option.replace('_', '-')}: expected a positive number of seconds, got {value}")


if __name__ == "__main__":
    sys.exit(main())
