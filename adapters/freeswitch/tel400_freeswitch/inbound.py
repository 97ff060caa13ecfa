"""``tel400-esl --inbound``: one connection to FreeSWITCH's event socket carries all its calls.

Outbound (:mod:`tel400_freeswitch.server`), FreeSWITCH opens a TCP
connection per call; its accept, set-up and close are most of what a call
costs tel400 (docs/performance.md).  Inbound, the dialplan parks the call::

    <action application="set" data="tel400_route=true"/>
    <action application="set" data="park_timeout=180"/>
    <action application="park"/>

and tel400, connected to mod_event_socket (``event-socket.conf.xml``, port
8021), sees the ``CHANNEL_PARK`` event and drives the call with ``sendmsg
<uuid>``: the same :class:`~tel400_freeswitch.session.Session` (made by
:meth:`Session.parked`), the same applications, the same charging.  The
conversation on the connection::

    FreeSWITCH  Content-Type: auth/request
    tel400      auth <password>                         → +OK accepted
    tel400      filter variable_tel400_route true       → +OK filter added. [...]=[...]
    tel400      event plain CHANNEL_PARK CHANNEL_EXECUTE_COMPLETE CHANNEL_BRIDGE CHANNEL_HANGUP_COMPLETE
                                                        → +OK event listener enabled plain
    FreeSWITCH  events of every channel whose tel400_route is true
    tel400      sendmsg <uuid> …, for each call          → +OK, one reply per command, in order

``park_timeout`` bounds the whole park, not only the wait for tel400:
FreeSWITCH fixes its end when the park starts (switch_ivr.c 993) and
checks it each time the park loop gets control back (1071), which is
between the applications tel400 runs in that loop (1148).  A call still
in tel400's hands at that moment is hung up with the timeout's cause
before its next application: it must outlast everything up to the call's
last application — every failover leg's ringing, the PIN rounds, the
notice — not just tel400's pick-up.

The filter makes FreeSWITCH send only the events of tel400's calls (their
channel variables ride on these four event types); the calls' ``B`` legs
and every other channel on the box cost nothing.  FreeSWITCH reads one
command at a time and replies in order, so the replies of all calls come in
the order their commands were written: one queue of who is owed each reply
(:attr:`InboundLink._owners`) gives each its own.

What is bounded (docs/limits.md): the calls followed at once
(``max_calls``; a park beyond it is hung up with ``SWITCH_CONGESTION``), the
uuids remembered after their end (so a repeated ``CHANNEL_PARK`` is not
routed twice), the wait for each reply and application (the session's own
timers), the hand-shake (``reply_timeout_s``), and the back-off between
connection attempts.  A ``Unique-ID`` that could not be written back into a
command (anything but letters, digits, ``.``, ``_``, ``-``) is never
followed.

If the connection is lost, the calls it carried are charged as the outbound
server charges a lost connection (the talk time seen so far, logged as
unconfirmed) and tel400 connects again; FreeSWITCH's ``park_timeout`` ends a
parked call that no tel400 picked up.  One tel400-esl per FreeSWITCH: two
connected to the same one would both route every call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections import OrderedDict, deque

import structlog

from tel400 import pins
from tel400.listener import RareLog

from .actions import Settings
from .driver import CallDriver
from .protocol import BadEvent, EslProtocol, Frame, ProtocolError, command, hangup
from .session import CLOSED, Session

_log = structlog.get_logger("tel400.esl")
_log_unreachable = RareLog("esl_inbound_unreachable", 10.0, _log)
_log_full = RareLog("esl_inbound_full", 10.0, _log)
_log_strange = RareLog("esl_inbound_strange_uuid", 10.0, _log)
_log_heard_twice = RareLog("esl_inbound_heard_twice", 10.0, _log)
_log_bad_event = RareLog("esl_inbound_bad_event", 10.0, _log)

#: the channel variable the dialplan sets on the calls tel400 routes (and the filter asks for)
ROUTE_VARIABLE = "tel400_route"
#: the events an inbound session reads (the outbound session's three, and the park that starts a call)
EVENTS = ("CHANNEL_PARK", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_BRIDGE", "CHANNEL_HANGUP_COMPLETE")
DEFAULT_PORT = 8021
DEFAULT_PASSWORD = "ClueCon"  # mod_event_socket's own default
DEFAULT_MAX_CALLS = 4096
#: seconds reading waits after each read so that many calls' events come in one (docs/performance.md)
DEFAULT_COALESCE_S = 0.001
MAX_COALESCE_S = 0.1
#: the cause a park beyond max_calls is hung up with (FreeSWITCH's for "no room")
FULL_CAUSE = "SWITCH_CONGESTION"
#: seconds between connection attempts: doubled from the first to the last while FreeSWITCH stays away
BACKOFF_S = (0.1, 5.0)
#: a Unique-ID tel400 will write into ``sendmsg <uuid>``: nothing that could end the line or the word
_UUID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: seconds a serving connection may stay quiet before FreeSWITCH is asked whether it is there: a
#: half-open connection (FreeSWITCH rebooted, a network gone) or a stuck listener thread answers
#: nothing and closes nothing, and every call parked meanwhile would wait for its park timeout
PROBE_S = 20.0
#: commands of the hand-shake (and the probe), as owners in the reply queue
_AUTH, _FILTER, _EVENT, _PROBE = "auth", "filter", "event", "probe"


def check_password(password: str) -> str:
    """The password as it can go on the ``auth`` line (``ValueError`` for one that cannot)."""
    if not password or password != password.strip() or not password.isprintable():
        raise ValueError("the event socket password: expected printable characters, no surrounding spaces")
    return password


def parse_address(text: str) -> tuple[str, int]:
    """``host:port``, ``host`` (port 8021) or ``[v6]:port`` (``ValueError`` otherwise)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::([0-9]{1,5}))?|([A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?", text.strip())
    if match is None:
        raise ValueError(f"--inbound {text!r}: expected host:port")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4) or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise ValueError(f"--inbound {text!r}: port out of range")
    if match.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"--inbound {text!r}: not an IPv6 address in brackets") from None
    elif len(host.rstrip(".")) > 253 or not all(0 < len(label) < 64 for label in host.rstrip(".").split(".")):
        # what the resolver cannot encode (an empty or over-long label) fails every attempt to connect
        raise ValueError(f"--inbound {text!r}: not a host name (labels of 1 to 63 characters, 253 in all)")
    return host, port


class InboundCall(CallDriver):
    """One parked call: its session's commands go on the shared connection, its end lets it go."""

    def __init__(self, client: InboundClient, link: InboundLink, session: Session) -> None:
        CallDriver.__init__(self, client.router, client.pin_threads, client.loop, session, offload=client.offload)
        self.client = client
        self.link = link

    def receive(self, frame: Frame | None = None) -> None:
        """A frame of this call (``None``: its park), then what its session asks for.

        Whatever breaks inside tel400 is this call's alone (the fallback
        notice): raised out of ``data_received`` it would abort the
        connection, and every call on the box with it.
        """
        try:
            if frame is not None:
                session = self.session
                ignored = session.ignored
                session.receive_frame(frame)
                if session.ignored != ignored:
                    return  # a frame the session had no use for changed nothing: nothing to carry out
            self.pump()
        except Exception as exc:
            self.fail(exc)
            self.pump()

    def _write(self) -> None:
        self.link.send(self.session.commands_to_send(), self)

    def _close(self) -> None:
        self.client._forget(self)


class InboundLink(asyncio.Protocol):
    """One connection to FreeSWITCH: the hand-shake, then frames to the calls they belong to."""

    def __init__(self, client: InboundClient) -> None:
        self.client = client
        self.protocol = EslProtocol()
        self.transport: asyncio.Transport | None = None
        self.serving = False
        #: the hand-shake was completed once (``serving`` is cleared again when the connection is lost)
        self.served = False
        #: who is owed each reply, oldest first: a call, or a hand-shake command's name
        self._owners: deque[InboundCall | str | None] = deque()
        self._batch: list[bytes] | None = None  # commands written while a read is handled: one write at its end
        self._handshake: asyncio.TimerHandle | None = None
        self._heard_at = client.loop.time()  # when FreeSWITCH last sent anything
        self._probe_at: float | None = None  # when the probe still unanswered was sent
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None  # reading paused until then (coalescing)
        self.closed = client.loop.create_future()

    # -- asyncio's side ----------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        # FreeSWITCH greets at once; the hand-shake as a whole gets one reply timeout
        self._handshake = self.client.loop.call_later(self.client.settings.reply_timeout_s, self._handshake_late)

    def data_received(self, data: bytes) -> None:
        self._heard_at = self.client.loop.time()
        self._batch = []
        try:
            self.protocol.receive_data(data)
            while True:
                try:
                    frame = self.protocol.next_frame()
                except BadEvent as exc:
                    # one event's own block is broken, its frame whole: dropping the connection would
                    # let go of every call on this FreeSWITCH for one event (a caller's odd SIP header)
                    self.client.bad_events += 1
                    _log_bad_event(count=self.client.bad_events, host=self.client.host, error=str(exc))
                    continue
                if frame is None:
                    break
                self._frame(frame)
        except ProtocolError as exc:
            _log.warning("esl_inbound_broken", host=self.client.host, error=str(exc))
            self.transport.abort()
        finally:
            batch, self._batch = self._batch, None
            if not self.transport.is_closing():
                if batch:
                    self.transport.write(b"".join(batch))
                if self.client.coalesce_s:
                    # Let FreeSWITCH's next events gather in the socket: one wake-up then serves many
                    # calls' frames instead of one each (a wake-up costs about what a call's frames do).
                    self.transport.pause_reading()
                    self._resume = self.client.loop.call_later(self.client.coalesce_s, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        if self._handshake is not None:
            self._handshake.cancel()
        for timer in (self._keepalive_timer, self._resume):
            if timer is not None:
                timer.cancel()
        self.serving = False
        self.client._link_lost(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- sending -------------------------------------------------------------------------------

    def send(self, commands: list[bytes], owner: InboundCall | str | None) -> None:
        """Write commands whose replies go to ``owner`` (``None``: nobody waits for them)."""
        if self.transport is None or self.transport.is_closing():
            return  # lost with the connection: the calls are ended by connection_lost
        self._owners.extend([owner] * len(commands))
        if self._batch is not None:
            self._batch.extend(commands)
        else:
            self.transport.write(b"".join(commands))

    # -- frames --------------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        event = frame.event
        if event is not None:
            if self.serving:
                self._event(frame, event)
            return
        kind = (frame.headers.get("Content-Type") or "").lower()
        if kind == "command/reply" or kind == "api/response":
            owner = self._owners.popleft() if self._owners else None
            if owner is None:
                return  # a reply nobody waits for (a hangup of a park over the limit)
            if type(owner) is str:
                self._handshake_reply(owner, frame)
                return
            if owner.session.state == CLOSED:
                return  # the call was let go before its reply came
            owner.receive(frame)
        elif kind == "auth/request":
            self.send([command("auth", self.client.password)], _AUTH)
        elif kind == "text/disconnect-notice" or kind == "text/rude-rejection":
            # FreeSWITCH shutting down, or its ACL refusing this host ("Access Denied, go away.")
            _log.warning("esl_inbound_disconnected", host=self.client.host, port=self.client.port, notice=kind)
            self.transport.close()

    def _event(self, frame: Frame, event) -> None:
        headers = event.headers
        uuid = headers.get("Unique-ID")
        client = self.client
        call = client.calls.get(uuid)
        if call is None:
            # "true" as the filter compares it, without regard to case: what it lets through is routed
            route = headers.get(f"variable_{ROUTE_VARIABLE}")
            if headers.get("Event-Name") == "CHANNEL_PARK" and route is not None and route.lower() == "true":
                client._parked(self, event, uuid)
            return
        call.receive(frame)

    # -- the hand-shake ------------------------------------------------------------------------

    def _handshake_reply(self, what: str, frame: Frame) -> None:
        client = self.client
        if what == _PROBE:
            return  # any answer says FreeSWITCH is there (_heard_at)
        if not frame.ok:
            level = _log.error if what == _AUTH else _log.warning
            level("esl_inbound_refused", host=client.host, port=client.port, command=what, reply=frame.reply_text,
                  hint="check --password-file" if what == _AUTH else None)
            self.transport.close()
            return
        if what == _AUTH:
            # the filter first: no event of another channel is sent between the two
            self.send([command("filter", f"variable_{ROUTE_VARIABLE}", "true")], _FILTER)
            self.send([command("event", "plain", *EVENTS)], _EVENT)  # one write with the filter (the batch)
        elif what == _EVENT:
            self.serving = self.served = True
            if self._handshake is not None:
                self._handshake.cancel()
                self._handshake = None
            client.connected += 1
            _log.info("esl_inbound_serving", host=client.host, port=client.port)
            if self._keepalive_timer is None:  # one chain per connection, even if FreeSWITCH greets again
                self._keepalive()

    def _keepalive(self) -> None:
        """Ask a quiet connection whether FreeSWITCH is there (the subscription again: idempotent, one reply);
        drop one that does not answer within the reply timeout, so that it is made again."""
        if self.transport.is_closing():
            return
        client = self.client
        now = client.loop.time()
        reply_timeout_s = client.settings.reply_timeout_s
        if self._probe_at is not None and self._heard_at < self._probe_at:
            if now >= self._probe_at + reply_timeout_s:
                _log.warning("esl_inbound_silent", host=client.host, port=client.port,
                             why=f"no answer within {reply_timeout_s:g} s")
                self.transport.abort()
                return
        elif now >= self._heard_at + PROBE_S:
            self._probe_at = now
            self.send([command("event", "plain", *EVENTS)], _PROBE)
        self._keepalive_timer = client.loop.call_later(min(PROBE_S, reply_timeout_s), self._keepalive)

    def _handshake_late(self) -> None:
        self._handshake = None
        if not self.serving and self.transport is not None:
            _log.warning("esl_inbound_refused", host=self.client.host, port=self.client.port,
                         reply=f"no hand-shake within {self.client.settings.reply_timeout_s:g} s")
            self.transport.abort()


class Heard:
    """The calls a process's inbound connections were told of, so that each is routed once.

    FreeSWITCH announces a park on every connection whose filter lets it
    through: one FreeSWITCH reached by two connections (its address and its
    name given to two ``--inbound``) would otherwise have every call routed,
    counted against its caps and sent its applications twice.  The first
    connection to hear a park follows the call; the others leave it.  Call
    uuids are unique across FreeSWITCH hosts, so connections to different
    hosts share one :class:`Heard` at no risk.

    Calls followed are all kept (each connection follows at most its
    ``max_calls``); of calls over, the last :attr:`keep` (1,024, or the
    largest ``max_calls`` of the sharing clients), so a park repeated after
    its call's end is still known.
    """

    def __init__(self) -> None:
        self.keep = 1024
        self._following: dict[str, InboundClient] = {}
        self._over: OrderedDict[str, InboundClient] = OrderedDict()

    def join(self, client: InboundClient) -> None:
        self.keep = max(self.keep, client.max_calls)

    def first(self, uuid: str, client: InboundClient) -> InboundClient | None:
        """``None`` when ``uuid`` is new (``client`` now follows it); else the client that heard it first."""
        first = self._following.get(uuid) or self._over.get(uuid)
        if first is None:
            self._following[uuid] = client
        return first

    def over(self, uuid: str) -> None:
        """The call is no longer followed; its uuid is kept among the last :attr:`keep` calls over."""
        client = self._following.pop(uuid, None)
        if client is not None:
            self._over[uuid] = client
            if len(self._over) > self.keep:
                self._over.popitem(last=False)


class InboundClient:
    """Keeps one connection to a FreeSWITCH's event socket and routes the calls it parks.

    Args:
        router: the :class:`~tel400.Router`.
        host, port: FreeSWITCH's event socket.
        settings: what calls do (:class:`~tel400_freeswitch.actions.Settings`).
        password: the event socket's password (``auth``).
        max_calls: calls followed at once; a park beyond it is hung up
            with :data:`FULL_CAUSE`.
        coalesce_s: after each read, how long to let FreeSWITCH's next
            bytes gather before reading again (0: read as soon as they
            come).  Each step of a call then waits up to this much longer;
            in exchange a wake-up of the loop serves many calls' events.
        heard: shared by all the clients of a process (tel400-esl's
            ``--inbound``, each given once or more): a call announced on
            several connections is routed once.  Its own by default.
    """

    def __init__(self, router, host: str, port: int = DEFAULT_PORT, settings: Settings | None = None, *,
                 password: str = DEFAULT_PASSWORD, max_calls: int = DEFAULT_MAX_CALLS,
                 coalesce_s: float = DEFAULT_COALESCE_S, heard: Heard | None = None) -> None:
        if max_calls < 1:
            raise ValueError("max_calls: expected at least 1")
        if not 0 <= coalesce_s <= MAX_COALESCE_S:
            raise ValueError(f"coalesce_s: expected 0 to {MAX_COALESCE_S:g} s")
        self.coalesce_s = coalesce_s
        self.router = router
        self.host, self.port = host, port
        self.settings = settings or Settings()
        self.password = check_password(password)
        self.max_calls = max_calls
        self.pin_threads = pins.check_executor(getattr(router, "pin_policy", None) or pins.PinPolicy())
        self.offload = getattr(router, "waits_on_io", False)  # decisions and ends in a thread (Redis, ...)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.calls: dict[str, InboundCall] = {}
        #: the calls announced so far, on this connection and on those sharing it (a repeated park, or
        #: one heard on two connections to one FreeSWITCH, is not routed again)
        self.heard = Heard() if heard is None else heard
        self.heard.join(self)
        self.link: InboundLink | None = None
        self.handled = 0  # calls over
        self.shed = 0  # parks hung up at max_calls
        self.strange = 0  # parks with a Unique-ID that cannot go into a command
        self.heard_twice = 0  # parks another connection of this process heard first
        self.bad_events = 0  # well-framed events whose own block was not one: skipped
        self.connected = 0  # hand-shakes completed
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def active(self) -> int:
        return len(self.calls)

    @property
    def serving(self) -> bool:
        return self.link is not None and self.link.serving

    def start(self) -> InboundClient:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._task = self.loop.create_task(self._keep_connected())
        return self

    async def wait_serving(self, timeout: float) -> None:
        """Until the hand-shake is done (``TimeoutError`` after ``timeout``)."""
        async with asyncio.timeout(timeout):
            while not self.serving:
                await asyncio.sleep(0.01)

    async def close(self, grace_s: float = 30.0) -> None:
        """Stop connecting again; let the calls in progress finish (up to ``grace_s``), then close.

        Calls parked meanwhile are still routed: leaving them parked would
        hold them until ``park_timeout``, since FreeSWITCH announces a park
        only once.
        """
        self._stop.set()
        deadline = self.loop.time() + grace_s
        while self.calls and self.serving and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        link = self.link
        if link is not None and link.transport is not None:
            link.transport.abort()  # connection_lost charges what is left
            await link.closed
        if self._task is not None:
            self._task.cancel()  # a connection attempt under way, or the back-off
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.pin_threads.shutdown(wait=False)

    # -- connecting ----------------------------------------------------------------------------

    async def _keep_connected(self) -> None:
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(self.settings.reply_timeout_s):
                    _, link = await self.loop.create_connection(lambda: InboundLink(self), self.host, self.port)
            except Exception as exc:  # OSError, TimeoutError, and what a resolver may raise besides
                _log_unreachable(host=self.host, port=self.port, error=str(exc) or type(exc).__name__)
            else:
                self.link = link
                await link.closed
                if link.served:
                    backoff = BACKOFF_S[0]  # it worked: the next loss is retried at once
            if self._stop.is_set():
                return
            try:
                async with asyncio.timeout(backoff):
                    await self._stop.wait()
            except TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_S[1])

    # -- calls ---------------------------------------------------------------------------------

    def _parked(self, link: InboundLink, event, uuid: str | None) -> None:
        if uuid is None or not _UUID.fullmatch(uuid):
            self.strange += 1
            _log_strange(count=self.strange)
            return
        first = self.heard.first(uuid, self)
        if first is not None:  # announced again: its call is (or was) another's, or already this one's
            if first is not self:
                self.heard_twice += 1
                _log_heard_twice(count=self.heard_twice, host=self.host, port=self.port,
                                 first=f"{first.host}:{first.port}")
            return
        if len(self.calls) >= self.max_calls:
            self.shed += 1
            _log_full(shed=self.shed, max_calls=self.max_calls)
            link.send([hangup(FULL_CAUSE, uuid=uuid)], None)
            self.heard.over(uuid)
            return
        call = InboundCall(self, link, Session.parked(self.settings, self.loop.time, event))
        self.calls[uuid] = call
        call.receive()

    def _forget(self, call: InboundCall) -> None:
        uuid = call.session.channel
        if self.calls.pop(uuid, None) is not None:
            self.handled += 1
            self.heard.over(uuid)

    def _link_lost(self, link: InboundLink) -> None:
        if self.link is link:
            self.link = None
        for call in [c for c in self.calls.values() if c.link is link]:
            call.session.connection_lost()
            call.pump()
