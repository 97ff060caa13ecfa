"""A FreeSWITCH stand-in that speaks the outbound Event Socket byte for byte.

FreeSWITCH cannot be installed on Debian bookworm, so the adapter is tested
against this peer, written from FreeSWITCH's own source
(``mod_event_socket.c``, ``switch_event.c``):

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
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid as uuidlib
from collections.abc import Callable
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
                          "CHANNEL_UNHOLD", "RECORD_START", "RECORD_STOP", "PLAYBACK_START", "PLAYBACK_STOP"}

GOODBYE = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
assert len(GOODBYE) == 67


def serialize(headers: list[tuple[str, str]], body: bytes | None = None) -> bytes:
    """An event as ``switch_event_serialize(..., encode=TRUE)`` writes it."""
    lines = "".join(f"{name}: {url_encode(value) or '_undef_'}\n" for name, value in headers)
    if body:
        return (lines + f"Content-Length: {len(body)}\n\n").encode() + body
    return (lines + "\n").encode()


def event_frame(headers: list[tuple[str, str]], body: bytes | None = None) -> bytes:
    payload = serialize(headers, body)
    return f"Content-Length: {len(payload)}\nContent-Type: text/event-plain\n\n".encode() + payload


def reply_frame(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


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
    parked: bool = False  # the adapter closed the socket with the channel still up


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
    """One connection's state: the channel as FreeSWITCH would hold it."""

    _sequence = itertools.count(1000)

    def __init__(self, core_uuid: str, call: Call, writer: asyncio.StreamWriter) -> None:
        self.core_uuid = core_uuid
        self.call = call
        self.writer = writer
        self.up = True
        self.lingering = False
        self.bridged: str | None = None
        self.heartbeats: asyncio.Task | None = None
        self.myevents = False  # LFLAG_MYEVENTS: only this channel's events
        self.subscribed: set[str] = set()  # listener->event_list
        self.all_events = False  # event_list[SWITCH_EVENT_ALL]
        self.filters: list[tuple[str, str]] = []

    # -- the conversation ---------------------------------------------------------------

    async def run(self, reader: asyncio.StreamReader) -> None:
        try:
            await self._run(reader)
        finally:
            if self.heartbeats is not None:
                self.heartbeats.cancel()

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
        end = buffer.find(b"\n\n")
        if end == -1:
            return None
        lines = buffer[:end].decode().split("\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(buffer) < end + 2 + length:
            return None
        body = buffer[end + 2:end + 2 + length]
        return lines[0].strip(), headers, body, buffer[end + 2 + length:]

    async def _send(self, data: bytes) -> None:
        if self.call.split_bytes:
            for i in range(len(data)):
                self.writer.write(data[i:i + 1])
                await self.writer.drain()
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def _reply(self, text: str) -> None:
        if self.call.interleave:
            await self._event(self._noise())
        await self._send(reply_frame(text))

    def _noise(self) -> list[tuple[str, str]]:
        """Another application's end on this channel (the dialplan's own, an execute_on_answer…)."""
        return self._execute_headers("CHANNEL_EXECUTE_COMPLETE", "set", "tel400_noise=1",
                                     str(uuidlib.uuid4()))

    async def _handle(self, cmd: str, headers: dict, body: bytes):
        call = self.call
        if call.silent_after_commands is not None and len(call.commands) >= call.silent_after_commands:
            call.ignored.append((cmd, headers.get("call-command", "")))
            return None
        call.commands.append(cmd)
        if cmd == "connect":
            await self._send(self._channel_data())
            if call.garbage_after_connect:
                await self._send(b"\x00\x01 this is not a frame\n\n")
        elif cmd.startswith("myevents"):
            if self.myevents:
                await self._reply("-ERR aready enabled.")
            else:
                self.myevents = True
                self.subscribed |= MYEVENTS
                await self._reply("+OK Events Enabled")
        elif cmd.startswith("filter "):
            await self._reply(self._filter(cmd[7:].strip()))
        elif cmd.startswith("sendmsg"):
            return await self._sendmsg(headers, body)
        elif not call.full and cmd != "exit":  # outbound without "full": nothing below sendmsg exists
            await self._reply("-ERR command not found")
        elif cmd == "linger":
            self.lingering = True
            await self._reply("+OK will linger")
        elif cmd.startswith("nixevent"):
            await self._reply(self._events(cmd.split()[1:], on=False))
        elif cmd.startswith("event"):
            await self._reply(self._events(cmd.split()[1:], on=True))
        elif cmd == "exit":
            await self._reply("+OK bye")
            await self._send(self._disconnect(GOODBYE, "disconnect"))
            return "closed"
        else:
            await self._reply("-ERR command not found")

    def _events(self, words: list[str], *, on: bool) -> str:
        """``event [plain] NAME…`` / ``nixevent NAME…`` as parse_command does them."""
        if on and words and words[0].lower() in ("plain", "xml", "json"):
            words = words[1:]  # the format (the peer speaks plain only)
        known = [w for w in words if w in EVENT_NAMES or w == "ALL"]
        if not known:
            return "-ERR no keywords supplied"
        for name in known:
            if name == "ALL":
                self.all_events = on
                if not on:
                    self.subscribed.clear()
            elif on:
                self.subscribed.add(name)
            else:
                if self.all_events:  # nixing one of ALL: every other type stays on
                    self.all_events = False
                    self.subscribed |= EVENT_NAMES
                self.subscribed.discard(name)
        return "+OK event listener enabled plain" if on else "+OK events nixed"

    def _filter(self, text: str) -> str:
        name, _, value = text.partition(" ")
        if name.lower() == "delete" and value:
            name, _, value = value.partition(" ")
            if name.lower() == "all":
                self.filters.clear()
            else:
                self.filters = [(n, v) for n, v in self.filters if not (n.lower() == name.lower()
                                                                       and (not value or v == value))]
            return f"+OK filter deleted. [{name}][{value}]"
        if not value:
            return "-ERR invalid syntax"
        if name.lower() == "add":
            name, _, value = value.partition(" ")
        self.filters.append((name, value))
        return f"+OK filter added. [{name}]=[{value}]"

    def _wanted(self, headers: list[tuple[str, str]]) -> bool:
        """Whether FreeSWITCH's event_handler would queue this event for the listener."""
        name = headers[0][1]
        if not (self.all_events or name in self.subscribed):
            return False
        if self.filters:
            values = {n.lower(): v for n, v in headers}
            if not any(values.get(n.lower(), "").lower() == v.lower() for n, v in self.filters):
                return False
        if self.myevents:
            return dict(headers).get("Unique-ID") == self.call.uuid
        return True

    async def _event(self, headers: list[tuple[str, str]]) -> None:
        if self._wanted(headers):
            await self._send(event_frame(headers))

    async def _sendmsg(self, headers: dict, body: bytes):
        call = self.call
        if headers.get("call-command") == "hangup":
            await self._reply("+OK")
            await self._hangup(headers.get("hangup-cause", "NORMAL_CLEARING"))
            return None
        if not self.up:
            await self._reply("-ERR no channel")
            return None
        app = headers.get("execute-app-name", "")
        arg = headers.get("execute-app-arg", "") or body.decode()
        event_uuid = headers.get("event-uuid", "")
        await self._reply("+OK")
        call.apps.append((app, arg))
        if call.disconnect_after_apps is not None and len(call.apps) >= call.disconnect_after_apps:
            self.writer.close()  # FreeSWITCH's side goes away mid-call
            return "closed"
        await self._event(self._execute_headers("CHANNEL_EXECUTE", app, arg, event_uuid))
        if app in call.stuck_apps:
            if call.heartbeat_s and self.heartbeats is None:
                self.heartbeats = asyncio.create_task(self._heartbeat(call.heartbeat_s))
            return None  # never completes
        extra: list[tuple[str, str]] = []
        if app == "answer" and not call.answered:
            call.answered = True
            await self._event(self._channel_headers("CHANNEL_ANSWER"))
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
            legs = [leg for leg in re.sub(r"^\{[^}]*\}", "", arg).split("|")]
            answered, talk = call.bridge(legs)
            if answered is not None:
                call.answered = True
                call.billsec = talk
                channel = re.sub(r"^\[[^\]]*\]", "", answered)
                self.bridged = channel
                await self._event(self._channel_headers("CHANNEL_BRIDGE"))
                extra += [("variable_originate_disposition", "SUCCESS"), ("variable_bridge_channel", channel)]
                if call.variables.get("hangup_after_bridge") == "true":
                    await self._event(self._execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg,
                                                                       event_uuid, extra))
                    await self._hangup("NORMAL_CLEARING")
                    return None
            else:
                extra += [("variable_originate_disposition", "USER_BUSY"), ("Application-Response", "USER_BUSY")]
                if call.variables.get("continue_on_fail") != "true":
                    await self._event(self._execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg,
                                                                       event_uuid, extra))
                    await self._hangup("USER_BUSY")
                    return None
        elif app in ("callcenter", "conference"):
            call.answered = True
            call.billsec = call.talk_s
            await self._event(self._execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid))
            await self._hangup("NORMAL_CLEARING")  # the caller hangs up at the end
            return None
        await self._event(self._execute_headers("CHANNEL_EXECUTE_COMPLETE", app, arg, event_uuid, extra))
        return None

    async def _heartbeat(self, every_s: float) -> None:
        while self.up:
            await asyncio.sleep(every_s)
            try:
                await self._event(self._noise())
            except (ConnectionError, OSError):
                return

    async def _hangup(self, cause: str) -> None:
        if self.heartbeats is not None:
            self.heartbeats.cancel()
        if not self.up:
            return
        self.up = False
        call = self.call
        call.hangup_cause = cause
        await self._event(self._channel_headers("CHANNEL_HANGUP", [("Hangup-Cause", cause)]))
        extra = [("Hangup-Cause", cause), ("variable_billsec", str(call.billsec)),
                 ("variable_hangup_cause", cause)]
        if self.bridged:
            extra.append(("variable_bridge_channel", self.bridged))
        await self._event(self._channel_headers("CHANNEL_HANGUP_COMPLETE", extra))
        if self.lingering:
            await self._send(
                f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {call.uuid}\n"
                f"Content-Disposition: linger\nChannel-Name: sofia/internal/{call.caller}@192.168.1.146:5060\n"
                "Linger-Time: 600\nContent-Length: 0\n\n".encode()
            )

    # -- frames ----------------------------------------------------------------------------

    def _disconnect(self, message: bytes, disposition: str) -> bytes:
        return (f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {self.call.uuid}\n"
                f"Content-Disposition: {disposition}\nContent-Length: {len(message)}\n\n").encode() + message

    def _common(self, name: str) -> list[tuple[str, str]]:
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

    def _channel_headers(self, name: str, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        call = self.call
        return self._common(name) + [
            ("Channel-State", "CS_EXECUTE"),
            ("Channel-Call-State", "ACTIVE" if call.answered else "RINGING"),
            ("Channel-Name", f"sofia/internal/{call.caller}@192.168.1.146:5060"),
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
            ("Caller-Channel-Name", f"sofia/internal/{call.caller}@192.168.1.146:5060"),
            ("variable_sip_from_user", call.caller),
            ("variable_sip_req_user", call.destination),
            ("variable_sip_user_agent", "Zoiper rv2.10.8.4"),
            ("variable_tel400_note", "Müller & Söhne; <sip:x@y> \"quoted\"\r\nline"),
        ] + (extra or [])

    def _channel_data(self) -> bytes:
        headers = self._channel_headers("CHANNEL_DATA") + [
            ("Content-Type", "command/reply"),
            ("Reply-Text", "+OK\n"),
            ("Socket-Mode", "async"),
            ("Control", "full" if self.call.full else "single-channel"),
        ]
        return serialize(headers)

    def _execute_headers(self, name, app, arg, event_uuid, extra=None):
        return self._channel_headers(name, [
            ("Application", app),
            ("Application-Data", arg),
            ("Application-UUID", event_uuid),
            ("Application-UUID-Name", "tel400"),
        ] + (extra or []))
