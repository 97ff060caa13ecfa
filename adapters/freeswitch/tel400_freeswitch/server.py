"""``tel400-esl``: an Event Socket outbound server that carries out every decision.

FreeSWITCH hands a call over with
``<action application="socket" data="127.0.0.1:8040 async full"/>``; for
each connection this server asks for the channel's data, subscribes to its
events, routes with ``Router.route()`` and makes FreeSWITCH do it:

* ``bridge`` — ``multiset continue_on_fail=true hangup_after_bridge=true``,
  then ``bridge`` with the targets as a ``|`` failover dial string (each leg
  with its ring timeout, the caller ID set); if no target answers, the
  ``unavailable`` notice and a hangup;
* ``reject`` — ``answer``, ``playback`` of the prompt's sound file,
  ``hangup`` with a fitting cause;
* ``collect_pin`` — ``play_and_get_digits`` (4–8 digits), then routing again
  with the PIN, a few attempts per call, lockout honoured;
* ``queue`` — ``answer``, ``callcenter``; ``conference`` — ``answer``, ``conference``;
* at ``CHANNEL_HANGUP_COMPLETE`` — ``router.call_ended(uuid, billsec)``.

The applications are :func:`tel400_freeswitch.actions.carry_out`'s; the
call's conversation is :class:`tel400_freeswitch.session.Session`, a sans-IO
state machine; this module is the asyncio shell around it (one
:class:`asyncio.Protocol` per connection, no task per call).

Every path ends with the call bridged or hung up: a failure inside tel400 or
a refused application ends in the fallback notice and a hangup, and the
socket is closed only after that.  Every wait is bounded (``--reply-timeout``
for a reply, ``--app-timeout`` for an application, ``--max-call`` for the
call): a late application or a call over its limit is hung up; a FreeSWITCH
that does not reply at all gets a hangup and ``exit`` written without waiting,
and its socket closed.  Connections are accepted by
:class:`tel400.listener.Listener` (an allow-list of addresses, ``--allow``,
this host by default; a total, a share per address, a back-off when
descriptors run out); see docs/limits.md.

With ``--inbound HOST:PORT`` it listens on nothing and connects to
FreeSWITCH's event socket instead, every parked call on one connection
(:mod:`tel400_freeswitch.inbound`).

Whoever can connect is FreeSWITCH to this server: it names the dialed number
and the caller and reports the talk time that is charged.  Hence the
allow-list, checked before the first byte is written.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import structlog

import tel400
from tel400 import pins
from tel400.addresses import LOOPBACK, LOOPBACK_NETWORKS, AllowList
from tel400.listener import Listener, RareLog, listening_socket, raise_descriptor_limit
from tel400.loglines import stderr_logger
from tel400.server_options import add_pin_options, pin_policy

from . import inbound
from .actions import HANGUP_CAUSES, Settings  # noqa: F401  (public names, kept importable from here)
from .inbound import DEFAULT_MAX_CALLS
from .driver import CallDriver
from .protocol import EslProtocol, ProtocolError
from .session import CLOSED, Session

_log = structlog.get_logger("tel400.esl")
_log_shed = RareLog("esl_connection_shed", 10.0, _log)

#: connections open at once (calls in progress) and from one address (a FreeSWITCH host carries all its calls)
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_PER_ADDRESS = 2048


class EslCall(asyncio.Protocol, CallDriver):
    """One connection from FreeSWITCH: the asyncio shell around its :class:`~.session.Session`.

    Bytes go to the parser, frames to the session; what the session asks
    for is :class:`~.driver.CallDriver`'s (decisions, the end, the timer);
    here only the socket: its bytes are written to it, and it is closed
    when the session is over.
    """

    def __init__(self, server: EslServer, on_closed) -> None:
        loop = asyncio.get_running_loop()
        CallDriver.__init__(self, server.router, server.pin_threads, loop, Session(server.settings, loop.time),
                            offload=server.offload)
        self.server = server
        self._on_closed = on_closed
        self.protocol = EslProtocol()
        self.transport: asyncio.Transport | None = None
        self._abort: asyncio.TimerHandle | None = None
        self.done = loop.create_future()

    # -- asyncio's side ----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server._calls[self] = None
        self.pump()

    def data_received(self, data: bytes) -> None:
        session = self.session
        protocol = self.protocol
        try:
            protocol.receive_data(data)
            while (frame := protocol.next_frame()) is not None:
                session.receive_frame(frame)
                if session._request is not None or session.state == CLOSED:
                    self.pump()
                    if session.state == CLOSED:
                        return
        except ProtocolError as exc:
            _log.warning("esl_connection_broken", uuid=session.uuid, error=str(exc))
            session.connection_lost()
            self.pump()
            self.transport.abort()
            return
        except Exception as exc:  # never leave a call parked: the fallback notice and a hangup
            self.fail(exc)
        self.pump()

    def eof_received(self):
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc) -> None:
        try:
            self.session.connection_lost()
            self.pump()
        finally:
            self.cancel_timer()
            if self._abort is not None:
                self._abort.cancel()
            self.server._calls.pop(self, None)
            self.server.handled += 1
            if not self.done.done():
                self.done.set_result(None)
            self._on_closed()

    # -- the driver's side ---------------------------------------------------------------------

    def _write(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.session.data_to_send())

    def _close(self) -> None:
        """Close the socket; one whose peer does not read what is left is dropped after the reply timeout."""
        transport = self.transport
        if transport is None or self._abort is not None:
            return
        if self.session.close == "abort":
            transport.abort()
            return
        transport.close()
        # nothing left to write (the usual end): it closes now, no timer
        if transport.get_write_buffer_size():
            self._abort = self.loop.call_later(self.server.settings.reply_timeout_s, transport.abort)


class EslServer:
    """Accepts FreeSWITCH's outbound connections; one :class:`EslCall` each.

    Args:
        router: the :class:`~tel400.Router`.
        settings: what calls do (:class:`Settings`).
        max_connections: connections open at once at most; at the limit the
            oldest connections that have not sent the channel data are
            closed, and if there are none, new ones wait in the listen
            backlog until a call ends.
        max_per_address: connections from one address at most; more are
            closed at once (FreeSWITCH's dialplan then goes on after ``socket``).
        allow: the addresses FreeSWITCH may connect from (default: this
            host); a connection from another is closed as soon as it is
            accepted, before a word is written.
    """

    def __init__(self, router, settings: Settings | None = None, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_per_address: int = DEFAULT_MAX_PER_ADDRESS, allow: AllowList = LOOPBACK) -> None:
        self.router = router
        self.settings = settings or Settings()
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.allow = allow
        # a stand-in router (tests) may have no policy: the default's bound then
        self.pin_threads = pins.check_executor(getattr(router, "pin_policy", None) or pins.PinPolicy())
        self.offload = getattr(router, "waits_on_io", False)  # decisions and ends in a thread (Redis, ...)
        self.handled = 0
        self.shed = 0  # connections without channel data closed at max_connections to make room
        self.listener: Listener | None = None
        self._calls: dict[EslCall, None] = {}  # in the order they came

    @property
    def active(self) -> int:
        return len(self._calls)

    def make_room(self) -> None:
        """At the connection limit: close the oldest connections that have not sent the channel data.

        A sixteenth of the places at most.  Calls under way are never
        touched; a connection that says nothing would be closed at its reply
        timeout anyway.  Cost: a pass over the calls.
        """
        budget = max(1, self.max_connections // 16)
        for call in list(self._calls):  # oldest first
            if budget == 0:
                break
            transport = call.transport
            if call.session.uuid is None and transport is not None and not transport.is_closing():
                transport.abort()
                self.shed += 1
                budget -= 1
                _log_shed(shed=self.shed, max_connections=self.max_connections)

    async def start(self, host: str = "127.0.0.1", port: int = 8040) -> Listener:
        sock = listening_socket(host, port, backlog=1024)
        self.listener = Listener(sock, lambda on_closed: EslCall(self, on_closed),
                                 max_connections=self.max_connections, max_per_address=self.max_per_address,
                                 allow=self.allow, on_full=self.make_room, name="tel400-esl").start()
        return self.listener

    @property
    def port(self) -> int:
        return self.listener.sock.getsockname()[1]

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop accepting calls, let the calls in progress finish (up to ``grace_s``)."""
        if self.listener is not None:
            self.listener.close()
        if self._calls:
            _, pending = await asyncio.wait([call.done for call in self._calls], timeout=grace_s)
            for call in list(self._calls):
                if call.transport is not None:
                    call.transport.abort()  # connection_lost reports each call's end
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self.pin_threads.shutdown(wait=False)


def loop_asked() -> str:
    """``TEL400_ESL_LOOP``: "uvloop" (the default) or "asyncio"; ``ValueError`` for anything else."""
    asked = os.environ.get("TEL400_ESL_LOOP", "").strip().lower() or "uvloop"
    if asked not in ("uvloop", "asyncio"):
        raise ValueError(f"TEL400_ESL_LOOP={asked!r}: expected uvloop or asyncio")
    return asked


def use_uvloop() -> str:
    """Run on uvloop when it is installed (the default), asyncio's own loop otherwise; returns the loop's name.

    ``TEL400_ESL_LOOP=asyncio`` keeps asyncio's loop.  With the compiled
    parser the loop's share of the CPU grew: on the benchmark
    (bench/test_bench_esl.py) uvloop took less server CPU per call than
    asyncio's loop in 11 of 12 runs (a median 19 % less over 9 runs on a
    loaded 2-core machine, 7 % over 3 on a quiet one).  uvloop comes with
    ``uvicorn[standard]`` (the ``http`` extra); without it, asyncio's loop.
    """
    if loop_asked() == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if "TEL400_ESL_LOOP" in os.environ:
            _log.warning("esl_no_uvloop", hint="TEL400_ESL_LOOP=uvloop but uvloop is not installed: asyncio's loop")
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tel400-esl", description="tel400's FreeSWITCH Event Socket outbound server")
    p.add_argument("--plans", required=True, help="a plan file, sqlite:///path or redis://host/db")
    p.add_argument("--port", type=int, default=8040)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--counters", default="memory://", help="counter backend URL (shm:///path, redis://host/db)")
    p.add_argument("--gateway", default="gw1", help="the sofia gateway that number targets are sent to")
    p.add_argument("--number-template", default="sofia/gateway/{gateway}/{target}")
    p.add_argument("--uri-template", default="sofia/external/{target}", help="for user@host targets")
    p.add_argument("--prompt-dir", default="/usr/share/freeswitch/sounds/tel400")
    p.add_argument("--prompt-ext", default="wav")
    p.add_argument("--ring-timeout", type=int, default=20, help="seconds per target before failover")
    p.add_argument("--pin-attempts", type=int, default=3)
    p.add_argument("--queue-template", default="{queue}@default")
    p.add_argument("--conference-template", default="{room}@default")
    p.add_argument("--caller-id", choices=("caller", "number"), default="caller",
                   help="what the targets see: the caller's number or the 400 number")
    p.add_argument("--fallback-prompt", default="unavailable", help="played when a bridge fails or tel400 does")
    p.add_argument("--reply-timeout", type=float, default=10.0,
                   help="seconds FreeSWITCH has to answer a command (the first: the channel data); "
                        "then the call is hung up and the socket closed")
    p.add_argument("--app-timeout", type=float, default=60.0,
                   help="seconds an application (answer, playback, PIN entry) has to complete; "
                        "then the call is hung up")
    p.add_argument("--max-call", type=float, default=4 * 3600,
                   help="seconds a call may last (bridge, queue, conference); then it is hung up")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help="connections (calls) at once; at the limit connections that sent no channel data "
                        "are closed, or new ones wait until a call ends")
    p.add_argument("--max-per-address", type=int, default=DEFAULT_MAX_PER_ADDRESS,
                   help="connections from one address at once; beyond, new ones are closed at once")
    p.add_argument("--allow", metavar="NETS", default=",".join(LOOPBACK_NETWORKS),
                   help="comma-separated addresses or networks FreeSWITCH may connect from, or 'any'; "
                        "others are closed at once (default: %(default)s, this host)")
    group = p.add_argument_group("inbound mode", "connect to FreeSWITCH's event socket instead of listening: "
                                   "one connection carries every call FreeSWITCH parks (docs/freeswitch.md)")
    group.add_argument("--inbound", metavar="HOST:PORT", action="append", default=[],
                         help="a FreeSWITCH event socket to connect to (port 8021 if not given); repeat for more "
                              "FreeSWITCH hosts. --host and --port are then not listened on")
    group.add_argument("--password-file", metavar="PATH",
                         help="the event socket password, in a file (default: $TEL400_ESL_PASSWORD, else ClueCon)")
    group.add_argument("--max-calls", type=int, default=DEFAULT_MAX_CALLS,
                         help="calls followed at once per FreeSWITCH; a park beyond is hung up (SWITCH_CONGESTION)")
    group.add_argument("--coalesce-ms", type=float, default=inbound.DEFAULT_COALESCE_S * 1000,
                         help="milliseconds reading waits after each read, so that one wake-up serves many calls' "
                              "events (each step of a call waits up to this much longer); 0 reads at once; "
                              "at most 100 (default: %(default)g)")
    add_pin_options(p)
    from tel400.server_options import add_worker_options  # here: the module head is another change's

    add_worker_options(p)
    return p


def settings_from(args) -> Settings:
    """The :class:`Settings` the command-line options ask for."""
    return Settings(
        gateway=args.gateway, number_template=args.number_template, uri_template=args.uri_template,
        prompt_dir=args.prompt_dir, prompt_ext=args.prompt_ext, ring_timeout_s=args.ring_timeout,
        pin_attempts=args.pin_attempts, queue_template=args.queue_template,
        conference_template=args.conference_template, caller_id=args.caller_id, fallback_prompt=args.fallback_prompt,
        reply_timeout_s=args.reply_timeout, app_timeout_s=args.app_timeout, max_call_s=args.max_call,
    )


def allow_list(text: str) -> AllowList:
    """The ``--allow`` option's :class:`~tel400.addresses.AllowList` (``ValueError`` naming the option)."""
    try:
        return AllowList.parse(text)
    except ValueError as exc:
        raise ValueError(f"--allow: {exc}") from None


def configure_logging() -> None:
    """Info and above on stderr, ``event key=value`` (structlog's console format)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
                        logger_factory=stderr_logger)


def main(argv=None) -> int:
    from tel400.server_options import worker_policy

    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        for option in ("reply_timeout", "app_timeout", "max_call"):
            if not 0 < getattr(args, option) < float("inf"):
                raise ValueError(f"--{option.replace('_', '-')}: expected a positive number of seconds")
        if args.max_connections < 1 or args.max_per_address < 1:
            raise ValueError("--max-connections and --max-per-address: expected at least 1")
        settings = settings_from(args)
        policy = pin_policy(args)
        allow = allow_list(args.allow)
        switches = [inbound.parse_address(text) for text in args.inbound]
        if switches and args.workers > 1:
            raise ValueError("--inbound with --workers: every worker would route every call FreeSWITCH parks; "
                             "inbound, one process serves one FreeSWITCH (docs/freeswitch.md)")
        password = _password(args) if switches else None
        supervision = worker_policy(args, grace_s=_GRACE_S)
        loop_asked()
        if args.max_calls < 1:
            raise ValueError("--max-calls: expected at least 1")
        if not 0 <= args.coalesce_ms <= inbound.MAX_COALESCE_S * 1000:
            raise ValueError(f"--coalesce-ms: expected 0 to {inbound.MAX_COALESCE_S * 1000:g}")
    except ValueError as exc:
        print(f"tel400-esl: {exc}", file=sys.stderr)
        return 2
    if switches:
        try:
            router, store = _router(args, policy)
        except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
            print(f"tel400-esl: {exc}", file=sys.stderr)
            return 2
        loop = use_uvloop()
        asyncio.run(_serve_inbound(args, router, settings, switches, password,
                                   f"{router.number_count} numbers from {store.url}", loop))
        return 0
    if args.workers > 1:
        return _serve_workers(args, settings, policy, allow, supervision)
    try:
        router, store = _router(args, policy)
    except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
        print(f"tel400-esl: {exc}", file=sys.stderr)
        return 2
    raise_descriptor_limit(args.max_connections + 64, name="tel400-esl")
    loop = use_uvloop()
    asyncio.run(_serve(args, router, settings, allow, f"{router.number_count} numbers from {store.url}", loop))
    return 0


#: Seconds the calls in progress have to finish after SIGTERM.
_GRACE_S = 30.0


def _router(args, policy) -> tuple[tel400.Router, object]:
    """The router and its store, the plan watcher started (each worker makes its own, after the fork)."""
    from tel400.server_options import open_call_registry

    store = tel400.open_store(args.plans, create=False)  # a mistyped path is an error, not an empty store
    # A call's end comes on the call's own connection, so one worker's memory keeps its calls (the
    # default); --calls shares them (a registry tel400-http's end_url reports into too).
    extra = {} if args.calls is None else {"calls": open_call_registry(args.calls, max_age_s=args.max_call)}
    # Streamed: each number is compiled as it is read; the watcher then applies changed numbers only.
    router = tel400.Router.from_store(store, args.counters, pin_policy=policy, **extra)
    tel400.PlanWatcher(router, store, version=router.plans_version).start()
    return router, store


async def _serve(args, router, settings, allow, what: str | None, loop_name: str = "asyncio") -> None:
    """Serve until SIGTERM or SIGINT; ``what``: print the banner with it once listening."""
    server = EslServer(router, settings, max_connections=args.max_connections,
                       max_per_address=args.max_per_address, allow=allow)
    await server.start(args.host, args.port)
    if what is not None:
        print(f"tel400-esl: {what}, listening on {args.host}:{server.port} ({tel400.IMPLEMENTATION}, {loop_name}) "
              f"for FreeSWITCH at {allow} (--allow)", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close(_GRACE_S)


def _password(args) -> str:
    """The event socket password: --password-file, else $TEL400_ESL_PASSWORD, else FreeSWITCH's default."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as file:
                text = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--password-file: {exc}") from None
    else:
        text = os.environ.get("TEL400_ESL_PASSWORD", inbound.DEFAULT_PASSWORD)
    return inbound.check_password(text)


async def _serve_inbound(args, router, settings, switches, password, what: str, loop_name: str) -> None:
    """--inbound: keep a connection to each FreeSWITCH until SIGTERM or SIGINT."""
    heard = inbound.Heard()  # one FreeSWITCH given twice (address and name): each call still routed once
    clients = [inbound.InboundClient(router, host, port, settings, password=password, max_calls=args.max_calls,
                                     coalesce_s=args.coalesce_ms / 1000, heard=heard).start()
               for host, port in switches]
    where = ", ".join(f"{host}:{port}" for host, port in switches)
    print(f"tel400-esl: {what}, connecting to FreeSWITCH at {where} (inbound, {tel400.IMPLEMENTATION}, {loop_name})",
          file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.gather(*(client.close(_GRACE_S) for client in clients))


def _serve_workers(args, settings, policy, allow, supervision) -> int:
    """--workers N: bind once, check the plans once, then N processes serve (:mod:`tel400.workers`)."""
    from tel400 import workers
    from tel400.listener import hand_over

    try:
        socks = workers.listening_sockets(args.host, args.port, args.workers, 1024)
    except OSError as exc:
        print(f"tel400-esl: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    port = socks[0].getsockname()[1]

    def first_start() -> int:
        try:
            router, store = _router(args, policy)
        except (ValueError, tel400.PlanError, tel400.BackendError, OSError) as exc:
            print(f"tel400-esl: {exc}", file=sys.stderr)
            return 2
        print(f"tel400-esl: {router.number_count} numbers from {store.url}, listening on {args.host}:{port} "
              f"({tel400.IMPLEMENTATION}, {args.workers} workers) for FreeSWITCH at {allow} (--allow)",
              file=sys.stderr, flush=True)
        return 0

    def serve(worker: int) -> int:
        structlog.contextvars.bind_contextvars(worker=worker)  # every log line says which worker
        router, _ = _router(args, policy)
        raise_descriptor_limit(args.max_connections + 64, name="tel400-esl")
        hand_over(args.host, args.port, workers.own_socket(socks, worker))  # EslServer.start serves it
        _log.info("esl_worker_serving", pid=os.getpid(), port=port)
        _log.info("esl_worker_loop", loop=use_uvloop())
        asyncio.run(_serve(args, router, settings, allow, None))
        return 0

    return workers.run("tel400-esl", socks, first_start, serve, policy=supervision)


if __name__ == "__main__":
    sys.exit(main())
