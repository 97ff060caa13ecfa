"""A FreeSWITCH stand-in that speaks the Event Socket byte for byte, both ways.

FreeSWITCH cannot be installed on Debian bookworm, so the adapter is tested
against this peer, written from FreeSWITCH's own source
(``mod_event_socket.c``, ``switch_event.c``, ``switch_channel.c``,
``switch_ivr.c``; line numbers below are of signalwire/freeswitch at
cc93a683).  One :class:`Channel` holds a call's behaviour — the
applications ``sendmsg`` runs and the events each fires — for both sides;
the sides differ only in their connections.

**Outbound** (:class:`FreeSwitchPeer`: FreeSWITCH connects to tel400 per call):

* the connect reply is the channel's data serialized as an event — every
  value URL-encoded by ``switch_url_encode``'s rules, ``Content-Type:
  command/reply`` near the end, ``Reply-Text: %2BOK%0A``, ``Socket-Mode``,
  ``Control``, and **no Content-Length**;
* events are ``Content-Length: N`` then ``Content-Type: text/event-plain``,
  an empty line, and the serialized event;
* ``linger``, ``event`` and ``nixevent`` answer ``-ERR command not found``
  without ``full`` (parse_command's ``LFLAG_OUTBOUND && !LFLAG_FULL`` check
  comes before them); ``myevents`` and ``filter`` work either way, and a
  second ``myevents`` gets ``-ERR aready enabled.`` (sic);
* events are sent only as subscribed: ``myevents`` turns on the channel's
  event types (:data:`MYEVENTS`) for this channel's ``Unique-ID`` only,
  ``event plain NAME…`` adds types, ``nixevent NAME…`` drops them, ``filter
  HEADER VALUE`` lets through only events with a matching header;
* after the hangup a lingering socket gets the linger notice
  (``Content-Disposition: linger``, ``Content-Length: 0``); ``exit`` gets
  ``+OK bye`` and the final notice (``Disconnected, goodbye.``, 67 bytes);
* ``sendmsg`` is answered ``+OK`` at once (async mode) and the application
  then runs: ``CHANNEL_EXECUTE``, what it does, ``CHANNEL_EXECUTE_COMPLETE``
  carrying the ``Event-UUID`` as ``Application-UUID``.

Options make it nastier: every frame split into single bytes, unrelated
events (another application's CHANNEL_EXECUTE_COMPLETE, when subscribed)
sent before each reply, a disconnect in the middle of the call, a garbled
frame, silence after some commands (read but never answered), applications
that never complete while such unrelated events keep coming.  It records
what the adapter made the channel do.

**Inbound** (:class:`InboundSwitch`: tel400 connects to mod_event_socket's
listener, port 8021, and drives parked calls):

* a connection is greeted ``Content-Type: auth/request`` and an empty line
  (listener_run, 2728-2731);
* ``exit`` (any command starting so, or ``...``) works before and after auth:
  ``+OK bye``, then the goodbye notice *without* a session —
  ``Content-Type: text/disconnect-notice``, ``Content-Length: 67`` — and the
  close (parse_command 1743-1747; send_disconnect 631-659; listener_run
  2823-2826);
* ``auth <password>`` compares the rest of the line exactly: ``+OK accepted``,
  or ``-ERR invalid`` then the goodbye notice and the close (1750-1765);
  before auth every other command gets ``-ERR command not found`` and the
  connection stays open (1749-1958, 2619-2622; listener_run's first loop
  breaks after one command, 2733-2756); ``userauth`` gets ``-ERR invalid``
  (the peer has no user directory);
* after auth: ``filter H V`` / ``filter add H V`` → ``+OK filter added.
  [H]=[V]``, ``filter delete H [V]`` / ``filter delete all`` → ``+OK filter
  deleted. [H][V]``, a lone word → ``-ERR invalid syntax`` (1961-2007);
  ``event [plain] NAME…`` → ``+OK event listener enabled plain`` or ``-ERR no
  keywords supplied`` (2465-2545); ``nixevent`` → ``+OK events nixed``
  (2547-2599); ``noevents`` → ``+OK no longer listening for events`` or
  ``-ERR not listening for events`` (2601-2616); ``myevents <uuid>``
  (2016, 2063-2136); ``linger`` → ``-ERR not controlling a session``;
  ``sendmsg <uuid>`` → ``+OK`` once queued to the channel, or ``-ERR invalid
  session id [<uuid>]`` (2180-2232); anything else → ``-ERR command not
  found``.  ``api``, ``bgapi``, ``sendevent`` and ``log`` are not played
  (they get ``-ERR command not found`` here);
* replies go in command order, one command at a time, and events are
  written between commands (read_packet, 1419-1461), each one write;
* event_handler (274-410): an event goes to every running listener with
  events on whose list has its type (or ALL), and that passes the filters:
  with filters, it passes if ANY ``+`` filter (the default) matches a header
  it has — value compared without regard to case, or a ``/regex/`` — and no
  ``-`` filter does; an event without a filtered header is not sent;
* channel events carry the channel variables (``variable_*``): CREATE, PARK,
  EXECUTE, EXECUTE_COMPLETE, ANSWER, BRIDGE, HANGUP, HANGUP_COMPLETE among
  them (switch_channel_event_set_extended_data, switch_channel.c 2759-2790).
  ``tel400_route`` is set by the dialplan after CHANNEL_CREATE, so CREATE
  lacks it and every event from the ``set`` on carries it;
* a placed call fires CHANNEL_CREATE, the dialplan's ``set tel400_route=true``
  (CHANNEL_EXECUTE, CHANNEL_EXECUTE_COMPLETE) and ``park`` (CHANNEL_EXECUTE),
  then CHANNEL_PARK (switch_ivr_park, switch_ivr.c 1002-1005); ``park``
  completes between CHANNEL_HANGUP and CHANNEL_HANGUP_COMPLETE
  (``Call.dialplan_events=False``: no application events of the dialplan;
  ``Call.route_variable=False``: a dialplan that did not set tel400_route);
* ``park_timeout=N[:CAUSE]`` hangs the parked call up with CAUSE, by default
  NORMAL_CLEARING (switch_ivr.c 960, 985-996, 1071-1072);
* shutting down, FreeSWITCH hangs every channel up with SYSTEM_SHUTDOWN
  (switch_core.c 3042) before unloading the module, whose kill_all_listeners
  sends ``The system is being shut down.`` as a disconnect notice and closes
  (mod_event_socket.c 577-585, 676-685).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .protocol import url_encode

#: the event types ``myevents`` subscribes (mod_event_socket.c, parse_command)
MYEVENTS = frozenset({
    "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA", "CHANNEL_DESTROY",
    "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE",
    "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
    "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK", "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK",
})
#: event names switch_name_event knows (those the peer can send, and a few more); others are skipped
EVENT_NAMES = MYEVENTS | {"HEARTBEAT", "BACKGROUND_JOB", "API", "CUSTOM", "CHANNEL_CALLSTATE", "CHANNEL_HOLD",
                          "CHANNEL_UNHOLD", "RECORD_START", "RECORD_STOP", "PLAYBACK_START", "PLAYBACK_STOP",
                          "SHUTDOWN"}

GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
assert len(GOODBYE) == 67

_nothing_to_encode = re.compile(r"[A-Za-z0-9._/,-]*").fullmatch


@functools.lru_cache(maxsize=65536)
def _line(name: str, value: str) -> str:
    """One serialized header, remembered: a channel's headers repeat in every one of its events."""
    encoded = value if _nothing_to_encode(value) else url_encode(value)
    return f"{name}: {encoded or '_undef_'}\n"


def serialize(headers: list[tuple[str, str]], body: bytes | None = None) -> bytes:
    """An event as ``switch_event_serialize(..., encode=TRUE)`` writes it."""
    lines = "".join([_line(name, value) for name, value in headers])
    if body:
        return (lines + f"Content-Length: {len(body)}\n\n").encode() + body
    return (lines + "\n").encode()


def event_frame(headers: list[tuple[str, str]], body: bytes | None = None) -> bytes:
    payload = serialize(headers, body)
    return f"Content-Length: {len(payload)}\nContent-Type: text/event-plain\n\n".encode() + payload


def reply_frame(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def next_command(buffer: bytes, start: int = 0):
    """The command at ``buffer[start:]``: ``(line, headers, body, end)``, or ``None`` until it is complete.

    Header names are lower-cased (FreeSWITCH looks them up without regard to
    case); a ``content-length`` header's bytes follow the empty line.
    """
    end = buffer.find(b"\n\n", start)
    if end == -1:
        return None
    lines = buffer[start:end].decode().split("\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(buffer) < end + 2 + length:
        return None
    return lines[0].strip(), headers, buffer[end + 2:end + 2 + length], end + 2 + length


def _filter_command(filters: list[tuple[str, str]], text: str) -> str:
    """``filter H V`` / ``filter add H V`` / ``filter delete H [V]`` / ``filter delete all`` on ``filters``."""
    name, _, value = text.lstrip(" ").partition(" ")
    if name.lower() == "delete" and value:
        name, _, value = value.partition(" ")
        if name.lower() == "all":
            filters.clear()
        else:  # switch_event_del_header_val: the name without regard to case, the value exactly
            filters[:] = [(n, v) for n, v in filters if not (n.lower() == name.lower() and (not value or v == value))]
        return f"+OK filter deleted. [{name}][{value}]"
    if not value:
        return "-ERR invalid syntax"
    if name.lower() == "add":
        name, _, value = value.partition(" ")
    filters.append((name, value))
    return f"+OK filter added. [{name}]=[{value}]"


def _filter_matches(value: str, pattern: str, *, regex: bool) -> bool:
    if regex:  # switch_regex: /expression/ with flags i and s
        expression, _, flags = pattern[1:].rpartition("/")
        options = (re.IGNORECASE if "i" in flags else 0) | (re.DOTALL if "s" in flags else 0)
        return re.search(expression or flags, value, options) is not None
    return value.lower() == pattern.lower()  # strcasecmp


def header_getter(headers: list[tuple[str, str]]) -> Callable[[str], str | None]:
    """switch_event_get_header: the first header of a name (given lower-cased), without regard to case."""
    def get(name: str) -> str | None:
        size = len(name)
        for have, value in headers:
            if len(have) == size and have.lower() == name:
                return value
        return None
    return get


def filters_pass(filters: list[tuple[str, str]], get: Callable[[str], str | None]) -> bool:
    """event_handler's filter walk (mod_event_socket.c 324-370).

    No filters: everything passes.  Otherwise an event passes if ANY ``+``
    filter (the default sign) matches a header it has, and no ``-`` filter
    does; an event without any filtered header is not sent.  A value that
    starts with ``/`` is a regular expression, any other is compared without
    regard to case.  ``get`` finds a header by its lower-cased name.
    """
    if not filters:
        return True
    send = False
    for name, value in filters:
        have = get(name.lower())
        if have is None:
            continue
        positive, i = True, 0
        while i < len(value) and value[i] in "+- ":
            if value[i] != " ":
                positive = value[i] == "+"
            i += 1
        if send and positive:
            continue
        if _filter_matches(have, value[i:], regex=value.startswith("/")):
            if not positive:
                return False
            send = True
    return send


@dataclass
class Call:
    """How one call behaves, and what happened to it."""

    caller: str = "13901012345"
    destination: str = "4001012345"
    full: bool = True
    #: bridge outcome: a function of the list of legs → (answered leg or None, talk seconds)
    bridge: Callable[[list[str]], tuple[str | None, int]] = lambda legs: (legs[0], 30)
    #: digits keyed by successive play_and_get_digits
    digits: list[str] = field(default_factory=list)
    talk_s: int = 20  # seconds in a queue or conference before the caller hangs up
    split_bytes: bool = False
    interleave: bool = False
    disconnect_after_apps: int | None = None  # the peer goes away mid-call
    garbage_after_connect: bool = False
    #: the peer stops answering after this many commands (it still reads, and notes what it ignores)
    silent_after_commands: int | None = None
    #: applications that start but never complete (a stuck playback, say)
    stuck_apps: frozenset[str] = frozenset()
    #: while an application is stuck, another application's end this often (seconds): a careless waiter keeps waiting
    heartbeat_s: float | None = None
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    #: inbound: the dialplan set tel400_route=true before park (every event from the park on carries it)
    route_variable: bool = True
    #: inbound: the value it is set to (the filter compares without regard to case, mod_event_socket.c 357)
    route_value: str = "true"
    #: inbound: the dialplan's own applications (set…, park) fire their CHANNEL_EXECUTE[_COMPLETE] as FreeSWITCH's do
    dialplan_events: bool = True
    #: inbound: the cause of a park_timeout (``park_timeout=30:CAUSE``; FreeSWITCH's default is NORMAL_CLEARING)
    park_timeout_cause: str = "NORMAL_CLEARING"
    # -- filled in by the peer --
    apps: list[tuple[str, str]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    hangup_cause: str | None = None
    billsec: int = 0
    answered: bool = False
    closed_by_adapter: bool = False
    #: commands received after going silent: (command, call-command header or "")
    ignored: list[tuple[str, str]] = field(default_factory=list)
    #: outbound: the adapter closed the socket with the channel still up; inbound: the park timed out
    parked: bool = False


class Channel:
    """One call's channel as FreeSWITCH holds it: what the applications sent to it do, and their events.

    Both sides of the peer drive it: the outbound connection for its one
    channel, the inbound switch for every channel it placed.  It fires
    events through ``emit(headers)`` (synchronous: the owner decides who gets
    them) and tells ``on_hangup()`` when its CHANNEL_HANGUP_COMPLETE is out.
    """

    _sequence = itertools.count(1000)

    def __init__(self, core_uuid: str, call: Call, emit: Callable[[list[tuple[str, str]]], None],
                 on_hangup: Callable[[], None] | None = None) -> None:
        self.core_uuid = core_uuid
        self.call = call
        self.emit = emit
        self.on_hangup = on_hangup
        #: async, called after the heartbeat's event (the outbound connection writes what was emitted)
        self.flush: Callable[[], Awaitable[None]] | None = None
        self.up = True
        self.bridged: str | None = None
        self.heartbeats: asyncio.Task | None = None
        #: the dialplan application the channel sits in, (app, arg, Application-UUID): park, inbound
        self.running: tuple[str, str, str] | None = None
        #: channel variables set by the dialplan, carried by every event from now on
        self.dialplan_variables: list[tuple[str, str]] = []

    def execute(self, app: str, arg: str, event_uuid: str) -> None:
        """Run an application sent by ``sendmsg`` (its ``+OK`` is already out)."""
        self.call.apps.append((app, arg))
        self.run(app, arg, event_uuid)

    def run(self, app: str, arg: str, event_uuid: str) -> None:
        """What the application does: CHANNEL_EXECUTE, its effects, CHANNEL_EXECUTE_COMPLETE (or a hangup)."""
        call = self.call
        emit = self.emit
        emit(self.execute_headers("CHANNEL_EXECUTE", app, arg, event_uuid))
        if app in call.stuck_apps:
            if call.heartbeat_s and self.heartbeats is None:
                self.heartbeats = asyncio.ensure_future(self._heartbeat(call.heartbeat_s))
            return  # never completes
        extra: list[tuple[str, str]] = []
        if app == "answer" and not call.answered:
            call.answered = True
            emit(self.channel_headers("CHANNEL_ANSWER"))
        elif app in ("set", "export"):
            name, _, value = arg.partition("=")
            call.variables[name] = value
        elif app == "multiset":
            for item in arg.split():
                name, _, value = item.partition("=")
                call.variables[name] = value
        elif app == "playback":
            extra.append(("Application-Response", "FILE PLAYED"))
        elif app == "play_and_get_digits":
            digits = call.digits.pop(0) if call.digits else ""
            var = arg.split()[7] if len(arg.split()) > 7 else "digits"
            call.variables[var] = digits
            extra.append((f"variable_{var}", digits))
        elif app == "bridge":
            legs = re.sub(r"^\{[^}]*\}", "", arg).split("|")
            answered, talk = call.bridge(legs)
            if answered is not None:
                call.answered = True
                call.billsec = talk
                channel = re.sub(r"^\[[^\]]*\]", "", answered)
                self.bridged = channel
                emit(self.channel_headers("CHANNEL_BRIDGE"))
                extra += [("variable_originate_disposition", "SUCCESS"), ("variable_bridge_channel", channel)]
                if call.variables.get("hangup_after_bridge") == "true":
                    emit(self.execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid, extra))
                    self.hangup("NORMAL_CLEARING")
                    return
            else:
                extra += [("variable_originate_disposition", "USER_BUSY"), ("Application-Response", "USER_BUSY")]
                if call.variables.get("continue_on_fail") != "true":
                    emit(self.execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid, extra))
                    self.hangup("USER_BUSY")
                    return
        elif app in ("callcenter", "conference"):
            call.answered = True
            call.billsec = call.talk_s
            emit(self.execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid))
            self.hangup("NORMAL_CLEARING")  # the caller hangs up at the end
            return
        emit(self.execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid, extra))

    def noise(self) -> list[tuple[str, str]]:
        """Another application's end on this channel (the dialplan's own, an execute_on_answer…)."""
        return self.execute_headers("CHANNEL_EXECUTE_COMPLETE", "set", "tel400_noise=1", str(uuidlib.uuid4()))

    async def _heartbeat(self, every_s: float) -> None:
        while self.up:
            await asyncio.sleep(every_s)
            try:
                self.emit(self.noise())
                if self.flush is not None:
                    await self.flush()
            except (ConnectionError, OSError):
                return

    def stop(self) -> None:
        if self.heartbeats is not None:
            self.heartbeats.cancel()

    def hangup(self, cause: str) -> None:
        """CHANNEL_HANGUP, the end of the application the channel sat in (if any), CHANNEL_HANGUP_COMPLETE."""
        self.stop()
        if not self.up:
            return
        self.up = False
        call = self.call
        call.hangup_cause = cause
        self.emit(self.channel_headers("CHANNEL_HANGUP", [("Hangup-Cause", cause)]))
        if self.running is not None:  # the dialplan's park returns when the channel is hung up
            app, arg, event_uuid = self.running
            self.running = None
            self.emit(self.execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid, uuid_name=None))
        extra = [("Hangup-Cause", cause), ("variable_billsec", str(call.billsec)),
                 ("variable_hangup_cause", cause)]
        if self.bridged:
            extra.append(("variable_bridge_channel", self.bridged))
        self.emit(self.channel_headers("CHANNEL_HANGUP_COMPLETE", extra))
        if self.on_hangup is not None:
            self.on_hangup()

    # -- headers ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"sofia/internal/{self.call.caller}@192.168.1.146:5060"

    def common_headers(self, name: str) -> list[tuple[str, str]]:
        now = time.time()
        return [
            ("Event-Name", name),
            ("Core-UUID", self.core_uuid),
            ("FreeSWITCH-Hostname", "localhost.localdomain"),
            ("FreeSWITCH-Switchname", "localhost.localdomain"),
            ("FreeSWITCH-IPv4", "192.168.1.205"),
            ("FreeSWITCH-IPv6", "::1"),
            ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))),
            ("Event-Date-GMT", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))),
            ("Event-Date-Timestamp", str(int(now * 1e6))),
            ("Event-Calling-File", "switch_core_session.c"),
            ("Event-Calling-Function", "switch_core_session_exec"),
            ("Event-Calling-Line-Number", "2874"),
            ("Event-Sequence", str(next(self._sequence))),
        ]

    def channel_headers(self, name: str, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        call = self.call
        return self.common_headers(name) + [
            ("Channel-State", "CS_EXECUTE"),
            ("Channel-Call-State", "ACTIVE" if call.answered else "RINGING"),
            ("Channel-Name", self.name),
            ("Unique-ID", call.uuid),
            ("Call-Direction", "inbound"),
            ("Answer-State", "answered" if call.answered else "ringing"),
            ("Caller-Direction", "inbound"),
            ("Caller-Username", call.caller),
            ("Caller-Dialplan", "XML"),
            ("Caller-Caller-ID-Name", call.caller),
            ("Caller-Caller-ID-Number", call.caller),
            ("Caller-Network-Addr", "192.168.1.146"),
            ("Caller-Destination-Number", call.destination),
            ("Caller-Unique-ID", call.uuid),
            ("Caller-Source", "mod_sofia"),
            ("Caller-Context", "public"),
            ("Caller-Channel-Name", self.name),
            ("variable_sip_from_user", call.caller),
            ("variable_sip_req_user", call.destination),
            ("variable_sip_user_agent", "Zoiper rv2.10.8.4"),
            ("variable_tel400_note", "Müller & Söhne; <sip:x@y> \"quoted\"\r\nline"),
        ] + self.dialplan_variables + (extra or [])

    def execute_headers(self, name, app, arg, event_uuid, extra=None, *, uuid_name: str | None = "tel400"):
        headers = [("Application", app), ("Application-Data", arg), ("Application-UUID", event_uuid)]
        if uuid_name is not None:
            headers.append(("Application-UUID-Name", uuid_name))
        return self.channel_headers(name, headers + (extra or []))

    def channel_data(self, full: bool) -> bytes:
        """The outbound ``connect`` reply: the channel's data as an event, no Content-Length."""
        headers = self.channel_headers("CHANNEL_DATA") + [
            ("Content-Type", "command/reply"),
            ("Reply-Text", "+OK\n"),
            ("Socket-Mode", "async"),
            ("Control", "full" if full else "single-channel"),
        ]
        return serialize(headers)


class FreeSwitchPeer:
    """Plays FreeSWITCH's side of outbound Event Socket connections (any number at once)."""

    def __init__(self, core_uuid: str = "7610dcfe-e294-11e8-b372-4b084ebbf04f") -> None:
        self.core_uuid = core_uuid

    async def play(self, host: str, port: int, call: Call, timeout: float = 30) -> Call:
        """Connect to the adapter as FreeSWITCH does and live through ``call``."""
        reader, writer = await asyncio.open_connection(host, port)
        try:
            await asyncio.wait_for(_Conversation(self.core_uuid, call, writer).run(reader), timeout)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass
        return call


class _Conversation:
    """One outbound connection: framing, subscriptions and replies around its one :class:`Channel`."""

    def __init__(self, core_uuid: str, call: Call, writer: asyncio.StreamWriter) -> None:
        self.call = call
        self.writer = writer
        self.channel = Channel(core_uuid, call, self._queue, self._hung_up)
        self.channel.flush = self._flush
        self.pending: list[bytes] = []  # frames the channel emitted, not yet written
        self.lingering = False
        self.subscriptions = Subscriptions()
        self.subscriptions.uuid = call.uuid  # myevents: this channel's events only
        self._lock = asyncio.Lock()  # one frame at a time, even split into bytes

    @property
    def up(self) -> bool:
        return self.channel.up

    # -- the conversation ---------------------------------------------------------------

    async def run(self, reader: asyncio.StreamReader) -> None:
        try:
            await self._run(reader)
        finally:
            self.channel.stop()

    async def _run(self, reader: asyncio.StreamReader) -> None:
        call = self.call
        buffer = b""
        while True:
            data = await reader.read(65536)
            if not data:
                call.closed_by_adapter = True
                call.parked = self.up
                return
            buffer += data
            while True:
                parsed = self._next_command(buffer)
                if parsed is None:
                    break
                cmd, headers, body, buffer = parsed
                try:
                    if await self._handle(cmd, headers, body) == "closed":
                        return
                except (ConnectionError, OSError):
                    call.closed_by_adapter = True
                    call.parked = self.up
                    return

    @staticmethod
    def _next_command(buffer: bytes):
        parsed = next_command(buffer)
        if parsed is None:
            return None
        cmd, headers, body, end = parsed
        return cmd, headers, body, buffer[end:]

    async def _send(self, data: bytes) -> None:
        async with self._lock:
            if self.call.split_bytes:
                for i in range(len(data)):
                    self.writer.write(data[i:i + 1])
                    await self.writer.drain()
            else:
                self.writer.write(data)
                await self.writer.drain()

    def _queue(self, headers: list[tuple[str, str]]) -> None:
        if self._wanted(headers):
            self.pending.append(event_frame(headers))

    async def _flush(self) -> None:
        while self.pending:
            await self._send(self.pending.pop(0))

    def _hung_up(self) -> None:
        if self.lingering:
            self.pending.append(
                f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {self.call.uuid}\n"
                f"Content-Disposition: linger\nChannel-Name: {self.channel.name}\n"
                "Linger-Time: 600\nContent-Length: 0\n\n".encode()
            )

    async def _reply(self, text: str) -> None:
        if self.call.interleave:
            self._queue(self.channel.noise())
            await self._flush()
        await self._send(reply_frame(text))

    async def _handle(self, cmd: str, headers: dict, body: bytes):
        call = self.call
        if call.silent_after_commands is not None and len(call.commands) >= call.silent_after_commands:
            call.ignored.append((cmd, headers.get("call-command", "")))
            return None
        call.commands.append(cmd)
        if cmd == "connect":
            await self._send(self.channel.channel_data(call.full))
            if call.garbage_after_connect:
                await self._send(b"\x00\x01 this is not a frame\n\n")
        elif cmd.startswith("myevents"):
            await self._reply(self.subscriptions.enable_myevents())
        elif cmd.startswith("filter "):
            await self._reply(_filter_command(self.subscriptions.filters, cmd[7:]))
        elif cmd.startswith("sendmsg"):
            return await self._sendmsg(headers, body)
        elif not call.full and cmd != "exit":  # outbound without "full": nothing below sendmsg exists
            await self._reply("-ERR command not found")
        elif cmd == "linger":
            self.lingering = True
            await self._reply("+OK will linger")
        elif cmd.startswith("nixevent"):
            await self._reply(self.subscriptions.nixevent(cmd.split()[1:]))
        elif cmd.startswith("event"):
            await self._reply(self.subscriptions.event(cmd.split()[1:]))
        elif cmd == "exit":
            await self._reply("+OK bye")
            await self._send(self._disconnect(GOODBYE, "disconnect"))
            return "closed"
        else:
            await self._reply("-ERR command not found")

    def _wanted(self, headers: list[tuple[str, str]]) -> bool:
        """Whether FreeSWITCH's event_handler would queue this event for the listener."""
        return self.subscriptions.wants(headers, header_getter(headers))

    async def _sendmsg(self, headers: dict, body: bytes):
        call = self.call
        channel = self.channel
        if headers.get("call-command") == "hangup":
            await self._reply("+OK")
            channel.hangup(headers.get("hangup-cause", "NORMAL_CLEARING"))
            await self._flush()
            return None
        if not channel.up:
            await self._reply("-ERR no channel")
            return None
        app = headers.get("execute-app-name", "")
        arg = headers.get("execute-app-arg", "") or body.decode()
        await self._reply("+OK")
        call.apps.append((app, arg))
        if call.disconnect_after_apps is not None and len(call.apps) >= call.disconnect_after_apps:
            self.writer.close()  # FreeSWITCH's side goes away mid-call
            return "closed"
        channel.run(app, arg, headers.get("event-uuid", ""))
        await self._flush()
        return None

    def _disconnect(self, message: bytes, disposition: str) -> bytes:
        return (f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {self.call.uuid}\n"
                f"Content-Disposition: {disposition}\nContent-Length: {len(message)}\n\n").encode() + message


# -- the inbound side: mod_event_socket's listener on port 8021 ------------------------------

#: kill_all_listeners' message (mod_event_socket.c 682): the module unloading, FreeSWITCH shutting down
SHUTDOWN = b"The system is being shut down.\n"
AUTH_REQUEST = b"Content-Type: auth/request\n\n"
GARBAGE = b"\x00\x01 this is not a frame\n\n"


def disconnect_notice(message: bytes) -> bytes:
    """send_disconnect for a listener without a session (mod_event_socket.c 631-659): no UUID, no disposition."""
    return f"Content-Type: text/disconnect-notice\nContent-Length: {len(message)}\n\n".encode() + message


def event_type(word: str) -> str | None:
    """switch_name_event: a name without regard to case, ``SWITCH_EVENT_`` in front allowed."""
    name = word.upper()
    if len(name) > 13 and name.startswith("SWITCH_EVENT_"):
        name = name[13:]
    return name if name in EVENT_NAMES or name == "ALL" else None


class Subscriptions:
    """What one listener gets: ``event``, ``nixevent``, ``noevents``, ``filter`` and ``myevents`` as parse_command
    keeps them, and event_handler's decision (mod_event_socket.c 308-381)."""

    def __init__(self) -> None:
        self.on = False  # LFLAG_EVENTS
        self.format = "plain"  # listener->format: named in the reply (the peer writes plain whatever it is)
        self.names: set[str] = set()  # listener->event_list
        self.all = False  # event_list[SWITCH_EVENT_ALL]
        self.filters: list[tuple[str, str]] = []
        self.myevents = False  # LFLAG_MYEVENTS
        self.uuid: str | None = None  # the listener's session: myevents' channel

    def event(self, words: list[str]) -> str:
        """``event [plain|xml|json] NAME…`` (2465-2545): the first word may be a format; unknown names are skipped."""
        if words and words[0].lower() in ("plain", "xml", "json"):
            self.format, words = words[0].lower(), words[1:]
        known = [name for name in map(event_type, words) if name is not None]
        if not known:
            return "-ERR no keywords supplied"
        for name in known:
            if name == "ALL":
                self.all = True
            self.names.add(name)
        self.on = True
        return f"+OK event listener enabled {self.format}"

    def nixevent(self, words: list[str]) -> str:
        """``nixevent NAME…`` (2547-2599): nixing one type of ALL leaves every other type on."""
        known = [name for name in map(event_type, words) if name is not None]
        if not known:
            return "-ERR no keywords supplied"
        for name in known:
            if name == "ALL":
                self.all = False
                self.names.clear()
            else:
                if self.all:
                    self.all = False
                    self.names |= EVENT_NAMES
                self.names.discard(name)
        self.on = True
        return "+OK events nixed"

    def enable_myevents(self) -> str:
        """``myevents`` (2063-2136): the channel event types, for the listener's channel (:attr:`uuid`) only."""
        if self.myevents:
            return "-ERR aready enabled."  # sic
        self.myevents = self.on = True
        self.names |= MYEVENTS
        return "+OK Events Enabled"

    def noevents(self) -> str:
        """``noevents`` (2601-2616)."""
        if not self.on:
            return "-ERR not listening for events"
        self.on = self.all = False
        self.names.clear()
        return "+OK no longer listening for events"

    def wants(self, headers: list[tuple[str, str]], get: Callable[[str], str | None]) -> bool:
        """Whether event_handler queues this event; ``get`` finds its headers (:func:`header_getter`)."""
        if not self.on or not (self.all or headers[0][1] in self.names):
            return False
        if self.filters and not filters_pass(self.filters, get):
            return False
        if self.myevents:
            uuid = get("unique-id")
            return uuid is not None and (self.uuid is None or uuid == self.uuid)
        return True


class InboundConnection(asyncio.Protocol):
    """One connection to the switch's event socket: the listener thread of mod_event_socket (listener_run).

    Nasty options (copied from the switch when the connection is made, and
    changeable on it afterwards): ``split_bytes`` writes every frame one byte
    at a time; ``silent_after_commands`` stops answering — and sending events,
    as a listener thread stuck in a command would — after that many commands
    (still read, kept in :attr:`ignored`, not carried out); ``garbage_after_auth``
    sends a frame that is not one after ``+OK accepted``.
    """

    def __init__(self, switch: InboundSwitch, number: int) -> None:
        self.switch = switch
        self.number = number
        self.transport: asyncio.Transport | None = None
        self.authed = False  # LFLAG_AUTHED
        self.subscriptions = Subscriptions()
        self.commands: list[str] = []  # command lines carried out, in order
        self.sendmsgs: list[tuple[str, dict]] = []  # (uuid, headers) of each sendmsg carried out
        self.ignored: list[str] = []  # command lines read after going silent
        self.split_bytes = switch.split_bytes
        self.silent_after_commands = switch.silent_after_commands
        self.garbage_after_auth = switch.garbage_after_auth
        self.closed = False
        self.written = 0  # bytes written to this connection (replies, events, notices)
        self._buffer = b""
        self._out: asyncio.Queue | None = None  # split_bytes: frames (or None: close) for the byte writer

    @property
    def silent(self) -> bool:
        return self.silent_after_commands is not None and len(self.commands) >= self.silent_after_commands

    @property
    def listening(self) -> bool:
        """event_handler's first test: running, authenticated (only then can ``event`` be sent), events on."""
        return not self.closed and self.subscriptions.on and not self.silent

    # -- asyncio's side --------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.switch.connections.append(self)
        self.write(AUTH_REQUEST)  # listener_run (2728): the greeting, before any command

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while not self.closed:
            parsed = next_command(buffer, start)
            if parsed is None:
                break
            cmd, headers, body, start = parsed
            if cmd:  # read_packet skips empty lines before a command
                self._command(cmd, headers, body)
        self._buffer = buffer[start:]

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._out is not None:
            self._out.put_nowait(None)

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.written += len(data)
        if not self.split_bytes:
            self.transport.write(data)
            return
        if self._out is None:
            self._out = asyncio.Queue()
            self.switch._tasks.add(asyncio.ensure_future(self._write_bytes()))
        self._out.put_nowait(data)

    async def _write_bytes(self) -> None:
        while (data := await self._out.get()) is not None:
            for i in range(len(data)):
                if self.transport.is_closing():
                    return
                self.transport.write(data[i:i + 1])
                await asyncio.sleep(0)
        self.transport.close()

    def reply(self, text: str) -> None:
        self.write(reply_frame(text))

    def close(self, notice: bytes | None = None) -> None:
        """Send ``notice`` (a disconnect notice) if any, then close, after what was written before."""
        if self.closed:
            return
        if notice is not None:
            self.write(notice)
        if self._out is not None:
            self._out.put_nowait(None)  # the byte writer closes when it gets here
        else:
            self.transport.close()
        self.closed = True

    def send_garbage(self) -> None:
        self.write(GARBAGE)

    # -- parse_command (mod_event_socket.c 1722-2632) -----------------------------------------

    def _command(self, cmd: str, headers: dict, body: bytes) -> None:
        if self.silent:
            self.ignored.append(cmd)
            return
        self.commands.append(cmd)
        self.switch.commands.append((self.number, cmd))
        low = cmd.lower()
        if low.startswith("exit") or low.startswith("..."):  # 1743: before the auth check
            self.reply("+OK bye")
            self.close(disconnect_notice(GOODBYE))  # listener_run's end (2823-2826)
            return
        if not self.authed:
            self._unauthenticated(cmd, low)
            return
        subscriptions = self.subscriptions
        if low.startswith("filter "):
            self.reply(_filter_command(subscriptions.filters, cmd[7:]))
        elif low.startswith("myevents "):
            self.reply(self._myevents(cmd[9:].split()))
        elif low.startswith("divert_events"):
            self.reply("-ERR not controlling a session.")
        elif low.startswith("sendmsg"):
            self._sendmsg(cmd[7:].strip(" "), headers, body)
        elif low.startswith("linger") or low.startswith("nolinger"):
            self.reply("-ERR not controlling a session")
        elif low.startswith("event"):
            self.reply(subscriptions.event(cmd.split(" ")[1:]))
        elif low.startswith("nixevent"):
            self.reply(subscriptions.nixevent(cmd.split(" ")[1:]))
        elif low.startswith("noevents"):
            self.reply(subscriptions.noevents())
        else:  # api, bgapi, sendevent, log are not played; the rest is FreeSWITCH's answer too (2619-2622)
            self.reply("-ERR command not found")

    def _unauthenticated(self, cmd: str, low: str) -> None:
        """Before ``auth`` only ``auth``, ``userauth`` and ``exit`` exist (1749-1958)."""
        if low.startswith("auth "):
            if cmd[5:] == self.switch.password:
                self.authed = True
                self.reply("+OK accepted")
                if self.garbage_after_auth:
                    self.send_garbage()
            else:  # LFLAG_RUNNING cleared: the listener loop ends with the goodbye notice
                self.reply("-ERR invalid")
                self.close(disconnect_notice(GOODBYE))
        elif low.startswith("userauth "):  # the peer has no user directory: switch_xml_locate_user fails
            self.reply("-ERR invalid")
            self.close(disconnect_notice(GOODBYE))
        else:  # the connection stays open: listener_run's loop goes on after its first command (2755)
            self.reply("-ERR command not found")

    def _myevents(self, words: list[str]) -> str:
        """``myevents <uuid> [format]`` (2016, 2063-2136): the events of one channel."""
        subscriptions = self.subscriptions
        if subscriptions.myevents:
            return "-ERR aready enabled."
        uuid = words[0] if words else ""
        if uuid not in self.switch.channels:
            if len(words) > 1:
                return "-ERR invalid uuid"
            uuid = None  # no session: any event with a Unique-ID
        subscriptions.uuid = uuid
        return subscriptions.enable_myevents()

    def _sendmsg(self, uuid: str, headers: dict, body: bytes) -> None:
        """``sendmsg <uuid>`` (2180-2232): ``+OK`` once queued to the channel, which then carries it out."""
        uuid = uuid or headers.get("session-id", "")
        if not uuid and self.subscriptions.myevents:
            uuid = self.subscriptions.uuid or ""
        channel = self.switch.channels.get(uuid)
        if channel is None:
            self.reply(f"-ERR invalid session id [{uuid}]")
            return
        self.sendmsgs.append((uuid, headers))
        self.reply("+OK")
        command = headers.get("call-command", "")
        if command == "execute":  # switch_ivr_parse_event
            arg = headers.get("execute-app-arg", "") or body.decode()
            channel.execute(headers.get("execute-app-name", ""), arg, headers.get("event-uuid", ""))
        elif command == "hangup":
            channel.hangup(headers.get("hangup-cause", "NORMAL_CLEARING") or "NORMAL_CLEARING")


class InboundSwitch:
    """Plays FreeSWITCH's mod_event_socket listener (port 8021) and the parked calls tel400 drives.

    ``place(Call(...))`` creates a channel the way the dialplan
    ``set tel400_route=true`` / ``park`` does; every authenticated connection
    gets its events as subscribed and filtered, and ``sendmsg <uuid>`` from
    any connection drives it.  Nasty options: ``split_bytes``,
    ``silent_after_commands``, ``garbage_after_auth`` (see
    :class:`InboundConnection`); :meth:`drop_connections`.
    """

    def __init__(self, password: str = "ClueCon", core_uuid: str = "7610dcfe-e294-11e8-b372-4b084ebbf04f", *,
                 split_bytes: bool = False, silent_after_commands: int | None = None,
                 garbage_after_auth: bool = False) -> None:
        self.password = password
        self.core_uuid = core_uuid
        self.split_bytes = split_bytes
        self.silent_after_commands = silent_after_commands
        self.garbage_after_auth = garbage_after_auth
        self.connections: list[InboundConnection] = []  # every connection made, in order
        self.commands: list[tuple[int, str]] = []  # (connection number, command line) as carried out
        self.channels: dict[str, Channel] = {}  # the channels up, by Unique-ID
        self.placed = 0
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> InboundSwitch:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: InboundConnection(self, len(self.connections)), host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """FreeSWITCH shutting down (switch_core_destroy): channels hung up with SYSTEM_SHUTDOWN (their
        events go out), then mod_event_socket's unload sends every listener the shutdown notice and closes."""
        for channel in list(self.channels.values()):
            channel.hangup("SYSTEM_SHUTDOWN")
        for connection in self.connections:
            connection.close(disconnect_notice(SHUTDOWN))
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)  # split_bytes writers: the notice, then the close

    def drop_connections(self) -> None:
        """FreeSWITCH gone from the network at once: every connection reset, no notice; the channels stay up."""
        for connection in self.connections:
            if not connection.closed:
                connection.closed = True
                connection.transport.abort()

    @property
    def listening(self) -> list[InboundConnection]:
        return [c for c in self.connections if c.listening]

    # -- the calls ---------------------------------------------------------------------------

    async def place(self, call: Call, timeout: float = 30) -> Call:
        """A call to the dialplan's park; returns after its CHANNEL_HANGUP_COMPLETE, or the park timeout."""
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        def hung_up() -> None:
            self.channels.pop(call.uuid, None)
            if not ended.done():
                ended.set_result(None)

        channel = Channel(self.core_uuid, call, self._emit, hung_up)
        self.channels[call.uuid] = channel
        self.placed += 1
        channel.emit(channel.channel_headers("CHANNEL_CREATE"))  # before the dialplan: no tel400_route yet
        if call.route_variable:
            self._dialplan_app(channel, "set", f"tel400_route={call.route_value}", complete=True)
        park = self._dialplan_app(channel, "park", "", complete=False)
        channel.emit(channel.channel_headers("CHANNEL_PARK"))
        channel.running = park
        timer = loop.call_later(timeout, self._park_timeout, channel)
        try:
            await ended
        finally:
            timer.cancel()
        return call

    def _dialplan_app(self, channel: Channel, app: str, arg: str, *, complete: bool):
        """One of the dialplan's applications (its events if ``Call.dialplan_events``)."""
        event_uuid = str(uuidlib.uuid4())
        if channel.call.dialplan_events:
            channel.emit(channel.execute_headers("CHANNEL_EXECUTE", app, arg, event_uuid, uuid_name=None))
        if app == "set":
            name, _, value = arg.partition("=")
            channel.dialplan_variables = [(f"variable_{name}", value)]
        if complete and channel.call.dialplan_events:
            channel.emit(channel.execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid, uuid_name=None))
        return (app, arg, event_uuid) if channel.call.dialplan_events else None

    def _park_timeout(self, channel: Channel) -> None:
        """switch_ivr_park (switch_ivr.c 985-996, 1071-1072): hung up with park_timeout's cause."""
        if channel.up:
            channel.call.parked = True
            channel.hangup(channel.call.park_timeout_cause)

    def _emit(self, headers: list[tuple[str, str]]) -> None:
        """event_handler: a copy to every listener that wants it; one write per event and connection."""
        frame = None
        get = header_getter(headers)
        for connection in self.connections:
            if connection.listening and connection.subscriptions.wants(headers, get):
                if frame is None:
                    frame = event_frame(headers)
                connection.write(frame)
